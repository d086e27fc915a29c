"""Planned matmuls (omnigpt.kernels.matmul): every cut computes the same product, plans are measured once, saved, pinned
and reused by a resumed run, and planned layers / the planned fused loss match their autocast counterparts."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from test_train import tiny_recipe

from omnigpt.apps import load_recipe
from omnigpt.kernels import matmul
from omnigpt.kernels.losses import fused_linear_cross_entropy
from omnigpt.kernels.matmul import CUTS, Linear, MatmulPlanner, run_cut
from omnigpt.train.recipe import RecipeError
from omnigpt.train.trainer import Trainer

bf16 = torch.bfloat16


def _close(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    err = (got.float() - want.float()).abs().max().item()
    assert err <= rel * want.float().abs().max().item(), err


@pytest.mark.parametrize("layout", ["NN", "NT", "TN"])
def test_every_cut_computes_the_product(layout):
    torch.manual_seed(0)
    m, k, n = 256, 96, 320
    a = torch.randn(m, k, dtype=bf16) if layout[0] == "N" else torch.randn(k, m, dtype=bf16).t()
    b = torch.randn(k, n, dtype=bf16) if layout[1] == "N" else torch.randn(n, k, dtype=bf16).t()
    want = a.float() @ b.float()
    for cut in CUTS:
        out = torch.full((m, n), float("nan"), dtype=bf16)
        assert run_cut(cut, a, b, out) is out
        assert not out.isnan().any(), f"{cut} left part of the output unwritten"
        _close(out, want, 2e-2)  # bf16 output rounding; the blocks only change the summation order


def test_plans_are_measured_once_per_shape_and_layout():
    torch.manual_seed(0)
    planner = MatmulPlanner(min_flops=0, repeats=2)
    a, b = torch.randn(128, 64, dtype=bf16), torch.randn(64, 192, dtype=bf16)
    for _ in range(3):
        _close(planner.mm(a, b), a.float() @ b.float(), 2e-2)
    assert planner.tuned == 1 and list(planner.plans) == ["128x64x192/NN/bfloat16"]
    planner.mm(a, b.t().contiguous().t())  # same shape, column-major b: a separate plan
    assert planner.tuned == 2 and "128x64x192/NT/bfloat16" in planner.plans
    assert planner.plans["128x64x192/NN/bfloat16"] in CUTS
    small = MatmulPlanner()  # default threshold: these GEMMs are too small to be worth measuring
    small.mm(a, b)
    fp32 = MatmulPlanner(min_flops=0)
    fp32.mm(a.float(), b.float())  # fp32 GEMMs are never planned
    assert small.plans == fp32.plans == {}


def test_plan_files_round_trip_and_bad_ones_are_named(tmp_path):
    planner = MatmulPlanner(plans={"8x8x8/NN/bfloat16": ("N", 2), "1x2x3/TN/bfloat16": ("M", 4)})
    planner.save(tmp_path / "plan.json")
    assert not list(tmp_path.glob("*.tmp"))
    assert MatmulPlanner().load(tmp_path / "plan.json").plans == planner.plans
    (tmp_path / "bad.json").write_text(json.dumps({"8x8x8/NN/bfloat16": ["K", 3]}))
    with pytest.raises(ValueError, match="8x8x8/NN/bfloat16"):
        MatmulPlanner().load(tmp_path / "bad.json")
    (tmp_path / "torn.json").write_text('{"8x8x8/NN/bfl')
    with pytest.raises(ValueError, match="torn.json"):
        MatmulPlanner().load(tmp_path / "torn.json")
    with pytest.raises(ValueError, match="missing.json"):
        MatmulPlanner().load(tmp_path / "missing.json")


@pytest.mark.parametrize("bias", [True, False])
def test_planned_linear_matches_autocast_linear(bias):
    torch.manual_seed(0)
    lin = Linear(96, 320, bias=bias)
    x = torch.randn(2, 64, 96, requires_grad=True)
    grads = []
    for planner in (None, MatmulPlanner(min_flops=0, repeats=1)):
        with matmul.planned(planner), torch.autocast("cpu", dtype=bf16):
            y = lin(x)
        assert y.dtype == bf16 and y.shape == (2, 64, 320)
        y.float().square().mean().backward()
        grads.append([y.detach()] + [t.grad.clone() for t in (x, lin.weight, lin.bias) if t is not None])
        x.grad = None
        lin.zero_grad(set_to_none=True)
        assert planner is None or planner.tuned == 3  # forward, dL/dx and dL/dW each measured
    for want, got in zip(*grads, strict=True):
        assert got.dtype == want.dtype
        _close(got, want, 2e-2)
    with torch.no_grad(), matmul.planned(MatmulPlanner(min_flops=0)) as _:  # no gradients: plain F.linear
        assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))


def test_planned_fused_loss_matches_the_unplanned_one():
    torch.manual_seed(0)
    h = torch.randn(128, 64, requires_grad=True)
    w = (torch.randn(1000, 64) * 0.1).requires_grad_()
    t = torch.randint(0, 1000, (128,))
    results = []
    for planner in (None, MatmulPlanner(min_flops=0, repeats=1)):
        with matmul.planned(planner), torch.autocast("cpu", dtype=bf16):
            loss = fused_linear_cross_entropy(h, w, t)
        loss.backward()
        results.append((loss.detach(), h.grad.clone(), w.grad.clone()))
        h.grad = w.grad = None
        assert planner is None or planner.tuned == 3
    for want, got in zip(*results, strict=True):
        _close(got, want, 2e-2)


def test_a_resumed_bf16_run_reuses_its_plan_and_ends_bit_identical(tmp_path, monkeypatch):
    monkeypatch.setattr(matmul, "MIN_FLOPS", 0)  # plan even tiny-gpt2's GEMMs
    r = tiny_recipe(tmp_path, dtype="bfloat16", max_steps=6, checkpoint_interval=3, eval_interval=100,
                    final_eval=False)
    first = Trainer(load_recipe(None, r))
    first.fit()
    plan_file = tmp_path / "run" / "matmul_plan.rank0.json"
    saved = json.loads(plan_file.read_text())
    assert saved and first.planner.tuned == len(saved)

    # The same run, killed after its step-3 checkpoint and resumed: it reads the plan instead of re-measuring.
    shutil.copytree(tmp_path / "run", tmp_path / "again")
    shutil.rmtree(tmp_path / "again" / "checkpoints" / "step_000006")
    again = Trainer(load_recipe(None, {**r, "out_dir": str(tmp_path / "again")}), resume=True)
    again.fit()
    assert again.step == 6 and again.planner.tuned == 0
    for k, v in first.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v), k

    # A pinned plan file is used as is; a fresh run of a float32 recipe plans nothing.
    pinned = Trainer(load_recipe(None, {**r, "out_dir": str(tmp_path / "pinned"), "matmul_plan": str(plan_file)}))
    pinned.fit()
    assert pinned.planner.tuned == 0
    assert Trainer(load_recipe(None, {**r, "out_dir": str(tmp_path / "fp32"), "dtype": "float32"})).planner is None
    for off in ("off", False):  # a bare `matmul_plan: off` in YAML arrives as False
        assert Trainer(load_recipe(None, {**r, "out_dir": str(tmp_path / "off"), "matmul_plan": off})).planner is None
    with pytest.raises(RecipeError, match="matmul_plan"):
        Trainer(load_recipe(None, {**r, "out_dir": str(tmp_path / "x"), "matmul_plan": str(tmp_path / "nope.json")}))
