"""Multimodal recipes through ``omnigpt train`` / ``omnigpt eval``: the recipe is checked before training, a tiny
mixed image + speech model trains, saves a loadable and reproducible checkpoint, and is scored by generation;
mixed batches hold both modalities with the loss on answer tokens only. Uses the real assets (Fashion-MNIST PNGs,
espeak-ng speech) at tiny sizes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from omnigpt.cli.main import main
from omnigpt.data import multimodal as mm
from omnigpt.models.multimodal import MultimodalGPT
from omnigpt.text.processors import Processor, ProcessorConfig
from omnigpt.train.recipe import MultimodalRecipe, RecipeError, load_any_recipe, load_recipe

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not mm.FASHION_MNIST_DIR.is_dir(), reason="needs the Debian package dataset-fashion-mnist"),
    pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("flite") is None,
                       reason="needs the Debian packages espeak-ng and flite"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Tiny prepared directories: 32 Fashion-MNIST images per split, 3 words × 4 synthetic voices."""
    root = tmp_path_factory.mktemp("mmdata")
    mm.prepare_multimodal("fashion-mnist", root / "fmnist", limit=32)
    mm.prepare_multimodal("synth-speech", root / "synth", texts=["seven", "nine", "bee"], per_text=4,
                          sample_rate=8000, seed=0)
    return root


def tiny_recipe(root: Path, out: Path, **over) -> dict:
    r = {"task": "multimodal", "out_dir": str(out),
         "data": {"train": [{"dir": str(root / "fmnist"), "weight": 1.0},
                            {"dir": str(root / "synth"), "weight": 3.0, "holdout": 0.25}],
                  "eval": [{"dir": str(root / "fmnist"), "split": "test", "limit": 8},
                           {"dir": str(root / "synth"), "holdout": 0.25}]},
         "model": {"text": {"preset": "tiny-gpt2", "block_size": 128}, "vision": "tiny-vit", "audio": "tiny-audio",
                   "audio_seconds": 0.64},
         "stages": [{"name": "align", "steps": 4, "lr": 3e-3, "train": ["vision_projector", "audio_projector"]},
                    {"name": "full", "steps": 16, "lr": 3e-3, "lr_scale": {"language_model": 0.5}}],
         "ctc_weight": 0.5, "seed": 3, "threads": 1, "batch_size": 8, "log_interval": 5, "max_new_tokens": 6}
    r.update(over)
    return r


def write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "mixed"
    assert main(["train", str(write(run.parent / "mixed.yaml", tiny_recipe(data, run)))]) == 0
    return run


# ------------------------------------------------------------------------------------------------------------
# Recipes fail before training


def test_bad_multimodal_recipes_fail_before_training_naming_the_key(data, tmp_path, capsys):
    def error(**over) -> str:
        with pytest.raises(RecipeError) as e:
            load_any_recipe(None, tiny_recipe(data, tmp_path / "run", **over))
        return str(e.value)

    assert "unknown key 'learning_rate'; valid keys: task, out_dir, data, model, stages" in error(learning_rate=1)
    model = {"text": {"preset": "tiny-gpt2"}, "vison": "tiny-vit"}
    assert "model: unknown key 'vison'; valid keys: text, vision, audio" in error(model=model)
    bad_module = [{"name": "align", "steps": 5, "train": ["decoder"]}]
    msg = error(stages=bad_module)
    assert "stages[0] (align).train: unknown module 'decoder'" in msg and "audio_projector" in msg
    msg = error(stages=[{"name": "full", "steps": 5, "lr_scale": {"vision_tower": 0.1}}])
    assert "lr_scale: unknown module 'vision_tower'" in msg
    assert "stages[0].steps: expected int, got str" in error(stages=[{"name": "full", "steps": "many"}])
    assert "steps must be positive" in error(stages=[{"name": "full", "steps": 0}])
    assert "data.train[0]" in error(data={"train": [{"weight": 1.0}]})  # dir missing
    assert "unknown AudioConfig preset 'audio-huge'" in error(model={"audio": "audio-huge"})
    assert "task: must be one of ['lm', 'multimodal', 'contrastive']" in error(task="vision")
    assert "ctc_weight" in error(model={"vision": "tiny-vit"})  # a CTC head needs an audio encoder
    # The same through the command line: exit 2, one line naming the key, nothing trained.
    path = write(tmp_path / "bad.yaml", tiny_recipe(data, tmp_path / "run", stages=bad_module))
    assert main(["train", str(path)]) == 2
    assert "unknown module 'decoder'" in capsys.readouterr().err and not (tmp_path / "run").exists()
    # A text recipe is still a TrainRecipe, and a multimodal one is not mistaken for it.
    assert load_recipe(None, {"model": {"preset": "tiny-gpt2"}}).task == "lm"
    with pytest.raises(RecipeError, match="multimodal recipe"):
        load_recipe(None, tiny_recipe(data, tmp_path / "run"))


def test_shipped_multimodal_configs_are_valid():
    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("mm-fmnist.yaml", "mm-mixed.yaml"):
        r = load_any_recipe(root / name)
        assert isinstance(r, MultimodalRecipe) and r.task == "multimodal" and r.data.eval
    mixed = load_any_recipe(root / "mm-mixed.yaml")
    assert mixed.model.vision and mixed.model.audio and len(mixed.data.train) == 2


# ------------------------------------------------------------------------------------------------------------
# Batches


def test_mixed_batches_hold_both_modalities_with_loss_on_answers_only(data, tmp_path):
    from omnigpt.train.mm_pipeline import char_tokenizer, conversation_batches, read_source
    from omnigpt.train.recipe import multimodal_config

    r = load_any_recipe(None, tiny_recipe(data, tmp_path / "run"))
    raw = [read_source(s, captions=False, training=True) for s in r.data.train]
    held = [c["id"] for c in read_source(r.data.eval[1], captions=False, training=False)]
    assert held and not set(held) & {c["id"] for c in raw[1]}  # held-out voices never train
    tok = char_tokenizer([t["value"] for items in raw for c in items for t in c["conversations"]])
    probe = Processor(tok)
    cfg = multimodal_config(r.model, len(tok), probe.image_token_id, probe.audio_token_id)
    proc = Processor(tok, ProcessorConfig(**cfg.processor_kwargs(), truncate_audio=True))
    batch = conversation_batches(r, raw, proc)
    b = batch(0)
    answers = {c["conversations"][-1]["value"] for items in raw for c in items}
    n_img = int((b["input_ids"] == proc.image_token_id).any(1).sum())
    n_aud = int((b["input_ids"] == proc.audio_token_id).any(1).sum())
    assert n_img and n_aud and n_img + n_aud == r.batch_size  # one medium per row, both in the batch
    assert b["pixel_values"].shape == (n_img, 3, 16, 16) and b["input_features"].shape == (n_aud, 80, 64)
    eos = proc.ids["<|endoftext|>"]
    for ids, labels in zip(b["input_ids"], b["labels"], strict=True):
        supervised = labels[labels != -100]
        assert supervised[-1] == eos and tok.decode(supervised[:-1].tolist()) in answers  # answer + eos only
        start = int((labels != -100).nonzero()[0])
        assert torch.equal(ids[start : start + len(supervised)], supervised)  # at the answer's own positions
    # Deterministic per step; rows drawn by weight (1 : 3 → about 3/4 speech over many batches).
    assert all(torch.equal(b[k], batch(0)[k]) for k in b) and not torch.equal(batch(1)["input_ids"], b["input_ids"])
    share = sum(int((batch(s)["input_ids"] == proc.audio_token_id).any(1).sum()) for s in range(40)) / (40 * 8)
    assert 0.65 < share < 0.85


# ------------------------------------------------------------------------------------------------------------
# Train → checkpoint → eval


def test_multimodal_recipe_trains_saves_loadable_reproducible_checkpoint(trained, data, tmp_path):
    ckpt = next((trained / "checkpoints").glob("step_*"))
    assert ckpt.name == "step_000020"
    rows = [json.loads(ln) for ln in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["align", "full", "full", "full", "full"] and rows[-1]["step"] == 20
    assert rows[-1]["loss"] < rows[0]["loss"]
    model = MultimodalGPT.from_pretrained(ckpt)
    proc = Processor.from_pretrained(ckpt)
    assert model.config.vision is not None and model.config.audio is not None
    assert model.config.image_token_id == proc.image_token_id and proc.config.image_tokens == 16
    state = json.loads((ckpt / "trainer_state" / "state.json").read_text())
    assert state["step"] == 20 and state["recipe"]["stages"][0]["train"] == ["vision_projector", "audio_projector"]
    # Same recipe and seed, another directory: bit-identical weights.
    again = tmp_path / "again"
    assert main(["train", str(write(tmp_path / "r.yaml", tiny_recipe(data, again)))]) == 0
    a, b = load_file(ckpt / "model.safetensors"), load_file(again / "checkpoints" / ckpt.name / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(k.startswith("ctc_head") for k in a)  # the auxiliary CTC head trains but is not saved
    # A second run into the same directory is refused instead of mixing two runs.
    assert main(["train", str(write(tmp_path / "r.yaml", tiny_recipe(data, again)))]) == 2


def test_eval_reports_generation_metrics_per_source(trained, data, capsys):
    assert main(["eval", str(trained)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result == json.loads((trained / "eval.json").read_text())
    for src, n in (("fmnist", 8), ("synth", None)):
        assert {f"{src}/exact_match", f"{src}/wer", f"{src}/bleu", f"{src}/n"} <= set(result)
        assert 0.0 <= result[f"{src}/exact_match"] <= 1.0 and result[f"{src}/wer"] >= 0.0
        assert n is None or result[f"{src}/n"] == n
    held = [c for c in mm.read_conversations(data / "synth" / "train.llava.json") if mm.held_out(c["id"], 0.25)]
    assert result["synth/n"] == len(held)
    assert main(["eval", str(trained), "--data", str(data / "fmnist"), "--limit", "5", "--out",
                 str(trained / "other.json")]) == 0
    other = json.loads((trained / "other.json").read_text())
    assert other["fmnist/n"] == 5 and "synth/n" not in other


def test_contrastive_recipe_trains_and_reports_zero_shot_accuracy(data, tmp_path, capsys):
    fm = str(data / "fmnist")
    recipe = {"task": "contrastive", "out_dir": str(tmp_path / "clip"),
              "data": {"train": [{"dir": fm}], "eval": [{"dir": fm, "split": "test"}]},
              "model": {"text": {"preset": "tiny-gpt2", "block_size": 48}, "vision": "tiny-vit", "embed_dim": 16},
              "stages": [{"name": "clip", "steps": 6, "lr": 3e-3}], "batch_size": 16, "threads": 1}
    assert main(["train", str(write(tmp_path / "clip.yaml", recipe))]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "clip")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= result["fmnist/accuracy"] <= 1.0 and result["fmnist/n"] == 32
    assert "fmnist/image_to_text_r@1" not in result  # captions repeat per class: recall@k is undefined


def test_audio_ctc_adds_the_ctc_loss_of_the_encoder_output_computed_once():
    import math

    import torch.nn.functional as F
    from multimodal_helpers import ByteTokenizer

    from omnigpt.models.multimodal import MultimodalConfig
    from omnigpt.train.multimodal_lib import AudioCTC

    tok = ByteTokenizer()
    probe = Processor(tok)
    cfg = MultimodalConfig.from_name("tiny-omni", image_token_id=probe.image_token_id,
                                     audio_token_id=probe.audio_token_id)
    model = MultimodalGPT(cfg)
    proc = Processor(tok, ProcessorConfig(**cfg.processor_kwargs()))
    t = torch.arange(8000) / 16000
    clips = [[(0.3 * torch.sin(2 * math.pi * f * t), 16000)] for f in (200.0, 900.0)]
    b = proc(["<|audio|> is", "<|audio|> is"], audio=clips, answers=["low", "high"])
    targets = [torch.tensor(tok.encode(a)) for a in ("low", "high")]
    net = AudioCTC(model, weight=0.5)
    calls = []
    model.audio_encoder.register_forward_hook(lambda m, i, o: calls.append(o.last_hidden_state))
    loss = net(ctc_targets=torch.cat(targets), ctc_lengths=torch.tensor([3, 4]), **b)
    assert len(calls) == 1  # the encoder ran once, for the decoder and the CTC head together
    logp = net.ctc_head(calls[0]).log_softmax(-1).transpose(0, 1)  # (T, N, V + 1)
    ref = F.ctc_loss(logp, torch.cat(targets), torch.full((2,), logp.shape[0]), torch.tensor([3, 4]),
                     blank=logp.shape[-1] - 1)
    torch.testing.assert_close(loss, model(**b).loss + 0.5 * ref)
    assert "ctc_head" in net.parameter_groups() and "ctc_head" not in model.state_dict()
    # A stage that trains only the audio encoder + CTC head skips the decoder: its loss is the CTC term alone.
    decoder_calls = []
    model.language_model.register_forward_hook(lambda m, i, o: decoder_calls.append(1))
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith(("model.audio_encoder.", "ctc_head.")))
    loss = net(ctc_targets=torch.cat(targets), ctc_lengths=torch.tensor([3, 4]), **b)
    assert not decoder_calls and loss.requires_grad
    torch.testing.assert_close(loss, 0.5 * ref)
