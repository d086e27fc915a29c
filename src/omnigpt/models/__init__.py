"""Model families: the GPT decoder (``gpt``); image and audio encoders (``vision``, ``audio``); the multimodal
decoder with projectors and placeholder fusion (``multimodal``); contrastive alignment (``contrastive``)."""

from omnigpt.models.audio import AUDIO_PRESETS, AudioConfig, AudioEncoder
from omnigpt.models.contrastive import CONTRASTIVE_PRESETS, ContrastiveConfig, ContrastiveModel
from omnigpt.models.gpt import (
    GPT,
    Block,
    CausalSelfAttention,
    GPTForSequenceClassification,
    GPTModel,
    GPTOutput,
)
from omnigpt.models.kv_cache import KVCache, make_kv_cache
from omnigpt.models.multimodal import (
    MULTIMODAL_PRESETS,
    MultimodalConfig,
    MultimodalGPT,
    Projector,
    ProjectorConfig,
)
from omnigpt.models.vision import VISION_PRESETS, VisionConfig, ViT, encoder_blocks

__all__ = ["AUDIO_PRESETS", "CONTRASTIVE_PRESETS", "GPT", "MULTIMODAL_PRESETS", "VISION_PRESETS", "AudioConfig",
           "AudioEncoder", "Block", "CausalSelfAttention", "ContrastiveConfig", "ContrastiveModel",
           "GPTForSequenceClassification", "GPTModel", "GPTOutput", "KVCache", "MultimodalConfig", "MultimodalGPT",
           "Projector", "ProjectorConfig", "ViT", "VisionConfig", "encoder_blocks", "make_kv_cache"]
