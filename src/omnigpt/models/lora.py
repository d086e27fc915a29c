"""LoRA: low-rank adapters on chosen linear layers of a frozen model (Hu et al. 2021), and merging them back.

A target linear W (out, in) is replaced by ``LoRALinear``: y = x Wᵀ + b + (α/r) · dropout(x) Aᵀ Bᵀ, with A (r, in)
drawn like ``peft`` (Kaiming-uniform, a=√5) and B (out, r) zero, so the adapted model starts exactly equal to the
pretrained one. Only A and B train; ``merge_lora`` folds W ← W + (α/r)·B A into plain linears, giving a model of the
original architecture that computes the same function (up to float rounding).

Targets are named like ``peft``'s ``target_modules``: a module name, a dotted suffix of one (``attn.c_attn``,
``mlp.c_proj``) or an ``fnmatch`` pattern (``transformer.h.1*.mlp.c_fc``), or Hugging Face's Llama projection names.
omnigpt fuses Llama's projections (``models/gpt.py``: ``c_attn`` = q, k, v rows stacked; ``c_fc`` = gate, up), so
those names address row blocks of a fused matrix, each with its own rank-r pair (A_s, B_s), which is exactly
``peft`` on HF's separate ``q_proj``/``k_proj``/``v_proj`` (a single adapter on the whole ``attn.c_attn`` shares
one A between q, k and v instead, as ``peft`` does on GPT-2's ``c_attn``):

    q_proj, k_proj, v_proj → rows of attn.c_attn     o_proj → attn.c_proj
    gate_proj, up_proj     → rows of mlp.c_fc        down_proj → mlp.c_proj

Deliberate deviation from ``peft``: a ``LoRALinear``'s ``state_dict()`` is its merged plain form — key ``weight`` =
W + (α/r)·B A, no adapter keys — so a LoRA model saves as (and ``load_state_dict`` takes) an ordinary checkpoint of
its architecture. Loading a plain weight sets W and zeroes B (the model then computes exactly the loaded function).
The raw training state (W, A, B) is reached through ``lora_state_dict``; ``LoRAWeights`` exposes A and B, which
the trainer keeps beside the model for exact resumes (W is the pretrained weight, rebuilt by the run).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnigpt.kernels.matmul import Linear

# Hugging Face Llama projection → (omnigpt module suffix, row block: 0/1/2 of c_attn's q/k/v, 0/1 of c_fc's gate/up)
HF_TARGETS: dict[str, tuple[str, int | None]] = {
    "q_proj": ("attn.c_attn", 0), "k_proj": ("attn.c_attn", 1), "v_proj": ("attn.c_attn", 2),
    "o_proj": ("attn.c_proj", None),
    "gate_proj": ("mlp.c_fc", 0), "up_proj": ("mlp.c_fc", 1), "down_proj": ("mlp.c_proj", None),
}


@dataclass(frozen=True)
class LoRAConfig:
    """Rank r, scale α (the update is multiplied by α/r), dropout on the adapter's input, and the targets."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")  # the LoRA paper's W_q and W_v

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ValueError(f"lora.rank must be positive, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ValueError("lora.targets: name at least one module (attn.c_attn, q_proj, mlp.c_fc, ...)")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class LoRALinear(Linear):
    """A linear layer W (frozen by the caller) plus rank-r adapters on row blocks of its output.

    ``blocks`` are (start, stop) output-row ranges, each with its own A_s (r, in) and B_s (stop - start, r); stored
    stacked as ``lora_A`` (S·r, in) and ``lora_B`` (Σ rows, r). One block covering every row is plain LoRA."""

    def __init__(self, base: nn.Linear, blocks: list[tuple[int, int]], rank: int, alpha: float,
                 dropout: float = 0.0) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # the pretrained matrix itself (shared, not copied)
        self.register_parameter("bias", base.bias)
        self.blocks = sorted(blocks)
        for (a, b), (c, _) in zip(self.blocks, self.blocks[1:], strict=False):
            if b > c:
                raise ValueError(f"LoRA row blocks {(a, b)} and {(c, _)} overlap")
        if not self.blocks or self.blocks[0][0] < 0 or self.blocks[-1][1] > self.out_features:
            raise ValueError(f"LoRA row blocks {self.blocks} do not fit {self.out_features} output rows")
        self.rank, self.scaling = rank, alpha / rank
        dev = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(len(self.blocks) * rank, self.in_features, device=dev))
        self.lora_B = nn.Parameter(torch.zeros(sum(b - a for a, b in self.blocks), rank, device=dev))
        for s in range(len(self.blocks)):  # peft: A ~ kaiming_uniform(a=√5) per adapter, B = 0
            nn.init.kaiming_uniform_(self.lora_A.data[s * rank : (s + 1) * rank], a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        rows = torch.cat([torch.arange(a, b, device=dev) for a, b in self.blocks])  # adapted rows, in block order
        self.register_buffer("rows", rows, persistent=False)
        self.register_state_dict_post_hook(_export_merged)
        self.register_load_state_dict_pre_hook(_import_plain)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling:g}, blocks={self.blocks}"

    def delta_weight(self) -> Tensor:
        """(α/r)·B A laid out like W (out, in), zero outside the adapted blocks; fp32."""
        delta = torch.zeros(self.out_features, self.in_features, device=self.weight.device)
        A, B, r, off = self.lora_A.detach().float(), self.lora_B.detach().float(), self.rank, 0
        for s, (a, b) in enumerate(self.blocks):
            delta[a:b] = B[off : off + b - a] @ A[s * r : (s + 1) * r]
            off += b - a
        return delta * self.scaling

    def merged_weight(self) -> Tensor:
        return (self.weight.detach().float() + self.delta_weight()).to(self.weight.dtype)

    def full_B(self) -> Tensor:
        """B laid out as (out, S·r): block s's rows hold B_s in columns s·r…(s+1)·r, zeros elsewhere — so the update
        of every block is one matmul. Differentiable in ``lora_B`` (only the blocks receive gradient)."""
        if self.blocks == [(0, self.out_features)]:
            return self.lora_B
        pieces, off = [], 0
        for a, b in self.blocks:
            pieces.append(self.lora_B[off : off + b - a])
            off += b - a
        diag = torch.block_diag(*pieces)  # (Σ rows, S·r)
        return diag.new_zeros(self.out_features, diag.shape[1]).index_copy(0, self.rows, diag)

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)  # the frozen W (and bias): (..., out)
        z = F.linear(self.lora_dropout(x), self.lora_A) * self.scaling  # (..., S·r): scale the narrow tensor
        return y + F.linear(z, self.full_B())  # (..., out)


def _export_merged(module: LoRALinear, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """state_dict post-hook: the merged plain layer (``weight`` = W + ΔW, no adapter keys)."""
    state.pop(prefix + "lora_A", None)
    state.pop(prefix + "lora_B", None)
    if prefix + "weight" in state:
        state[prefix + "weight"] = module.merged_weight()


def _import_plain(module: LoRALinear, state: dict[str, Any], prefix: str, local_metadata: Any, strict: bool,
                  missing: list[str], unexpected: list[str], errors: list[str]) -> None:
    """load_state_dict pre-hook: a plain ``weight`` becomes W with zero adapters (the loaded function, exactly)."""
    if prefix + "weight" in state and prefix + "lora_B" not in state:
        state[prefix + "lora_A"] = module.lora_A.detach().clone()
        state[prefix + "lora_B"] = torch.zeros_like(module.lora_B)


# ------------------------------------------------------------------------------------------------------------
# Applying, inspecting and merging


def _rows(model: nn.Module, name: str, block: int | None, target: str) -> tuple[int, int]:
    """Output rows of linear ``name`` that HF projection ``block`` of its fused matrix occupies (all when None)."""
    out = model.get_submodule(name).out_features
    if block is None:
        return 0, out
    if name.endswith("attn.c_attn"):  # q rows (n_head·hs), then k and v rows (n_kv_head·hs each)
        attn = model.get_submodule(name.removesuffix(".c_attn"))
        C, kv = attn.n_head * attn.head_size, attn.kv_size
        return [(0, C), (C, C + kv), (C + kv, C + 2 * kv)][block]
    if not getattr(model.get_submodule(name.removesuffix(".c_fc")), "gated", False):
        raise ValueError(f"lora target {target!r}: {name} is not a gated (SwiGLU) MLP, it has no gate/up halves")
    return (0, out // 2) if block == 0 else (out // 2, out)


def find_targets(model: nn.Module, targets: tuple[str, ...] | list[str]) -> dict[str, list[tuple[int, int]]]:
    """Module name → output-row blocks to adapt, for every linear layer the targets name. A target that matches no
    linear layer raises, listing the model's linear layer names (and the HF names it understands)."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear)]
    owners: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        owners[id(p)] = owners.get(id(p), 0) + 1
    found: dict[str, list[tuple[int, int]]] = {}
    for target in targets:
        suffix, block = HF_TARGETS.get(target, (target, None))
        hits = [n for n in linears if n == suffix or n.endswith("." + suffix) or fnmatch.fnmatchcase(n, suffix)]
        if not hits:
            names = sorted({".".join(n.split(".")[-2:]) for n in linears})
            raise ValueError(f"lora target {target!r} matches no linear layer; this model's layers end in "
                             f"{', '.join(names)} (or use {', '.join(HF_TARGETS)})")
        for n in hits:
            if owners[id(model.get_submodule(n).weight)] > 1:  # merging would untie it (a tied LM head)
                raise ValueError(f"lora target {target!r}: {n}'s weight is tied to another module; adapt it untied")
            rows = _rows(model, n, block, target)
            if rows not in found.setdefault(n, []):
                found[n].append(rows)
    return found


def apply_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Freeze every parameter of ``model`` and replace the targeted linears by ``LoRALinear`` (in place); returns
    the adapted module names. The model's outputs are unchanged (B = 0)."""
    for p in model.parameters():
        p.requires_grad_(False)
    found = find_targets(model, config.targets)
    for name, blocks in found.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), blocks, config.rank, config.alpha, config.dropout))
    return sorted(found)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapters (A and B of every LoRA layer): what trains."""
    return [p for m in lora_layers(model).values() for p in (m.lora_A, m.lora_B)]


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The raw state of the LoRA layers: ``NAME.weight`` (the frozen W), ``NAME.lora_A``, ``NAME.lora_B``."""
    out = {}
    for n, m in lora_layers(model).items():
        out |= {f"{n}.weight": m.weight.detach(), f"{n}.lora_A": m.lora_A.detach(), f"{n}.lora_B": m.lora_B.detach()}
    return out


class LoRAWeights(nn.Module):
    """The adapters of a model's LoRA layers (the same Parameters, not copies) under their own keys, so a trainer
    that checkpoints a model's (merged) state dict keeps A and B beside it; the frozen W comes back from the
    pretrained model the run starts from."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleDict()
        for n, m in lora_layers(model).items():
            holder = nn.Module()
            holder.lora_A, holder.lora_B = m.lora_A, m.lora_B
            self.layers[n.replace(".", "/")] = holder


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA layer into a plain ``Linear`` with W + (α/r)·B A (in place; returns ``model``)."""
    for name, m in lora_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        plain = Linear(m.in_features, m.out_features, bias=m.bias is not None, device=m.weight.device,
                       dtype=m.weight.dtype)
        plain.weight.copy_(m.merged_weight())
        if m.bias is not None:
            plain.bias = m.bias
        setattr(parent, child, plain)
    return model


__all__ = ["HF_TARGETS", "LoRAConfig", "LoRALinear", "LoRAWeights", "apply_lora", "find_targets", "lora_layers",
           "lora_parameters", "lora_state_dict", "merge_lora"]
