"""``omnigpt study``: FLOP counts against hand-computed values, the power-law fit, the attention weights the heat
maps show (they are the ones the model used), and a report built from a tiny run whose tables equal its JSONL."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from omnigpt import GPT, GPTConfig
from omnigpt.data.shards import TokenData
from omnigpt.models.gpt import build_attention_mask
from omnigpt.study import StudyPlan, run_study
from omnigpt.study.attention import attention_weights, head_summaries
from omnigpt.study.flops import fit_power_law, matmul_params, mean_keys, training_flops
from omnigpt.study.plan import FAMILIES, Size
from omnigpt.study.runs import ATTENTION_TEXT
from omnigpt.train.recipe import model_config

# ------------------------------------------------------------------------------------------------------------
# FLOPs


def test_flops_match_hand_computed_formula():
    # GPT-2 shape, dense: per layer QKV 64·192 + proj 64·64 + MLP 64·256 + 256·64 = 49,152; 2 layers + head 100·64.
    gpt2 = GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=4, n_embd=64)
    assert matmul_params(gpt2) == 2 * 49_152 + 6_400 == 104_704
    # attention: 12 · d 64 · Σ_l (T + 1)/2 = 12 · 64 · 2 · 16.5 = 25,344 per token
    assert training_flops(gpt2, tokens=1000) == pytest.approx(6 * 104_704 * 1000 + 25_344 * 1000, rel=1e-12)

    # Llama shape with GQA (2 KV heads of 8) and a banded second layer (window 4, T = 16):
    # QKV 32·(32 + 2·2·8) = 2,048, proj 1,024, SwiGLU 32·176 + 88·32 = 8,448 → 11,520 per layer; head 50·32 = 1,600.
    llama = GPTConfig.from_name("llama-tiny", vocab_size=50, block_size=16, n_layer=2, n_head=4, n_kv_head=2,
                                n_embd=32, n_inner=88, local_window=4)
    assert matmul_params(llama) == 2 * 11_520 + 1_600 == 24_640
    # dense layer: (16 + 1)/2 = 8.5 keys; banded: (1 + 2 + 3 + 4 + 12·4)/16 = 3.625 keys → 12 · 32 · 12.125 = 4,656
    assert training_flops(llama, tokens=512) == pytest.approx(6 * 24_640 * 512 + 4_656 * 512, rel=1e-12)


@pytest.mark.parametrize("preset", ["tiny-gpt2", "llama-tiny", "tiny-gpt3"])
def test_flop_inputs_agree_with_the_model(preset):
    """N counts exactly the model's matmul weights (lm_head once even when tied); k̄ equals the model's own mask."""
    cfg = GPTConfig.from_name(preset, n_layer=3, local_window=5 if preset == "tiny-gpt3" else 0)
    model = GPT(cfg)
    linear = sum(m.weight.numel() for m in model.transformer.h.modules() if isinstance(m, torch.nn.Linear))
    assert matmul_params(cfg) == linear + model.lm_head.weight.numel()
    T = 24
    for i in range(cfg.n_layer):
        mask = build_attention_mask(torch.arange(T), torch.arange(T), cfg.layer_window(i), None)
        assert mean_keys(T, cfg.layer_window(i)) == pytest.approx(mask.sum().item() / T)


def test_power_law_fit_recovers_a_known_exponent():
    c = np.geomspace(1e12, 1e15, 9)
    exact = fit_power_law(c, 3.0 * c ** -0.05)
    assert exact.alpha == pytest.approx(0.05, abs=1e-9) and exact.a == pytest.approx(3.0, rel=1e-6)
    assert exact.alpha_se < 1e-9 and exact.r2 == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = fit_power_law(np.repeat(c, 2), 3.0 * np.repeat(c, 2) ** -0.08 * np.exp(rng.normal(0, 0.01, 18)))
    assert abs(noisy.alpha - 0.08) < 3 * noisy.alpha_se and 0 < noisy.alpha_se < 0.01
    with pytest.raises(ValueError, match="needs >= 3 points"):
        fit_power_law([1e12, 1e13], [3.0, 2.0])


# ------------------------------------------------------------------------------------------------------------
# Attention weights


@pytest.mark.parametrize("preset,over", [
    ("tiny-gpt2", {}), ("tiny-gpt1", {}), ("tiny-gpt3", {"local_window": 4}),
    ("llama-tiny", {"n_head": 4, "n_kv_head": 2, "local_window": 3}),
])
def test_attention_weights_are_the_ones_the_model_used(preset, over):
    torch.manual_seed(0)
    cfg = GPTConfig.from_name(preset, **over)
    model = GPT(cfg).eval()
    with torch.no_grad():  # larger weights than the init, so the attention is far from uniform
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(10)
    ids = torch.randint(0, cfg.vocab_size, (1, 12))
    seen: dict[int, dict[str, torch.Tensor]] = {}
    hooks = []
    for i, block in enumerate(model.transformer.h):
        seen[i] = {}
        hooks.append(block.attn.c_attn.register_forward_hook(lambda m, a, o, i=i: seen[i].__setitem__("qkv", o)))
        hooks.append(block.attn.c_proj.register_forward_pre_hook(lambda m, a, i=i: seen[i].__setitem__("y", a[0])))
    with torch.no_grad():
        logits = model(ids).logits  # the default (fused SDPA) path
    for h in hooks:
        h.remove()
    att = attention_weights(model, ids[0])
    with torch.no_grad():
        eager = GPT(cfg.replace(attn_implementation="eager")).eval()  # the reference path, the same weights
        eager.load_state_dict(model.state_dict())
        assert torch.allclose(eager(ids).logits, logits, atol=1e-5)
    T, nh, hs, nkv = 12, cfg.n_head, cfg.head_size, cfg.kv_heads
    for i, a in enumerate(att):
        assert a.shape == (nh, T, T)
        assert torch.allclose(a.sum(-1), torch.ones(nh, T), atol=1e-6)  # a distribution per query
        assert (a.triu(1) == 0).all()  # nothing from the future
        w = cfg.layer_window(i)
        if w is not None:
            assert (a.tril(-w) == 0).all()  # nothing from outside the band
            assert (a.tril(-w + 1) > 0).any()  # ...but the band's edge is used
        # weights × V reproduce what the fused path fed into c_proj
        v = seen[i]["qkv"][0, :, nh * hs + nkv * hs:].view(T, nkv, hs).transpose(0, 1)  # (nkv, T, hs)
        v = v.repeat_interleave(nh // nkv, dim=0)  # (nh, T, hs)
        y = (a @ v).transpose(0, 1).reshape(T, nh * hs)
        assert torch.allclose(y, seen[i]["y"][0], atol=1e-5)


def test_head_summaries_of_a_known_pattern():
    T = 6
    prev = torch.zeros(1, T, T)
    prev[0, 0, 0] = 1.0
    prev[0, torch.arange(1, T), torch.arange(T - 1)] = 1.0  # every query looks one token back
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    s = head_summaries(torch.cat([prev, uniform[None]]))
    assert s["previous_token"].tolist() == pytest.approx([1.0, sum(1 / (i + 1) for i in range(1, T)) / (T - 1)])
    assert s["mean_distance"].tolist() == pytest.approx([(T - 1) / T, sum(i / 2 for i in range(T)) / T])
    assert s["entropy"].tolist() == pytest.approx([0.0, sum(math.log(i + 1) for i in range(T)) / T], abs=1e-6)


# ------------------------------------------------------------------------------------------------------------
# The report from a tiny run


WORDS = ["the", "king", "queen", "sword", "crown", "night", "day", "love", "death", "speak", "lord", "lady", "thou"]


def tiny_plan(tmp) -> StudyPlan:
    corpus = tmp / "corpus"
    corpus.mkdir(parents=True)
    rng = random.Random(0)
    for i in range(10):
        (corpus / f"d{i}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(120)) + ".\n" + ATTENTION_TEXT)
    return StudyPlan(mode="tiny", sizes=(Size("S", 1, 16, 2), Size("M", 1, 32, 2)), steps=3, batch_size=4,
                     block_size=16, window=4, window_sweep=(2,), warmup=1, sources=(str(corpus / "*.txt"),),
                     tokenizer="char", val_tokens=256, workers=0)


def test_report_builds_from_a_tiny_run(tmp_path):
    out = tmp_path / "study"
    report = run_study(out, plan=tiny_plan(tmp_path), command="pytest tiny")
    assert report == out / "report.md"
    for name in ("report.md", "results.jsonl", "loss_vs_compute.png", "loss_by_position.png", "meta.json"):
        assert (out / name).stat().st_size > 0, name
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    grid = [r for r in rows if r["kind"] == "grid"]
    assert len(grid) == 4 * 2 * 2 and {r["family"] for r in grid} == set(FAMILIES)
    assert [r for r in rows if r["kind"] == "window"][0]["window"] == 2
    for r in rows:
        assert {"family", "size", "seed", "params", "flops", "val_loss"} <= set(r)
        recipe = json.loads((out / "recipes" / f"{r['name']}.json").read_text())
        cfg = model_config(recipe["model"], vocab_size=TokenData(recipe["data"]["dir"]).vocab_size)
        assert r["flops"] == pytest.approx(training_flops(cfg, r["tokens"])) and r["params"] == cfg.num_params()
        assert r["tokens"] == 3 * 4 * 16 and len(r["loss_by_position"]) == 16
    # Same data, order and budget: two families' recipes differ only in the model, the lr and where they write.
    a, b = (json.loads((out / "recipes" / f"{n}.json").read_text()) for n in ("gpt1-S-s0", "llama-M-s0"))
    assert {k for k in a if a[k] != b[k]} == {"model", "out_dir"} | ({"lr"} if a["lr"] != b["lr"] else set())
    # Heat maps: one PNG per layer of each middle model (1 layer each here), head summaries per head.
    assert sorted(p.name for p in (out / "attention").glob("*.png")) == [f"{f}_layer0.png" for f in sorted(FAMILIES)]
    # The table's numbers are the JSONL's.
    md = report.read_text()
    for r in grid:
        line = next(x for x in md.splitlines() if x.startswith(f"| {r['family']} | {r['size']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == f"{r['params']:,}" and cells[3] == f"{r['flops']:.3e}"
        assert cells[5 + r["seed"]] == f"{r['val_loss']:.4f}"
        pair = [x["val_loss"] for x in grid if x["family"] == r["family"] and x["size"] == r["size"]]
        assert cells[7] == f"{np.mean(pair):.4f} ± {(max(pair) - min(pair)) / 2:.4f}"
    for fam in FAMILIES:
        pts = [r for r in grid if r["family"] == fam]
        fit = fit_power_law([r["flops"] for r in pts], [r["val_loss"] for r in pts])
        assert f"| {fam} | {fit.alpha:.4f} | {fit.alpha_se:.4f} |" in md
    assert "## Multimodal at equal budget" in md and "left out" in md
    with pytest.raises(ValueError, match="already holds a study"):
        run_study(out, plan=tiny_plan(tmp_path / "again"))


def test_bad_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'quick' or 'full'"):
        run_study(tmp_path, mode="medium")  # type: ignore[arg-type]
