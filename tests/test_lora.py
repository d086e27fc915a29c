"""LoRA (models/lora.py): the adapters on the one decoder.

References and invariants: ``peft`` 0.21 LoRA on ``transformers``' LlamaForCausalLM (separate q/k/v/gate/up/down
projections) gives the logits omnigpt's adapters give on its fused matrices; an adapted model at init is the base
model bit for bit; merging changes outputs by float rounding only; only adapters get gradients and AdamW state. The
``sft`` application that trains them (the assistant-only loss mask, fine-tuning through ``Trainer``, exact resume)
is tests/apps/sft/test_sft.py.
"""

from __future__ import annotations

import copy

import pytest
import torch

from omnigpt.apps import load_recipe
from omnigpt.apps.common.chat import SFTLoss
from omnigpt.config import GPTConfig
from omnigpt.models.gpt import GPT
from omnigpt.models.lora import LoRAConfig, LoRALinear, apply_lora, lora_parameters, lora_state_dict, merge_lora
from omnigpt.train.schedule import build_optimizer

ALL_HF = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tiny_llama(**over) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_name("llama-tiny", **over))


def randomize_adapters(model: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


# ------------------------------------------------------------------------------------------------------------
# The adapters


@pytest.mark.parametrize("preset,targets", [("llama-tiny", ALL_HF), ("llama-tiny", ("q_proj", "v_proj")),
                                            ("tiny-gpt2", ("attn.c_attn", "mlp.c_fc", "c_proj"))])
def test_lora_at_init_is_the_base_model_exactly(preset, targets):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name(preset)).train()
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    torch.manual_seed(5)
    want = model(x).logits
    adapted = apply_lora(model, LoRAConfig(rank=4, alpha=8, dropout=0.2, targets=targets))  # dropout on, B = 0
    assert adapted and all(isinstance(model.get_submodule(n), LoRALinear) for n in adapted)
    torch.manual_seed(5)
    assert torch.equal(model(x).logits, want)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    assert all(p.requires_grad for p in lora_parameters(model))


def test_merge_equals_unmerged_and_state_dict_is_the_merged_plain_model():
    model = tiny_llama().eval()
    base = copy.deepcopy(model)
    apply_lora(model, LoRAConfig(rank=4, alpha=8, targets=ALL_HF))
    randomize_adapters(model)
    x = torch.randint(0, 512, (3, 20))
    out = model(x).logits
    assert (out - base(x).logits).abs().max() > 0.1  # the adapters matter
    # state_dict(): a plain checkpoint of the architecture, with merged weights and no adapter keys
    sd = model.state_dict()
    assert sd.keys() == base.state_dict().keys()
    plain = GPT(model.config).eval()
    plain.load_state_dict(sd)
    torch.testing.assert_close(plain(x).logits, out, atol=1e-5, rtol=0)
    merged = merge_lora(copy.deepcopy(model))
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    torch.testing.assert_close(merged(x).logits, out, atol=1e-5, rtol=0)
    # loading a plain state dict into an adapted model: exactly that model (adapters zeroed)
    model.load_state_dict(base.state_dict())
    assert torch.equal(model(x).logits, base(x).logits)
    assert all(not p.any() for n, p in lora_state_dict(model).items() if n.endswith("lora_B"))


def test_hf_names_adapt_only_their_rows_of_the_fused_matrices():
    model = tiny_llama()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoRAConfig(rank=2, alpha=4, targets=("q_proj", "v_proj", "up_proj")))
    randomize_adapters(model)
    sd = model.state_dict()
    C, kv, H = 32, 16, 48  # llama-tiny: width 32, 2 KV heads of 8, SwiGLU 48
    for i in range(2):
        qkv = sd[f"transformer.h.{i}.attn.c_attn.weight"] != base[f"transformer.h.{i}.attn.c_attn.weight"]
        changed = qkv.any(1)
        assert changed[:C].all() and not changed[C : C + kv].any() and changed[C + kv :].all()  # q, v; not k
        fc = (sd[f"transformer.h.{i}.mlp.c_fc.weight"] != base[f"transformer.h.{i}.mlp.c_fc.weight"]).any(1)
        assert not fc[:H].any() and fc[H:].all()  # up, not gate
        assert torch.equal(sd[f"transformer.h.{i}.attn.c_proj.weight"], base[f"transformer.h.{i}.attn.c_proj.weight"])


def test_lora_equals_peft_on_transformers_llama():
    pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from test_llama import paired

    cfg = GPTConfig.from_name("llama-tiny")
    ref, ours = paired(cfg)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    ref = peft.get_peft_model(ref, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets))
    apply_lora(ours, LoRAConfig(rank=4, alpha=8, targets=tuple(targets)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i in range(cfg.n_layer):
            layer = ref.base_model.model.model.layers[i]
            where = {"attn.c_attn": [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj],
                     "attn.c_proj": [layer.self_attn.o_proj], "mlp.c_fc": [layer.mlp.gate_proj, layer.mlp.up_proj],
                     "mlp.c_proj": [layer.mlp.down_proj]}
            for name, projs in where.items():
                for p in projs:  # peft initialises B to zero too: give both sides the same random adapters
                    p.lora_A["default"].weight.copy_(torch.randn(p.lora_A["default"].weight.shape, generator=g))
                    p.lora_B["default"].weight.copy_(torch.randn(p.lora_B["default"].weight.shape, generator=g))
                mine = ours.get_submodule(f"transformer.h.{i}.{name}")
                mine.lora_A.copy_(torch.cat([p.lora_A["default"].weight for p in projs]))
                mine.lora_B.copy_(torch.cat([p.lora_B["default"].weight for p in projs]))
    x = torch.randint(0, cfg.vocab_size, (2, 24))
    want = ref(input_ids=x).logits.detach()
    with ref.disable_adapter():
        change = float((want - ref(input_ids=x).logits).abs().max())
    assert change > 1.0  # the adapters are active in the reference
    torch.testing.assert_close(ours(x).logits, want, atol=2e-4, rtol=1e-4)


def test_bad_lora_targets_and_configs_are_refused():
    with pytest.raises(ValueError, match=r"'qproj' matches no linear layer; this model's layers end in .*attn.c_attn"):
        apply_lora(tiny_llama(), LoRAConfig(targets=("qproj",)))
    with pytest.raises(ValueError, match="not a gated"):
        apply_lora(GPT(GPTConfig.from_name("tiny-gpt2")), LoRAConfig(targets=("gate_proj",)))
    with pytest.raises(ValueError, match="tied to another module"):
        apply_lora(tiny_llama(), LoRAConfig(targets=("lm_head",)))
    with pytest.raises(ValueError, match="rank must be positive"):
        LoRAConfig(rank=0)


def test_only_adapters_get_gradients_and_optimizer_state():
    model = tiny_llama()
    apply_lora(model, LoRAConfig(rank=4, alpha=8, targets=ALL_HF))
    from omnigpt.models.lora import LoRAWeights

    loss_module = SFTLoss(model, LoRAWeights(model))
    (stage,) = load_recipe(None, {"model": {"preset": "tiny-gpt2"}, "max_steps": 1, "lr": 0.1, "warmup": 0}).stages
    opt = build_optimizer(loss_module, stage, (0.9, 0.99), 1e-8)
    adapters = {id(p) for p in lora_parameters(model)}
    assert {g["module"] for g in opt.param_groups} == {"lora"}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == adapters
    x = torch.randint(0, 512, (2, 12))
    labels = x.clone()
    labels[:, :4] = -100
    for _ in range(2):  # after the first step B != 0, so A gets gradient too
        loss_module(x, labels).backward()
        opt.step()
        grads = {n: p.grad is not None for n, p in model.named_parameters()}
        opt.zero_grad(set_to_none=False)
    assert all(grads[n] == ("lora_" in n) for n in grads) and sum(grads.values()) == len(adapters)
    assert {id(p) for p in opt.state} == adapters
