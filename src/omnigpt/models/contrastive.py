"""Contrastive alignment between any two modalities (CLIP, Radford et al. 2021; open_clip; ImageBind's idea of
one space for many modalities) — zero-shot classification and retrieval on top.

* Towers: image = ``ViT`` pooled (CLS), audio = ``AudioEncoder`` pooled (mean), text = omnigpt's causal
  ``GPTModel`` pooled at the last real token (CLIP's text tower is exactly that: a causal Transformer read at the
  end-of-text token). Each tower ends in a bias-free linear projection to ``embed_dim``; embeddings are
  L2-normalised.
* Loss: CLIP's symmetric InfoNCE, (CE(s·A·Bᵀ, I) + CE(s·B·Aᵀ, I)) / 2, with a learnable logit scale s = exp(t),
  t initialised to log(1 / 0.07) and clamped to s ≤ 100 (CLIP clamps the parameter after each step; clamping in
  the forward pass gives the same values without touching the optimiser loop). With ``group_ids`` the targets
  are uniform over every same-group pair (multi-positive): on class-labelled data, duplicate-class "negatives"
  otherwise keep CLIP at chance for hundreds of steps.
* Zero-shot: one classifier row per class = the renormalised mean of its prompt-template embeddings (CLIP's
  prompt ensembling, "a photo of a {}."). Retrieval: recall@k with ties resolved in the query's favour.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnigpt.config import GPTConfig, PresetConfig
from omnigpt.models.audio import AudioConfig, AudioEncoder
from omnigpt.models.gpt import GPTModel, init_weights
from omnigpt.models.vision import VisionConfig, ViT

MODEL_TYPE = "omnigpt-contrastive"
MODALITIES = ("image", "audio", "text")

# ------------------------------------------------------------------------------------------------------------
# Loss and metrics (pure functions)


def clip_loss(a: Tensor, b: Tensor, logit_scale: Tensor | float, group_ids: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE between L2-normalised embeddings a (N, D) and b (N, D); row i of each is a pair.

    With ``group_ids`` (N,), every j with group_ids[j] == group_ids[i] is a positive for i (equal weights)."""
    logits = logit_scale * a @ b.T  # (N, N): similarity of a_i with every b_j
    N = logits.shape[0]
    if group_ids is None:
        targets = torch.arange(N, device=logits.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    pos = (group_ids[:, None] == group_ids[None, :]).to(logits.dtype)  # (N, N), symmetric
    target = pos / pos.sum(dim=1, keepdim=True)
    loss_a = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    loss_b = -(target * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return (loss_a + loss_b) / 2


def zero_shot_classifier(encode_text: Callable[[list[str]], Tensor], class_names: Sequence[str],
                         templates: Sequence[str] = ("a photo of a {}.",)) -> Tensor:
    """(K, D) normalised class embeddings: the mean over ``templates`` (each with one ``{}``) per class."""
    rows = []
    for name in class_names:
        emb = F.normalize(encode_text([t.format(name) for t in templates]), dim=-1)  # (n_templates, D)
        rows.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(rows)


def zero_shot_predict(embeds: Tensor, classifier: Tensor) -> Tensor:
    """Class index (N,) of each normalised embedding (N, D) against a (K, D) classifier."""
    return (embeds @ classifier.T).argmax(dim=-1)


def recall_at_k(queries: Tensor, gallery: Tensor, ks: Sequence[int] = (1, 5, 10),
                targets: Tensor | None = None) -> dict[int, float]:
    """Fraction of queries whose target (default: gallery item i for query i) ranks in the top k by cosine
    similarity. Rank = number of gallery items scoring strictly higher than the target."""
    sim = F.normalize(queries, dim=-1) @ F.normalize(gallery, dim=-1).T  # (Q, G)
    if targets is None:
        targets = torch.arange(sim.shape[0], device=sim.device)
    target_score = sim.gather(1, targets[:, None])  # (Q, 1)
    rank = (sim > target_score).sum(dim=1)  # (Q,)
    return {k: float((rank < k).float().mean()) for k in ks}


# ------------------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class ContrastiveConfig(PresetConfig):
    """Two towers (``modalities``, each one of image/audio/text) projected into one ``embed_dim`` space."""

    model_type = MODEL_TYPE
    name: str = "custom"
    modalities: tuple[str, str] = ("image", "text")
    embed_dim: int = 128
    vision: VisionConfig | None = None
    audio: AudioConfig | None = None
    text: GPTConfig | None = None
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0

    def __post_init__(self) -> None:
        a, b = self.modalities
        if a not in MODALITIES or b not in MODALITIES or a == b:
            raise ValueError(f"modalities must be two different of {MODALITIES}, got {self.modalities}")
        for m, cfg in (("image", self.vision), ("audio", self.audio), ("text", self.text)):
            if m in self.modalities and cfg is None:
                raise ValueError(f"ContrastiveConfig({self.name!r}): modality {m!r} needs its tower config")

    @classmethod
    def _presets(cls) -> Mapping[str, ContrastiveConfig]:
        return CONTRASTIVE_PRESETS


CONTRASTIVE_PRESETS: dict[str, ContrastiveConfig] = {
    # Fashion-MNIST zero-shot on 2 cores: 28 px ViT + a 2-layer text tower (set vocab_size to the tokenizer's).
    "clip-fmnist": ContrastiveConfig(
        name="clip-fmnist", modalities=("image", "text"), embed_dim=128, vision=VisionConfig.from_name("vit-fmnist"),
        text=GPTConfig(name="clip-text", vocab_size=50263, block_size=32, n_layer=2, n_head=4, n_embd=128)),
    # Tests.
    "tiny-clip": ContrastiveConfig(name="tiny-clip", embed_dim=16, vision=VisionConfig.from_name("tiny-vit"),
                                   text=GPTConfig.from_name("tiny-gpt2")),
    "tiny-clap": ContrastiveConfig(name="tiny-clap", modalities=("audio", "text"), embed_dim=16,
                                   audio=AudioConfig.from_name("tiny-audio"), text=GPTConfig.from_name("tiny-gpt2")),
}


# ------------------------------------------------------------------------------------------------------------
# Model


@dataclass
class ContrastiveOutput:
    loss: Tensor | None
    logits: Tensor  # (N_a, N_b) scaled similarities, first modality × second
    embeds_a: Tensor  # (N_a, D) normalised
    embeds_b: Tensor  # (N_b, D)


class ContrastiveModel(nn.Module):
    """Two (or three) encoder towers and their projections into a shared, normalised embedding space."""

    def __init__(self, config: ContrastiveConfig) -> None:
        super().__init__()
        self.config = config
        D = config.embed_dim
        self.vision_model = ViT(config.vision) if config.vision else None
        self.audio_model = AudioEncoder(config.audio) if config.audio else None
        self.text_model = GPTModel(config.text) if config.text else None
        if self.text_model is not None and config.text is not None:
            init_weights(self.text_model, config.text)
        self.vision_projection = nn.Linear(config.vision.n_embd, D, bias=False) if config.vision else None
        self.audio_projection = nn.Linear(config.audio.n_embd, D, bias=False) if config.audio else None
        self.text_projection = nn.Linear(config.text.n_embd, D, bias=False) if config.text else None
        for proj in (self.vision_projection, self.audio_projection, self.text_projection):
            if proj is not None:
                nn.init.normal_(proj.weight, std=proj.in_features**-0.5)  # CLIP: width^-0.5
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))

    def scale(self) -> Tensor:
        """exp(t) clamped to max_logit_scale (gradient stops at the clamp, as after CLIP's in-place clamp)."""
        return self.logit_scale.clamp(max=math.log(self.config.max_logit_scale)).exp()

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        if self.vision_model is None or self.vision_projection is None:
            raise ValueError("this contrastive model has no image tower")
        return F.normalize(self.vision_projection(self.vision_model(pixel_values).pooler_output), dim=-1)

    def encode_audio(self, input_features: Tensor) -> Tensor:
        if self.audio_model is None or self.audio_projection is None:
            raise ValueError("this contrastive model has no audio tower")
        return F.normalize(self.audio_projection(self.audio_model(input_features).pooler_output), dim=-1)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if self.text_model is None or self.text_projection is None:
            raise ValueError("this contrastive model has no text tower")
        h = self.text_model(input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, C)
        B, T = input_ids.shape
        if attention_mask is None:
            last = torch.full((B,), T - 1, device=h.device)
        else:  # rightmost real token (right padding; the causal tower has read the whole text there)
            last = (torch.arange(T, device=h.device) * attention_mask.to(h.device).bool()).argmax(-1)
        return F.normalize(self.text_projection(h[torch.arange(B, device=h.device), last]), dim=-1)

    def embed(self, modality: str, batch: dict[str, Tensor]) -> Tensor:
        """Normalised embeddings of ``modality`` from a processor batch (HF-style keys)."""
        if modality == "image":
            return self.encode_image(batch["pixel_values"])
        if modality == "audio":
            return self.encode_audio(batch["input_features"])
        if modality == "text":
            return self.encode_text(batch["input_ids"], batch.get("attention_mask"))
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")

    def forward(self, pixel_values: Tensor | None = None, input_features: Tensor | None = None,
                input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                group_ids: Tensor | None = None, return_loss: bool = True) -> ContrastiveOutput:
        batch = {k: v for k, v in (("pixel_values", pixel_values), ("input_features", input_features),
                                   ("input_ids", input_ids), ("attention_mask", attention_mask)) if v is not None}
        ma, mb = self.config.modalities
        a, b = self.embed(ma, batch), self.embed(mb, batch)
        scale = self.scale()
        loss = None
        if return_loss:
            if a.shape[0] != b.shape[0]:
                raise ValueError(f"contrastive loss needs paired batches: {a.shape[0]} {ma} vs {b.shape[0]} {mb}")
            loss = clip_loss(a, b, scale, group_ids)
        return ContrastiveOutput(loss=loss, logits=scale * a @ b.T, embeds_a=a, embeds_b=b)
