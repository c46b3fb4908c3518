"""Rating baselines fit on training ratings: global, user and item means, and Koren's bias baseline (reference §4.4).

Standard library only: `recipes/evaluate.py` imports it, and `benchmarks/run_rating_peers.py` loads it by path in the
RecBole venv, which has no `unimp` package.
"""

from collections import defaultdict
from collections.abc import Iterable

KOREN_ITEM_SHRINKAGE = 25.0  # lambda_item (Koren, TKDD 2010, §2.1)
KOREN_USER_SHRINKAGE = 10.0  # lambda_user


def predict_rating_baselines(
    triples: Iterable[tuple[str, str, float]],
    pairs: Iterable[tuple[str, str]],
    *,
    item_shrinkage: float = KOREN_ITEM_SHRINKAGE,
    user_shrinkage: float = KOREN_USER_SHRINKAGE,
) -> dict[str, list[float]]:
    """Rating predictions of the mean baselines for (user_id, item_id) `pairs`, fit on training `triples`.

    global_mean: mu. user_mean / item_mean: the user's / item's mean training rating, mu when it has none.
    user_item_bias: mu + b_u + b_i with shrunk biases (Koren 2010, eq. 2-3),
        b_i = sum_{u in R(i)} (r_ui - mu) / (item_shrinkage + |R(i)|),
        b_u = sum_{i in R(u)} (r_ui - mu - b_i) / (user_shrinkage + |R(u)|),
    clipped to [1, 5].

    Args:
        triples: (user_id, item_id, rating) of every rated training interaction.
        pairs: the (user_id, item_id) to predict.
        item_shrinkage, user_shrinkage: lambda_item, lambda_user.

    Returns:
        {"global_mean" | "user_mean" | "item_mean" | "user_item_bias": [prediction per pair]}.
    """
    triples = list(triples)
    if not triples:
        raise ValueError("rating baselines need rated training interactions; this dataset has no ratings")
    mu = sum(rating for *_, rating in triples) / len(triples)
    by_user, by_item = defaultdict(list), defaultdict(list)
    for user, item, rating in triples:
        by_user[user].append((item, rating))
        by_item[item].append(rating)
    item_bias = {item: sum(r - mu for r in rs) / (item_shrinkage + len(rs)) for item, rs in by_item.items()}
    user_bias = {user: sum(r - mu - item_bias[i] for i, r in steps) / (user_shrinkage + len(steps))
                 for user, steps in by_user.items()}
    predictions = {"global_mean": [], "user_mean": [], "item_mean": [], "user_item_bias": []}
    for user, item in pairs:
        user_ratings = [r for _, r in by_user.get(user, [])]
        predictions["global_mean"].append(mu)
        predictions["user_mean"].append(sum(user_ratings) / len(user_ratings) if user_ratings else mu)
        predictions["item_mean"].append(sum(by_item[item]) / len(by_item[item]) if item in by_item else mu)
        biased = mu + user_bias.get(user, 0.0) + item_bias.get(item, 0.0)
        predictions["user_item_bias"].append(min(5.0, max(1.0, biased)))
    return predictions


__all__ = ["KOREN_ITEM_SHRINKAGE", "KOREN_USER_SHRINKAGE", "predict_rating_baselines"]
