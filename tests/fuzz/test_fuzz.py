"""The fuzzed readers in the test suite (issue 24).

Default suite: a dozen fixed malformed files per reader (truncations, huge counts and lengths, wrong sizes, the
cases the long fuzz found) must each end in a clean refusal: a ``ValueError`` naming the file (a 400 naming the
parameter for the server's decoders), within the deadline and the memory budget. ``-m slow``: a few hundred
hypothesis cases per reader, none of which may fail. Long runs: ``scripts/fuzz.py --minutes N``.
"""

from __future__ import annotations

import io
import json
import pickletools
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from .harness import Tally, fuzz, run_case
from .mutations import Case, fixed_case
from .seeds import Seed, audio_seeds, ct2_seeds, gguf_seeds, hf_seeds, image_seeds, torchvision_seeds
from .targets import TARGETS

pytest.importorskip("gguf", reason="the gguf package reads GGUF files (test extra)")

HUGE = (1 << 64) - 1


def _seed(seeds: tuple[Seed, ...], name: str) -> Seed:
    return next(s for s in seeds if s.name == name)


def _with(seed: Seed, name: str, data: bytes, label: str) -> Case:
    return Case(seed.name, name, {**seed.files, name: data}, [label])


def _after(data: bytes, key: bytes, extra: int = 0) -> int:
    """Offset just past ``key`` (+ ``extra``) in ``data``."""
    at = data.find(key)
    assert at >= 0, key
    return at + len(key) + extra


def _generic(seed: Seed, name: str) -> list[Case]:
    """Damage any file suffers: empty, cut in half, one byte short, zeroed after its header, random bytes."""
    n = len(seed.files[name])
    return [fixed_case(seed, name, ops) for ops in (
        [("truncate", 0)], [("truncate", n // 2)], [("truncate", n - 1)], [("zero_tail", 8)],
        [("replace", bytes(range(7, 250, 3)) * 2)])]


def gguf_cases() -> list[Case]:
    seed = _seed(gguf_seeds(), "gguf-tied")
    data = seed.files["tiny.gguf"]
    token_type = _after(data, b"tokenizer.ggml.token_type", 4)  # → the array's item type, then its u64 length
    first_tensor = _after(data, b"token_embd.weight")  # → u32 n_dims, u64 dims, u32 type, u64 offset

    def at(offset: int, width: int, value: int) -> Case:
        return fixed_case(seed, "tiny.gguf", [("set_int", offset, width, value, "little")])

    return [*_generic(seed, "tiny.gguf"),
            at(8, 8, HUGE),  # tensor count
            at(16, 8, 1 << 40),  # key/value count
            fixed_case(seed, "tiny.gguf", [("set_int", token_type, 4, 0, "little"),  # u8 array of 2^40 items:
                                           ("set_int", token_type + 4, 8, 1 << 40, "little")]),  # looped for ever
            at(_after(data, b"llama.block_count", 4), 4, 10**7),  # built a 10^7-block model (hang)
            at(_after(data, b"llama.embedding_length", 4), 4, 31),  # head size no longer divides
            at(first_tensor + 4, 8, 1 << 33),  # first dimension
            at(first_tensor + 12, 8, 64),  # second dimension: block rows no longer match
            at(first_tensor + 20, 4, 255),  # tensor type
            at(first_tensor + 24, 8, 1 << 40)]  # data offset


def ct2_cases() -> list[Case]:
    seed = ct2_seeds()[0]
    data = seed.files["model.bin"]
    heads = _after(data, b"decoder/num_heads\0", 2 + 4)  # rank 0, dtype, u32 byte count, then the int16 value
    conv1 = _after(data, b"encoder/conv1/weight\0")  # rank, 3 dims, dtype, byte count

    def at(offset: int, width: int, value: int) -> Case:
        return fixed_case(seed, "model.bin", [("set_int", offset, width, value, "little")])

    def config(**facts: object) -> Case:
        return _with(seed, "config.json", json.dumps(facts).encode(), f"config.json {facts}")

    count = struct.unpack_from("<I", data, 22)[0]
    empty_65d = struct.pack("<H", 2) + b"x\0" + struct.pack("<B65IBI", 65, *[0] * 65, 0, 0)  # numpy stops at 64
    return [*_generic(seed, "model.bin"),
            _with(seed, "model.bin", data[:22] + struct.pack("<I", count + 1) + empty_65d + data[26:], "65-d variable"),
            at(22, 4, 0xFFFFFFFF),  # variable count
            at(26, 2, 0xFFFF),  # first name's length
            at(conv1, 1, 255),  # rank
            at(conv1 + 1, 4, 1 << 31),  # a dimension: byte count no longer matches
            at(heads, 2, 0),  # num_heads 0 (divided by)
            at(_after(data, b"decoder/num_heads\0", 1), 1, 4),  # num_heads stored as float16: int() is 0
            config(alignment_heads=[[1]]), config(suppress_ids="x"), config(lang_ids=[None]),
            _with(seed, "config.json", b"\xff{", "config.json not UTF-8")]


def torchvision_cases() -> list[Case]:
    legacy, zipped = _seed(torchvision_seeds(), "pth-legacy"), _seed(torchvision_seeds(), "pth-zip")
    data = legacy.files["weights.pth"]
    numel = data.find(b"cpu") + 3 + 1 + 1  # BINUNICODE 'cpu', BINPUT n, then the element count opcode
    assert data[numel : numel + 1] == b"K"  # BININT1
    big_storage = data[:numel] + b"J" + struct.pack("<i", 2**31 - 1) + data[numel + 2 :]  # 8 GiB declared
    f = io.BytesIO(data)
    for _ in range(5):  # the legacy format's pickles; the first storage's u64 byte count follows
        list(pickletools.genops(f))
    cd = zipped.files["weights.pth"].find(b"PK\x01\x02")  # the zip's first central directory entry
    return [*_generic(legacy, "weights.pth"), *_generic(zipped, "weights.pth")[:2],
            _with(legacy, "weights.pth", big_storage, "storage of 2^31 floats"),
            fixed_case(legacy, "weights.pth", [("set_int", f.tell(), 8, HUGE, "little")]),  # first storage's size
            fixed_case(zipped, "weights.pth", [("set_int", 26, 2, 0xFFF0, "little")]),  # data.pkl's name length
            fixed_case(zipped, "weights.pth", [("set_int", cd + 24, 4, 0xFFFFFFF0, "little")]),  # its size
            fixed_case(zipped, "weights.pth", [("set_int", cd + 42, 4, 0xFFFFFFF0, "little")])]  # its offset


def hf_cases() -> list[Case]:
    seed = _seed(hf_seeds(), "hf-omnigpt")
    hf, manifest = _seed(hf_seeds(), "hf-transformers"), _seed(hf_seeds(), "hf-manifest")
    st = seed.files["model.safetensors"]
    (n,) = struct.unpack_from("<Q", st)
    header = json.loads(st[8 : 8 + n])

    def tensors(edit: Callable[[dict], None], label: str) -> Case:
        h = json.loads(json.dumps(header))
        edit(h)
        raw = json.dumps(h).encode()
        return _with(seed, "model.safetensors", struct.pack("<Q", len(raw)) + raw + st[8 + n :], label)

    key = next(k for k in header if k != "__metadata__")
    return [*_generic(seed, "model.safetensors")[:3], *_generic(seed, "config.json")[:2],
            fixed_case(seed, "model.safetensors", [("set_int", 0, 8, HUGE, "little")]),  # header length
            tensors(lambda h: h[key].update(data_offsets=[0, 1 << 40]), "data_offsets past the end"),
            tensors(lambda h: h[key].update(shape=[1 << 31, 1 << 31]), "shape larger than the data"),
            tensors(lambda h: h[key].update(dtype="XX"), "unknown dtype"),
            fixed_case(hf, "config.json", [("json_replace", ("n_layer",), 10**7)]),
            fixed_case(seed, "config.json", [("json_wrap", ("omnigpt", "wpe_initializer_range"))]),
            fixed_case(hf, "config.json", [("json_replace", ("resid_pdrop",), "x")]),
            fixed_case(hf, "config.json", [("json_replace", ("architectures",), 32767)]),  # found by the long fuzz
            fixed_case(manifest, "manifest.sha256.json", [("json_add", (), "/dev/zero", "0" * 64)]),
            _with(manifest, "manifest.sha256.json", b"\xec[", "manifest not UTF-8")]


def image_cases() -> list[Case]:
    seeds = {s.name: s for s in image_seeds()}
    png, jpeg, bmp, gif = seeds["png-rgb"], seeds["jpeg"], seeds["bmp"], seeds["gif"]
    sof = _after(jpeg.files["upload"], b"\xff\xc0", 2 + 1)  # segment length, precision, then height, width
    return [*_generic(png, "upload")[:2], *_generic(png, "upload")[3:], *_generic(jpeg, "upload")[1:3],
            fixed_case(png, "upload", [("set_int", 16, 4, 0x7FFFFFFF, "big"), ("set_int", 20, 4, 0x7FFFFFFF, "big")]),
            fixed_case(png, "upload", [("set_int", 16, 4, 0, "big")]),  # width 0
            fixed_case(jpeg, "upload", [("set_int", sof, 2, 0xFFFF, "big"), ("set_int", sof + 2, 2, 0xFFFF, "big")]),
            fixed_case(bmp, "upload", [("set_int", 18, 4, 1 << 30, "little")]),  # width
            fixed_case(bmp, "upload", [("set_int", 10, 4, 0xFFFFFFF0, "little")]),  # pixel data offset
            fixed_case(gif, "upload", [("truncate", 40)])]


def audio_cases() -> list[Case]:
    seeds = {s.name: s for s in audio_seeds()}
    wav, flac, au = seeds["wav-pcm16"], seeds["flac"], seeds["au"]
    # FLAC STREAMINFO bytes 18-25: 20-bit rate, 3-bit channels - 1, 5-bit bits - 1, 36-bit total samples.
    bomb = (0xFFFFF << 44) | (7 << 41) | (15 << 36) | 600 * 0xFFFFF  # 1 MHz, 8 channels, 600 s
    return [*_generic(wav, "upload")[:3], *_generic(flac, "upload")[1:3],
            fixed_case(wav, "upload", [("set_int", 22, 2, 0, "little")]),  # channels
            fixed_case(wav, "upload", [("set_int", 24, 4, 0, "little")]),  # sample rate
            fixed_case(wav, "upload", [("set_int", 34, 2, 0xFFFF, "little")]),  # bits per sample
            fixed_case(wav, "upload", [("set_int", 40, 4, 0x7FFFFFF0, "little")]),  # data chunk size
            fixed_case(flac, "upload", [("set_int", 18, 8, bomb, "big")]),  # declares ~20 GB of samples
            fixed_case(au, "upload", [("set_int", 4, 4, 0xFFFFFFF0, "big")]),  # data offset
            fixed_case(au, "upload", [("set_int", 12, 4, 99, "big")])]  # encoding


FIXED: dict[str, Callable[[], list[Case]]] = {"gguf": gguf_cases, "ctranslate2": ct2_cases,
                                              "torchvision": torchvision_cases, "safetensors": hf_cases,
                                              "image": image_cases, "audio": audio_cases}


@pytest.mark.parametrize("reader", sorted(FIXED))
def test_fixed_malformed_files_are_refused_clearly(reader: str, tmp_path: Path) -> None:
    """Each fixed malformed file ends in a clean refusal naming the file (or the upload's parameter)."""
    bad = []
    for case in FIXED[reader]():
        outcome = run_case(TARGETS[reader], case, tmp_path / "case")
        if outcome.kind != "refused":
            bad.append(f"{case.describe()[:200]}\n    → {outcome.kind}: {outcome.signature} {outcome.message[:300]}")
    assert not bad, f"{len(bad)} malformed {reader} files not refused cleanly:\n" + "\n".join(bad)


@pytest.mark.slow
@pytest.mark.parametrize("reader", sorted(TARGETS))
def test_fuzz_smoke(reader: str, tmp_path: Path) -> None:
    """A few hundred hypothesis cases: every one loads or is refused cleanly (no other exception, hang or huge
    allocation)."""
    tally = Tally(reader, tmp_path / "failures")
    fuzz(reader, 300, 24, tally.add, tmp_path)
    assert tally.cases == 300
    assert tally.outcomes["refused"] > 100, tally.summary()  # the mutations do reach the readers' checks
    assert tally.failures == 0, tally.summary()
