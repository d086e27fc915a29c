"""Pix2Seq (Chen et al. 2022, "Pix2seq: A Language Modeling Framework for Object Detection"): detection as
next-token prediction. The ViT of ``models/vision.py`` encodes the image, a linear projector maps its patch vectors
to the decoder's width, and they open the GPT decoder's sequence (the ``MultimodalGPT`` way: image vectors as
``inputs_embeds`` in the decoder's own sequence), followed by ``<bos>`` and five tokens per object.

Vocabulary: coordinate bins ``0 … n_bins-1`` (``n_bins`` = the image size: one bin per pixel, so quantization
loses nothing), then one token per class, then ``<eos>`` and ``<bos>``. An object is ``<class> y0 x0 y1 x1`` with
y1, x1 exclusive and written as ``y1 - 1``, ``x1 - 1`` (so every coordinate is a bin); objects come in raster
order of their top-left corner, and ``<eos>`` ends the list.

Differences from the paper: the class token comes first (the paper writes it last), the decoder is a plain GPT
reading the image as a prefix instead of a decoder cross-attending to an encoder, no sequence augmentation (no
noise objects), and decoding is constrained: class positions may only hold a class (or ``<eos>``), coordinate
positions only a bin, and ``y1``/``x1`` never precede ``y0``/``x0``. ``detect`` decodes greedily for
``max_objects`` objects with ``<eos>`` masked and scores each object with the probability its class token got in
the unmasked softmax — the paper's score (class-token likelihood), which ``<eos>`` mass pushes towards zero for
objects past the end of the model's own list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from omnigpt.config import GPTConfig, PresetConfig
from omnigpt.models.gpt import GPT, GPTOutput
from omnigpt.models.kv_cache import make_kv_cache
from omnigpt.models.vision import VisionConfig, ViT

PIX2SEQ_TYPE = "omnigpt-pix2seq"
TOKENS_PER_OBJECT = 5


@dataclass(frozen=True)
class Pix2SeqConfig(PresetConfig):
    """A ViT encoder + GPT decoder over boxes-as-tokens. The decoder's ``vocab_size`` and ``block_size`` are
    derived from the image size, the classes and ``max_objects`` so that they can never disagree."""

    model_type = PIX2SEQ_TYPE
    name: str = "custom"
    vision: VisionConfig = VisionConfig(image_size=64, patch_size=8, n_layer=3, n_head=4, n_embd=128,
                                        use_cls_token=False)
    gpt: GPTConfig = field(default_factory=lambda: GPTConfig(name="pix2seq", n_layer=4, n_head=4, n_embd=128))
    classes: tuple[str, ...] = ("object",)
    max_objects: int = 4
    pixel_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # in [0, 1]; the model normalises its input
    pixel_std: tuple[float, float, float] = (0.25, 0.25, 0.25)

    def __post_init__(self) -> None:
        if not self.classes or self.max_objects < 1:
            raise ValueError(f"Pix2SeqConfig({self.name!r}): needs classes and max_objects >= 1")
        if self.vision.use_cls_token:
            raise ValueError(f"Pix2SeqConfig({self.name!r}): the vision tower must not have a CLS token")
        want = {"vocab_size": self.n_bins + len(self.classes) + 2,
                "block_size": self.vision.num_patches + 1 + TOKENS_PER_OBJECT * self.max_objects + 1}
        if any(getattr(self.gpt, k) != v for k, v in want.items()):
            object.__setattr__(self, "gpt", self.gpt.replace(**want))

    @property
    def n_bins(self) -> int:
        return self.vision.image_size

    @property
    def eos(self) -> int:
        return self.n_bins + len(self.classes)

    @property
    def bos(self) -> int:
        return self.eos + 1

    @property
    def target_length(self) -> int:
        """Tokens after ``<bos>``: ``max_objects`` objects and ``<eos>``."""
        return TOKENS_PER_OBJECT * self.max_objects + 1


def encode_targets(boxes: list[Tensor], labels: list[Tensor], config: Pix2SeqConfig) -> Tensor:
    """Per image: boxes (n, 4) y0 x0 y1 x1 (exclusive ends, pixels) + labels (n,) → target tokens
    (B, target_length), -100 after ``<eos>``. Objects are sorted in raster order of (y0, x0); more than
    ``max_objects`` is an error."""
    out = torch.full((len(boxes), config.target_length), -100, dtype=torch.long)
    for b, (bx, lb) in enumerate(zip(boxes, labels, strict=True)):
        bx, lb = torch.as_tensor(bx, dtype=torch.long).view(-1, 4), torch.as_tensor(lb, dtype=torch.long).view(-1)
        n = len(lb)
        if n > config.max_objects:
            raise ValueError(f"image {b}: {n} objects, more than max_objects {config.max_objects}")
        if n and (bool((bx[:, :2] < 0).any()) or bool((bx[:, 2:] > config.n_bins).any())
                  or bool((bx[:, 2:] <= bx[:, :2]).any())):
            raise ValueError(f"image {b}: boxes must satisfy 0 <= y0 < y1 <= {config.n_bins} (same for x)")
        order = sorted(range(n), key=lambda i: (int(bx[i, 0]), int(bx[i, 1])))
        seq = []
        for i in order:
            y0, x0, y1, x1 = bx[i].tolist()
            seq += [config.n_bins + int(lb[i]), y0, x0, y1 - 1, x1 - 1]
        seq.append(config.eos)
        out[b, : len(seq)] = torch.tensor(seq)
    return out


@dataclass
class Detections:
    boxes: Tensor  # (B, M, 4) float: y0, x0, y1, x1 in pixels (exclusive ends)
    labels: Tensor  # (B, M) class indices
    scores: Tensor  # (B, M) class-token probability (full softmax, <eos> included)


class Pix2Seq(nn.Module):
    """``forward(pixel_values (B, 3, S, S) in [0, 1], targets (B, L))`` → logits over the target positions and the
    mean next-token loss."""

    def __init__(self, config: Pix2SeqConfig) -> None:
        super().__init__()
        self.config = config
        self.vit = ViT(config.vision)
        self.proj = nn.Linear(config.vision.n_embd, config.gpt.n_embd)
        self.gpt = GPT(config.gpt)
        self.register_buffer("mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False)

    def image_prefix(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, S, S) in [0, 1] → (B, N + 1, C_dec): projected patch vectors, then the ``<bos>`` embedding."""
        x = (pixel_values - self.mean) / self.std
        img = self.proj(self.vit(x).last_hidden_state)  # (B, N, C_dec)
        bos = self.gpt.transformer.wte.weight[self.config.bos].to(img.dtype)
        return torch.cat([img, bos.expand(img.shape[0], 1, -1)], dim=1)

    def forward(self, pixel_values: Tensor, targets: Tensor) -> GPTOutput:
        L = targets.shape[1]
        prefix = self.image_prefix(pixel_values)  # (B, N + 1, C)
        inputs = targets[:, :-1].clamp(min=0)  # teacher forcing: target t-1 feeds position t (-100 → any id)
        tok = self.gpt.transformer.wte(inputs)  # (B, L - 1, C)
        x = torch.cat([prefix.to(tok.dtype), tok], dim=1)  # (B, N + L, C)
        out = self.gpt(inputs_embeds=x)
        logits = out.logits[:, -L:].float()  # (B, L, V): position N + t predicts target t
        out.logits = logits
        out.loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                               ignore_index=-100)
        return out

    def _allowed(self, k: int, prev: Tensor | None) -> Tensor:
        """Mask (B|1, V) of the tokens allowed at object token ``k`` (0 class, 1 y0, 2 x0, 3 y1, 4 x1); ``prev``
        (B, k) holds the object's tokens so far (for y1 >= y0, x1 >= x0)."""
        cfg = self.config
        V, nb = cfg.gpt.vocab_size, cfg.n_bins
        dev = self.proj.weight.device
        ids = torch.arange(V, device=dev)[None]  # (1, V)
        if k == 0:
            return (ids >= nb) & (ids < cfg.eos)
        allowed = ids < nb
        if k >= 3 and prev is not None:
            allowed = allowed & (ids >= prev[:, k - 2 : k - 1])  # y1-1 >= y0, x1-1 >= x0
        return allowed

    @torch.no_grad()
    def detect(self, pixel_values: Tensor, max_objects: int | None = None) -> Detections:
        """Greedy constrained decoding of ``max_objects`` (default: the config's) objects per image."""
        cfg = self.config
        M = max_objects or cfg.max_objects
        if not 1 <= M <= cfg.max_objects:
            raise ValueError(f"max_objects must be in [1, {cfg.max_objects}], got {M}")
        B = pixel_values.shape[0]
        cache = make_kv_cache(cfg.gpt, cfg.gpt.block_size)
        logits = self.gpt(inputs_embeds=self.image_prefix(pixel_values), past_key_values=cache,
                          logits_to_keep=1).logits[:, -1].float()  # (B, V)
        tokens, scores = [], []
        obj: list[Tensor] = []
        for step in range(M * TOKENS_PER_OBJECT):
            k = step % TOKENS_PER_OBJECT
            if k == 0:
                obj = []
            prev = torch.stack(obj, 1) if obj else None
            masked = logits.masked_fill(~self._allowed(k, prev), float("-inf"))
            tok = masked.argmax(-1)  # (B,)
            if k == 0:
                scores.append(logits.softmax(-1).gather(1, tok[:, None])[:, 0])  # <eos> mass lowers the score
            obj.append(tok)
            tokens.append(tok)
            if step + 1 < M * TOKENS_PER_OBJECT:
                logits = self.gpt(tok[:, None], past_key_values=cache).logits[:, -1].float()
        seq = torch.stack(tokens, 1).view(B, M, TOKENS_PER_OBJECT)  # (B, M, 5)
        boxes = seq[..., 1:].float()
        boxes[..., 2:] += 1  # y1 - 1, x1 - 1 → exclusive ends
        return Detections(boxes=boxes, labels=seq[..., 0] - cfg.n_bins, scores=torch.stack(scores, 1))


__all__ = ["PIX2SEQ_TYPE", "Detections", "Pix2Seq", "Pix2SeqConfig", "encode_targets"]
