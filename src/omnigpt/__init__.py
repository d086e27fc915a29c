"""omnigpt: GPT-1/2/3 and multimodal transformers in readable PyTorch.

Public API: configs (``GPTConfig``), models (``GPT``, ``GPTModel``, ``GPTForSequenceClassification``), tokenizers,
the Hugging Face facades (``GPT2Tokenizer``, ``GPT2Model``…) and generation. Training (``omnigpt.train``),
multimodal models (``omnigpt.models.multimodal``) and serving (``omnigpt.serve``) are imported from their modules.
"""

from omnigpt.config import PRESETS, GPTConfig
from omnigpt.hf import (
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPT2Model,
    GPT2Tokenizer,
    GPT2TokenizerFast,
    OpenAIGPTLMHeadModel,
    OpenAIGPTModel,
    load_pretrained,
    save_pretrained,
)
from omnigpt.models.gpt import GPT, GPTForSequenceClassification, GPTModel, GPTOutput, KVCache, make_kv_cache
from omnigpt.textgen import generate_text, stream_text
from omnigpt.tokenizer import BPETokenizer, CharTokenizer, Tokenizer, gpt2_tokenizer, load_tokenizer

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "GPTForSequenceClassification", "GPTModel", "GPTOutput", "KVCache", "PRESETS",
           "make_kv_cache"]
__all__ += ["BPETokenizer", "CharTokenizer", "Tokenizer", "gpt2_tokenizer", "load_tokenizer",  # tokenizer.py
            "GPT2ForSequenceClassification", "GPT2LMHeadModel", "GPT2Model", "GPT2Tokenizer", "GPT2TokenizerFast",
            "OpenAIGPTLMHeadModel", "OpenAIGPTModel", "load_pretrained", "save_pretrained",  # hf.py
            "generate_text", "stream_text"]  # textgen.py
