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
