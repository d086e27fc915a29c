"""The checks a GPT forward's inputs get at the edge, so the model itself never has to make them.

``models/gpt.py`` trusts its input: a check of a token id or a mask's contents needs its value on the host, which
would cost every decode step a device sync and break the one-graph compiled step (``generate.fast``). So the
callers that take input from outside check it once, here: ``generate`` (its own arguments, plus these) and the HF
facade (``hf/gpt2.py``, before every forward). Each failure is a ``ValueError`` that names the limit, raised before
torch would fail somewhere deep inside with an index error.
"""

from __future__ import annotations

import torch
from torch import Tensor

from omnigpt.config import GPTConfig


def check_inputs(config: GPTConfig, input_ids: Tensor | None = None, inputs_embeds: Tensor | None = None,
                 attention_mask: Tensor | None = None, position_ids: Tensor | None = None, past: int = 0) -> bool:
    """Reject what a forward of a model with ``config`` cannot take, after ``past`` cached positions; return whether
    ``attention_mask`` marks any padding (when it does not, callers drop it: the model's unmasked path is faster).

    The value checks (id and position ranges, padding) travel to the host together, one transfer for all."""
    host = _host_values(input_ids, position_ids, attention_mask)  # ids min/max, positions min/max, mask min
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if input_ids is not None:
        if not isinstance(input_ids, Tensor):
            raise ValueError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        if T > 0:
            lo, hi = host["ids"]
            if lo < 0 or hi >= config.vocab_size:
                raise ValueError(f"token id {lo if lo < 0 else hi} is out of range for vocab_size {config.vocab_size}")
    else:
        assert inputs_embeds is not None
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.n_embd:
            raise ValueError(f"inputs_embeds must have shape (batch, seq_len, {config.n_embd}), "
                             f"got {tuple(inputs_embeds.shape)}")
        B, T = inputs_embeds.shape[:2]
    if T == 0:
        raise ValueError("input has sequence length 0")
    if past + T > config.block_size:
        raise ValueError(f"sequence length {past + T} ({past} cached + {T} new) exceeds the model's context "
                         f"block_size {config.block_size}")
    if attention_mask is not None and tuple(attention_mask.shape) != (B, past + T):
        raise ValueError(f"attention_mask must have shape (batch, cached + new) = {(B, past + T)}, "
                         f"got {tuple(attention_mask.shape)}")
    if position_ids is not None:
        if position_ids.shape[-1] != T:
            raise ValueError(f"position_ids must have {T} positions, got shape {tuple(position_ids.shape)}")
        lo, hi = host["positions"]
        if lo < 0 or hi >= config.block_size:
            raise ValueError(f"position_ids must be in [0, block_size {config.block_size})")
    return attention_mask is not None and host["mask"][0] == 0


def _host_values(input_ids: Tensor | None, position_ids: Tensor | None,
                 attention_mask: Tensor | None) -> dict[str, list[int]]:
    """Min/max of the ids and positions and the mask's min, fetched in one transfer (empty tensors skipped)."""
    parts = {name: t for name, t in (("ids", input_ids), ("positions", position_ids), ("mask", attention_mask))
             if isinstance(t, Tensor) and t.numel() and not t.dtype.is_complex}
    if not parts:
        return {}
    stats = [torch.stack(torch.aminmax(t.long() if t.dtype == torch.bool else t)).long()  # each (2,): min, max
             for t in parts.values()]
    values = torch.cat(stats).tolist()  # the one sync
    return {name: values[2 * i : 2 * i + 2] for i, name in enumerate(parts)}


__all__ = ["check_inputs"]
