"""UniMPConfig (modeling_unimp/configuration_unimp.py): invariants named by field, presets, save/load."""

import doctest

import pytest
import torch
from conftest import make_tiny_config
from transformers import AutoConfig

import modeling_unimp.configuration_unimp as configuration_module
from modeling_unimp import UniMPConfig, UniMPForConditionalGeneration


def test_docstring_example_runs():
    result = doctest.testmod(configuration_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(("field", "value", "message"), [
    ("perceiver_depth", 0, "must be >= 1, got 0"),
    ("perceiver_num_latents", 0, "must be >= 1, got 0"),
    ("perceiver_num_heads", -1, "must be >= 1, got -1"),
    ("perceiver_head_dim", 0, "must be >= 1, got 0"),
    ("cross_attn_every_n_layers", 0, "must be >= 1, got 0"),
    ("cross_attn_num_heads", 0, "must be >= 1, got 0"),
    ("cross_attn_head_dim", 0, "must be >= 1, got 0"),
    ("cross_attn_every_n_layers", 3, "=3 exceeds the 2 decoder layers"),  # the tiny test LM has 2 layers
    ("num_items", -1, "must be >= 0, got -1"),
    ("item_representation", "ids", "must be one of .*'ids'"),
    ("item_image_encoder", "clip", "must be one of .*'clip'"),
    ("item_text_feature_dim", 0, "must be >= 1, got 0"),
])
def test_invalid_field_is_rejected_naming_it(field, value, message):
    with pytest.raises(ValueError, match=rf"UniMPConfig\.{field}.*{message}"):
        make_tiny_config(**{field: value})


@pytest.mark.parametrize(("num_layers", "every_n", "expected"), [
    (2, 1, [0, 1]),
    (4, 2, [1, 3]),  # before 1-based layers 2 and 4 (reference §1.3)
    (7, 3, [2, 5]),
])
def test_cross_attention_blocks_sit_before_every_nth_layer(num_layers, every_n, expected):
    config = make_tiny_config(text_config={**make_tiny_config().text_config.to_dict(), "num_hidden_layers": num_layers},
                              cross_attn_every_n_layers=every_n)
    assert config.cross_attn_layer_ids == expected


def test_item_token_ids_are_the_contiguous_catalogue_range():
    assert make_tiny_config().item_token_ids == range(0)  # no processor has filled the ids in yet
    assert list(make_tiny_config(item_token_start_id=100, num_items=3).item_token_ids) == [100, 101, 102]


def test_a_language_model_with_a_tied_head_keeps_it_tied():
    tied = make_tiny_config(text_config={**make_tiny_config().text_config.to_dict(), "tie_word_embeddings": True})
    assert tied.tie_word_embeddings and not make_tiny_config().tie_word_embeddings


def test_tiny_preset_builds_a_model_and_takes_overrides():
    config = UniMPConfig.tiny(cross_attn_every_n_layers=2, num_items=5)
    assert (config.cross_attn_every_n_layers, config.num_items, config.cross_attn_layer_ids) == (2, 5, [1])
    model = UniMPForConditionalGeneration(config)
    assert len(model.model.gated_cross_attn) == 1
    assert model.lm_head.out_features == config.text_config.vocab_size == 8192
    assert model.model.vision_model.config.image_size == 64


def test_paper_preset_is_openflamingo_4b():
    config = UniMPConfig.paper()
    text, vision = config.text_config, config.vision_config
    assert (text.model_type, text.num_hidden_layers, text.hidden_size) == ("gpt_neox", 32, 2560)
    assert (vision.model_type, vision.image_size, vision.patch_size) == ("clip_vision_model", 224, 14)
    assert config.cross_attn_layer_ids == list(range(1, 32, 2))  # 16 blocks, before every 2nd layer
    assert (config.perceiver_depth, config.perceiver_num_latents) == (6, 64)
    with torch.device("meta"):  # builds without allocating its 4 B parameters
        model = UniMPForConditionalGeneration(config)
    assert len(model.model.gated_cross_attn) == 16


def test_save_load_round_trip_keeps_every_field(tmp_path):
    config = make_tiny_config(gate_init=0.25, item_token_start_id=40, num_items=7, item_representation="id+content")
    config.save_pretrained(tmp_path)
    for loaded in (UniMPConfig.from_pretrained(tmp_path), AutoConfig.from_pretrained(tmp_path)):
        assert isinstance(loaded, UniMPConfig)
        assert {**loaded.to_dict(), "_name_or_path": ""} == config.to_dict()  # but where it was loaded from
        assert loaded.text_config.model_type == "llama" and loaded.vision_config.model_type == "clip_vision_model"
        assert loaded.cross_attn_layer_ids == config.cross_attn_layer_ids
