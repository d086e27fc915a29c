"""Model families: the GPT decoder (``gpt``); encoders and fusion for other modalities live beside it."""

from omnigpt.models.gpt import (
    GPT,
    Block,
    CausalSelfAttention,
    GPTForSequenceClassification,
    GPTModel,
    GPTOutput,
    KVCache,
    make_kv_cache,
)

__all__ = ["GPT", "Block", "CausalSelfAttention", "GPTForSequenceClassification", "GPTModel", "GPTOutput",
           "KVCache", "make_kv_cache"]
