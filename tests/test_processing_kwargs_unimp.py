"""UniMPProcessor's standard kwargs (issue 15): return_tensors, padding, truncation of the oldest history items."""

import pytest
from PIL import Image
from transformers import AutoProcessor

from modeling_unimp import UniMPForConditionalGeneration

PROMPT = "<image> Title Toy Story <answer> <item_0> <|endofchunk|> <image> Title Up <answer> <item_2> " \
    "<|endofchunk|> What next? <answer>"


def _red():
    return Image.new("RGB", (40, 30), "red")


def test_return_tensors_np_and_none_and_padding_to_max_length(tiny_processor):
    import numpy as np

    batch = tiny_processor(text=[PROMPT], images=[[_red(), None]], return_tensors="np")
    assert isinstance(batch["input_ids"], np.ndarray) and isinstance(batch["pixel_values"], np.ndarray)
    length = batch["input_ids"].shape[1]
    padded = tiny_processor(text=[PROMPT], images=[[_red(), None]], padding="max_length", max_length=length + 5,
                            return_tensors=None)
    assert isinstance(padded["input_ids"], list) and len(padded["input_ids"][0]) == length + 5
    assert padded["attention_mask"][0] == [1] * length + [0] * 5
    assert padded["input_ids"][0][:length] == batch["input_ids"][0].tolist()
    unpadded = tiny_processor(text=[PROMPT, "<image> Title Heat <answer>"], images=[[None, None], [None]],
                              padding=False, return_tensors=None)
    assert [len(ids) for ids in unpadded["input_ids"]] == [length, len(unpadded["attention_mask"][1])]
    assert len(unpadded["input_ids"][1]) < length
    with pytest.raises(ValueError, match="padding=True"):
        tiny_processor(text=[PROMPT, "<image> Title Heat <answer>"], images=[[None, None], [None]], padding=False)


def test_truncation_drops_the_oldest_item_with_its_image_and_keeps_the_question(tiny_processor):
    full = tiny_processor(text=[PROMPT], images=[[_red(), None]])
    length = full["input_ids"].shape[1]
    batch = tiny_processor(text=[PROMPT], images=[[_red(), None]], truncation=True, max_length=length - 1)
    ids = batch["input_ids"][0].tolist()
    assert len(ids) <= length - 1
    text = tiny_processor.decode(ids)
    assert "Toy Story" not in text and "<item_0>" not in text  # the oldest item went, whole
    assert "Title Up" in text and text.replace(" ", "").endswith("Whatnext?<answer>")
    assert batch["pixel_values"].shape[1] == 1 and not batch["image_attention_mask"].any()  # its red image too
    assert ids[0] == tiny_processor.tokenizer.bos_token_id
    with pytest.raises(ValueError, match="never truncated"):
        tiny_processor(text=[PROMPT], images=[[_red(), None]], truncation=True, max_length=3)


def test_prompt_longer_than_the_model_positions_is_truncated_with_a_warning(tiny_processor):
    length = tiny_processor(text=[PROMPT], images=[[None, None]])["input_ids"].shape[1]
    tiny_processor.max_position_embeddings = length - 1
    with pytest.warns(UserWarning, match="positions"):
        batch = tiny_processor(text=[PROMPT], images=[[None, None]])
    assert batch["input_ids"].shape[1] <= length - 1
    assert tiny_processor.decode(batch["input_ids"][0]).rstrip().endswith("<answer>")


def test_prepare_model_records_the_positions_and_they_are_saved(tiny_processor, tiny_config, tmp_path):
    model = UniMPForConditionalGeneration(tiny_config)
    tiny_processor.prepare_model(model)
    assert tiny_processor.max_position_embeddings == model.config.get_text_config().max_position_embeddings
    tiny_processor.has_repeat_interactions = False
    tiny_processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert loaded.max_position_embeddings == tiny_processor.max_position_embeddings
    assert loaded.has_repeat_interactions is False and loaded.default_exclude_history is True
