"""Metrics against hand-computed values (reference unimp_method.md §4)."""

import math

import numpy as np
import pytest
import torch

from processing.metrics_unimp import (
    compute_ranking_metrics,
    compute_ranking_metrics_from_ranks,
    compute_rating_metrics,
    compute_selection_metrics,
    compute_text_metrics,
    compute_unigram_precision,
    rank_of_targets,
)

INV_LOG2_3 = 1 / math.log2(3)  # NDCG of rank 2 = 0.63093


# ------------------------------------------------------------------------------------------------
# Ranking
# ------------------------------------------------------------------------------------------------


def test_ranking_matches_hf_stack_notes_example():
    # ranks: user 1 -> 2, user 2 -> 3, user 3 -> absent (hf_stack_notes.md §5)
    # hr   = (1 + 1 + 0) / 3                       = 0.667
    # ndcg = (1/log2(3) + 1/log2(4) + 0) / 3      = (0.63093 + 0.5) / 3 = 0.37698
    # mrr  = (1/2 + 1/3 + 0) / 3                   = 0.27778
    metrics = compute_ranking_metrics([[3, 1, 2], [5, 4, 9], [7, 8, 6]], [1, 9, 0], ks=3)
    assert metrics == pytest.approx({"hr@3": 2 / 3, "ndcg@3": 0.376977, "mrr@3": 0.277778}, abs=1e-6)


@pytest.mark.parametrize(
    ("ranked", "target", "k", "expected"),
    [
        # rank 1: every metric is 1
        ([7, 1, 2], 7, 1, (1.0, 1.0, 1.0)),
        # repeated beam: [5, 5, 1] de-duplicates to [5, 1], so rank 2 (the official code would say 3)
        ([5, 5, 1], 1, 2, (1.0, INV_LOG2_3, 1 / 2)),
        # rank 4 > k = 3: a miss
        ([4, 3, 2, 1], 1, 3, (0.0, 0.0, 0.0)),
        # rank 4 <= k = 5: ndcg = 1/log2(5) = 0.43068, mrr = 1/4
        ([4, 3, 2, 1], 1, 5, (1.0, 1 / math.log2(5), 1 / 4)),
        # string ids work the same: rank 2
        (["item_2", "item_9"], "item_9", 3, (1.0, INV_LOG2_3, 1 / 2)),
        # an empty list (nothing generated) is a miss
        ([], 3, 3, (0.0, 0.0, 0.0)),
    ],
)
def test_ranking_single_user_table(ranked, target, k, expected):
    metrics = compute_ranking_metrics([ranked], [target], ks=k)
    assert (metrics[f"hr@{k}"], metrics[f"ndcg@{k}"], metrics[f"mrr@{k}"]) == pytest.approx(expected)


def test_ranking_from_ranks_hand_computed_over_default_ks():
    # ranks 1, 3, 7, absent (inf); 4 users
    # k=3, 5:   hits {1, 3}:    hr = 2/4; ndcg = (1 + 1/log2(4)) / 4 = 1.5/4;          mrr = (1 + 1/3) / 4
    # k=10, 20: hits {1, 3, 7}: hr = 3/4; ndcg = (1 + 1/2 + 1/log2(8)) / 4 = 1.8333/4; mrr = (1 + 1/3 + 1/7)/4
    metrics = compute_ranking_metrics_from_ranks([1, 3, 7, math.inf])
    low = {"hr": 0.5, "ndcg": 0.375, "mrr": (4 / 3) / 4}
    high = {"hr": 0.75, "ndcg": (11 / 6) / 4, "mrr": (1 + 1 / 3 + 1 / 7) / 4}
    expected = {
        f"{name}@{k}": (low if k < 10 else high)[name]
        for name in ("hr", "ndcg", "mrr")
        for k in (3, 5, 10, 20)
    }
    assert list(metrics) == list(expected)  # hr@3, hr@5, ..., mrr@20
    assert metrics == pytest.approx(expected)


def test_ranking_from_topk_tensor_equals_lists():
    scores = torch.randn(6, 30)
    targets = torch.randint(0, 30, (6,))
    top = scores.topk(10, dim=1).indices  # (6, 10)
    assert compute_ranking_metrics(top, targets) == compute_ranking_metrics(top.tolist(), targets.tolist())


@pytest.mark.parametrize(
    ("scores", "target", "exclude", "pessimistic", "optimistic"),
    [
        # no ties: rank = 1 + #{higher} = 3 either way (0.9 and 0.5 beat 0.3)
        ([0.9, 0.3, 0.5, 0.1], 1, None, 3, 3),
        # tie with one other item at 0.5: pessimistic #{s >= 0.5} = 2, optimistic 1 + #{s > 0.5} = 1
        ([0.1, 0.5, 0.5, 0.2], 2, None, 2, 1),
        # constant scores: the target is last (4) or first (1)
        ([1.0, 1.0, 1.0, 1.0], 0, None, 4, 1),
        # excluding the tied item 1 leaves the target alone at the top
        ([0.1, 0.5, 0.5, 0.2], 2, [0, 1, 0, 0], 1, 1),
        # target at -inf: excluded items (also -inf) never count as ahead; 3 items remain -> last = 3
        ([0.0, -math.inf, 2.0, 1.0], 1, [1, 0, 0, 0], 3, 3),
    ],
)
def test_rank_of_targets_ties_and_exclusion(scores, target, exclude, pessimistic, optimistic):
    scores = torch.tensor([scores])
    exclude = None if exclude is None else torch.tensor([exclude], dtype=torch.bool)
    assert rank_of_targets(scores, [target], exclude=exclude).tolist() == [pessimistic]
    assert rank_of_targets(scores, [target], exclude=exclude, ties="optimistic").tolist() == [optimistic]


def test_full_ranking_agrees_with_topk_lists_without_ties():
    scores = torch.randn(8, 1682, dtype=torch.float64)  # MovieLens-100K catalogue size; ties have prob. 0
    targets = torch.randint(0, 1682, (8,))
    ranks = rank_of_targets(scores, targets)
    top = scores.topk(20, dim=1).indices
    assert compute_ranking_metrics_from_ranks(ranks) == pytest.approx(compute_ranking_metrics(top, targets))
    # also against a plain argsort: rank = 1-based position of the target in the descending order
    positions = (scores.argsort(dim=1, descending=True) == targets[:, None]).float().argmax(dim=1) + 1
    assert torch.equal(ranks, positions)


def test_full_ranking_with_history_mask_numpy_inputs():
    scores = np.array([[0.9, 0.8, 0.1], [0.3, 0.2, 0.1]])
    history = np.array([[True, False, False], [True, True, False]])
    # row 0: item 0 masked, target 1 becomes rank 1; row 1: items 0, 1 masked, target 2 becomes rank 1
    assert rank_of_targets(scores, np.array([1, 2]), exclude=history).tolist() == [1, 1]


# ------------------------------------------------------------------------------------------------
# Rating
# ------------------------------------------------------------------------------------------------


def test_rating_metrics_hand_computed():
    # errors (4-5, 2-2, 5-3) = (-1, 0, 2): mae = (1 + 0 + 2)/3 = 1.0; rmse = sqrt((1 + 0 + 4)/3) = 1.29099
    assert compute_rating_metrics([4, 2, 5], torch.tensor([5.0, 2.0, 3.0])) == pytest.approx(
        {"mae": 1.0, "rmse": math.sqrt(5 / 3)}
    )


# ------------------------------------------------------------------------------------------------
# Selection
# ------------------------------------------------------------------------------------------------


def test_selection_metrics_hand_computed_per_user_average():
    # user 1: G = {s_0, s_3, s_4}, T = {s_0, s_2}: 1 hit -> P = 1/3, R = 1/2, F1 = 2(1/6)/(5/6) = 0.4
    # user 2: G = {} -> P = 0, R = 0, F1 = 0
    # user 3: G = T = {s_1, s_2} -> P = R = F1 = 1
    # means: P = 4/9 = 0.4444, R = 1.5/3 = 0.5, F1 = 1.4/3 = 0.46667 (not 2PR/(P+R) of the means = 0.4706)
    metrics = compute_selection_metrics(
        ["s_0 s_3 s_4", "", ["s_2", "s_1"]], [["s_0", "s_2"], "s_1", {"s_1", "s_2"}]
    )
    assert metrics == pytest.approx({"precision": 4 / 9, "recall": 0.5, "f1": 1.4 / 3})


# ------------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------------

PREDICTIONS = ["the cat sat on the mat", "a dog"]
REFERENCES = ["the cat is on the mat", "the dog barks"]


@pytest.mark.parametrize(
    ("predictions", "references", "expected"),
    [
        # pair 1: matches the x2, cat, on, mat = 5 of 6; pair 2: dog = 1 of 2 -> (5 + 1) / (6 + 2) = 0.75
        (PREDICTIONS, REFERENCES, 0.75),
        # clipping: "the" x4 against one "the" -> min(4, 1) / 4 = 0.25
        (["the the the the"], ["the cat"], 0.25),
        # 13a tokens keep case and split punctuation: [Good, soap, .] vs [good, soap] -> 1/3
        (["Good soap."], ["good soap"], 1 / 3),
        # no predicted tokens at all -> 0
        ([""], ["good soap"], 0.0),
    ],
)
def test_unigram_precision_table(predictions, references, expected):
    assert compute_unigram_precision(predictions, references) == pytest.approx(expected)


def test_unigram_precision_equals_sacrebleu_first_precision():
    import sacrebleu

    predictions = ["Great soap, smells nice!", "too small for me", "works as described & cheap"]
    references = ["Smells nice and great soap.", "It is small for my hands", "works as described, cheap"]
    first = (
        sacrebleu.corpus_bleu(predictions, [references]).precisions[0] / 100
    )  # unsmoothed when matches > 0
    assert compute_unigram_precision(predictions, references) == pytest.approx(first)


def test_text_metrics_hand_computed():
    # "the cat sat on the mat" vs "the cat is on the mat" (6 tokens each):
    # rouge1: overlap the x2, cat, on, mat = 5 -> P = R = F = 5/6
    # rouge2: bigrams {the cat, on the, the mat} shared of 5 each -> F = 3/5
    # rougeL: LCS "the cat on the mat" = 5 -> F = 5/6
    # bleu4: p1..p4 = 5/6, 3/5, 1/4 ("on the mat"), 0/3 -> exp smoothing 1/(2*3) = 1/6; BP = 1
    #        (5/6 * 3/5 * 1/4 * 1/6) ** (1/4) = (1/48) ** (1/4) = 0.37992
    metrics = compute_text_metrics(PREDICTIONS[:1], REFERENCES[:1])
    assert metrics == pytest.approx(
        {
            "rouge1": 5 / 6,
            "rouge2": 3 / 5,
            "rougeL": 5 / 6,
            "bleu4": (1 / 48) ** 0.25,
            "unigram_precision": 5 / 6,
        }
    )


@pytest.mark.parametrize(("use_stemmer", "rouge1"), [(True, 1.0), (False, 0.5)])
def test_text_metrics_stemmer_switch(use_stemmer, rouge1):
    # "cats sat" vs "cat sat": stemmed, both tokens match; unstemmed only "sat" does (P = R = 1/2)
    assert compute_text_metrics(["cats sat"], ["cat sat"], use_stemmer=use_stemmer)[
        "rouge1"
    ] == pytest.approx(rouge1)


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "args", "kwargs", "match"),
    [
        (compute_ranking_metrics, ([[1, 2]], [1, 2]), {}, "ranked has 1 lists but targets has 2"),
        (compute_ranking_metrics, ([[1, 2]], [1]), {"ks": (0, 5)}, "ks must be"),
        (compute_ranking_metrics_from_ranks, ([0, 2],), {}, "ranks must be 1-based"),
        (compute_ranking_metrics_from_ranks, ([],), {}, "ranks must be a non-empty"),
        (rank_of_targets, (torch.ones(2, 3), [0]), {}, "targets must be integer item indices"),
        (rank_of_targets, (torch.ones(1, 3), [3]), {}, r"targets must lie in \[0, 3\)"),
        (rank_of_targets, (torch.tensor([[0.0, math.nan]]), [0]), {}, "scores contains NaN"),
        (
            rank_of_targets,
            (torch.ones(1, 3), [0]),
            {"exclude": torch.tensor([[1, 0, 0]])},
            "exclude masks the target",
        ),
        (
            rank_of_targets,
            (torch.ones(1, 3), [0]),
            {"exclude": torch.zeros(1, 2)},
            "exclude must have the shape",
        ),
        (rank_of_targets, (torch.ones(1, 3), [0]), {"ties": "random"}, "ties must be"),
        (compute_rating_metrics, ([1.0, 2.0], [1.0]), {}, "true has shape"),
        (compute_rating_metrics, ([math.nan], [1.0]), {}, "must be finite"),
        (compute_selection_metrics, (["s_0"], [["s_0"], ["s_1"]]), {}, "predicted_sets has 1 entries"),
        (compute_selection_metrics, (["s_0"], [[]]), {}, r"true_sets\[0\] is empty"),
        (compute_text_metrics, (["a"], ["a", "b"]), {}, "predictions has 1 texts but references has 2"),
        (compute_unigram_precision, (["a"], [["a", "b"]]), {}, "must be strings"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(function, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        function(*args, **kwargs)


def test_ranking_rejects_a_string_as_a_ranked_list():
    # iterating "item_1 item_2" would compare characters with the target and silently miss
    with pytest.raises(TypeError, match=r"ranked\[0\] is 'item_1 item_2'"):
        compute_ranking_metrics(["item_1 item_2"], ["item_1"])
