"""processing/rating_baselines.py: the mean and Koren bias baselines against hand-computed values."""

import pytest

from processing.rating_baselines import predict_rating_baselines


def test_rating_baselines_match_hand_computed_values():
    triples = [("u1", "a", 5.0), ("u1", "b", 3.0), ("u2", "a", 4.0)]
    pairs = [("u1", "a"), ("u2", "b"), ("u3", "c")]  # u3 and c are unseen: the global mean stands in
    predicted = predict_rating_baselines(triples, pairs, item_shrinkage=1.0, user_shrinkage=2.0)
    assert predicted["global_mean"] == [4.0, 4.0, 4.0]
    assert predicted["user_mean"] == [4.0, 4.0, 4.0]
    assert predicted["item_mean"] == [4.5, 3.0, 4.0]
    b_a, b_b = (1.0 + 0.0) / (1 + 2), -1.0 / (1 + 1)  # sum(r - mu) / (shrinkage + n)
    b_u1 = ((5 - 4 - b_a) + (3 - 4 - b_b)) / (2 + 2)
    b_u2 = (4 - 4 - b_a) / (2 + 1)
    expected = [4 + b_u1 + b_a, 4 + b_u2 + b_b, 4.0]
    assert predicted["user_item_bias"] == pytest.approx(expected)


def test_rating_baselines_clip_to_the_rating_scale_and_reject_unrated_data():
    predicted = predict_rating_baselines([("u", "a", 5.0)] * 3 + [("v", "b", 1.0)], [("u", "a")], item_shrinkage=0.0,
                                 user_shrinkage=0.0)
    assert predicted["user_item_bias"] == [5.0]  # mu 4 + b_a 1 + b_u 0: at the top, not above it
    with pytest.raises(ValueError, match="no ratings"):
        predict_rating_baselines([], [("u", "a")])
