"""The Hugging Face way of working, without ``transformers``: ``GPT2Tokenizer.from_pretrained``,
``GPT2Model.from_pretrained``, ``model(**inputs)`` with transformers-shaped outputs (``gpt2``)."""

from omnigpt.hf.gpt2 import (
    BatchEncoding,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPT2Model,
    GPT2Tokenizer,
    GPT2TokenizerFast,
    ModelOutput,
    OpenAIGPTLMHeadModel,
    OpenAIGPTModel,
)

__all__ = ["BatchEncoding", "GPT2ForSequenceClassification", "GPT2LMHeadModel", "GPT2Model", "GPT2Tokenizer",
           "GPT2TokenizerFast", "ModelOutput", "OpenAIGPTLMHeadModel", "OpenAIGPTModel"]
