"""Training: recipe validation, schedule, fused loss, checkpoints, exact resume after SIGKILL, SIGTERM, DDP."""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from multimodal_helpers import train_cmd, train_env, wait_for
from safetensors.torch import load_file

from omnigpt.apps import load_recipe
from omnigpt.apps.lm.task import LMLoss
from omnigpt.checkpoints.state import latest_checkpoint, load_model
from omnigpt.data import prepare_data
from omnigpt.files import workers
from omnigpt.kernels.losses import fused_linear_cross_entropy, reference_cross_entropy
from omnigpt.train.recipe import RecipeError
from omnigpt.train.schedule import build_optimizer
from omnigpt.train.trainer import NonFiniteLossError, Trainer, train

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["the", "king", "queen", "sword", "crown", "night", "day", "love", "death", "speak", "hear", "lord", "lady",
         "fool", "ghost", "castle", "thou", "art", "sweet", "prince", "madness"]


def tiny_recipe(tmp: Path, **over) -> dict:
    """A recipe that trains in about a second: tiny-gpt2 on a generated 12-document character corpus."""
    corpus = tmp / "corpus"
    if not corpus.exists():
        corpus.mkdir(parents=True)
        rng = random.Random(0)
        for i in range(12):
            (corpus / f"d{i:02d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(150)) + ".\n")
    r = {"out_dir": str(tmp / "run"),
         "data": {"dir": str(tmp / "data"), "sources": [str(corpus / "*.txt")], "tokenizer": "char",
                  "val_fraction": 0.2},
         "model": {"preset": "tiny-gpt2", "block_size": 32},
         "seed": 7, "threads": 1, "batch_size": 8, "micro_batch": 4, "max_steps": 30, "lr": 3e-3, "min_lr_ratio": 0.1,
         "warmup": 5, "log_interval": 1, "eval_interval": 10, "eval_limit": 512, "checkpoint_interval": 10,
         "progress": False}
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(r.get(k), dict):
            r[k] = {**r[k], **v}
        else:
            r[k] = v
    return r


def write_recipe(tmp: Path, name: str = "recipe.yaml", **over) -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(tiny_recipe(tmp, **over)))
    return p


# ------------------------------------------------------------------------------------------------------------
# Recipes fail before training


def test_recipe_errors_are_caught_before_training(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown key 'learning_rate'; valid keys: task, out_dir, data, model, .*lr"):
        load_recipe(None, tiny_recipe(tmp_path, learning_rate=1e-3))
    with pytest.raises(RecipeError, match=r"max_steps: expected int or null, got 'many'"):
        load_recipe(None, tiny_recipe(tmp_path, max_steps="many"))
    with pytest.raises(RecipeError, match=r"data: unknown key 'source'; valid keys: dir, sources"):
        load_recipe(None, tiny_recipe(tmp_path, data={"source": ["x"]}))
    with pytest.raises(RecipeError, match=r"model: unknown key 'layers'; valid keys: preset, vocab_size"):
        load_recipe(None, tiny_recipe(tmp_path, model={"layers": 3}))
    with pytest.raises(RecipeError, match=r"model.n_layer: expected int"):
        load_recipe(None, tiny_recipe(tmp_path, model={"n_layer": 2.5}))
    with pytest.raises(RecipeError, match=r"dtype: must be one of \['auto', 'bfloat16', 'float32'\]"):
        load_recipe(None, tiny_recipe(tmp_path, dtype="fp8"))
    with pytest.raises(RecipeError, match=r"batch_size 10 must be a multiple of micro_batch × processes = 4 × 1"):
        load_recipe(None, tiny_recipe(tmp_path, batch_size=10))
    with pytest.raises(RecipeError, match=r"task: unknown task 'translate'; tasks: lm, multimodal, contrastive"):
        load_recipe(None, tiny_recipe(tmp_path, task="translate"))
    with pytest.raises(RecipeError, match=r"max_steps 30 differs from the stages' steps, which sum to 8"):
        load_recipe(None, tiny_recipe(tmp_path, stages=[{"name": "a", "steps": 3}, {"name": "b", "steps": 5}]))
    with pytest.raises(RecipeError, match=r"only the last stage may leave steps unset"):
        load_recipe(None, tiny_recipe(tmp_path, stages=[{"name": "a"}, {"name": "b", "steps": 5}]))
    with pytest.raises(RecipeError, match="expected --key=value"):
        load_recipe(write_recipe(tmp_path), ["max_steps"])
    assert load_recipe(write_recipe(tmp_path), ["--max_steps=3", "--model.n_layer=1", "--lr=1"]).lr == 1.0
    assert load_recipe(write_recipe(tmp_path), ["--lr=2e-3"]).lr == 2e-3  # YAML 1.1 reads 2e-3 as a string
    # Missing data: the trainer stops before building anything or writing into out_dir.
    recipe = load_recipe(None, tiny_recipe(tmp_path, data={"sources": [], "dir": str(tmp_path / "nodata")}))
    with pytest.raises(FileNotFoundError, match="has no prepared data"):
        Trainer(recipe)
    assert not (tmp_path / "run").exists()


def test_cli_reports_recipe_errors_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "omnigpt", "train", str(write_recipe(tmp_path)), "--max_stpes=3"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2
    assert "unknown key 'max_stpes'; valid keys:" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------------------------
# Pieces of the step


def test_lr_schedule_warmup_then_cosine(tmp_path):
    r = load_recipe(None, tiny_recipe(tmp_path, lr=1.0, min_lr_ratio=0.1, warmup=10, max_steps=110))
    (stage,) = r.stages  # an LM run is one stage
    lrs = [stage.lr_multiplier(s) for s in range(120)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11)
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.55)
    assert lrs[110] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_weight_decay_only_on_matrices():
    from omnigpt import GPT, GPTConfig

    model = GPT(GPTConfig.from_name("tiny-gpt2"))
    (stage,) = load_recipe(None, {"model": {"preset": "tiny-gpt2"}, "max_steps": 1}).stages
    decay, no_decay = [g for g in build_optimizer(LMLoss(model), stage, (0.9, 0.99), 1e-8).param_groups
                       if g["module"] == "transformer"]
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert any(p is model.lm_head.weight for p in decay["params"])  # tied with wte, counted once


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_loss_matches_full_logits(autocast):
    h = torch.randn(3, 40, 32, requires_grad=True)
    w = torch.randn(300, 32, requires_grad=True)
    y = torch.randint(0, 300, (3, 40))
    y[0, :7] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        fused = fused_linear_cross_entropy(h, w, y, chunk=16)
        gf = torch.autograd.grad(fused * 2, [h, w])
        ref = reference_cross_entropy(h, w, y)
        gr = torch.autograd.grad(ref * 2, [h, w])
    tol = dict(rtol=2e-2, atol=2e-3) if autocast else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused, ref, **tol)
    for a, b in zip(gf, gr, strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_fused_loss_reuses_its_logits_buffer_but_never_shares_it():
    from omnigpt.kernels.losses import _WORKSPACE

    torch.manual_seed(0)
    w = torch.randn(300, 32, requires_grad=True)
    hs = [torch.randn(40, 32, requires_grad=True) for _ in range(2)]
    ys = [torch.randint(0, 300, (40,)) for _ in range(2)]
    want = [torch.autograd.grad(reference_cross_entropy(h, w, y), [h, w]) for h, y in zip(hs, ys, strict=True)]
    losses = [fused_linear_cross_entropy(h, w, y) for h, y in zip(hs, ys, strict=True)]  # two live graphs
    got = [torch.autograd.grad(loss, [h, w]) for loss, h in zip(losses, hs, strict=True)]
    for g, r in zip(got, want, strict=True):  # each graph kept its own gradient buffer
        for a, b in zip(g, r, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    _WORKSPACE.free.clear()
    del losses, got
    (key, bufs), = _WORKSPACE.free.items()  # both graphs freed: their logits buffers wait for the next step…
    bufs = list(bufs)
    assert len(bufs) == 2 and bufs[0].data_ptr() != bufs[1].data_ptr()
    loss = fused_linear_cross_entropy(hs[0], w, ys[0])
    assert len(_WORKSPACE.free[key]) == 1  # …one is lent to this graph…
    lent = {b.data_ptr() for b in bufs} - {b.data_ptr() for b in _WORKSPACE.free[key]}
    assert len(lent) == 1
    loss.backward()
    del loss
    assert lent <= {b.data_ptr() for b in _WORKSPACE.free[key]}  # …and back, not reallocated



def test_fused_loss_workspace_stays_bounded_over_variable_lengths():
    """Variable-length batches (a new (N, V) logits shape every step) reuse the pooled buffers instead of keeping
    one per shape: the pool holds at most ``keep`` buffers, none larger than the largest step, and gradients stay
    exact when a smaller step borrows a larger buffer's prefix."""
    from omnigpt.kernels.losses import _WORKSPACE

    torch.manual_seed(0)
    _WORKSPACE.free.clear()
    w = torch.randn(300, 32, requires_grad=True)
    for n in (40, 70, 55, 65, 30, 70, 45):
        h, y = torch.randn(n, 32, requires_grad=True), torch.randint(0, 300, (n,))
        y[:3] = -100
        got = torch.autograd.grad(fused_linear_cross_entropy(h, w, y), [h, w])
        want = torch.autograd.grad(reference_cross_entropy(h, w, y), [h, w])
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    bufs = [b for pool in _WORKSPACE.free.values() for b in pool]
    assert 1 <= len(bufs) <= _WORKSPACE.keep
    assert max(b.numel() for b in bufs) == 70 * 300  # the largest step's logits; nothing per shape


# ------------------------------------------------------------------------------------------------------------
# In-process runs


def test_training_learns_and_writes_metrics_plot_and_hf_checkpoint(tmp_path):
    recipe = load_recipe(None, tiny_recipe(tmp_path, max_steps=40, keep_checkpoints=2))
    trainer = Trainer(recipe)
    result = trainer.fit()
    run = tmp_path / "run"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 40 and losses[-1] < losses[0] - 0.8  # from ~ln(vocab) down
    assert all(r["tok_per_s"] > 0 and r["lr"] > 0 for r in rows if "loss" in r)
    assert [r["step"] for r in rows if "val_loss" in r] == [10, 20, 30, 40]
    assert result.eval is not None and result.eval["val_tokens"] > 512  # final full pass, more than the slice
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # keep_checkpoints=2: only the last two remain, each committed, in HF layout + trainer_state
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step_000030", "step_000040"]
    last = latest_checkpoint(run / "checkpoints")
    names = {p.name for p in last.iterdir()}
    assert {"config.json", "model.safetensors", "trainer_state", "COMPLETE", "manifest.sha256.json"} <= names
    assert {p.name for p in (last / "trainer_state").iterdir()} == {"state.json", "optimizer.pt", "rng.pt"}
    reloaded = load_model(last)
    for (k, a), b in zip(trainer.model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_nonfinite_losses_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
    real = LMLoss.forward
    calls = {"n": 0}

    def flaky(self, input_ids, targets):  # micro-batches 4..7 = optimizer steps 3 and 4 give NaN
        calls["n"] += 1
        loss = real(self, input_ids, targets)
        return loss * float("nan") if 5 <= calls["n"] <= 8 else loss

    monkeypatch.setattr(LMLoss, "forward", flaky)
    recipe = load_recipe(None, tiny_recipe(tmp_path, max_steps=6, final_eval=False, eval_interval=100,
                                           checkpoint_interval=100))
    trainer = Trainer(recipe)
    snapshots = []
    orig_step = trainer._train_step

    def spy():
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        out = orig_step()
        snapshots.append(all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items()))
        return out

    trainer._train_step = spy
    result = trainer.fit()
    assert result.nonfinite_steps == 2 and result.step == 6
    assert snapshots == [False, False, True, True, False, False]  # skipped steps leave the weights alone

    monkeypatch.setattr(LMLoss, "forward", lambda self, input_ids, targets: real(self, input_ids, targets) * math.inf)
    recipe = load_recipe(None, tiny_recipe(tmp_path / "b", max_steps=20, max_nonfinite=3))
    with pytest.raises(NonFiniteLossError, match="non-finite for 3 steps in a row .*lower lr"):
        train(recipe)


def test_time_budget_checkpoints_and_ends_early(tmp_path):
    result = train(load_recipe(None, tiny_recipe(tmp_path, max_steps=1000, max_minutes=0.0)))
    assert result.time_limited and not result.interrupted and result.step == 1
    assert (tmp_path / "run" / "checkpoints" / "step_000001" / "COMPLETE").exists()
    assert result.eval is not None  # the final full pass still runs


def test_resuming_a_finished_run_trains_nothing_more(tmp_path):
    recipe = load_recipe(None, tiny_recipe(tmp_path, max_steps=6, final_eval=False, checkpoint_interval=3))
    first = train(recipe)
    again = train(recipe, resume=True)
    assert first.step == again.step == 6 and again.history == []
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step_000006"


def test_half_written_or_corrupted_checkpoints_are_never_resumed_from(tmp_path):
    recipe = load_recipe(None, tiny_recipe(tmp_path, max_steps=20, final_eval=False, keep_checkpoints=5))
    train(recipe)
    with pytest.raises(ValueError, match="already has checkpoints .*pass --resume"):
        Trainer(recipe)  # a fresh run never writes over (or mixes with) an existing one
    root = tmp_path / "run" / "checkpoints"
    shutil.copytree(root / "step_000020", root / ".step_000030.tmp-deadbeef")  # a writer killed mid-commit
    shutil.copytree(root / "step_000020", root / "step_000040")
    (root / "step_000040" / "COMPLETE").unlink()  # no marker: not committed
    assert latest_checkpoint(root) == root / "step_000020"
    weights = root / "step_000020" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-5] ^= 0x01  # a flipped bit that safetensors itself would not notice
    weights.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="SHA-256"):
        assert latest_checkpoint(root) == root / "step_000010"


# ------------------------------------------------------------------------------------------------------------
# Exact resume across processes


def _final_weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step_{step:06d}" / "model.safetensors")


def test_sigkill_and_sigterm_then_resume_are_bit_identical(tmp_path):
    steps = 60
    common = dict(max_steps=steps, checkpoint_interval=10, eval_interval=20, final_eval=False, keep_checkpoints=3,
                  model={"dropout": 0.1})  # dropout: the RNG state must be restored too
    prepare_data(load_recipe(None, tiny_recipe(tmp_path)).data, progress=False)  # shared by both runs
    ref = write_recipe(tmp_path, "ref.yaml", **common, out_dir=str(tmp_path / "ref"))
    run = write_recipe(tmp_path, "run.yaml", **common, out_dir=str(tmp_path / "run"))
    ckpts = tmp_path / "run" / "checkpoints"
    popen = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=train_env(), cwd=ROOT, text=True)
    # The uninterrupted reference runs alongside the interrupted one (1 thread each).
    reference = subprocess.Popen(train_cmd(ref), **popen)

    # 1. SIGKILL as soon as the first checkpoint is committed: the process dies somewhere in steps 10..60.
    p = subprocess.Popen(train_cmd(run), **popen)
    wait_for(ckpts / "step_000010" / "COMPLETE", p)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    killed_at = latest_checkpoint(ckpts)
    assert killed_at is not None and int(killed_at.name[5:]) < steps

    # 2. Resume, and SIGTERM once it has committed a further checkpoint: it saves the step it stopped at, exits 143.
    p = subprocess.Popen(train_cmd(run, "--resume"), **popen)
    wait_for(ckpts / f"step_{int(killed_at.name[5:]) + 10:06d}" / "COMPLETE", p)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=180)
    assert p.returncode == 143, err[-2000:]
    assert "stopped by signal 15 at step" in out
    stopped = json.loads(out[out.index("{"):])["step"]
    assert (ckpts / f"step_{stopped:06d}" / "COMPLETE").exists()

    # 3. Resume to the end: bit-identical to the run that was never interrupted.
    subprocess.run(train_cmd(run, "--resume"), check=True, capture_output=True, env=train_env(), cwd=ROOT, timeout=300)
    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-2000:]
    expected, got = _final_weights(tmp_path / "ref", steps), _final_weights(tmp_path / "run", steps)
    assert got.keys() == expected.keys()
    for k in expected:
        assert torch.equal(got[k], expected[k]), f"{k} differs (killed after {killed_at.name}, stopped at {stopped})"
    # Steps replayed after the kill were not logged twice.
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, steps + 1))


# ------------------------------------------------------------------------------------------------------------
# torchrun: 2 CPU processes (gloo) == 1 process with the same global batch


@pytest.mark.parametrize("parallelism", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_two_processes_match_one_process(tmp_path, parallelism):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("needs torchrun (installed with torch) next to the Python interpreter")
    common = dict(max_steps=12, eval_interval=6, eval_limit=None, checkpoint_interval=100, final_eval=True,
                  batch_size=8, micro_batch=4, parallelism=parallelism)
    prepare_data(load_recipe(None, tiny_recipe(tmp_path)).data, progress=False)
    one = write_recipe(tmp_path, "one.yaml", **common, out_dir=str(tmp_path / "one"))
    two = write_recipe(tmp_path, "two.yaml", **common, out_dir=str(tmp_path / "two"))
    popen = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=train_env(), cwd=ROOT, text=True)
    single = workers.popen(train_cmd(one), **popen)  # both at once: 3 one-thread processes
    ddp = workers.popen([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "omnigpt", "train", str(two)],
                        **popen)
    try:
        for proc in (single, ddp):
            try:
                _, err = proc.communicate(timeout=300)
            except subprocess.TimeoutExpired:  # a hang (once: gloo's exit): say which run, with its output
                workers.kill_group(proc)
                _, err = proc.communicate()
                pytest.fail(f"{proc.args[:4]} did not end in 300 s; stderr:\n{err[-3000:]}")
            assert proc.returncode == 0, err[-3000:]
    finally:  # nothing outlives the test, the ranks torchrun started included
        workers.kill_group(single)
        workers.kill_group(ddp)

    def curve(run: str) -> tuple[list[float], list[float]]:
        rows = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return ([x["loss"] for x in rows if "loss" in x],
                [x.get("val_loss", x.get("final_val_loss")) for x in rows if "val_loss" in x or "final_val_loss" in x])

    (train1, val1), (train2, val2) = curve("one"), curve("two")
    assert len(train1) == len(train2) == 12 and len(val1) == len(val2) == 3
    # Same samples, same global batch: only the order of floating-point sums differs (accumulation vs all-reduce).
    torch.testing.assert_close(torch.tensor(train2), torch.tensor(train1), rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(torch.tensor(val2), torch.tensor(val1), rtol=2e-3, atol=2e-3)
    a, b = _final_weights(tmp_path / "one", 12), _final_weights(tmp_path / "two", 12)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-2, atol=2e-3)
    assert not list((tmp_path / "two").glob("checkpoints/.*tmp*"))  # only rank 0 wrote, and it committed


@pytest.mark.parametrize("config", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load(config):
    """Every recipe in configs/ and configs/tasks/ passes the schema and its task's checks (the demo's default among
    them)."""
    from omnigpt.cli.demo import DEFAULT_CONFIG

    assert DEFAULT_CONFIG.is_file()
    assert load_recipe(config).max_steps > 0
