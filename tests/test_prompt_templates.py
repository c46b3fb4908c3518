"""Golden strings for every prompt template, training and evaluation form (reference §2.2, STYLE.md §7)."""

import ast
import math
from pathlib import Path

import pytest

from modeling_unimp import prompt_templates
from modeling_unimp.prompt_templates import (
    ANSWER_TOKEN,
    IMAGE_TOKEN,
    build_item_index,
    render_item_chunk,
    render_item_text,
    render_record,
)

ITEM_INDEX = {"A": 0, "B": 1, "C": 2, "D": 3, "E": 4}


def _item(item_id, title, image="img", **extra):
    return {"item_id": item_id, "attributes": [("Title", title), ("Price", None)], "image": f"{image}-{item_id}",
            "title": title, **extra}


A = _item("A", "Red Soap", rating=5, explanation="Smells great", image_codes="<img_1> <img_2>")
B = _item("B", "Blue Brush", rating=2, image_codes="<img_3> <img_4>")
C = _item("C", "Green Towel", rating=4, explanation="Soft and thick enough", image_codes="<img_5> <img_6>")
D = {"item_id": "D", "attributes": {"Title": "Lamp"}, "image": None}  # image-less item
E = _item("E", "Mug")

RECORDS = {
    "rec": {"task": "rec", "user_id": "u1", "history": [A, B], "target": C},
    "exp": {"task": "exp", "user_id": "u1", "history": [A, B], "target": C},
    "select": {"task": "select", "user_id": "u1", "history": [A, B], "candidates": [D, C, E], "answer_slots": [1]},
    "search": {"task": "search", "user_id": "u1", "history": [A, D], "target": C, "query": "Bath  Towels"},
    "imggen": {"task": "imggen", "user_id": "u1", "history": [A, B], "target": C, "query": "green towel"},
}

CHUNK_A, CHUNK_B = "<image> Title Red Soap Price Unknown", "<image> Title Blue Brush Price Unknown"
GOLDEN = [
    ("rec", "train",
     f"{CHUNK_A} <answer> <item_0> <|endofchunk|> {CHUNK_B} <answer> <item_1> <|endofchunk|> "
     "What is the next item recommended to the user? <answer> <item_2>",
     ["img-A", "img-B"], "<item_2>", 2.0),
    ("rec", "test",
     f"{CHUNK_A} <item_0> <|endofchunk|> {CHUNK_B} <item_1> <|endofchunk|> "
     "What is the next item recommended to the user? <answer>",
     ["img-A", "img-B"], "<item_2>", 2.0),
    ("exp", "train",
     f"{CHUNK_A} <answer> rate_5 Smells great <|endofchunk|> {CHUNK_B} <answer> rate_2 <|endofchunk|> "
     "<image> Title Green Towel Price Unknown What is the rating and explanation for the item? "
     "<answer> rate_4 Soft and thick enough",
     ["img-A", "img-B", "img-C"], "rate_4 Soft and thick enough", 1.0),
    ("exp", "test",
     f"{CHUNK_A} <answer> rate_5 Smells great <|endofchunk|> {CHUNK_B} <answer> rate_2 <|endofchunk|> "
     "<image> Title Green Towel Price Unknown What is the rating and explanation for the item? <answer>",
     ["img-A", "img-B", "img-C"], "rate_4 Soft and thick enough", 1.0),
    ("select", "train",
     f"User history: {CHUNK_A} <|endofchunk|> {CHUNK_B} <|endofchunk|> Select from: "
     "<image> Selection s_0 Title Lamp <|endofchunk|> "
     "<image> Selection s_1 Title Green Towel Price Unknown <|endofchunk|> "
     "<image> Selection s_2 Title Mug Price Unknown <|endofchunk|> "
     "Can you select the suitable item from above for the user? <answer> s_1",
     ["img-A", "img-B", None, "img-C", "img-E"], "s_1", 1.0),
    ("select", "test",
     f"User history: {CHUNK_A} <|endofchunk|> {CHUNK_B} <|endofchunk|> Select from: "
     "<image> Selection s_0 Title Lamp <|endofchunk|> "
     "<image> Selection s_1 Title Green Towel Price Unknown <|endofchunk|> "
     "<image> Selection s_2 Title Mug Price Unknown <|endofchunk|> "
     "Can you select the suitable item from above for the user? <answer>",
     ["img-A", "img-B", None, "img-C", "img-E"], "s_1", 1.0),
    ("search", "train",
     f"{CHUNK_A} <answer> <item_0> <|endofchunk|> <image> Title Lamp <answer> <item_3> <|endofchunk|> "
     "Query: Bath Towels What is the related item ID to the query based on the history? <answer> <item_2>",
     ["img-A", None], "<item_2>", 1.0),
    ("search", "test",
     f"{CHUNK_A} <item_0> <|endofchunk|> <image> Title Lamp <item_3> <|endofchunk|> "
     "Query: Bath Towels What is the related item ID to the query based on the history? <answer>",
     ["img-A", None], "<item_2>", 1.0),
    ("imggen", "train",
     "<image> Title Red Soap ID <img_1> <img_2> <|endofchunk|> <image> Title Blue Brush ID <img_3> <img_4> "
     "<|endofchunk|> Query: green towel What is the generated image ID to the query based on the history? "
     "<answer> <img_5> <img_6>",
     ["img-A", "img-B"], "<img_5> <img_6>", 1.0),
    ("imggen", "test",
     "<image> Title Red Soap ID <img_1> <img_2> <|endofchunk|> <image> Title Blue Brush ID <img_3> <img_4> "
     "<|endofchunk|> Query: green towel What is the generated image ID to the query based on the history? "
     "<answer>",
     ["img-A", "img-B"], "<img_5> <img_6>", 1.0),
]


@pytest.mark.parametrize(("task", "split", "text", "images", "answer", "weight"), GOLDEN,
                         ids=[f"{case[0]}-{case[1]}" for case in GOLDEN])
def test_render_record_matches_golden_string(task, split, text, images, answer, weight):
    rendered = render_record(RECORDS[task], split, item_index=ITEM_INDEX)
    assert rendered == {"text": text, "images": images, "task": task, "task_weight": weight, "answer": answer}


@pytest.mark.parametrize("task", sorted(RECORDS))
@pytest.mark.parametrize("eval_split", ["validation", "test"])
def test_training_text_is_eval_prompt_plus_answer(task, eval_split):
    train = render_record(RECORDS[task], "train", item_index=ITEM_INDEX)
    evaluation = render_record(RECORDS[task], eval_split, item_index=ITEM_INDEX)
    if task in ("rec", "search"):  # the only difference besides the answer: the history <answer> markers
        evaluation_text = render_record(RECORDS[task], eval_split, item_index=ITEM_INDEX,
                                        history_answer_marker=True)["text"]
    else:
        evaluation_text = evaluation["text"]
    assert evaluation["text"].endswith(ANSWER_TOKEN)
    assert train["text"] == f"{evaluation_text} {train['answer']}"


@pytest.mark.parametrize("task", sorted(RECORDS))
@pytest.mark.parametrize("split", ["train", "test"])
def test_templates_emit_no_bos_or_eos(task, split):
    text = render_record(RECORDS[task], split, item_index=ITEM_INDEX)["text"]
    assert text == text.strip()
    for marker in ("<|endoftext|>", "<s>", "</s>"):
        assert marker not in text


@pytest.mark.parametrize(("attributes", "expected"), [
    ([("Category", "Beauty Skin"), ("Price", 9.99), ("Brand", "Acme"), ("Title", "Soap")],
     "Category Beauty Skin Price 9.99 Brand Acme Title Soap"),
    ({"Title": "Soap", "Brand": "Acme"}, "Title Soap Brand Acme"),
    ([{"key": "Title", "value": "Soap"}, {"key": "Brand", "value": None}], "Title Soap Brand Unknown"),
    ([("A", None), ("B", ""), ("C", "   "), ("D", math.nan)], "A Unknown B Unknown C Unknown D Unknown"),
    ([("Title", " ".join(f"w{i}" for i in range(30)))], "Title " + " ".join(f"w{i}" for i in range(20))),
    ([("Title", "multi\nline\ttext")], "Title multi line text"),
    ([("Title", "evil <image> and <answer> <item_3> <|endofchunk|>")], "Title evil and"),
    ([("Category", ["Beauty", "Skin Care"])], "Category Beauty Skin Care"),
    ([], ""),
])
def test_render_item_text_flattens_in_order_with_one_unknown_rule(attributes, expected):
    assert render_item_text(attributes) == expected


def test_render_item_text_word_budget_applies_per_value():
    attributes = [("Title", "a b c d"), ("Brand", "e f g")]
    assert render_item_text(attributes, word_budget=2) == "Title a b Brand e f"
    assert render_item_text(attributes, word_budget=None) == "Title a b c d Brand e f g"


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"label": "<item_7>", "with_answer": True}, "<image> Title Soap <answer> <item_7> <|endofchunk|> "),
    ({"label": "<item_7>"}, "<image> Title Soap <item_7> <|endofchunk|> "),
    ({}, "<image> Title Soap <|endofchunk|> "),
    ({"prefix": "Selection s_2"}, "<image> Selection s_2 Title Soap <|endofchunk|> "),
])
def test_render_item_chunk_framing_has_trailing_space(kwargs, expected):
    assert render_item_chunk({"attributes": [("Title", "Soap")]}, **kwargs) == expected


def test_free_text_cannot_add_image_tokens():
    sneaky = {"item_id": "A", "attributes": [("Title", "<image><image> <answer>")], "image": None,
              "rating": 3, "explanation": "I loved <image> it <|endofchunk|>"}
    record = {"task": "exp", "history": [sneaky], "target": sneaky}
    rendered = render_record(record, "train")
    assert rendered["text"].count(IMAGE_TOKEN) == len(rendered["images"]) == 2
    assert rendered["text"].count(ANSWER_TOKEN) == 2
    assert rendered["answer"] == "rate_3 I loved it"


def test_item_without_image_keeps_its_image_token_and_a_none():
    rendered = render_record({"task": "rec", "history": [D, D], "target": A}, "test", item_index=ITEM_INDEX)
    assert rendered["images"] == [None, None]
    assert rendered["text"].count(IMAGE_TOKEN) == 2


def test_explanation_budget_is_the_same_in_train_and_eval():
    long = dict(A, explanation=" ".join(f"w{i}" for i in range(40)))
    record = {"task": "exp", "history": [long], "target": long}
    train = render_record(record, "train")
    evaluation = render_record(record, "test")
    assert train["answer"] == "rate_5 " + " ".join(f"w{i}" for i in range(30))
    assert train["text"].startswith(evaluation["text"].split(" <|endofchunk|> ")[0])
    assert "w29" in evaluation["text"] and "w30" not in evaluation["text"]


def test_selection_answer_lists_every_positive_slot_in_order():
    record = dict(RECORDS["select"], answer_slots=[2, 0])
    assert render_record(record, "train")["answer"] == "s_0 s_2"


def test_task_weights_default_and_override():
    assert render_record(RECORDS["rec"], "train", item_index=ITEM_INDEX)["task_weight"] == 2.0
    rendered = render_record(RECORDS["rec"], "train", item_index=ITEM_INDEX, task_weights={"rec": 0.5})
    assert rendered["task_weight"] == 0.5


def test_build_item_index_numbers_in_order_and_rejects_duplicates():
    assert build_item_index(["x", "y"]) == {"x": 0, "y": 1}
    with pytest.raises(ValueError, match="'x' appears twice"):
        build_item_index(["x", "y", "x"])


@pytest.mark.parametrize(("record", "split", "error", "match"), [
    ({"task": "rec", "user_id": "u9", "history": [], "target": A}, "train", ValueError, "u9.*'history' is empty"),
    ({"task": "rec", "history": [A, {"item_id": "Z", "attributes": []}], "target": C}, "train", KeyError,
     r"history\[1\].item_id 'Z' is not in item_index"),
    ({"task": "search", "history": [A], "target": {"item_id": "Q"}, "query": "x"}, "test", KeyError,
     "target.item_id 'Q'"),
    ({"task": "exp", "history": [dict(A, rating=7)], "target": C}, "train", ValueError,
     r"history\[0\].rating must be an int from 1 to 5, got 7"),
    ({"task": "exp", "history": [A], "target": dict(C, rating=None)}, "test", ValueError, "target.rating"),
    ({"task": "dance", "history": [A], "target": C}, "train", ValueError, "field 'task'"),
    ({"task": "rec", "history": [A], "target": C}, "dev", ValueError, "split='dev'"),
    ({"task": "search", "history": [A], "target": C}, "train", ValueError, "'query' is empty"),
    ({"task": "select", "history": [A], "candidates": [A, B], "answer_slots": [2]}, "train", ValueError,
     "'answer_slots'"),
    ({"task": "select", "history": [A], "candidates": [A] * 6, "answer_slots": [0]}, "train", ValueError,
     "'candidates' must hold 1 to 5"),
    ({"task": "imggen", "history": [E], "target": C, "query": "q"}, "train", ValueError,
     r"history\[0\].image_codes is missing"),
    ({"task": "rec", "history": [A], "target": "C"}, "train", ValueError, "field 'target' must be an item dict"),
])
def test_bad_records_raise_naming_record_and_field(record, split, error, match):
    with pytest.raises(error, match=match):
        render_record(record, split, item_index=ITEM_INDEX)


def test_rec_without_item_index_says_what_to_pass():
    with pytest.raises(ValueError, match="pass item_index"):
        render_record(RECORDS["rec"], "train")


def test_module_is_stdlib_only_for_remote_code():
    tree = ast.parse(Path(prompt_templates.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert imported <= {"math", "re", "collections", "typing"}


def test_next_item_order_puts_each_history_token_before_its_content():
    record = {"task": "rec", "history": [_item("A", "Heat"), _item("B", "Up")], "target": _item("C", "Jaws")}
    train = render_record(record, "train", item_index=ITEM_INDEX, context_order="next_item")
    assert train["text"] == (
        "<item_0> <image> Title Heat Price Unknown <|endofchunk|> "
        "<answer> <item_1> <image> Title Up Price Unknown <|endofchunk|> "
        "What is the next item recommended to the user? <answer> <item_2>"
    )
    assert train["images"] == ["img-A", "img-B"] and train["answer"] == "<item_2>"
    test = render_record(record, "test", item_index=ITEM_INDEX, context_order="next_item", history_answer_marker=True)
    assert train["text"] == f"{test['text']} <item_2>"
    plain = render_record(record, "test", item_index=ITEM_INDEX, context_order="next_item")
    assert ANSWER_TOKEN not in plain["text"].rsplit("?", 1)[0]  # the eval default keeps history ids as plain context


def test_next_item_order_leaves_other_tasks_and_rejects_unknown_orders():
    record = {"task": "exp", "history": [_item("A", "Heat", rating=4)], "target": _item("B", "Up", rating=5)}
    assert render_record(record, "train", context_order="next_item") == render_record(record, "train")
    with pytest.raises(ValueError, match="context_order must be one of"):
        render_record({**record, "task": "rec"}, "train", item_index=ITEM_INDEX, context_order="reversed")


@pytest.mark.parametrize("order, expected", [
    ("next_item", "<item_0> <|endofchunk|> <answer> <item_1> <|endofchunk|> "
                  "<answer> <item_2> <image> Title Jaws Price Unknown <|endofchunk|> "),
    ("paper", "<answer> <item_0> <|endofchunk|> <answer> <item_1> <|endofchunk|> "
              "<image> Title Jaws Price Unknown <answer> <item_2> <|endofchunk|> "),
])
def test_older_history_items_can_be_their_token_alone(order, expected):
    history = [_item("A", "Heat"), _item("B", "Up"), _item("C", "Jaws")]
    record = {"task": "rec", "history": history, "target": _item("D", "Alien")}
    rendered = render_record(record, "train", item_index=ITEM_INDEX, context_order=order, content_history_items=1)
    assert rendered["text"] == f"{expected}What is the next item recommended to the user? <answer> <item_3>"
    assert rendered["images"] == ["img-C"]  # token-only items have no <image> and no image slot
    everything = render_record(record, "train", item_index=ITEM_INDEX, context_order=order, content_history_items=3)
    assert everything == render_record(record, "train", item_index=ITEM_INDEX, context_order=order)
    with pytest.raises(ValueError, match="content_history_items"):
        render_record(record, "train", item_index=ITEM_INDEX, content_history_items=-1)


# ------------------------------------------------------------------ exp with content_history_items (issue 18)
EXP_LONG = {"task": "exp", "user_id": "u1", "history": [A, B, C], "target": {**E, "rating": 3}}
EXP_TAIL = ("<image> Title Mug Price Unknown What is the rating and explanation for the item? <answer>")


@pytest.mark.parametrize("split", ["train", "test"])
def test_exp_older_history_items_are_their_token_and_rating_alone(split):
    rendered = render_record(EXP_LONG, split, item_index=ITEM_INDEX, content_history_items=1)
    prompt = ("<item_0> <answer> rate_5 <|endofchunk|> <item_1> <answer> rate_2 <|endofchunk|> "  # no explanation
              "<image> Title Green Towel Price Unknown <answer> rate_4 Soft and thick enough <|endofchunk|> "
              + EXP_TAIL)
    assert rendered["text"] == (f"{prompt} rate_3" if split == "train" else prompt)
    assert rendered["images"] == ["img-C", "img-E"]  # the content item and the target: one per <image>
    assert rendered["text"].count(IMAGE_TOKEN) == len(rendered["images"])
    assert rendered["answer"] == "rate_3"


def test_exp_with_no_content_history_items_shows_only_the_target_image():
    rendered = render_record(EXP_LONG, "test", item_index=ITEM_INDEX, content_history_items=0)
    assert rendered["text"] == ("<item_0> <answer> rate_5 <|endofchunk|> <item_1> <answer> rate_2 <|endofchunk|> "
                                "<item_2> <answer> rate_4 <|endofchunk|> " + EXP_TAIL)
    assert rendered["images"] == ["img-E"] and rendered["text"].count(IMAGE_TOKEN) == 1


@pytest.mark.parametrize("split", ["train", "test"])
def test_exp_default_rendering_is_unchanged_and_needs_no_item_index(split):
    """None (the default) shows every history item with content, byte for byte the golden string, without
    `item_index`; a window at least as long as the history renders the same."""
    _, _, text, images, answer, _ = next(case for case in GOLDEN if case[:2] == ("exp", split))
    rendered = render_record(RECORDS["exp"], split)
    assert (rendered["text"], rendered["images"], rendered["answer"]) == (text, images, answer)
    for count in (2, 5):
        assert render_record(RECORDS["exp"], split, content_history_items=count) == rendered


def test_exp_token_only_history_without_item_index_names_the_record_and_field():
    with pytest.raises(ValueError, match=r"user_id='u1', task='exp'.*field 'history' has 2 item\(s\) before the "
                                         r"last content_history_items=1.*pass item_index"):
        render_record(EXP_LONG, "test", content_history_items=1)
    with pytest.raises(ValueError, match="content_history_items must be >= 0"):
        render_record(EXP_LONG, "test", item_index=ITEM_INDEX, content_history_items=-1)
