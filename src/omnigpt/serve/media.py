"""Untrusted media in requests: multipart form bodies, data URLs, and image/audio bytes decoded with limits.

Everything here turns client bytes into model inputs or a 400 naming the parameter, never a 5xx:

* ``parse_form`` reads a ``multipart/form-data`` body (what OpenAI's ``/v1/audio/transcriptions`` takes) with the
  standard library's MIME parser; the body is already bounded by ``BodyLimitMiddleware`` (413 beyond it).
* ``data_url_bytes`` accepts ``data:<mime>;base64,...`` only. Remote URLs are refused: fetching them would let a
  client make the server request internal addresses (SSRF).
* ``image_from_bytes`` refuses non-images, truncated files and decompression bombs (Pillow only *warns* below
  twice its pixel limit: the warning is an error here); ``audio_from_bytes`` reads WAV/FLAC/OGG through
  ``text.processors.load_audio`` (length checked against the header) and caps the duration.
Error messages name the parameter and never contain the temporary file's path or the input itself.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import io
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch import Tensor

from omnigpt.serve.errors import APIError, bad_request
from omnigpt.text.processors import ProcessorError, load_audio, load_image

MAX_IMAGE_PIXELS = 50_000_000
# Decoded audio is float32 at the file's own rate and channel count before it is down-mixed and resampled: a header
# (FLAC's total samples, a WAV's rate) can declare far more than any recording holds, and a compressed file of
# silence really does decode to that much. Budget: the duration limit at 96 kHz in stereo (460 MB at 600 s).
MAX_AUDIO_RATE, MAX_AUDIO_CHANNELS = 384_000, 32
BUDGET_RATE_CHANNELS = 96_000 * 2


@dataclass(frozen=True)
class FormFile:
    """An uploaded file of a multipart form."""

    filename: str
    content_type: str
    data: bytes


def parse_form(body: bytes, content_type: str) -> dict[str, str | FormFile]:
    """Fields of a ``multipart/form-data`` body: text fields as str, file fields as ``FormFile`` (first wins)."""
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type.lower():
        raise bad_request("This endpoint takes a multipart/form-data body (a 'file' part and form fields), as "
                          "OpenAI's API does.", code="invalid_content_type")
    header = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\nMIME-Version: 1.0\r\n\r\n"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
    if not message.is_multipart():
        raise bad_request("The multipart body could not be parsed.", code="invalid_multipart")
    fields: dict[str, str | FormFile] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or name in fields:
            continue
        data = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            fields[name] = FormFile(str(filename), part.get_content_type(), data)
        else:
            try:
                fields[name] = data.decode("utf-8")
            except UnicodeDecodeError:
                raise bad_request(f"Form field '{name[:64]}' is not valid UTF-8.", param=name[:64],
                                  code="invalid_value") from None
    return fields


def data_url_bytes(url: str, param: str) -> bytes:
    """The bytes of a ``data:...;base64,...`` URL; anything else (http(s) URLs included) is a 400."""
    if not url.startswith("data:"):
        raise bad_request(f"{param}: only data URLs (data:image/png;base64,...) are accepted; this server does not "
                          f"fetch remote URLs.", param=param, code="invalid_image_url")
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise bad_request(f"{param}: a data URL must be base64-encoded (data:<type>;base64,<data>).", param=param,
                          code="invalid_image_url")
    return b64_bytes(payload, param)


def b64_bytes(payload: str, param: str) -> bytes:
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{param}: not valid base64.", param=param, code="invalid_value") from None
    if not data:
        raise bad_request(f"{param}: the data is empty.", param=param, code="invalid_value")
    return data


def image_from_bytes(data: bytes, param: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """A fully decoded image, or a 400 (not an image, truncated, corrupt, too many pixels)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        return load_image(img, max_pixels)  # checks the pixel count from the header, then decodes
    except ProcessorError as e:
        raise bad_request(f"{param}: {str(e).removeprefix('<image>: ')}", param=param, code="invalid_image") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise bad_request(f"{param}: the image has too many pixels (decompression bomb?).", param=param,
                          code="invalid_image") from None
    except UnidentifiedImageError:
        raise bad_request(f"{param}: not an image file this server can read (PNG, JPEG, GIF, WebP, BMP ...).",
                          param=param, code="invalid_image") from None
    except (OSError, SyntaxError, ValueError):
        raise bad_request(f"{param}: corrupt or truncated image.", param=param, code="invalid_image") from None


def audio_from_bytes(data: bytes, param: str, max_seconds: float | None) -> tuple[Tensor, int]:
    """(mono waveform, sample rate) of WAV/FLAC/OGG bytes, or a 400 (not audio, truncated, empty, too long)."""
    with tempfile.TemporaryDirectory(prefix="omnigpt-audio-") as tmp:
        path = Path(tmp) / "upload"
        path.write_bytes(data)
        try:
            _check_decoded_size(path, param, max_seconds)
            return load_audio(path, max_seconds=max_seconds)
        except ProcessorError as e:
            message = str(e).replace(f"{path}: ", "").replace(str(path), "the file")
            message = message.replace(" (audio_seconds)", "")
            code = "audio_too_long" if "longer than" in message else "invalid_audio"
            raise bad_request(f"{param}: {message}", param=param, code=code) from None
        except (OSError, RuntimeError, ValueError):
            raise bad_request(f"{param}: could not be read as audio (WAV, FLAC or OGG).", param=param,
                              code="invalid_audio") from None


def _check_decoded_size(path: Path, param: str, max_seconds: float | None) -> None:
    """A 400 for audio whose header declares an implausible rate or channel count, or more samples than the budget,
    before anything is decoded (unreadable headers are left to ``load_audio`` to report)."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:  # noqa: BLE001 (not audio libsndfile knows: load_audio says so)
        return
    if not 0 < info.samplerate <= MAX_AUDIO_RATE or not 0 < info.channels <= MAX_AUDIO_CHANNELS:
        raise bad_request(f"{param}: the audio header declares {info.samplerate} Hz and {info.channels} channels "
                          f"(at most {MAX_AUDIO_RATE} Hz and {MAX_AUDIO_CHANNELS} channels are accepted).",
                          param=param, code="invalid_audio")
    if max_seconds is not None and info.frames * info.channels > max_seconds * BUDGET_RATE_CHANNELS:
        raise bad_request(f"{param}: the audio decodes to {info.frames:,} frames of {info.channels} channels, more "
                          f"than {max_seconds:g} s of 96 kHz stereo.", param=param, code="audio_too_long")


def require_file(fields: dict[str, str | FormFile], name: str = "file") -> FormFile:
    value = fields.get(name)
    if not isinstance(value, FormFile):
        raise APIError(400, f"Missing required parameter: '{name}' (a file part of the multipart form).", param=name,
                       code="missing_required_parameter")
    return value


__all__ = ["FormFile", "audio_from_bytes", "b64_bytes", "data_url_bytes", "image_from_bytes", "parse_form",
           "require_file"]
