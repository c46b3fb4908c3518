"""UniMPDataCollator: labels only on answer spans, context-reconstruction and task weights (reference §3)."""

import pytest
import torch

from modeling_unimp.modeling_unimp import IGNORE_INDEX
from processing import UniMPDataCollator

TEXT = "<image> Title Toy Story <answer> <item_0> <|endofchunk|> <image> Title Heat <answer> <item_1> " \
    "<|endofchunk|> What next? <answer> <item_2>"


def _supervised_tokens(processor, batch, row=0):
    labels = batch["labels"][row]
    return processor.tokenizer.convert_ids_to_tokens(labels[labels != IGNORE_INDEX].tolist())


def test_labels_are_minus_100_outside_answer_spans(tiny_processor):
    batch = UniMPDataCollator(tiny_processor)([{"text": TEXT, "images": [None, None], "task_weight": 2.0}])
    assert _supervised_tokens(tiny_processor, batch) == ["<item_0>", "<item_1>", "<item_2>", "<|endoftext|>"]
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    supervised = labels != IGNORE_INDEX
    assert torch.equal(labels[supervised], ids[supervised])


@pytest.mark.parametrize("context_weight, expected", [(1.0, [2.0, 2.0, 2.0, 2.0]), (0.0, [0.0, 0.0, 2.0, 2.0])])
def test_context_reconstruction_weight_applies_to_history_answers_only(tiny_processor, context_weight, expected):
    collator = UniMPDataCollator(tiny_processor, context_weight=context_weight)
    batch = collator([{"text": TEXT, "images": [None, None], "task_weight": 2.0}])
    weights = batch["token_weights"][0]
    assert weights[batch["labels"][0] != IGNORE_INDEX].tolist() == expected
    assert weights[batch["labels"][0] == IGNORE_INDEX].eq(0).all()


def test_multi_token_answers_and_right_padding(tiny_processor):
    examples = [
        {"text": "<image> Heat <answer> rate_4 Great heist <|endofchunk|> <image> Up <answer> rate_5 Fun",
         "images": [None, None], "task_weight": 1.0},
        {"text": "<image> Heat <answer> <item_1>", "images": [None], "task_weight": 2.0},
    ]
    batch = UniMPDataCollator(tiny_processor)(examples)
    first = _supervised_tokens(tiny_processor, batch, 0)
    assert first[0] == "rate_4" and "rate_5" in first and first[-1] == "<|endoftext|>"
    assert "<|endofchunk|>" not in first and "<answer>" not in first
    assert batch["attention_mask"][1, -1] == 0  # right padding
    assert (batch["labels"][1][batch["attention_mask"][1] == 0] == IGNORE_INDEX).all()


def test_generation_mode_pads_left_without_labels(tiny_processor):
    batch = UniMPDataCollator(tiny_processor, for_generation=True)(
        [{"text": "<image> Heat <answer>", "images": [None]}, {"text": TEXT.rsplit(" ", 1)[0], "images": [None, None]}]
    )
    assert "labels" not in batch and batch["attention_mask"][0, 0] == 0
    assert batch["input_ids"][0, -1] == tiny_processor.tokenizer.convert_tokens_to_ids("<answer>")


def test_missing_field_raises_naming_it(tiny_processor):
    with pytest.raises(ValueError, match="'images'"):
        UniMPDataCollator(tiny_processor)([{"text": "<answer> <item_0>"}])


def test_next_item_history_answers_supervise_only_the_item_token(tiny_processor):
    text = ("<item_0> <image> Title Toy Story <|endofchunk|> <answer> <item_1> <image> Title Heat <|endofchunk|> "
            "What next? <answer> <item_2>")
    batch = UniMPDataCollator(tiny_processor, context_weight=0.5)([{"text": text, "images": [None, None],
                                                                     "task_weight": 2.0}])
    assert _supervised_tokens(tiny_processor, batch) == ["<item_1>", "<item_2>", "<|endoftext|>"]
    weights = batch["token_weights"][0]
    assert weights[batch["labels"][0] != IGNORE_INDEX].tolist() == [1.0, 2.0, 2.0]


def _loop_labels(input_ids, attention_mask, task_weights, context_weight, stop_ids, answer_id):
    """The per-token loop the vectorised build_labels replaced (reference for the test below)."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    weights = torch.zeros(input_ids.shape)
    for row in range(input_ids.shape[0]):
        ids = input_ids[row].tolist()
        starts = [t for t, token in enumerate(ids) if token == answer_id and attention_mask[row, t]]
        for span, start in enumerate(starts):
            weight = task_weights[row] * (1.0 if span == len(starts) - 1 else context_weight)
            for t in range(start + 1, len(ids)):
                if not attention_mask[row, t] or ids[t] in stop_ids:
                    break
                labels[row, t], weights[row, t] = ids[t], weight
    labels[:, 0], weights[:, 0] = IGNORE_INDEX, 0.0
    return labels, weights


def test_vectorised_labels_equal_the_token_loop_on_random_sequences(tiny_processor):
    tokenizer = tiny_processor.tokenizer
    answer_id, end_id, image_id = tokenizer.convert_tokens_to_ids(["<answer>", "<|endofchunk|>", "<image>"])
    generator = torch.Generator().manual_seed(0)
    vocabulary = torch.tensor([answer_id, end_id, image_id, 7, 8, 9, 10, 11])
    input_ids = vocabulary[torch.randint(0, len(vocabulary), (6, 40), generator=generator)]
    lengths = torch.tensor([40, 33, 20, 1, 12, 39])
    attention_mask = (torch.arange(40) < lengths.unsqueeze(1)).long()
    task_weights = torch.tensor([2.0, 1.0, 1.5, 1.0, 3.0, 0.5])
    collator = UniMPDataCollator(tiny_processor, context_weight=0.25)
    labels, weights = collator.build_labels(input_ids, attention_mask, task_weights)
    expected_labels, expected_weights = _loop_labels(input_ids, attention_mask, task_weights, 0.25,
                                                     (answer_id, end_id, image_id), answer_id)
    assert (expected_labels != IGNORE_INDEX).sum() > 20  # the random batch has spans to compare
    assert torch.equal(labels, expected_labels)
    assert torch.equal(weights, expected_weights)


def test_image_cache_gives_the_batch_of_the_images(tiny_processor):
    from PIL import Image

    from modeling_unimp import UniMPImageCache

    red, blue = Image.new("RGB", (40, 30), "red"), Image.new("RGB", (32, 32), "blue")
    examples = [{"text": TEXT, "images": [red, None], "task_weight": 2.0},
                {"text": TEXT, "images": [blue, red], "task_weight": 1.0}]
    plain = UniMPDataCollator(tiny_processor)(examples)
    cache = UniMPImageCache(tiny_processor)
    cached = UniMPDataCollator(tiny_processor, image_cache=cache)(examples)
    assert plain.keys() == cached.keys() and len(cache) == 2
    for key in plain:
        assert torch.equal(plain[key], cached[key]), key
