"""Search and selection baselines (issue 18): BM25, query-filtered popularity, history re-ranking, selection choices."""

import json
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.tasks import selection_choices, selection_metrics
from processing.metrics_unimp import compute_ranking_metrics_from_ranks, rank_of_targets
from processing.task_baselines import (
    BM25Index,
    choose_best_slot,
    compute_selection_accuracy,
    count_training_popularity,
    history_reranked_scores,
    image_pixel_features,
    item_search_text,
    query_filtered_popularity_scores,
    sample_selection_candidates,
    tfidf_similarity_matrix,
    tokenize_text,
)

DOCUMENTS = [["red", "shirt"], ["blue", "shirt", "shirt"], ["red", "dress"]]  # lengths 2, 3, 2: avgdl 7/3
IDF_DF2 = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))  # "red" and "shirt" are each in 2 of 3 documents: ln 1.6
NORM_LEN2 = 1.5 * (0.25 + 0.75 * 2 / (7 / 3))  # k1 (1 - b + b |d| / avgdl) = 1.3392857
NORM_LEN3 = 1.5 * (0.25 + 0.75 * 3 / (7 / 3))  # = 1.8214286


def test_tokenize_and_item_text():
    assert tokenize_text("Children's Comedy, 1995") == ["children", "s", "comedy", "1995"]
    item = {"title": "Strap top", "category": "Vest top", "attributes": [("ASIN", "B00X"), ("Color", "Dark")]}
    assert item_search_text(item) == "Strap top Vest top Dark"


def test_bm25_hand_computed():
    index = BM25Index(DOCUMENTS)
    red_tf1 = IDF_DF2 * 1 * 2.5 / (1 + NORM_LEN2)  # = 0.502294
    shirt_tf2 = IDF_DF2 * 2 * 2.5 / (2 + NORM_LEN3)  # = 0.614958
    assert red_tf1 == pytest.approx(0.502294, abs=1e-6)
    assert shirt_tf2 == pytest.approx(0.614958, abs=1e-6)
    np.testing.assert_allclose(index.scores(["red"]), [red_tf1, 0.0, red_tf1])
    # a repeated query term counts once; "shirt" in d0 has tf 1 and length 2, like "red"
    np.testing.assert_allclose(index.scores(["red", "shirt", "red"]), [2 * red_tf1, shirt_tf2, red_tf1])
    np.testing.assert_array_equal(index.scores(["green"]), [0.0, 0.0, 0.0])  # no document holds the term


def test_bm25_ties_and_no_match_rank_pessimistically():
    index = BM25Index(DOCUMENTS)
    # "red": d0 and d2 tie, so the target d0 ranks 2nd; "green" matches nothing: every item ties, rank 3
    scores = torch.as_tensor(np.stack([index.scores(["red"]), index.scores(["green"])]))
    ranks = rank_of_targets(scores, torch.tensor([0, 0]))
    assert ranks.tolist() == [2, 3]
    metrics = compute_ranking_metrics_from_ranks(ranks, ks=(1, 5))
    assert metrics["hr@1"] == 0.0 and metrics["hr@5"] == 1.0
    assert metrics["mrr@5"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert metrics["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 2)


def test_query_filtered_popularity():
    terms = [set(document) for document in DOCUMENTS]
    popularity = np.array([1.0, 5.0, 3.0])
    # matches (d0, d2) get + (5 + 1): d2 (9) > d0 (7) > d1 (5), although d1 is the most popular
    np.testing.assert_array_equal(query_filtered_popularity_scores(["red"], terms, popularity), [7.0, 5.0, 9.0])
    # every query term must be in the item: only d0 holds both
    np.testing.assert_array_equal(query_filtered_popularity_scores(["red", "shirt"], terms, popularity),
                                  [7.0, 5.0, 3.0])
    # no matching item, or no query: plain popularity
    np.testing.assert_array_equal(query_filtered_popularity_scores(["green"], terms, popularity), popularity)
    np.testing.assert_array_equal(query_filtered_popularity_scores([], terms, popularity), popularity)


def test_count_training_popularity():
    rows = [{"history_item_ids": ["a", "b"], "target_item_id": "a"}, {"history_item_ids": ["b"], "target_item_id": "c"}]
    assert count_training_popularity(rows) == {"a": 2, "b": 2, "c": 1}


def test_tfidf_similarity_hand_computed():
    similarity = tfidf_similarity_matrix([["a", "b"], ["a", "c"], ["b"]])
    # idf a = b = ln 1.5, c = ln 3; v0 = (ln1.5, ln1.5, 0), v1 = (ln1.5, 0, ln3), v2 = (0, ln1.5, 0)
    l15, l3 = math.log(1.5), math.log(3)
    assert similarity[0, 2] == pytest.approx(1 / math.sqrt(2))
    assert similarity[0, 1] == pytest.approx(l15 / (math.sqrt(2) * math.sqrt(l15**2 + l3**2)))  # 0.244830
    assert similarity[1, 2] == pytest.approx(0.0)
    np.testing.assert_allclose(np.diag(similarity), 1.0)


def test_history_reranked_scores():
    similarity = np.array([[1.0, 0.2, 0.0], [0.2, 1.0, 0.8], [0.0, 0.8, 1.0]])
    bm25 = np.array([2.0, 0.0, 1.0])
    # bm25 / 2 = (1, 0, .5), plus 0.5 * similarity row of the history item 1 = (.1, .5, .4)
    np.testing.assert_allclose(history_reranked_scores(bm25, [1], similarity, 0.5), [1.1, 0.5, 0.9])
    # two history items: the mean of their rows; weight 0 is BM25 alone, scaled
    np.testing.assert_allclose(history_reranked_scores(bm25, [0, 2], similarity, 1.0), [1.5, 0.5, 1.0])
    np.testing.assert_allclose(history_reranked_scores(bm25, [1], similarity, 0.0), [1.0, 0.0, 0.5])
    # no BM25 match: the history alone orders the items
    np.testing.assert_allclose(history_reranked_scores(np.zeros(3), [2], similarity, 2.0), [0.0, 1.6, 2.0])


def test_sample_selection_candidates():
    pool = ["a", "b", "c", "d", "t"]
    candidates, slot = sample_selection_candidates("t", pool, {"a"}, num_negatives=2, rng=random.Random(3))
    assert len(candidates) == 3 and candidates[slot] == "t" and "a" not in candidates
    assert len(set(candidates)) == 3 and set(candidates) - {"t"} <= {"b", "c", "d"}
    assert sample_selection_candidates("t", pool, {"a"}, num_negatives=2, rng=random.Random(3)) == (candidates, slot)
    with pytest.raises(ValueError, match="only 2 untouched"):
        sample_selection_candidates("t", pool, {"a", "b"}, num_negatives=3, rng=random.Random(0))


def test_choose_best_slot_and_accuracy():
    assert choose_best_slot([1.0, 3.0, 3.0]) == 1  # ties: the earliest slot
    assert compute_selection_accuracy([0, 2, 1], [0, 1, 1]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        compute_selection_accuracy([0], [0, 1])


def _gradient(inverted: bool = False) -> Image.Image:
    row = np.arange(16, dtype=np.uint8) * 16
    pixels = np.repeat(np.tile(row, (16, 1))[:, :, None], 3, axis=2)
    return Image.fromarray(255 - pixels if inverted else pixels)


def test_image_pixel_features():
    same, inverted = image_pixel_features(_gradient()), image_pixel_features(_gradient(inverted=True))
    assert float(same @ image_pixel_features(_gradient())) == pytest.approx(1.0)
    assert float(same @ inverted) == pytest.approx(-1.0)  # centred: the inverted image points the other way
    np.testing.assert_array_equal(image_pixel_features(Image.new("RGB", (16, 16), (9, 9, 9))), 0.0)  # flat
    np.testing.assert_array_equal(image_pixel_features(None), 0.0)  # no image


def test_selection_baselines_toy_case():
    images = {"g": _gradient(), "g2": _gradient(), "inv": _gradient(inverted=True),
              "flat": Image.new("RGB", (16, 16), (9, 9, 9)), "none": None}
    ids = list(images)
    catalogue = SimpleNamespace(items={i: {"image": images[i]} for i in ids}, index={i: n for n, i in enumerate(ids)},
                                popularity=np.array([1.0, 2.0, 7.0, 3.0, 0.0]))
    records = [  # the latest history item has no image: the one before it ("g") is the anchor
        {"user_id": "u1", "history": ["g", "none"], "candidates": ["inv", "flat", "g2"], "answer_slot": 2},
        {"user_id": "u2", "history": ["none"], "candidates": ["g2", "inv", "flat"], "answer_slot": 1},
    ]
    choices = selection_choices(catalogue, records, seed=0, features={})
    assert choices["Image-nearest-last"] == [2, 0]  # u2 has no history image: slot 0
    assert choices["Pop"] == [0, 1]  # "inv" is the most popular
    assert all(0 <= slot < 3 for slot in choices["Random"])
    assert choices["Random"] == selection_choices(catalogue, records, seed=0, features={})["Random"]
    metrics = selection_metrics(choices["Pop"], records)
    # one chosen slot and one positive: precision = recall = F1 = accuracy = 1/2
    assert metrics == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "accuracy": 0.5})


def _toy_catalogue():
    items = {"0": {"title": "red shirt"}, "1": {"title": "blue shirt shirt"}, "2": {"title": "red dress"}}
    similarity = tfidf_similarity_matrix(DOCUMENTS)
    return SimpleNamespace(items=items, item_ids=list(items), index={i: n for n, i in enumerate(items)},
                           bm25=BM25Index(DOCUMENTS), terms=[set(d) for d in DOCUMENTS], similarity=similarity,
                           popularity=np.array([1.0, 5.0, 3.0]))


def test_search_scores_and_ranks_toy_case():
    from benchmarks.tasks import LAMBDAS, ranks_of, search_scores

    catalogue = _toy_catalogue()
    records = [{"query": "red", "history": [{"item_id": "1"}], "target": {"item_id": "2"}},
               {"query": "green", "history": [{"item_id": "0"}], "target": {"item_id": "0"}}]
    scores = search_scores(catalogue, records)
    assert set(scores) == {"BM25", "Pop", "Pop-query", *(f"BM25+history@{w}" for w in LAMBDAS)}
    # "red": d0 and d2 tie under BM25 (target d2 ranks 2nd, ties against it); Pop-query puts d2 (pop 3) first;
    # "green" matches nothing: BM25 ties everything (rank 3), Pop-query falls back to popularity (d0 last)
    assert ranks_of(scores["BM25"], catalogue, records) == [2, 3]
    assert ranks_of(scores["Pop-query"], catalogue, records) == [1, 3]
    assert ranks_of(scores["Pop"], catalogue, records) == [2, 3]
    # λ = 1, history d1 ("blue shirt shirt"): similarity row (0.42, 1, 0) (it shares "shirt" with d0 only), so
    # (1, 0, 1) + row = (1.42, 1, 1): the history item itself now ties the target d2, which ranks 3rd
    assert catalogue.similarity[1] == pytest.approx([0.419934, 1.0, 0.0], abs=1e-6)
    assert ranks_of(scores["BM25+history@1.0"], catalogue, records) == [3, 1]


def test_result_lines_meet_the_contract():
    from benchmarks import results as contract
    from benchmarks.tasks import result_line

    metrics = compute_ranking_metrics_from_ranks([1, 4], ks=contract.KS)
    search = {"variant": "default", "test": metrics, "validation": metrics, "ranks": [1, 4], "users_per_s": 10.0}
    select = {"variant": "uniform slot", "test": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "accuracy": 0.5},
              "validation": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.0}, "ranks": None,
              "users_per_s": 10.0}
    for task, entry in (("search", search), ("select", select)):
        line = contract.validate_line(result_line("hm", task, "BM25", entry, seed=0, num_users=2))
        assert line["task"] == task and line["budget"] == {"steps": 0} and line["masking"] == "none"
    assert search["test"]["mrr@5"] == pytest.approx((1 + 1 / 4) / 2)


def test_selection_by_rec_scores_picks_each_users_best_candidate():
    from benchmarks.tasks import selection_choices_from_scores

    catalogue = _toy_catalogue()
    # rows follow the rec examples' order, not the selection records': user "b" is row 0
    scores = torch.tensor([[0.1, 0.9, 0.5], [2.0, -1.0, 3.0]])
    records = [{"user_id": "a", "candidates": ["1", "0", "2"], "answer_slot": 2},
               {"user_id": "b", "candidates": ["0", "2", "1"], "answer_slot": 2}]
    chosen = selection_choices_from_scores(scores, {"b": 0, "a": 1}, catalogue, records)
    assert chosen == [2, 2]   # a: item "2" scores 3.0; b: item "1" scores 0.9
    assert selection_metrics(chosen, records)["accuracy"] == 1.0
    with pytest.raises(KeyError):   # a selection user without a rec prompt is an error, not a guess
        selection_choices_from_scores(scores, {"b": 0}, catalogue, records)


def _write_exp_run(folder, *, bias_rmse: float, expected_rmse: float, recorded: bool = False):
    """A run folder with exp metrics: validation in metrics_exp_validation.json; test there too, or (`recorded`)
    as recipes.train stores it, under "exp" in metrics.json."""
    folder.mkdir()
    training = {"global_step": 600}
    for split in ("validation", "test"):
        metrics = {"num_users": 3, "eval_users_per_second": 20.0,
                   "unimp_rating_expected": {"mae": 0.8, "rmse": expected_rmse},
                   "unimp_rating": {"mae": 0.6, "rmse": 1.1},
                   "unimp_explanation": {"rougeL": 0.13, "bleu4": 0.004},
                   "user_item_bias": {"mae": 0.7, "rmse": bias_rmse},
                   "last_explanation_baseline": {"rougeL": 0.12, "bleu4": 0.026}}
        if split == "test" and recorded:
            training["exp"] = metrics
        else:
            (folder / f"metrics_exp_{split}.json").write_text(json.dumps(metrics))
    (folder / "metrics.json").write_text(json.dumps(training))


def test_exp_lines_flatten_unimp_ratings_and_keep_each_baseline_once(tmp_path):
    from benchmarks import results as contract
    from benchmarks.tasks import evaluate_exp_runs, result_line

    _write_exp_run(tmp_path / "s0", bias_rmse=0.96, expected_rmse=0.99)
    _write_exp_run(tmp_path / "s1", bias_rmse=0.96, expected_rmse=0.98, recorded=True)
    unimp, baselines = evaluate_exp_runs({0: tmp_path / "s0", 1: tmp_path / "s1"})
    # the headline rating is the expected one; the most likely token's is kept under *_token
    assert unimp[1]["test"] == {"mae": 0.8, "rmse": 0.98, "mae_token": 0.6, "rmse_token": 1.1, "rougeL": 0.13,
                                "bleu4": 0.004}
    assert unimp[0]["steps"] == 600 and set(baselines) == {"Bias (mu + b_u + b_i)", "Repeat latest explanation"}
    assert baselines["Repeat latest explanation"]["test"] == {"rougeL": 0.12, "bleu4": 0.026}
    line = contract.validate_line(result_line("amazon-mi", "exp", "UniMP-tiny", unimp[0], 0, 3))
    assert line["metrics"]["rmse"] == 0.99 and line["protocol"].startswith("exp:")
    # a baseline's speed was not measured: null (the contract takes it for other tasks than 'rec')
    baseline = contract.validate_line(result_line("amazon-mi", "exp", "Bias", baselines["Bias (mu + b_u + b_i)"], 0, 3))
    assert baseline["eval_users_per_s"] is None

    _write_exp_run(tmp_path / "s2", bias_rmse=0.50, expected_rmse=0.98)   # other data: baselines disagree
    with pytest.raises(ValueError, match="Bias"):
        evaluate_exp_runs({0: tmp_path / "s0", 2: tmp_path / "s2"})


def _write_imggen_run(folder, *, generated_fd: float, baseline_fd: float = 1.9):
    """A scored image-generation run: the recipe's metrics.json and benchmark/<split>/metrics.json as
    benchmarks/image_generation.py writes them."""
    from benchmarks.tasks import IMGGEN_METHODS, IMGGEN_METRICS

    (folder / "metrics.json").parent.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"global_step": 600, "train_seconds": 310.5}))
    for split, shift in (("validation", 0.5), ("test", 0.0)):
        methods = {method: {key: 0.1 for key in IMGGEN_METRICS} | {"psnr": 11.0, "code_accuracy": 0.02}
                   for method in IMGGEN_METHODS}
        methods["generated"]["frechet_distance"] = generated_fd + shift
        methods["most_recent_baseline"]["frechet_distance"] = baseline_fd + shift
        out = folder / "benchmark" / split
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps({"methods": methods, "num_test_users": 4}))


def test_imggen_lines_one_per_seed_and_the_baselines_once(tmp_path):
    from benchmarks import results as contract
    from benchmarks.tasks import MODEL_NAME, evaluate_imggen_runs, result_line

    _write_imggen_run(tmp_path / "s0", generated_fd=25.0)
    _write_imggen_run(tmp_path / "s1", generated_fd=20.0)
    unimp, baselines = evaluate_imggen_runs({0: tmp_path / "s0", 1: tmp_path / "s1"}, tower=tmp_path, baseline_seed=0)
    assert [unimp[seed]["test"]["frechet_distance"] for seed in (0, 1)] == [25.0, 20.0]
    assert unimp[1]["validation"]["frechet_distance"] == 20.5 and unimp[1]["steps"] == 600
    assert "code_accuracy" not in unimp[0]["test"]   # only the metrics every method has
    assert MODEL_NAME not in baselines and baselines["Most recent image"]["test"]["frechet_distance"] == 1.9
    assert baselines["Most recent image"]["steps"] == 0 and baselines["Most recent image"]["train_seconds"] == 0.0
    line = contract.validate_line(result_line("hm", "imggen", MODEL_NAME, unimp[0], 0, unimp[0]["num_users"]))
    assert line["n_users"] == 4 and line["eval_users_per_s"] is None and line["protocol"].startswith("imggen:")

    _write_imggen_run(tmp_path / "s2", generated_fd=20.0, baseline_fd=3.0)   # other users: baselines disagree
    with pytest.raises(ValueError, match="s2: the baselines differ"):
        evaluate_imggen_runs({0: tmp_path / "s0", 2: tmp_path / "s2"}, tower=tmp_path, baseline_seed=0)


def test_nearest_review_picks_the_closest_other_users_review_and_says_when_it_falls_back():
    from processing.task_baselines import nearest_review_explanations, training_reviews

    train = [{"user_id": "u1", "history_item_ids": ["i1"], "history_explanations": ["great strings bright"],
              "target_item_id": "i2", "target_explanation": "cheap cable"},
             {"user_id": "u2", "history_item_ids": ["i2"], "history_explanations": ["solid cable works"],
              "target_item_id": "i3", "target_explanation": "nice pedal"},
             {"user_id": "u3", "history_item_ids": ["i2"], "history_explanations": ["strings cable noisy"],
              "target_item_id": "i1", "target_explanation": None}]
    assert training_reviews(train)["i2"] == {"u1": "cheap cable", "u2": "solid cable works",
                                             "u3": "strings cable noisy"}
    rows = [{"user_id": "u4", "history_explanations": ["bright strings sound"], "target_item_id": "i2"},
            {"user_id": "u4", "history_explanations": ["old", "latest words"], "target_item_id": "i9"},
            {"user_id": "u2", "history_explanations": [], "target_item_id": "i3"},
            {"user_id": "u5", "history_explanations": ["zzz"], "target_item_id": "i2"}]
    chosen, fallbacks = nearest_review_explanations(train, rows)
    # u4 shares "strings" with u3's review only; i9 has no review (own latest); u2 is i3's only reviewer (itself
    # excluded) with nothing earlier (None); u5 shares no word with anyone: the first author in sort order, u1
    assert chosen == ["strings cable noisy", "latest words", None, "cheap cable"]
    assert fallbacks == 2


def test_search_variant_is_one_for_all_or_one_per_dataset():
    from benchmarks.tasks import per_dataset_variants

    assert per_dataset_variants(["mt_rec_search"], ["ml100k", "hm"]) == {"ml100k": "mt_rec_search",
                                                                           "hm": "mt_rec_search"}
    pairs = ["ml100k=mt_rec_search", "hm=mt_rec_select_search"]
    assert per_dataset_variants(pairs, ["ml100k", "hm"]) == {"ml100k": "mt_rec_search", "hm": "mt_rec_select_search"}
    assert per_dataset_variants(pairs, ["hm"]) == {"hm": "mt_rec_select_search"}   # ml100k not searched this time
    assert per_dataset_variants([], ["hm"]) == {}
    with pytest.raises(ValueError, match="'movies=mt_all' is not DATASET=VARIANT"):
        per_dataset_variants(["movies=mt_all"], ["hm"])
