"""Evaluation: a full pass over a split — loss, perplexity and bits per byte — not a random-batch estimate.

The split's token stream is cut into windows that overlap by one token, so every token but the first is
predicted exactly once, each with up to ``block_size`` tokens of context (``data.eval_windows``). Sums of
negative log-likelihood (nats) and of predicted tokens are accumulated in fp64 and, under torchrun, summed over
ranks, which each take every N-th window.

* loss = nats / tokens (mean cross-entropy per token), perplexity = exp(loss);
* bits per byte = loss / ln 2 × tokens / UTF-8 bytes of the split — comparable across tokenizers (a char model
  and a BPE model on the same text), which loss per token is not.

Works for any ``GPT``: omnigpt checkpoints and Hugging Face GPT-2 checkpoints imported by ``hf.load_pretrained``.
Reference: nanochat ``loss_eval.py`` (bits per byte), HF's perplexity guide (strided full pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from omnigpt.data.shards import TokenData, eval_windows
from omnigpt.kernels.losses import fused_linear_cross_entropy
from omnigpt.models.gpt import GPT


@dataclass
class EvalResult:
    loss: float  # mean nats per predicted token
    perplexity: float
    bits_per_byte: float | None  # None when the byte count is unknown
    tokens: int  # predicted tokens
    windows: int

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None and dtype != torch.float32)


@torch.no_grad()
def nll_sum(model: GPT, windows: Sequence[np.ndarray], batch_size: int = 8, dtype: torch.dtype | None = None,
            progress: bool = False, desc: str = "eval",
            loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> tuple[float, int]:
    """(sum of NLL in nats, number of predicted tokens) over ``windows`` of block_size + 1 tokens.

    ``loss_fn(x, y)`` (mean loss) replaces the direct call, e.g. the trainer's FSDP-wrapped module."""
    device = model.lm_head.weight.device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    # Equal-length windows batch together; the (at most one per shard) shorter tail goes alone.
    groups: list[list[np.ndarray]] = []
    for w in windows:
        if groups and len(groups[-1]) < batch_size and len(groups[-1][0]) == len(w):
            groups[-1].append(w)
        else:
            groups.append([w])
    no_tty = None if progress else True  # tqdm: None hides the bar when stderr is not a terminal
    for g in tqdm(groups, desc=desc, unit="batch", disable=no_tty, leave=False):
        xy = torch.from_numpy(np.stack(g).astype(np.int64)).to(device)
        x, y = xy[:, :-1], xy[:, 1:]  # (B, T) inputs, (B, T) targets
        with _autocast(device, dtype):
            if loss_fn is not None:
                mean = loss_fn(x, y)
            else:
                h = model.transformer(x).last_hidden_state
                mean = fused_linear_cross_entropy(h, model.lm_head.weight, y)
        total += float(mean) * y.numel()
        count += y.numel()
    model.train(was_training)
    return total, count


def _result(nats: float, tokens: int, windows: int, tokens_per_byte: float | None) -> EvalResult:
    loss = nats / max(tokens, 1)
    bpb = loss / math.log(2) * tokens_per_byte if tokens_per_byte else None
    return EvalResult(loss=loss, perplexity=math.exp(min(loss, 700.0)), bits_per_byte=bpb, tokens=tokens,
                      windows=windows)


def evaluate(model: GPT, data: TokenData, split: str = "val", batch_size: int = 8, block_size: int | None = None,
             max_tokens: int | None = None, dtype: torch.dtype | None = None, progress: bool = False,
             shard: bool = True, loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> EvalResult:
    """Loss / perplexity / bits per byte of ``model`` on a prepared split (full pass unless ``max_tokens``).

    Under an initialised process group with ``shard`` each rank evaluates every world-th window and the sums are
    all-reduced, so every rank returns the same result. FSDP needs every rank in every forward, so it passes
    ``shard=False`` and each rank evaluates everything."""
    if data.vocab_size > model.config.vocab_size:
        raise ValueError(f"data vocabulary ({data.vocab_size}) is larger than the model's ({model.config.vocab_size})"
                         f": the data was tokenized with a different tokenizer")
    block_size = block_size or model.config.block_size
    windows = eval_windows(data.shards(split), block_size, max_tokens)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() and shard else (0, 1)
    nats, tokens = nll_sum(model, windows[rank::world], batch_size, dtype, progress and rank == 0, f"eval {split}",
                           loss_fn)
    if world > 1:
        t = torch.tensor([nats, tokens], dtype=torch.float64)
        dist.all_reduce(t)
        nats, tokens = float(t[0]), int(t[1])
    tokens_per_byte = data.count(split, "tokens") / max(data.count(split, "bytes"), 1)
    return _result(nats, tokens, len(windows), tokens_per_byte)


def evaluate_texts(model: GPT, tokenizer, texts: Sequence[str], batch_size: int = 8, block_size: int | None = None,
                   dtype: torch.dtype | None = None, progress: bool = False) -> EvalResult:
    """The same full pass over raw texts (documents joined by ``<|endoftext|>``) with the model's own tokenizer —
    for checkpoints, such as imported Hugging Face ones, that have no prepared data of their own."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for t in texts:
        ids.extend(tokenizer.encode(t))
        if eos is not None:
            ids.append(eos)
    if len(ids) < 2:
        raise ValueError("need at least 2 tokens to evaluate")
    windows = eval_windows([np.asarray(ids, dtype=np.int64)], block_size or model.config.block_size)
    nats, tokens = nll_sum(model, windows, batch_size, dtype, progress)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return _result(nats, tokens, len(windows), len(ids) / max(n_bytes, 1))
