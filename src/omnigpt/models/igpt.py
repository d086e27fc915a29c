"""Image GPT (iGPT, Chen et al. 2020, "Generative Pretraining from Pixels"): the GPT decoder of ``models/gpt.py``
predicting an image's pixels one after another in raster order, class-conditional.

Differences from the paper: grey images (Fashion-MNIST) instead of RGB, so the palette is a handful of grey levels
(a 1-D k-means of the training pixels, ``fit_palette``) instead of 512 colour clusters; and a class token at the
start of every sequence (the paper's conditional samples fine-tune on class-prefixed sequences the same way), so
a sequence is ``[class] p_0 p_1 … p_{HW-1}``: vocabulary = palette codes 0..L-1, then one token per class.
The loss is the next-token cross-entropy over the pixel positions only (the class token is given, never
predicted); its mean in bits is iGPT's bits per dimension — per quantized pixel, so it is not comparable with
bits/dim over 256 levels.

Sampling (``sample``) prefills the class tokens into a KV cache and draws one pixel per step, with the class
tokens' logits masked out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from omnigpt.config import GPTConfig, PresetConfig
from omnigpt.models.gpt import GPT, GPTOutput
from omnigpt.models.kv_cache import make_kv_cache

IGPT_TYPE = "omnigpt-igpt"


def fit_palette(pixels: np.ndarray, levels: int, iters: int = 30) -> tuple[float, ...]:
    """``levels`` grey values (ascending, 0–255) minimising squared error over ``pixels`` (uint8, any shape):
    Lloyd's 1-D k-means on the 256-bin histogram, started from evenly spaced levels (deterministic)."""
    if levels < 2:
        raise ValueError(f"a palette needs at least 2 levels, got {levels}")
    hist = np.bincount(np.asarray(pixels, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    values = np.arange(256, dtype=np.float64)
    centers = np.linspace(0, 255, levels)
    for _ in range(iters):
        assign = np.abs(values[:, None] - centers[None]).argmin(1)  # (256,) nearest level of each grey value
        for k in range(levels):
            w = hist[assign == k]
            if w.sum() > 0:
                centers[k] = (values[assign == k] * w).sum() / w.sum()
    return tuple(float(round(c, 3)) for c in np.sort(centers))


def quantize(images: Tensor, palette: Sequence[float]) -> Tensor:
    """uint8/float images (…, H, W) in 0–255 → palette codes (…, H, W) int64: the nearest level."""
    levels = torch.tensor(palette, dtype=torch.float32, device=images.device)
    return (images.float()[..., None] - levels).abs().argmin(-1)


def dequantize(codes: Tensor, palette: Sequence[float]) -> Tensor:
    """Palette codes (…, H, W) → uint8 grey images (…, H, W)."""
    levels = torch.tensor(palette, dtype=torch.float32, device=codes.device)
    return levels[codes].round().clamp(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class IGPTConfig(PresetConfig):
    """A class-conditional pixel GPT: the decoder's config (vocab = palette + classes, block = 1 + H·W) is derived
    from ``gpt`` (a GPTConfig giving the width and depth) so that the two can never disagree."""

    model_type = IGPT_TYPE
    name: str = "custom"
    gpt: GPTConfig = GPTConfig(name="igpt", n_layer=4, n_head=4, n_embd=128)
    palette: tuple[float, ...] = (0.0, 255.0)  # grey value of each code, ascending
    classes: tuple[str, ...] = ("0",)
    image_size: int = 28  # sequences are image_size² pixels in raster order

    def __post_init__(self) -> None:
        if len(self.palette) < 2 or list(self.palette) != sorted(self.palette):
            raise ValueError(f"IGPTConfig({self.name!r}): palette must hold >= 2 ascending levels")
        if not self.classes:
            raise ValueError(f"IGPTConfig({self.name!r}): needs at least one class")
        want = {"vocab_size": len(self.palette) + len(self.classes), "block_size": 1 + self.image_size ** 2}
        if any(getattr(self.gpt, k) != v for k, v in want.items()):
            object.__setattr__(self, "gpt", self.gpt.replace(**want))

    @property
    def levels(self) -> int:
        return len(self.palette)

    @property
    def pixels(self) -> int:
        return self.image_size ** 2

    def class_token(self, index: int) -> int:
        return self.levels + index

    def class_index(self, name: str) -> int:
        """The index of class ``name`` (case and punctuation ignored: "t-shirt/top" = "T-shirt top"); a
        ValueError naming the valid classes otherwise."""
        def key(s: str) -> str:
            return "".join(ch for ch in s.lower() if ch.isalnum())

        keys = [key(c) for c in self.classes]
        if not isinstance(name, str) or key(name) not in keys:
            shown = repr(name)[:80]
            raise ValueError(f"unknown class {shown}; this model draws: {', '.join(self.classes)}")
        return keys.index(key(name))


class IGPT(nn.Module):
    """``GPT`` over ``[class] + pixel codes``; ``forward(pixel_codes (B, H·W), class_ids (B,))`` → logits
    (B, 1 + H·W, V) and the mean next-pixel loss in nats."""

    def __init__(self, config: IGPTConfig) -> None:
        super().__init__()
        self.config = config
        self.gpt = GPT(config.gpt)

    def sequences(self, pixel_codes: Tensor, class_ids: Tensor) -> Tensor:
        """(B, H·W) codes + (B,) classes → (B, 1 + H·W) token ids."""
        cfg = self.config
        if pixel_codes.dim() != 2 or pixel_codes.shape[1] != cfg.pixels:
            raise ValueError(f"pixel_codes must have shape (batch, {cfg.pixels}), got {tuple(pixel_codes.shape)}")
        return torch.cat([(class_ids + cfg.levels)[:, None], pixel_codes], dim=1)

    def forward(self, pixel_codes: Tensor, class_ids: Tensor) -> GPTOutput:
        ids = self.sequences(pixel_codes, class_ids)
        out = self.gpt(ids[:, :-1])  # position t (class token, pixels < t) predicts pixel t
        logits = out.logits[..., : self.config.levels].float()  # (B, H·W, L): class tokens are never a target
        out.loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), pixel_codes.reshape(-1))
        return out

    @torch.no_grad()
    def bits_per_dim(self, pixel_codes: Tensor, class_ids: Tensor) -> Tensor:
        """(B,) bits per pixel of each image: −Σ_t log2 p(code_t | class, codes < t) / (H·W)."""
        ids = self.sequences(pixel_codes, class_ids)
        logp = self.gpt(ids[:, :-1]).logits[..., : self.config.levels].float().log_softmax(-1)  # (B, HW, L)
        nll = -logp.gather(-1, pixel_codes[..., None]).squeeze(-1)  # (B, HW) nats
        return nll.mean(1) / math.log(2)

    @torch.no_grad()
    def sample(self, class_ids: Tensor, temperature: float = 1.0, top_k: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Draw images for ``class_ids`` (B,) → codes (B, H, W). Temperature 0 is greedy."""
        cfg = self.config
        if class_ids.dim() != 1 or not bool(((class_ids >= 0) & (class_ids < len(cfg.classes))).all()):
            raise ValueError(f"class_ids must be a 1-D tensor of class indices in [0, {len(cfg.classes)})")
        dev = next(self.parameters()).device
        cache = make_kv_cache(cfg.gpt, cfg.gpt.block_size)
        tok = (class_ids.to(dev) + cfg.levels)[:, None]  # (B, 1)
        out = []
        for _ in range(cfg.pixels):
            logits = self.gpt(tok, past_key_values=cache).logits[:, -1, : cfg.levels].float()  # (B, L)
            if temperature == 0:
                tok = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < cfg.levels:
                    kth = logits.topk(top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = logits.softmax(-1)
                tok = torch.multinomial(probs.cpu(), 1, generator=generator).to(dev)  # (B, 1)
            out.append(tok)
        return torch.cat(out, dim=1).view(-1, cfg.image_size, cfg.image_size)


__all__ = ["IGPT", "IGPTConfig", "IGPT_TYPE", "dequantize", "fit_palette", "quantize"]
