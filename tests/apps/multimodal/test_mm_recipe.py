"""Multimodal recipes through ``omnigpt train`` / ``omnigpt eval``: the recipe is checked before training, a tiny
mixed image + speech model trains, saves a loadable and reproducible checkpoint, and is scored by generation;
mixed batches hold both modalities with the loss on answer tokens only; a run killed with SIGKILL and resumed ends
bit-identical to one never interrupted; two processes under torchrun train what one process does. Uses the real
assets (Fashion-MNIST PNGs, espeak-ng speech) at tiny sizes. The contrastive recipe (train, eval, exact resume) is
tests/apps/contrastive/test_contrastive.py."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from multimodal_helpers import (
    ROOT,
    assert_bit_identical,
    checkpoint_weights,
    kill_after,
    metric_rows,
    start_training,
    train_env,
)

from omnigpt.apps import load_recipe
from omnigpt.apps.multimodal.task import MultimodalTask
from omnigpt.checkpoints.pretrained import load_pretrained
from omnigpt.checkpoints.state import latest_checkpoint
from omnigpt.cli.main import main
from omnigpt.data import multimodal as mm
from omnigpt.data.batches import read_source
from omnigpt.models.multimodal import MultimodalGPT
from omnigpt.text.processors import Processor
from omnigpt.train.recipe import MMDataSpec, MMModelSpec, RecipeError
from omnigpt.train.trainer import Trainer

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not mm.FASHION_MNIST_DIR.is_dir(), reason="needs the Debian package dataset-fashion-mnist"),
    pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("flite") is None,
                       reason="needs the Debian packages espeak-ng and flite"),
]

STEPS = 20  # 4 align + 16 full


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
                           {"dir": str(root / "synth"), "holdout": 0.25}],
                  "max_new_tokens": 6},
         "model": {"text": {"preset": "tiny-gpt2", "block_size": 128}, "vision": "tiny-vit", "audio": "tiny-audio",
                   "audio_seconds": 0.64, "ctc_weight": 0.5},
         "stages": [{"name": "align", "steps": 4, "lr": 3e-3, "train": ["vision_projector", "audio_projector"]},
                    {"name": "full", "steps": 16, "lr": 3e-3, "lr_scale": {"language_model": 0.5}}],
         "warmup": 2, "seed": 3, "threads": 1, "batch_size": 8, "log_interval": 2, "progress": False}
    r.update(over)
    return r


def write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """The tiny mixed recipe trained once, in this process, never interrupted."""
    run = tmp_path_factory.mktemp("runs") / "mixed"
    assert main(["train", str(write(run.parent / "mixed.yaml", tiny_recipe(data, run)))]) == 0
    return run


# ------------------------------------------------------------------------------------------------------------
# Recipes fail before training


def test_bad_multimodal_recipes_fail_before_training_naming_the_key(data, tmp_path, capsys):
    def error(**over) -> str:
        with pytest.raises(RecipeError) as e:
            load_recipe(None, tiny_recipe(data, tmp_path / "run", **over))
        return str(e.value)

    assert "unknown key 'learning_rate'; valid keys: task, out_dir, data, model, seed" in error(learning_rate=1)
    model = {"text": {"preset": "tiny-gpt2"}, "vison": "tiny-vit"}
    assert "model: unknown key 'vison'; valid keys: text, vision, audio" in error(model=model)
    # Keys that moved into the sections are refused at the top level, naming the valid ones.
    assert "unknown key 'ctc_weight'" in error(ctc_weight=0.5)
    assert "unknown key 'max_new_tokens'" in error(max_new_tokens=6)
    bad_module = [{"name": "align", "steps": 5, "train": ["decoder"]}]
    msg = error(stages=bad_module)
    assert "stages[0] (align).train: unknown module 'decoder'" in msg and "audio_projector" in msg
    assert "ctc_head" in msg  # with ctc_weight > 0 the auxiliary head is a module stages can name
    msg = error(stages=[{"name": "full", "steps": 5, "lr_scale": {"vision_tower": 0.1}}])
    assert "lr_scale: unknown module 'vision_tower'" in msg
    assert "stages[0].steps: expected int" in error(stages=[{"name": "full", "steps": "many"}])
    assert "steps must be positive" in error(stages=[{"name": "full", "steps": 0}])
    assert "data.train[0]" in error(data={"train": [{"weight": 1.0}]})  # dir missing
    assert "data.train: list at least one" in error(data={"train": []})
    assert "weight must be > 0" in error(data={"train": [{"dir": str(data / "fmnist"), "weight": 0}]})
    assert "unknown AudioConfig preset 'audio-huge'" in error(model={"audio": "audio-huge"})
    assert "task: unknown task 'vision'; tasks: lm, multimodal, contrastive" in error(task="vision")
    assert "needs model.vision and/or model.audio" in error(model={"text": {"preset": "tiny-gpt2"}})
    assert "model.ctc_weight" in error(model={"vision": "tiny-vit", "ctc_weight": 0.5})  # needs an audio encoder
    # The same through the command line: exit 2, one line naming the key, nothing trained.
    path = write(tmp_path / "bad.yaml", tiny_recipe(data, tmp_path / "run", stages=bad_module))
    assert main(["train", str(path)]) == 2
    assert "unknown module 'decoder'" in capsys.readouterr().err and not (tmp_path / "run").exists()
    # One schema, the sections by task: an LM recipe is not read as a multimodal one, nor the reverse.
    assert load_recipe(None, {"model": {"preset": "tiny-gpt2"}, "max_steps": 10}).task == "lm"
    with pytest.raises(RecipeError, match="data: unknown key 'train'"):
        load_recipe(None, {**tiny_recipe(data, tmp_path / "run"), "task": "lm"})
    r = load_recipe(None, tiny_recipe(data, tmp_path / "run"))
    assert isinstance(r.data, MMDataSpec) and isinstance(r.model, MMModelSpec) and r.model.ctc_weight == 0.5
    assert [(s.name, s.steps, s.warmup) for s in r.stages] == [("align", 4, 2), ("full", 16, 2)]


def test_shipped_multimodal_configs_are_valid():
    root = ROOT / "configs"
    for name in ("mm-fmnist.yaml", "mm-mixed.yaml"):
        r = load_recipe(root / name)
        assert r.task == "multimodal" and isinstance(r.data, MMDataSpec) and r.data.eval
    mixed = load_recipe(root / "mm-mixed.yaml")
    assert mixed.model.vision and mixed.model.audio and len(mixed.data.train) == 2 and mixed.model.ctc_weight > 0


# ------------------------------------------------------------------------------------------------------------
# Batches


def test_mixed_batches_hold_both_modalities_with_loss_on_answers_only(data, tmp_path):
    r = load_recipe(None, tiny_recipe(data, tmp_path / "run"))
    raw = [read_source(s, captions=False, training=True) for s in r.data.train]
    held = [c["id"] for c in read_source(r.data.eval[1], captions=False, training=False)]
    assert held and not set(held) & {c["id"] for c in raw[1]}  # held-out voices never train
    task = MultimodalTask(r)
    proc, tok = task.processor, task.processor.tokenizer
    b = task.batch(0, 0, r.batch_size)
    answers = {c["conversations"][-1]["value"] for items in raw for c in items}
    has_img = (b["input_ids"] == proc.image_token_id).any(1)
    has_aud = (b["input_ids"] == proc.audio_token_id).any(1)
    n_img, n_aud = int(has_img.sum()), int(has_aud.sum())
    assert n_img and n_aud and n_img + n_aud == r.batch_size  # one medium per row, both in the batch
    assert b["pixel_values"].shape == (n_img, 3, 16, 16) and b["input_features"].shape == (n_aud, 80, 64)
    eos = proc.ids["<|endoftext|>"]
    for ids, labels in zip(b["input_ids"], b["labels"], strict=True):
        supervised = labels[labels != -100]
        assert supervised[-1] == eos and tok.decode(supervised[:-1].tolist()) in answers  # answer + eos only
        start = int((labels != -100).nonzero()[0])
        assert torch.equal(ids[start : start + len(supervised)], supervised)  # at the answer's own positions
    # ctc_weight > 0: each clip's CTC target is its row's answer (no eos), in clip order.
    audio_answers = [lab[lab != -100][:-1] for lab, a in zip(b["labels"], has_aud, strict=True) if a]
    assert torch.equal(b["ctc_targets"], torch.cat(audio_answers))
    assert b["ctc_lengths"].tolist() == [len(a) for a in audio_answers]
    # Deterministic per step; rows drawn by weight (1 : 3 → about 3/4 speech over many batches).
    again = task.batch(0, 0, r.batch_size)
    assert all(torch.equal(b[k], again[k]) for k in b)
    assert not torch.equal(task.batch(1, 0, r.batch_size)["input_ids"], b["input_ids"])
    share = sum(int((task.batch(s, 0, 8)["input_ids"] == proc.audio_token_id).any(1).sum()) for s in range(40)) / 320
    assert 0.65 < share < 0.85
    # A slice of the global batch (a micro-batch, or a rank's share) holds the same rows as the whole.
    half = task.batch(0, 4, 4)
    for k in ("pixel_values", "input_features"):
        if k in half:
            tail = b[k][has_img[:4].sum() if k == "pixel_values" else has_aud[:4].sum():]
            assert torch.equal(half[k], tail)
    T = half["input_ids"].shape[1]
    assert torch.equal(half["labels"], b["labels"][4:, :T]) and (b["labels"][4:, T:] == -100).all()


def test_spec_augment_masks_training_features_seeded_by_step_and_row(data, tmp_path):
    torch.manual_seed(0)  # the Trainer seeds before the task builds its model; here both start from one seed
    plain = MultimodalTask(load_recipe(None, tiny_recipe(data, tmp_path / "a")))
    torch.manual_seed(0)
    aug = MultimodalTask(load_recipe(None, tiny_recipe(data, tmp_path / "b", data={
        **tiny_recipe(data, tmp_path)["data"], "spec_augment": True})))
    x, y = plain.batch(0, 0, 8)["input_features"], aug.batch(0, 0, 8)["input_features"]
    assert x.shape == y.shape and not torch.equal(x, y)
    flat = lambda f: (f == f[:, :1]).all(1)  # noqa: E731  (N, T): frames at one level in every band
    masked = flat(y) & ~flat(x)  # time masks: frames set to the clip's mean
    assert masked.any() and not masked.all(1).any()
    assert torch.equal(aug.batch(0, 0, 8)["input_features"], y)  # seeded: a resume sees the same masks
    assert not torch.equal(aug.batch(1, 0, 8)["input_features"], plain.batch(1, 0, 8)["input_features"])
    # Seeded per row of the global batch: any split into micro-batches or ranks gets the same masks.
    parts = [aug.batch(0, s, 2).get("input_features") for s in range(0, 8, 2)]
    assert torch.equal(torch.cat([p for p in parts if p is not None]), y), (
        "BUG (src/omnigpt/train/tasks/multimodal.py, MultimodalTask.batch): SpecAugment seeds each clip with "
        "start + (its index among the micro-batch's clips), not with its row of the global batch, so image rows "
        "shift the seeds and the masks depend on micro_batch and world size (DDP != one process). Seed with the "
        "global row index of the clip's example (start + j for example j, and the clip's number within it).")
    # Only training batches are augmented: the validation loss is the same with and without.
    assert aug.evaluate(4, None, None)["val_loss"] == plain.evaluate(4, None, None)["val_loss"]


# ------------------------------------------------------------------------------------------------------------
# Train → checkpoint → eval


@pytest.mark.e2e
def test_multimodal_recipe_trains_saves_loadable_reproducible_checkpoint(trained, data, tmp_path):
    ckpt = latest_checkpoint(trained / "checkpoints")
    assert ckpt.name == "step_000020"
    rows = [r for r in metric_rows(trained) if "loss" in r]
    assert [r["stage"] for r in rows] == ["align"] * 2 + ["full"] * 8 and rows[-1]["step"] == STEPS
    assert rows[-1]["loss"] < rows[0]["loss"]
    model, proc = load_pretrained(ckpt), Processor.from_pretrained(ckpt)
    assert isinstance(model, MultimodalGPT) and model.config.vision is not None and model.config.audio is not None
    assert model.config.image_token_id == proc.image_token_id and proc.config.image_tokens == 16
    state = json.loads((ckpt / "trainer_state" / "state.json").read_text())
    assert state["step"] == STEPS and state["recipe"]["stages"][0]["train"] == ["vision_projector",
                                                                                "audio_projector"]
    final = [r for r in metric_rows(trained) if "final_val_loss" in r]
    assert len(final) == 1 and math.isfinite(final[0]["final_val_loss"]) and "final_synth/wer" in final[0]
    # Same recipe and seed, another directory: bit-identical weights.
    again = tmp_path / "again"
    assert main(["train", str(write(tmp_path / "r.yaml", tiny_recipe(data, again)))]) == 0
    a, b = checkpoint_weights(trained, STEPS), checkpoint_weights(again, STEPS)
    assert_bit_identical(b, a, "a second run of the same recipe")
    assert not any(k.startswith("ctc_head") for k in a)  # the auxiliary CTC head trains but is not saved
    # A second run into the same directory is refused instead of mixing two runs.
    assert main(["train", str(write(tmp_path / "r.yaml", tiny_recipe(data, again)))]) == 2


@pytest.mark.e2e
def test_eval_reports_generation_metrics_per_source(trained, data, capsys):
    assert main(["eval", str(trained)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result == json.loads((trained / "eval.json").read_text())
    for src, n in (("fmnist", 8), ("synth", None)):
        assert {f"{src}/exact_match", f"{src}/wer", f"{src}/bleu_whitespace", f"{src}/n"} <= set(result)
        assert 0.0 <= result[f"{src}/exact_match"] <= 1.0 and result[f"{src}/wer"] >= 0.0
        assert n is None or result[f"{src}/n"] == n
    held = [c for c in mm.read_conversations(data / "synth" / "train.llava.json") if mm.held_out(c["id"], 0.25)]
    assert result["synth/n"] == len(held)
    # The end of training scored the same sources the same way.
    final = next(r for r in metric_rows(trained) if "final_val_loss" in r)
    assert {k: v for k, v in result.items() if k not in ("checkpoint", "training")} == {
        k.removeprefix("final_"): v for k, v in final.items() if "/" in k}
    assert result["training"]["finished"] and result["training"]["steps_done"] == final["step"]
    assert main(["eval", str(trained), "--data", str(data / "fmnist"), "--limit", "5", "--out",
                 str(trained / "other.json")]) == 0
    other = json.loads((trained / "other.json").read_text())
    assert other["fmnist/n"] == 5 and "synth/n" not in other


def test_audio_ctc_adds_the_ctc_loss_of_the_encoder_output_computed_once():
    import torch.nn.functional as F
    from multimodal_helpers import ByteTokenizer

    from omnigpt.apps.multimodal.task import AudioCTC
    from omnigpt.models.multimodal import MultimodalConfig
    from omnigpt.text.processors import ProcessorConfig

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


# ------------------------------------------------------------------------------------------------------------
# Exact resume after SIGKILL (subprocesses) against the uninterrupted runs above


@pytest.mark.e2e
def test_multimodal_run_killed_twice_resumes_bit_identical(data, tmp_path, capsys):
    # The recipe's auxiliary CTC head (trainer_state/modules.pt) and spec_augment (masks seeded by step and row, so
    # the replayed steps see the same ones) are both on.
    over = dict(data={**tiny_recipe(data, tmp_path)["data"], "spec_augment": True})
    reference = tmp_path / "reference"  # uninterrupted, in this process
    assert main(["train", str(write(tmp_path / "ref.yaml", tiny_recipe(data, reference, **over)))]) == 0
    run = tmp_path / "run"
    recipe = write(tmp_path / "run.yaml", tiny_recipe(data, run, checkpoint_interval=2, keep_checkpoints=20, **over))
    ckpts = run / "checkpoints"
    # 1. SIGKILL once the checkpoint at the end of the "align" stage is committed: the resume starts the "full"
    #    stage with a fresh optimizer, as the uninterrupted run did.
    kill_after(ckpts / "step_000004" / "COMPLETE", start_training(recipe))
    first = int(latest_checkpoint(ckpts).name[5:])
    # 2. Resume, SIGKILL again once a checkpoint 6 steps on is committed: mid-stage, AdamW moments restored.
    kill_after(ckpts / f"step_{first + 6:06d}" / "COMPLETE", start_training(recipe, "--resume"))
    second = int(latest_checkpoint(ckpts).name[5:])
    assert 4 <= first < second < STEPS, (first, second)
    # 3. Resume to the end (in this process).
    capsys.readouterr()
    assert main(["train", str(recipe), "--resume"]) == 0
    assert f"resuming from {ckpts / f'step_{second:06d}'}" in capsys.readouterr().out
    assert_bit_identical(checkpoint_weights(run, STEPS), checkpoint_weights(reference, STEPS),
                         f"killed after step {first} and {second}, resumed")
    # The metrics of the replayed steps were not logged twice: the same rows as the uninterrupted run.
    assert metric_rows(run) == metric_rows(reference)


@pytest.mark.e2e
def test_resume_restores_the_ctc_head(data, tmp_path):
    """The auxiliary CTC head (``AudioCTC.ctc_head``) trains with the model and has AdamW moments in the
    checkpoint, so a resumed run must continue from its trained weights."""
    recipe = tiny_recipe(data, tmp_path / "run", stages=[{"name": "full", "steps": 4, "lr": 3e-3}], final_eval=False,
                         checkpoint_interval=2, keep_checkpoints=5)
    trainer = Trainer(load_recipe(None, recipe))
    heads, save = {}, trainer.save

    def save_and_remember_the_head():  # the head as it was when each checkpoint was written
        heads[trainer.step] = {k: v.clone() for k, v in trainer.train_module.ctc_head.state_dict().items()}
        return save()

    trainer.save = save_and_remember_the_head
    trainer.fit()
    assert not torch.equal(heads[2]["weight"], heads[4]["weight"])  # the head trains
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_000004")  # as if killed before step 4 was committed
    resumed = Trainer(load_recipe(None, recipe), resume=True)
    assert resumed.step == 2
    head, trained_head = resumed.train_module.ctc_head.state_dict(), heads[2]
    assert all(torch.equal(head[k], v) for k, v in trained_head.items()), (
        "BUG (src/omnigpt/train/trainer.py): --resume re-initialises AudioCTC.ctc_head instead of restoring its "
        "trained weights: Trainer.save writes only task.model (the head is not in model.safetensors nor in "
        "trainer_state/), while the restored AdamW state holds the head's moments; a resumed run with "
        "model.ctc_weight > 0 is not exact. Save the train_module's parameters outside task.model in "
        "trainer_state/ and load them after train_module() is built.")


# ------------------------------------------------------------------------------------------------------------
# torchrun: 2 CPU processes (gloo) == 1 process with micro_batch = batch_size / 2


@pytest.mark.e2e
def test_two_processes_match_one_process_with_half_micro_batches(data, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("needs torchrun (installed with torch) next to the Python interpreter")
    common = dict(log_interval=1, eval_interval=10, checkpoint_interval=100)
    two = write(tmp_path / "two.yaml", tiny_recipe(data, tmp_path / "two", **common))  # micro_batch 8 / 2 ranks
    ddp = subprocess.Popen([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "omnigpt", "train", str(two)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=train_env(), cwd=ROOT, text=True)
    try:  # the single process trains here meanwhile: 3 one-thread processes
        one = write(tmp_path / "one.yaml", tiny_recipe(data, tmp_path / "one", micro_batch=4, **common))
        assert main(["train", str(one)]) == 0
    finally:
        _, err = ddp.communicate(timeout=300)
    assert ddp.returncode == 0, err[-3000:]

    def curves(run: str) -> tuple[list[float], list[float]]:
        rows = metric_rows(tmp_path / run)
        return [r["loss"] for r in rows if "loss" in r], [r.get("val_loss", r.get("final_val_loss")) for r in rows
                                                         if "val_loss" in r or "final_val_loss" in r]

    (train1, val1), (train2, val2) = curves("one"), curves("two")
    assert len(train1) == len(train2) == STEPS and len(val1) == len(val2) == 3
    # Each rank's micro-batch is the single process's micro-batch of the same index: only the sum of the two
    # gradients (accumulation vs all-reduce) may differ, in the last bits.
    torch.testing.assert_close(torch.tensor(train2), torch.tensor(train1), rtol=1e-4, atol=0)
    torch.testing.assert_close(torch.tensor(val2), torch.tensor(val1), rtol=1e-4, atol=0)
    a, b = checkpoint_weights(tmp_path / "one", STEPS), checkpoint_weights(tmp_path / "two", STEPS)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    assert not list((tmp_path / "two").glob("checkpoints/.*tmp*"))  # only rank 0 wrote, and it committed
