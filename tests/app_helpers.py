"""Test helpers shared by the application tests in tests/apps/<app>/: the tiny text recipe of the language
applications (classify, seq2seq) and the tiny vision models of image-classify and igpt (their pipelines are tested
together, on one pair of saved runs)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from omnigpt.config import GPTConfig
from omnigpt.data.multimodal import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR
from omnigpt.models.igpt import IGPT, IGPTConfig
from omnigpt.models.vision import ImageClassifierConfig, VisionConfig, ViTForImageClassification

# ------------------------------------------------------------------------------------------------------------
# The language applications: a tiny GPT-2 and the recipe keys every tiny run shares

TINY = {"preset": "tiny-gpt2", "n_embd": 64, "n_head": 4, "block_size": 96}
COMMON = {"dtype": "float32", "matmul_plan": "off", "progress": False, "log_interval": 1000,
          "checkpoint_interval": 10000, "keep_checkpoints": 1, "warmup": 5, "weight_decay": 0.0, "lr": 3e-3,
          "min_lr_ratio": 1.0}

# ------------------------------------------------------------------------------------------------------------
# The vision applications: Fashion-MNIST comes from Debian ``dataset-fashion-mnist``

needs_fmnist = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                                  reason="needs Debian dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)")
TINY_VIT = VisionConfig.from_name("tiny-vit", image_size=28, patch_size=7, in_channels=1)


def tiny_classifier(seed: int = 0, **vision: Any) -> ViTForImageClassification:
    torch.manual_seed(seed)
    return ViTForImageClassification(ImageClassifierConfig(vision=TINY_VIT.replace(**vision),
                                                           labels=FASHION_MNIST_CLASSES, pixel_mean=0.286,
                                                           pixel_std=0.353))


def tiny_igpt(seed: int = 0, size: int = 4, levels: int = 4) -> IGPT:
    torch.manual_seed(seed)
    gpt = GPTConfig.from_name("tiny-gpt2", n_layer=2, n_head=2, n_embd=32)
    palette = tuple(float(v) for v in np.linspace(0, 255, levels))
    return IGPT(IGPTConfig(gpt=gpt, palette=palette, classes=FASHION_MNIST_CLASSES, image_size=size)).eval()
