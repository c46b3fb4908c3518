"""Content-composed item tokens (issue 12): composition, the item-vector cache, cold-start items, save/load/pipeline."""

import copy
import json
import textwrap

import pytest
import torch
from conftest import make_tiny_config, run_without_package, set_gates
from PIL import Image
from transformers import AutoModel, pipeline

from modeling_unimp import UniMPForConditionalGeneration, UniMPProcessor, UniMPRecommendPipeline
from modeling_unimp.item_content_unimp import (
    add_catalogue_items,
    attach_item_content,
    encode_item_texts,
    item_text,
)
from modeling_unimp.trainer_unimp import set_trainable

ITEM_IDS = ["m0", "m1", "m2", "m3"]
TITLES = ["Toy Story", "Heat", "Up", ""]  # m3 has no text
COLORS = ["red", "green", None, "blue"]  # m2 has no image
PROMPT = "<image> Title Toy Story <answer> <item_0> <|endofchunk|> What next? <answer>"
CONTENT_MODES = ("content", "id+content")



@pytest.fixture(scope="module")
def posters(tmp_path_factory) -> list[str | None]:
    """Poster files of the catalogue (paths, so the processor saves)."""
    folder = tmp_path_factory.mktemp("posters")
    paths = []
    for k, color in enumerate(COLORS):
        paths.append(None if color is None else str(folder / f"m{k}.png"))
        if color is not None:
            Image.new("RGB", (32, 32), color).save(paths[-1])
    return paths


@pytest.fixture
def build(tiny_tokenizer, text_encoder, posters):
    """build(representation) -> a tiny content model (gates open) and its 4-item processor, content attached."""
    return lambda representation="content": _content_model(tiny_tokenizer, text_encoder, posters, representation)


def _content_model(tiny_tokenizer, text_encoder, posters, representation):
    processor = UniMPProcessor.from_catalogue(copy.deepcopy(tiny_tokenizer), ITEM_IDS, TITLES, posters,
                                              image_size=32)
    torch.manual_seed(0)
    model = UniMPForConditionalGeneration(make_tiny_config(item_representation=representation,
                                                           item_text_feature_dim=16)).eval()
    processor.prepare_model(model)
    set_gates(model, 0.5)  # open gates: images move the scores
    attach_item_content(model, processor, text_encoder=text_encoder)
    return model, processor


def _scores(model, processor, prompt=PROMPT):
    batch = processor(text=[prompt], images=[[Image.new("RGB", (32, 32), "red")]], padding_side="left")
    return model.score_items(**batch)[0]


# ------------------------------------------------------------------ composition
@pytest.mark.parametrize("representation", CONTENT_MODES)
def test_an_items_score_changes_when_only_its_content_changes(build, representation):
    model, processor = build(representation)
    before = _scores(model, processor)
    encoder = model.model.item_encoder
    with torch.no_grad():
        encoder.text_features[2] = torch.nn.functional.normalize(torch.randn(16), dim=0)  # item 2's text only
    after = _scores(model, processor)
    assert not torch.isclose(after[2], before[2], rtol=0, atol=1e-4)
    keep = [0, 1, 3]  # item 0 is in the prompt: its input vector did not change either
    torch.testing.assert_close(after[keep], before[keep])
    with torch.no_grad():
        encoder.image_features[1] = encoder.image_features[0]  # item 1 takes item 0's image
    moved = _scores(model, processor)
    assert not torch.isclose(moved[1], after[1], rtol=0, atol=1e-4)


def test_content_items_ignore_their_free_rows_and_id_plus_content_adds_them(build):
    content, processor = build("content")
    both, _ = build("id+content")
    both.load_state_dict(content.state_dict())  # same weights: the id residual rows are content's unused rows
    start = processor.item_token_start_id
    with torch.no_grad():
        for model in (content, both):  # zero rows: "id+content" is "content" plus a residual of 0
            model.get_input_embeddings().weight[start : start + 4] = 0
            model.get_output_embeddings().weight[start : start + 4] = 0
    torch.testing.assert_close(_scores(both, processor), _scores(content, processor))
    with torch.no_grad():
        for model in (content, both):
            model.get_output_embeddings().weight[start + 1] = 1.0  # item 1's id row
    scores_content, scores_both = _scores(content, processor), _scores(both, processor)
    assert not torch.isclose(scores_both[1], scores_content[1], rtol=0, atol=1e-3)  # the residual counts
    torch.testing.assert_close(scores_both[[0, 2, 3]], scores_content[[0, 2, 3]])


def test_id_plus_content_starts_with_a_zero_id_residual(build):
    model, processor = build("id+content")
    rows = list(model.config.item_token_ids)
    assert model.get_input_embeddings().weight[rows].abs().sum() == 0
    assert model.get_output_embeddings().weight[rows].abs().sum() == 0


def test_missing_text_and_image_use_learned_missing_vectors(build):
    model, processor = build()
    encoder = model.model.item_encoder
    assert encoder.has_text.tolist() == [True, True, True, False]
    assert encoder.has_image.tolist() == [True, True, False, True]
    assert encoder.text_features[3].abs().sum() == 0 and encoder.image_features[2].abs().sum() == 0
    inputs, outputs = (v.clone() for v in model.item_vectors())
    with torch.no_grad():
        encoder.missing_image.add_(1.0)
    moved = (model.item_vectors()[1] - outputs).abs().sum(dim=-1)
    assert moved[2] > 0 and moved[[0, 1, 3]].abs().sum() == 0


def test_id_model_has_no_item_encoder_and_refuses_content_apis(tiny_tokenizer, text_encoder, tiny_processor):
    model = UniMPForConditionalGeneration(make_tiny_config())
    tiny_processor.prepare_model(model)
    assert not hasattr(model.model, "item_encoder")
    with pytest.raises(ValueError, match="item_representation"):
        attach_item_content(model, tiny_processor, text_encoder=text_encoder)
    with pytest.raises(ValueError, match="item_representation"):
        add_catalogue_items(model, tiny_processor, [{"item_id": "x", "title": "X"}], text_encoder=text_encoder)
    with pytest.raises(ValueError, match="item_representation must be one of"):
        make_tiny_config(item_representation="ids")


def test_content_model_without_attached_content_says_what_to_call(tiny_tokenizer, tiny_processor):
    model = UniMPForConditionalGeneration(make_tiny_config(item_representation="content", item_text_feature_dim=16))
    model.model.item_encoder.set_content(torch.zeros(0, 16), torch.zeros(0, dtype=torch.bool),
                                         torch.zeros(0, 32), torch.zeros(0, dtype=torch.bool))
    tiny_processor.prepare_model(model)  # 3 items now, content for 0
    with pytest.raises(ValueError, match="attach_item_content"):
        _scores(model, tiny_processor, "<image> Title Up <answer> <item_0> <|endofchunk|> What next? <answer>")


def test_item_texts_encode_to_unit_vectors_and_empty_text_is_flagged(text_encoder):
    features, has_text = encode_item_texts(["Title Heat Genre Action", "", "Title Up"], text_encoder)
    assert has_text.tolist() == [True, False, True]
    torch.testing.assert_close(features[[0, 2]].norm(dim=-1), torch.ones(2))
    assert features[1].abs().sum() == 0
    assert item_text([("Title", "Up"), ("Genre", None)]) == "Title Up Genre Unknown"
    assert item_text(None, "Up") == "Title Up" and item_text(None, "") == ""


# ------------------------------------------------------------------ cache
def test_cached_item_vectors_are_reused_and_follow_every_weight_edit(build):
    model, processor = build()
    with torch.no_grad():
        first = model.item_vectors()
        assert model.item_vectors() is first  # computed once while the weights stand
        before = _scores(model, processor)
        model.model.item_encoder.output_proj.weight.data.mul_(2.0)  # `.data` edits bump no version counter
        fresh = copy.deepcopy(model)
        fresh.clear_item_vectors()
        after = _scores(model, processor)
        torch.testing.assert_close(after, _scores(fresh, processor))
        assert not torch.allclose(after, before)
        model.model.item_encoder.image_features.data[0] = 0.0  # buffers are part of the key too
        assert model.item_vectors() is not first
    model.train()
    with torch.enable_grad():  # under gradients the vectors are recomputed, so they train
        assert model.item_vectors()[1].requires_grad


def test_item_image_features_come_from_the_frozen_snapshot_while_the_tower_trains(build, text_encoder):
    model, processor = build()
    trainable = set_trainable(model, "full")
    assert not any(name.startswith("model.item_image_encoder.") for name in trainable)
    assert any(name.startswith("model.item_encoder.") for name in set_trainable(model, "paper"))
    snapshot = model.model.item_image_encoder
    torch.testing.assert_close(snapshot.vision_model.state_dict(), model.model.vision_model.state_dict())
    with torch.no_grad():
        for parameter in model.model.vision_model.parameters():  # training moves the live tower ...
            parameter.add_(0.1)
    new = add_catalogue_items(model, processor, [{"item_id": "n0", "image": Image.new("RGB", (32, 32), "red")}],
                              text_encoder=text_encoder)
    encoder = model.model.item_encoder  # ... a new item with m0's image gets m0's image features exactly
    torch.testing.assert_close(encoder.image_features[new[0]], encoder.image_features[0])


# ------------------------------------------------------------------ cold-start items
@pytest.mark.parametrize("representation", CONTENT_MODES)
def test_added_items_rank_and_survive_a_save_load_round_trip(build, text_encoder, representation, tmp_path):
    model, processor = build(representation)
    before = _scores(model, processor)
    new = add_catalogue_items(model, processor, [
        {"item_id": "n0", "title": "Heat", "image": Image.new("RGB", (32, 32), "green")},  # m1's content
        {"item_id": "n1", "attributes": [("Title", "Up 2"), ("Genre", "Animation")]},
    ], text_encoder=text_encoder)
    assert new == [4, 5] and processor.item_ids[-2:] == ["n0", "n1"] and model.config.num_items == 6
    after = _scores(model, processor)
    torch.testing.assert_close(after[:4], before)  # the old items are untouched
    torch.testing.assert_close(after[4], after[1])  # same content, zero id residual: same score as m1
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    reloaded = UniMPProcessor.from_pretrained(tmp_path)
    assert reloaded.item_ids == processor.item_ids and reloaded.item_attributes[-1] == [["Title", "Up 2"],
                                                                                       ["Genre", "Animation"]]
    torch.testing.assert_close(_scores(loaded, reloaded), after, rtol=0, atol=0)
    recommend = pipeline("unimp-recommend", model=str(tmp_path), device="cpu")
    ranked = recommend(["m0", "n1"], top_k=6)  # a cold item in the history and in the ranking
    assert {result["item_id"] for result in ranked} == set(processor.item_ids)


def test_added_items_refuse_known_ids_and_keep_the_item_range_contiguous(build, text_encoder):
    model, processor = build()
    with pytest.raises(ValueError, match="'m1'.*already in the catalogue"):
        add_catalogue_items(model, processor, [{"item_id": "m1", "title": "Heat"}], text_encoder=text_encoder)
    with pytest.raises(ValueError, match="item_id"):
        add_catalogue_items(model, processor, [{"title": "Heat"}], text_encoder=text_encoder)
    processor.tokenizer.add_tokens(["<other>"])
    with pytest.raises(ValueError, match="contiguous"):
        processor.add_items(["x"])
    assert processor.num_items == model.config.num_items == 4  # nothing half-added


# ------------------------------------------------------------------ remote code
def test_content_checkpoints_with_added_items_serve_as_remote_code_without_the_package(build, text_encoder, tmp_path):
    histories = [["m0", "n0"], ["m2"]]
    expected = {}
    for representation in CONTENT_MODES:
        model, processor = build(representation)
        add_catalogue_items(model, processor, [{"item_id": "n0", "title": "Heat 2"}], text_encoder=text_encoder)
        folder = tmp_path / representation.replace("+", "_")
        UniMPRecommendPipeline(model=copy.deepcopy(model), processor=processor, device="cpu").save_pretrained(folder)
        processor.save_pretrained(folder)
        assert (folder / "catalogue_cache.py").exists()  # modeling_unimp.py's relative import travels with it
        local = pipeline("unimp-recommend", model=model, processor=processor, device="cpu")
        expected[str(folder)] = local(histories, top_k=5)
    script = textwrap.dedent(
        f"""
        import importlib.util, json
        assert importlib.util.find_spec("modeling_unimp") is None
        from transformers import pipeline
        out = {{}}
        for folder in {list(expected)!r}:
            recommend = pipeline("unimp-recommend", model=folder, trust_remote_code=True, device="cpu")
            out[folder] = recommend({histories!r}, top_k=5)
        print(json.dumps(out))
        """
    )
    result = run_without_package(script, cwd=tmp_path)
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    for folder, local in expected.items():
        for remote_row, local_row in zip(remote[folder], local):
            assert [r["item_id"] for r in remote_row] == [r["item_id"] for r in local_row]
            for a, b in zip(remote_row, local_row):  # another process may pick other CPU kernels
                assert a["score"] == pytest.approx(b["score"], abs=1e-5)
