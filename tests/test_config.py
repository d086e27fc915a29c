"""Presets: published parameter counts (on the meta device, nothing allocated), frozen configs, validation."""

import dataclasses

import pytest
import torch

from omnigpt import GPT, PRESETS, GPTConfig

PUBLISHED_EXACT = {
    "gpt1": 116_534_784,  # HF openai-gpt
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}
# GPT-3 paper, Table 2.1 (rounded in the paper).
PUBLISHED_GPT3 = {
    "gpt3-small": 125e6, "gpt3-medium": 350e6, "gpt3-large": 760e6, "gpt3-xl": 1.3e9,
    "gpt3-2.7b": 2.7e9, "gpt3-6.7b": 6.7e9, "gpt3-13b": 13e9, "gpt3-175b": 175e9,
}


def meta_param_count(name: str) -> int:
    with torch.device("meta"):
        model = GPT(GPTConfig.from_name(name))
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(PUBLISHED_EXACT))
def test_gpt1_gpt2_counts_equal_published(name):
    assert meta_param_count(name) == PUBLISHED_EXACT[name]
    assert GPTConfig.from_name(name).num_params() == PUBLISHED_EXACT[name]


@pytest.mark.parametrize("name", list(PUBLISHED_GPT3))
def test_gpt3_counts_match_table(name):
    n = GPTConfig.from_name(name).num_params()
    assert abs(n - PUBLISHED_GPT3[name]) / PUBLISHED_GPT3[name] < 0.025, n
    cfg = GPTConfig.from_name(name)
    assert cfg.block_size == 2048 and cfg.n_head * cfg.head_size == cfg.n_embd
    assert cfg.layer_window(0) is None and cfg.layer_window(1) == cfg.local_window  # dense, banded, ...


def test_gpt3_table_errata_corrected():
    assert GPTConfig.from_name("gpt3-xl").n_head == 16  # table: 24 heads × 128 ≠ 2048
    assert GPTConfig.from_name("gpt3-13b").n_embd == 5120  # table: 5140


def test_meta_count_equals_formula_for_all_presets():
    for name in PRESETS:
        if name not in ("gpt3-175b", "gpt3-13b"):  # the formula is checked against the model on the rest
            assert meta_param_count(name) == GPTConfig.from_name(name).num_params(), name


def test_untied_head_counts_twice():
    cfg = GPTConfig.from_name("tiny-gpt2", tie_word_embeddings=False)
    assert GPT(cfg).num_params() == cfg.num_params() == GPTConfig.from_name("tiny-gpt2").num_params() + 512 * 32


def test_config_is_frozen_and_overrides_copy():
    cfg = GPTConfig.from_name("gpt2", dropout=0.1)
    assert cfg.dropout == 0.1 and PRESETS["gpt2"].dropout == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_layer = 3  # type: ignore[misc]


def test_round_trip_dict_and_unknown_keys():
    cfg = GPTConfig.from_name("tiny-gpt3")
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="n_layers.*valid keys"):
        GPTConfig.from_dict({**cfg.to_dict(), "n_layers": 3})


@pytest.mark.parametrize("override, message", [
    ({"n_embd": 33}, "divisible by n_head"),
    ({"n_layer": 0}, "n_layer must be a positive"),
    ({"activation": "tanhh"}, "activation"),
    ({"norm_position": "middle"}, "norm_position"),
    ({"dropout": 1.5}, "dropout"),
])
def test_invalid_configs_raise(override, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig.from_name("tiny-gpt2", **override)


def test_unknown_preset_lists_known():
    with pytest.raises(ValueError, match="gpt2-medium"):
        GPTConfig.from_name("gpt4")
