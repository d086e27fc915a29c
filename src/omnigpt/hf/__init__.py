"""The Hugging Face way of working, without ``transformers``: ``AutoTokenizer`` / ``AutoModelForCausalLM`` /
``AutoModel.from_pretrained`` (GPT-2/GPT-1 directories, GGUF files, offline names such as
``smollm2-135m-instruct``), ``model(**inputs)`` with transformers-shaped outputs, ``model.generate(...)`` and
``tokenizer.apply_chat_template(...)``."""

from omnigpt.hf.auto import AutoModel, AutoModelForCausalLM, AutoTokenizer
from omnigpt.hf.generation import GenerationConfig
from omnigpt.hf.gpt2 import (
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPT2Model,
    GPT2Tokenizer,
    GPT2TokenizerFast,
    ModelOutput,
    OpenAIGPTLMHeadModel,
    OpenAIGPTModel,
)
from omnigpt.hf.llama import LlamaForCausalLM, LlamaModel
from omnigpt.hf.tokenizer import BatchEncoding, PreTrainedTokenizerFast

__all__ = ["AutoModel", "AutoModelForCausalLM", "AutoTokenizer", "BatchEncoding", "GPT2ForSequenceClassification",
           "GPT2LMHeadModel", "GPT2Model", "GPT2Tokenizer", "GPT2TokenizerFast", "GenerationConfig",
           "LlamaForCausalLM", "LlamaModel", "ModelOutput", "OpenAIGPTLMHeadModel", "OpenAIGPTModel",
           "PreTrainedTokenizerFast"]
