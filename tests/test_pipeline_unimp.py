"""pipeline("unimp-recommend"): in memory, from a saved folder, as remote code; exact vs beam ranking; bad input."""

import copy
import doctest
import json
import os
import textwrap

import pytest
import torch
from conftest import make_tiny_config, make_tiny_model, run_without_package
from PIL import Image
from transformers import pipeline

from modeling_unimp import UniMPForConditionalGeneration, UniMPProcessor, UniMPRecommendPipeline
from modeling_unimp import pipeline_unimp as pipeline_module
from modeling_unimp.prompt_templates import SELECTION_TOKENS, render_record

NUM_ITEMS = 12
ITEM_IDS = [f"m{k}" for k in range(NUM_ITEMS)]
TITLES = [f"Movie {k}" for k in range(NUM_ITEMS)]
COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]  # items m0-m5 have a poster, m6-m11 none
HISTORY = ["m1", "m7", "m3"]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory, tiny_tokenizer):
    """A 12-item processor (half with poster files) and a matching tiny model with open gates."""
    folder = tmp_path_factory.mktemp("posters")
    images = []
    for k in range(NUM_ITEMS):
        if k < len(COLORS):
            path = folder / f"m{k}.png"
            Image.new("RGB", (32, 32), COLORS[k]).save(path)
            images.append(str(path))
        else:
            images.append(None)
    processor = UniMPProcessor.from_catalogue(copy.deepcopy(tiny_tokenizer), ITEM_IDS, TITLES, images, image_size=32)
    model = make_tiny_model(processor, gate=0.5)  # open gates: images move the scores
    return model, processor


@pytest.fixture(scope="module")
def recommend(catalogue):
    model, processor = catalogue
    return pipeline("unimp-recommend", model=model, processor=processor, device="cpu")


def _catalogue_item(processor, item_id: str) -> dict:
    """What an item id stands for without `items=`: its title as the one attribute, and its catalogue image."""
    k = processor.item_index(item_id)
    return {"item_id": item_id, "attributes": [("Title", processor.item_titles[k])], "image": processor.item_images[k]}


def _ids(results) -> list[str]:
    return [result["item_id"] for result in results]


def _assert_same_results(first, second, atol=1e-6):
    assert _ids(first) == _ids(second)
    for a, b in zip(first, second):
        assert a["score"] == pytest.approx(b["score"], abs=atol)
        assert (a["title"], a["image"]) == (b["title"], b["image"])


# ------------------------------------------------------------------ prompts
def test_render_prompt_is_render_record_in_its_evaluation_form_without_the_answer(catalogue):
    _, processor = catalogue
    history = [_catalogue_item(processor, item_id) | {"rating": 4} for item_id in HISTORY]
    target = _catalogue_item(processor, "m5") | {"rating": 2}
    records = [{"task": "rec", "history": history, "target": target},
               {"task": "search", "history": history, "target": target, "query": "heist"},
               {"task": "exp", "history": history, "target": target},
               {"task": "select", "history": history, "candidates": [target, history[0]], "answer_slots": [1]}]
    item_index = {item_id: k for k, item_id in enumerate(processor.item_ids)}
    for record in records:
        expected = render_record(record, "test", item_index=item_index, history_answer_marker=True)
        expected.pop("answer")
        without_answer = {key: value for key, value in record.items() if key not in ("answer_slots",)}
        if record["task"] in ("rec", "search"):
            without_answer.pop("target")
        if record["task"] == "exp":
            without_answer["target"] = {k: v for k, v in target.items() if k != "rating"}
        assert processor.render_prompt(without_answer) == expected, record["task"]
        assert expected["text"].endswith("<answer>")


# ------------------------------------------------------------------ exact ranking
def test_top_k_equals_torch_topk_of_score_items_over_the_whole_catalogue(catalogue, recommend):
    model, processor = catalogue
    items = [_catalogue_item(processor, item_id) for item_id in HISTORY]
    prompt = processor.render_prompt({"task": "rec", "history": items})
    assert prompt["text"].endswith("<answer>") and prompt["text"].count("<answer>") == len(HISTORY) + 1
    batch = processor(text=[prompt["text"]], images=[prompt["images"]], padding_side="left")
    logits = model.score_items(**batch)[0]
    expected = torch.topk(logits, 5)
    results = recommend(HISTORY, top_k=5)
    assert _ids(results) == [ITEM_IDS[k] for k in expected.indices.tolist()]
    probabilities = logits.softmax(-1)[expected.indices]
    assert [r["score"] for r in results] == pytest.approx(probabilities.tolist(), abs=1e-6)
    assert results[0] == {"item_id": results[0]["item_id"], "score": results[0]["score"],
                          "title": TITLES[ITEM_IDS.index(results[0]["item_id"])],
                          "image": processor.item_images[ITEM_IDS.index(results[0]["item_id"])]}
    _assert_same_results(recommend(items, top_k=5), results)  # ids expand to the catalogue item dicts


@pytest.mark.parametrize("exclude_history", [False, True])
def test_beam_search_gives_the_same_top_k_as_exact_scoring(recommend, exclude_history):
    exact = recommend(HISTORY, top_k=6, exclude_history=exclude_history)
    beam = recommend(HISTORY, top_k=6, method="beam", num_beams=8, exclude_history=exclude_history)
    _assert_same_results(beam, exact, atol=1e-5)
    if exclude_history:
        assert not set(_ids(beam)) & set(HISTORY)


def test_exclude_history_drops_seen_items_and_keeps_the_order_of_the_rest(recommend):
    everything = recommend(HISTORY, top_k=NUM_ITEMS)
    unseen = recommend(HISTORY, top_k=NUM_ITEMS, exclude_history=True)
    assert len(everything) == NUM_ITEMS and len(unseen) == NUM_ITEMS - len(HISTORY)
    assert _ids(unseen) == [i for i in _ids(everything) if i not in HISTORY]


def test_batched_histories_give_the_results_of_one_at_a_time(recommend):
    histories = [HISTORY, ["m2"], ["m9", "m0", "m4", "m4"]]
    batched = recommend(histories, top_k=4, batch_size=2)
    assert len(batched) == 3
    for history, results in zip(histories, batched):
        _assert_same_results(results, recommend(history, top_k=4), atol=1e-5)  # left padding is exact up to rounding
    records = recommend([{"history": h} for h in histories], top_k=4)
    for first, second in zip(records, batched):
        _assert_same_results(first, second, atol=1e-5)


def _pixel_path_scores(model, processor, histories: list[list[dict]]) -> torch.Tensor:
    """Softmax scores of the pipeline's exact path before issue 13: the processor's left-padded pixel batch (the
    vision tower on every image of every prompt) through `score_items`."""
    prompts = [processor.render_prompt({"task": "rec", "history": history}) for history in histories]
    batch = processor(text=[p["text"] for p in prompts], images=[p["images"] for p in prompts], padding_side="left")
    return model.score_items(**batch).softmax(dim=-1)


def _count_encoded_images(model) -> tuple[list, object]:
    """(the list that collects the number of images per vision-tower call, the hook handle)."""
    counts = []
    handle = model.model.vision_model.register_forward_hook(
        lambda module, args, kwargs, output: counts.append(kwargs["pixel_values"].shape[0]), with_kwargs=True)
    return counts, handle


def test_exact_ranking_with_cached_latents_equals_the_pixel_path(catalogue, tmp_path):
    """The exact path feeds each image's cached perceiver latents (right padded) instead of running the vision tower
    on pixels (left padded): the same top-10 and scores within float32 tolerance, in a batch of users with posters,
    image-less items, a caller's PIL image and an undecodable file; the tower runs once per cached image."""
    model, processor = catalogue
    recommend = pipeline("unimp-recommend", model=model, processor=processor, device="cpu")  # empty image cache
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    extra = [{"item_id": "m8", "attributes": [("Title", "Heat")], "image": Image.new("RGB", (32, 32), "cyan")},
             {"item_id": "m10", "attributes": [("Title", "Up")], "image": str(broken)}]
    histories = [HISTORY, ["m0", "m2", "m4", "m5", "m6"], ["m9"], ["m1", extra[0]], ["m2", extra[1], "m4"]]
    as_items = [[entry if isinstance(entry, dict) else _catalogue_item(processor, entry) for entry in history]
                for history in histories]
    with pytest.warns(UserWarning, match="could not be decoded"):
        expected = _pixel_path_scores(model, processor, as_items)
    top = expected.topk(10, dim=-1)
    # ranks can only swap across a gap smaller than the paths' rounding (~1e-7 on these O(0.1) float32 scores)
    assert (-top.values.diff(dim=-1) > 1e-6).all(), "near-ties in the reference ranking: the test would say nothing"
    counts, handle = _count_encoded_images(model)
    try:
        with pytest.warns(UserWarning, match="could not be decoded"):
            first = recommend(histories, top_k=10, batch_size=3)  # two batches of different prompt lengths
        encoded_first, counts[:] = sum(counts), []
        again = recommend(histories, top_k=10, batch_size=3)
    finally:
        handle.remove()
    for row, results in enumerate(first):
        assert _ids(results) == [ITEM_IDS[k] for k in top.indices[row].tolist()], row
        torch.testing.assert_close(torch.tensor([r["score"] for r in results]), top.values[row])
    posters = {image for history in as_items for item in history for image in [item["image"]]
               if isinstance(image, str) and image != str(broken)}
    assert encoded_first == len(posters) + 1  # each poster file once, and the caller's PIL image
    assert sum(counts) == 1  # warm: only the PIL image, which a pipeline does not keep
    assert again == first


def test_exact_ranking_with_latents_keeps_the_images_of_a_truncated_prompt(catalogue):
    """A prompt longer than the model's positions loses its oldest items and their images in the processor; the
    cached latents follow (the newest images stay), as the pixel batch does."""
    model, processor = catalogue
    short = copy.deepcopy(processor)
    history = ["m0", "m7", "m1", "m3"]
    as_items = [_catalogue_item(processor, item_id) for item_id in history]
    prompt = processor.render_prompt({"task": "rec", "history": as_items})
    length = processor(text=[prompt["text"]], images=[prompt["images"]])["input_ids"].shape[1]
    short.max_position_embeddings = length - 1  # one token short: the oldest item (m0 and its poster) is dropped
    with pytest.warns(UserWarning, match="positions"):
        expected = _pixel_path_scores(model, short, [as_items])[0]
    with pytest.warns(UserWarning, match="positions"):
        results = pipeline("unimp-recommend", model=model, processor=short, device="cpu")(history, top_k=10)
    top = expected.topk(10)
    assert _ids(results) == [ITEM_IDS[k] for k in top.indices.tolist()]
    torch.testing.assert_close(torch.tensor([r["score"] for r in results]), top.values)


def test_max_history_items_keeps_the_most_recent_items(recommend):
    long_history = [f"m{k % NUM_ITEMS}" for k in range(13)]
    _assert_same_results(recommend(long_history, top_k=3), recommend(long_history[-10:], top_k=3))  # default 10
    _assert_same_results(recommend(long_history, top_k=3, max_history_items=2), recommend(long_history[-2:], top_k=3))
    recommend.processor.max_history_items = 4  # a processor saved by recipes.train records its training window
    try:
        _assert_same_results(recommend(long_history, top_k=3), recommend(long_history[-4:], top_k=3))
    finally:
        recommend.processor.max_history_items = 10


# ------------------------------------------------------------------ item dicts and images
def test_item_dicts_with_images_pil_and_path_agree_and_the_image_matters(recommend, tmp_path):
    picture = Image.new("RGB", (32, 32), "cyan")
    path = tmp_path / "cyan.png"
    picture.save(path)
    base = {"item_id": "m8", "attributes": [("Title", "Heat"), ("Genre", "Action Crime")]}
    with_pil = recommend(["m1", {**base, "image": picture}], top_k=NUM_ITEMS)
    with_path = recommend(["m1", {**base, "image": str(path)}], top_k=NUM_ITEMS)
    without = recommend(["m1", {**base, "image": None}], top_k=NUM_ITEMS)
    _assert_same_results(with_pil, with_path)
    assert [r["score"] for r in with_pil] != pytest.approx([r["score"] for r in without], abs=1e-6)


def test_undecodable_image_warns_and_gives_the_text_only_answer(recommend, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    base = {"item_id": "m8", "title": "Heat"}
    with pytest.warns(UserWarning, match="could not be decoded"):
        results = recommend(["m1", {**base, "image": str(broken)}], top_k=5)
    _assert_same_results(results, recommend(["m1", {**base, "image": None}], top_k=5))


def test_items_mapping_supplies_the_training_time_attributes(catalogue, recommend):
    _, processor = catalogue
    items = {item_id: {"item_id": item_id, "attributes": [("Title", f"T{item_id}"), ("Genres", "Drama")],
                       "image": None} for item_id in ITEM_IDS}
    expected = recommend([items[i] for i in HISTORY], top_k=4)
    _assert_same_results(recommend(HISTORY, top_k=4, items=items), expected)
    top = recommend(HISTORY, top_k=1, items=items)[0]
    title_only = {result["item_id"]: result["score"] for result in recommend(HISTORY, top_k=NUM_ITEMS)}
    assert top["score"] != pytest.approx(title_only[top["item_id"]], abs=1e-6)  # the attributes reach the model


# ------------------------------------------------------------------ other tasks
def test_search_ranks_the_catalogue_for_a_query(recommend):
    results = recommend(HISTORY, task="search", query="crime thriller", top_k=NUM_ITEMS)
    assert sorted(_ids(results)) == sorted(ITEM_IDS)
    assert _ids(results) != _ids(recommend(HISTORY, top_k=NUM_ITEMS))
    beam = recommend({"history": HISTORY, "task": "search", "query": "crime thriller"}, top_k=3, method="beam")
    _assert_same_results(beam, results[:3], atol=1e-5)


def test_exp_returns_a_rating_and_generated_text(recommend):
    history = [{"item_id": "m1", "rating": 4, "explanation": "great fun"}, {"item_id": "m2", "rating": 2}]
    result = recommend(history, task="exp", target="m3", max_new_tokens=6, num_beams=2)
    assert result["rating_token"] in (1, 2, 3, 4, 5) and isinstance(result["rating"], float)
    assert result["generated_text"].startswith(f"rate_{result['rating_token']}")
    assert isinstance(result["explanation"], str)
    batched = recommend([{"history": history, "task": "exp", "target": "m3"}] * 2, max_new_tokens=6, num_beams=2)
    assert batched[0] == batched[1]
    assert set(batched[0]) == {"rating", "rating_token", "explanation", "generated_text"}


def _expected_rating_by_hand(model, processor, record: dict) -> float:
    """sum_k k * p(rate_k), p the softmax over the five rating tokens of the model's next-token logits at the end of
    the record's prompt (render_record's evaluation form, one forward pass, no generate)."""
    item_index = {item_id: k for k, item_id in enumerate(processor.item_ids)}
    prompt = render_record(record, "test", item_index=item_index, history_answer_marker=True,
                           content_history_items=processor.content_history_items)
    batch = processor(text=[prompt["text"]], images=[prompt["images"]], padding_side="left")
    with torch.no_grad():
        logits = model(**batch).logits[0, -1]
    rating_ids = processor.tokenizer.convert_tokens_to_ids([f"rate_{k}" for k in range(1, 6)])
    probabilities = logits[rating_ids].softmax(-1)
    assert not torch.allclose(probabilities, torch.full((5,), 0.2))  # a real distribution, not a uniform one
    return float(probabilities @ torch.arange(1.0, 6.0))


@pytest.mark.parametrize("num_beams", [1, 3])
def test_exp_rating_is_the_expected_rating_under_the_rating_token_distribution(catalogue, recommend, num_beams):
    """`rating` = sum_k k * p(rate_k) from the prompt's own logits (beam search or greedy, temperature ignored);
    `rating_token` = the generated first token's rating, the constrained step's argmax."""
    model, processor = catalogue
    history = [{"item_id": "m1", "rating": 4, "explanation": "great fun"}, {"item_id": "m7", "rating": 2},
               {"item_id": "m3", "rating": 5}]
    result = recommend(history, task="exp", target="m5", max_new_tokens=4, num_beams=num_beams, temperature=0.5)
    record = {"task": "exp", "history": [_catalogue_item(processor, h["item_id"]) | h for h in history],
              "target": _catalogue_item(processor, "m5") | {"rating": 1}}
    expected = _expected_rating_by_hand(model, processor, record)
    assert isinstance(result["rating"], float) and 1.0 <= result["rating"] <= 5.0
    assert result["rating"] == pytest.approx(expected, rel=1e-5)
    assert result["rating"] != pytest.approx(float(result["rating_token"]), abs=1e-3)  # not the token's rating
    assert result["rating_token"] in range(1, 6)
    if num_beams == 1:  # greedy: the generated token is the most likely rating
        item_index = {item_id: k for k, item_id in enumerate(processor.item_ids)}
        prompt = render_record(record, "test", item_index=item_index, history_answer_marker=True)
        batch = processor(text=[prompt["text"]], images=[prompt["images"]], padding_side="left")
        with torch.no_grad():
            logits = model(**batch).logits[0, -1]
        rating_ids = processor.tokenizer.convert_tokens_to_ids([f"rate_{k}" for k in range(1, 6)])
        assert result["rating_token"] == int(logits[rating_ids].argmax()) + 1


def test_exp_honours_content_history_items_and_needs_ids_for_token_only_items(catalogue, recommend):
    model, processor = catalogue
    history = [{"item_id": "m1", "rating": 4}, {"item_id": "m7", "rating": 2}, {"item_id": "m3", "rating": 5}]
    record = {"task": "exp", "history": [_catalogue_item(processor, h["item_id"]) | h for h in history],
              "target": _catalogue_item(processor, "m5") | {"rating": 1}}
    full = recommend(history, task="exp", target="m5", max_new_tokens=2, num_beams=1)
    processor.content_history_items = 1
    try:
        prompt = processor.render_prompt(record)
        assert prompt["text"].startswith("<item_1> <answer> rate_4 <|endofchunk|> <item_7> <answer> rate_2 ")
        assert len(prompt["images"]) == prompt["text"].count("<image>") == 2  # m3 and the target
        short = recommend(history, task="exp", target="m5", max_new_tokens=2, num_beams=1)
        expected = _expected_rating_by_hand(model, processor, record)
        assert short["rating"] == pytest.approx(expected, rel=1e-5)
        assert short["rating"] != pytest.approx(full["rating"], abs=1e-6)  # the shorter prompt reached the model
        unnamed = {"attributes": [("Title", "Movie 1")], "rating": 4}  # an item dict without a catalogue id
        with pytest.raises(ValueError, match=r"history\[0\]: this task names history items by their catalogue "):
            recommend([unnamed, *history[1:]], task="exp", target="m5", max_new_tokens=2)
        # the content items (the last one here) may still be described without an id
        recommend([*history[:2], unnamed], task="exp", target="m5", max_new_tokens=2)
    finally:
        processor.content_history_items = None


@pytest.mark.parametrize(("token_bias", "slots", "item_ids"), [
    ({"s_1": 100.0}, [1], ["m5"]),  # one slot, then the end of the answer
    ({"s_2": 100.0, "s_0": 90.0}, [0, 2], ["m4", None]),  # two slots in bias order, each once, then the end
    ({"s_4": 100.0, "s_0": 10.0}, [0], ["m4"]),  # s_4 names no candidate (3 given): never generated
])
def test_select_returns_the_slots_the_model_prefers_among_the_candidates(recommend, token_bias, slots, item_ids):
    """A bias on the head's logits makes the choice known: slot tokens by bias, each at most once, then the end
    token (bias 50) wins over the unbiased remaining slots."""
    tokenizer = recommend.processor.tokenizer
    bias = torch.zeros(len(tokenizer))
    for token, value in token_bias.items():
        bias[tokenizer.convert_tokens_to_ids(token)] = value
    bias[pipeline_module.answer_end_token_ids(tokenizer)] = 50.0
    hook = recommend.model.lm_head.register_forward_hook(lambda module, inputs, logits: logits + bias)
    try:
        result = recommend(HISTORY, task="select", candidates=["m4", "m5", {"title": "Brand new", "image": None}])
    finally:
        hook.remove()
    assert result["slots"] == slots and result["item_ids"] == item_ids
    expected_order = sorted(slots, key=lambda slot: -token_bias[SELECTION_TOKENS[slot]])
    assert result["generated_text"].split() == [SELECTION_TOKENS[slot] for slot in expected_order]


def test_docstring_example_runs():
    result = doctest.testmod(pipeline_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "inputs",
    [["m1", "nope-42"], [["m1"], ["nope-42"]], [{"item_id": "nope-42", "title": "x"}], {"history": ["nope-42"]}],
)
def test_unknown_item_id_raises_key_error_naming_it(recommend, inputs):
    with pytest.raises(KeyError, match="nope-42"):
        recommend(inputs)


@pytest.mark.parametrize("inputs", [[], {"history": []}, [["m1"], []]])
def test_empty_history_raises_value_error(recommend, inputs):
    with pytest.raises(ValueError, match="empty"):
        recommend(inputs)


@pytest.mark.parametrize(
    "inputs, kwargs, message",
    [
        ("m1", {}, "list of item ids"),
        (["m1"], {"top_k": 0}, "top_k"),
        (["m1"], {"method": "greedy"}, "method"),
        (["m1"], {"task": "imggen"}, "task"),
        (["m1"], {"task": "search"}, "query"),
        (["m1"], {"task": "exp"}, "target"),
        (["m1"], {"task": "select", "candidates": []}, "candidates"),
        ([{"image": None}], {"task": "exp", "target": "m1"}, "attributes"),
        ([{"item_id": "m1", "image": 3}], {}, "image"),
    ],
)
def test_bad_input_raises_value_error_saying_what_to_fix(recommend, inputs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        recommend(inputs, **kwargs)


def test_processor_of_another_catalogue_is_refused(catalogue, tiny_processor):
    model, _ = catalogue
    with pytest.raises(ValueError, match="does not match the model"):
        pipeline("unimp-recommend", model=model, processor=tiny_processor, device="cpu")


# ------------------------------------------------------------------ loading paths
def test_saved_folder_loads_in_library_with_the_task_name(catalogue, recommend, tmp_path):
    model, processor = catalogue
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = pipeline("unimp-recommend", model=str(tmp_path), device="cpu")
    assert type(loaded) is UniMPRecommendPipeline
    _assert_same_results(loaded(HISTORY, top_k=5), recommend(HISTORY, top_k=5))


def _save_remote_code_checkpoint(catalogue, folder) -> None:
    """The published form: config `custom_pipelines` + pipeline_unimp.py next to the model and processor code."""
    model, processor = catalogue
    model = copy.deepcopy(model)  # Pipeline.save_pretrained writes custom_pipelines into the model's config
    UniMPRecommendPipeline(model=model, processor=processor, device="cpu").save_pretrained(folder)
    processor.save_pretrained(folder)


def test_remote_code_checkpoint_loads_in_library_without_trust_and_with_the_installed_class(
        catalogue, recommend, tmp_path):
    _save_remote_code_checkpoint(catalogue, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["custom_pipelines"]["unimp-recommend"]["impl"] == "pipeline_unimp.UniMPRecommendPipeline"
    assert {"pipeline_unimp.py", "modeling_unimp.py", "processing_unimp.py", "prompt_templates.py"} <= set(
        os.listdir(tmp_path))
    # the package is imported: its config hides the declaration, so no checkpoint code runs (issue 15)
    untrusted = pipeline("unimp-recommend", model=str(tmp_path), device="cpu")
    assert type(untrusted) is UniMPRecommendPipeline
    assert type(untrusted.model).__module__ == "modeling_unimp.modeling_unimp"
    _assert_same_results(untrusted(HISTORY, top_k=5), recommend(HISTORY, top_k=5))
    # as for the config and model classes (AutoConfig's explicit local code), the imported package wins over the
    # checkpoint's copy even with trust_remote_code=True; without the package that copy runs (test below)
    trusted = pipeline("unimp-recommend", model=str(tmp_path), device="cpu", trust_remote_code=True)
    assert type(trusted) is UniMPRecommendPipeline
    installed = pipeline("unimp-recommend", model=str(tmp_path), device="cpu", pipeline_class=UniMPRecommendPipeline)
    assert type(installed.model).__module__ == "modeling_unimp.modeling_unimp"  # nothing from the checkpoint ran
    _assert_same_results(installed(HISTORY, top_k=5), recommend(HISTORY, top_k=5))


def test_remote_code_pipeline_runs_in_a_process_without_the_package(catalogue, recommend, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    _save_remote_code_checkpoint(catalogue, checkpoint)
    histories = [HISTORY, ["m2", {"item_id": "m8", "title": "Heat", "image": catalogue[1].item_images[0]}]]
    script = textwrap.dedent(
        f"""
        import importlib.util, json
        assert importlib.util.find_spec("modeling_unimp") is None and importlib.util.find_spec("processing") is None
        from transformers import pipeline
        recommend = pipeline("unimp-recommend", model={str(checkpoint)!r}, trust_remote_code=True, device="cpu")
        print(type(recommend).__module__)
        print(json.dumps(recommend({histories!r}, top_k=5)))
        """
    )
    result = run_without_package(script, cwd=tmp_path)
    module, output = result.stdout.strip().splitlines()[-2:]
    assert module.startswith("transformers_modules.") and module.endswith(".pipeline_unimp")
    for remote, local in zip(json.loads(output), recommend(histories, top_k=5)):
        _assert_same_results(remote, local, atol=1e-5)  # another process may pick other CPU kernels


def test_ids_render_with_the_attributes_the_catalogue_stored(tiny_tokenizer, tmp_path):
    import copy

    from modeling_unimp import UniMPProcessor

    attributes = [[("Title", "Toy Story"), ("Genres", "Animation")], [("Title", "Heat"), ("Genres", "Crime")],
                  [("Title", "Up"), ("Genres", "Animation")]]
    processor = UniMPProcessor.from_catalogue(copy.deepcopy(tiny_tokenizer), ["m1", "m2", "m3"],
                                              ["Toy Story", "Heat", "Up"], item_attributes=attributes, image_size=32)
    processor.save_pretrained(tmp_path)
    reloaded = UniMPProcessor.from_pretrained(tmp_path)
    assert reloaded.item_attributes == [[list(pair) for pair in pairs] for pairs in attributes]
    model = UniMPForConditionalGeneration(make_tiny_config())
    reloaded.prepare_model(model)
    recommender = pipeline("unimp-recommend", model=model, processor=reloaded, device="cpu")
    rendered = []
    original = reloaded.render_prompt
    reloaded.render_prompt = lambda record: rendered.append(original(record)) or rendered[-1]
    recommender(["m2"], top_k=1)
    assert "Title Heat Genres Crime" in rendered[0]["text"]
