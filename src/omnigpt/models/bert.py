"""BERT (Devlin et al. 2019) as a bidirectional stack of the GPT decoder's own block, and sentence embeddings.

Differences from the GPT backbone in ``models/gpt.py``, all of them configuration of the same ``Block``:
bidirectional attention (``causal=False``: every token sees every real token, padding is masked), post-LN
(``LN(x + f(x))`` as GPT-1, no final LayerNorm), exact erf GELU, LayerNorm ε = 1e-12. What BERT adds around the
blocks: a third embedding table for the segment (token type) ids, a LayerNorm right after the embedding sum, and a
pooler (``tanh(Linear(h_[CLS]))``, kept for parity with ``transformers``' ``BertModel.pooler_output``).

Sentence embeddings (sentence-transformers, Reimers & Gurevych 2019): the mean of the last hidden states over the
real tokens, then L2-normalised (all-MiniLM-L6-v2's ``modules.json``: Transformer → mean Pooling → Normalize), so
a dot product is a cosine similarity.

Reference: ``transformers`` ``modeling_bert.py`` (numerics matched to 1e-5 on all-MiniLM-L6-v2). Module names follow
omnigpt's GPT (``wte, wpe, h.N.ln_1, attn.c_attn, ...``) plus ``wtt`` (token types), ``ln_emb`` and ``pooler``;
BERT's separate query/key/value matrices are concatenated into ``c_attn`` by the key table in
``checkpoints/bert.py``. Deviation: none in the computation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnigpt.config import GPTConfig, PresetConfig
from omnigpt.models.gpt import Block

# ------------------------------------------------------------------------------------------------------------
# Config and presets


@dataclass(frozen=True)
class BertConfig(PresetConfig):
    """Architecture of a BERT encoder and how it pools a sentence. Field names follow omnigpt's GPTConfig;
    ``transformers``' names in comments."""

    name: str = "custom"
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    n_layer: int = 12  # num_hidden_layers
    n_head: int = 12  # num_attention_heads
    n_embd: int = 768  # hidden_size
    n_inner: int = 3072  # intermediate_size
    activation: str = "gelu"  # hidden_act: exact erf GELU
    layer_norm_epsilon: float = 1e-12
    dropout: float = 0.1  # hidden_dropout_prob = attention_probs_dropout_prob (training only)
    pad_token_id: int = 0
    # Sentence embeddings: "mean" over real tokens or the "cls" vector; normalised to unit length or not.
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    max_length: int = 512  # tokens per sentence the tokenizer keeps (sentence-transformers' max_seq_length)

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"BertConfig({self.name!r}): pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if not 0 < self.max_length <= self.max_position_embeddings:
            raise ValueError(f"BertConfig({self.name!r}): max_length {self.max_length} must be in "
                             f"(0, max_position_embeddings {self.max_position_embeddings}]")
        self.gpt_config()  # validates the shared fields (divisibility, activation, ...)

    def gpt_config(self) -> GPTConfig:
        """The configuration of the shared ``Block``: bidirectional, post-LN, no final LayerNorm."""
        return GPTConfig(name=self.name, vocab_size=self.vocab_size, block_size=self.max_position_embeddings,
                         n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd, n_inner=self.n_inner,
                         norm_position="post", final_layer_norm=False, activation=self.activation,
                         layer_norm_epsilon=self.layer_norm_epsilon, dropout=self.dropout, causal=False,
                         tie_word_embeddings=False, pad_token_id=self.pad_token_id)

    @classmethod
    def _presets(cls) -> Mapping[str, BertConfig]:
        return BERT_PRESETS


BERT_PRESETS: dict[str, BertConfig] = {
    # google-research bert-base-uncased: 109,482,240 parameters (transformers BertModel, pooler included).
    "bert-base-uncased": BertConfig(name="bert-base-uncased", pooling="cls", normalize=False),
    # sentence-transformers all-MiniLM-L6-v2 (MiniLM-L6-H384 fine-tuned on 1B sentence pairs): 22,713,216.
    "all-minilm-l6-v2": BertConfig(name="all-minilm-l6-v2", n_layer=6, n_head=12, n_embd=384, n_inner=1536,
                                   max_length=256),
    # Tests: 2 layers, width 32, 512-token vocabulary.
    "tiny-bert": BertConfig(name="tiny-bert", vocab_size=512, max_position_embeddings=64, n_layer=2, n_head=2,
                            n_embd=32, n_inner=64, max_length=64),
}


# ------------------------------------------------------------------------------------------------------------
# The model


@dataclass
class BertOutput:
    """Names as in ``transformers``' BaseModelOutputWithPooling."""

    last_hidden_state: Tensor  # (B, T, C)
    pooler_output: Tensor  # (B, C): tanh(Linear(h_[CLS]))


def mean_pool(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """(B, T, C) → (B, C): the average over real tokens (sentence-transformers' mean pooling, ε = 1e-9)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


class BertModel(nn.Module):
    """Word + position + token-type embeddings → LayerNorm → ``n_layer`` post-LN bidirectional blocks (+ pooler)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        C = config.n_embd
        self.wte = nn.Embedding(config.vocab_size, C, padding_idx=config.pad_token_id)
        self.wpe = nn.Embedding(config.max_position_embeddings, C)
        self.wtt = nn.Embedding(config.type_vocab_size, C)
        self.ln_emb = nn.LayerNorm(C, eps=config.layer_norm_epsilon)
        self.drop = nn.Dropout(config.dropout)
        block_cfg = config.gpt_config()
        self.h = nn.ModuleList(Block(block_cfg, i) for i in range(config.n_layer))
        self.pooler = nn.Linear(C, C)
        self._init_weights()

    def _init_weights(self) -> None:
        """BERT's init: N(0, 0.02) matrices and embeddings, zero biases, unit LayerNorms, a zero padding row."""
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.wte.weight[self.config.pad_token_id].zero_()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check(self, input_ids: Tensor, attention_mask: Tensor | None, token_type_ids: Tensor | None) -> None:
        cfg = self.config
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype.is_floating_point \
                or input_ids.dtype == torch.bool:
            what = f"{tuple(input_ids.shape)} {input_ids.dtype}" if isinstance(input_ids, Tensor) else type(input_ids)
            raise ValueError(f"input_ids must be an integer tensor of shape (batch, seq_len), got {what}")
        B, T = input_ids.shape
        if T == 0 or B == 0:
            raise ValueError(f"input_ids is empty: shape {(B, T)}")
        if cfg.max_position_embeddings < T:
            raise ValueError(f"sequence length {T} exceeds max_position_embeddings {cfg.max_position_embeddings}")
        lo, hi = torch.aminmax(input_ids)
        if lo < 0 or hi >= cfg.vocab_size:
            raise ValueError(f"token id {int(lo) if lo < 0 else int(hi)} is out of range for vocab_size "
                             f"{cfg.vocab_size}")
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and tuple(t.shape) != (B, T):
                raise ValueError(f"{name} must have shape {(B, T)}, got {tuple(t.shape)}")
        if token_type_ids is not None and (token_type_ids.min() < 0 or token_type_ids.max() >= cfg.type_vocab_size):
            raise ValueError(f"token_type_ids must be in [0, {cfg.type_vocab_size})")
        if attention_mask is not None and not bool(attention_mask.bool().any(dim=1).all()):
            raise ValueError("attention_mask has a row without any real token")

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> BertOutput:
        """input_ids, attention_mask (1 = real token, 0 = padding), token_type_ids: all (B, T)."""
        self._check(input_ids, attention_mask, token_type_ids)
        T = input_ids.shape[1]
        pos = torch.arange(T, device=input_ids.device)[None]  # (1, T): absolute positions 0..T-1
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)  # one segment
        x = self.wte(input_ids) + self.wpe(pos) + self.wtt(token_type_ids)  # (B, T, C)
        x = self.drop(self.ln_emb(x))
        padding = None
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            padding = attention_mask.bool()  # (B, T) True = real token: padded keys get probability 0
        for block in self.h:
            x = block(x, padding=padding)  # (B, T, C)
        return BertOutput(last_hidden_state=x, pooler_output=torch.tanh(self.pooler(x[:, 0])))

    def sentence_embedding(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                           token_type_ids: Tensor | None = None) -> Tensor:
        """(B, C) sentence vectors: pooled as ``config.pooling`` says, unit length when ``config.normalize``."""
        h = self(input_ids, attention_mask, token_type_ids).last_hidden_state
        v = mean_pool(h, attention_mask) if self.config.pooling == "mean" else h[:, 0]
        return F.normalize(v, p=2, dim=-1) if self.config.normalize else v


__all__ = ["BERT_PRESETS", "BertConfig", "BertModel", "BertOutput", "mean_pool"]
