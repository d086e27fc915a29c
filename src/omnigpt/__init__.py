"""omnigpt: GPT-1/2/3 and multimodal transformers in readable PyTorch.

Public API: configs (``GPTConfig``), models (``GPT``, ``GPTModel``, ``GPTForSequenceClassification``) and, as
later modules land, tokenizers, Hugging Face facades, generation, training and serving.
"""

from omnigpt.config import PRESETS, GPTConfig
from omnigpt.models.gpt import GPT, GPTForSequenceClassification, GPTModel, GPTOutput, KVCache, make_kv_cache

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "GPTForSequenceClassification", "GPTModel", "GPTOutput", "KVCache", "PRESETS",
           "make_kv_cache"]
