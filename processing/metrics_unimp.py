"""UniMP evaluation: HR/NDCG/MRR@k, MAE/RMSE, selection P/R/F1 and text metrics.

Protocol and formulas: reference unimp_method.md §4 and peer_protocol.md §3 (RecBole full ranking).
"""

import functools
import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

import numpy as np
import torch

DEFAULT_KS = (3, 5, 10, 20)  # peer_protocol.md §3 topk; the poster reports @3 and @5 (reference §4.1)
EMPTY_EXPLANATION = "Empty"  # stands in for an empty generated explanation (reference §4.4)


# ---------------------------------------------------------------------------------------------------
# Ranking: recommendation and search (reference §4.1-4.2, peer_protocol.md §3)
# ---------------------------------------------------------------------------------------------------


def _check_ks(ks: int | Iterable[int]) -> tuple[int, ...]:
    ks = (ks,) if isinstance(ks, (int, np.integer)) else tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"ks must be a positive int or a non-empty sequence of them, got {ks!r}")
    return tuple(int(k) for k in ks)


def _to_list(values) -> list:
    return values.tolist() if isinstance(values, (torch.Tensor, np.ndarray)) else list(values)


def compute_ranking_metrics_from_ranks(ranks, ks: int | Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """HR@k, NDCG@k and MRR@k from the 1-based rank r of each user's single relevant item.

    Per user, with one relevant item (peer_protocol.md §3; reference §4.1, ideal DCG = 1):
        HR@k   = 1[r <= k]
        NDCG@k = 1 / log2(r + 1)  if r <= k else 0
        MRR@k  = 1 / r            if r <= k else 0
    and each metric is the mean over users.

    Args:
        ranks (`torch.Tensor | np.ndarray | Sequence[float]` of shape (B,)): 1-based ranks; `math.inf`
            for a target that is absent from a truncated ranked list.
        ks (`int | Iterable[int]`): cut-offs.

    Returns:
        `dict[str, float]`: `hr@k`, then `ndcg@k`, then `mrr@k`, for each k in `ks`.
    """
    ks = _check_ks(ks)
    if isinstance(ranks, torch.Tensor):
        ranks = ranks.detach().cpu().numpy()
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D sequence, got shape {ranks.shape}")
    if np.isnan(ranks).any() or (ranks < 1).any():
        raise ValueError("ranks must be 1-based (>= 1, math.inf for absent targets) and not NaN")
    hits = {k: ranks <= k for k in ks}
    metrics = {f"hr@{k}": float(hits[k].mean()) for k in ks}
    # np.where evaluates both branches; log2(inf + 1) = inf gives 0, never a warning.
    metrics |= {f"ndcg@{k}": float(np.where(hits[k], 1.0 / np.log2(ranks + 1.0), 0.0).mean()) for k in ks}
    metrics |= {f"mrr@{k}": float(np.where(hits[k], 1.0 / ranks, 0.0).mean()) for k in ks}
    return metrics


def compute_ranking_metrics(ranked, targets, ks: int | Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """HR@k, NDCG@k and MRR@k of ranked item lists against one target item per user (reference §4.1).

    The rank r of a target is its 1-based position in the list **after dropping repeated entries**
    (only an item's first occurrence counts), and r = inf when the target is absent; the formulas are
    those of `compute_ranking_metrics_from_ranks`. The official code does not de-duplicate beams, so
    two beams decoding to the same item can both count there (reference §4.1); here they cannot.
    A list shorter than k counts its absent targets as misses, so @20 from 10 beams equals @10.

    Args:
        ranked (`Sequence[Sequence[Hashable]]`, or a 2-D `torch.Tensor`/`np.ndarray` of shape (B, K)):
            each user's ranked item ids (ints or strings), best first; lists may differ in length.
        targets (`Sequence[Hashable]`, or a 1-D tensor/array of shape (B,)): each user's relevant item id,
            compared to the entries of `ranked` with `==`.
        ks (`int | Iterable[int]`): cut-offs.

    Returns:
        `dict[str, float]`: `hr@k`, `ndcg@k`, `mrr@k` for each k in `ks`, averaged over the B users.
    """
    ranked, targets = _to_list(ranked), _to_list(targets)
    if len(ranked) != len(targets):
        raise ValueError(
            f"ranked has {len(ranked)} lists but targets has {len(targets)} items; pass one each per user"
        )
    ranks = []
    for index, (items, target) in enumerate(zip(ranked, targets)):
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise TypeError(f"ranked[{index}] is {items!r}; pass each user's ranked item ids as a list")
        seen: set[Hashable] = set()
        rank = math.inf
        for item in items:
            if item in seen:
                continue
            seen.add(item)
            if item == target:
                rank = len(seen)
                break
        ranks.append(rank)
    return compute_ranking_metrics_from_ranks(ranks, ks)


def rank_of_targets(scores, targets, exclude=None, ties: str = "pessimistic") -> torch.Tensor:
    """Exact 1-based rank of each target among all items, from a full score matrix (no Python lists).

    With s the user's scores, t the target and j running over the items not excluded:
        pessimistic (default): r = #{j : s_j >= s_t}        (the target ranks after every tie)
        optimistic:            r = 1 + #{j : s_j > s_t}     (the target ranks before every tie)
    RecBole breaks ties arbitrarily through `torch.topk` (peer_protocol.md §3), so its rank lies
    between the two. Pessimistic is the default because it cannot reward a degenerate model: constant
    scores rank every target last, not first.

    Args:
        scores (`torch.Tensor | np.ndarray` of shape (B, num_items)): higher is better; no NaN.
        targets (`torch.Tensor | np.ndarray | Sequence[int]` of shape (B,)): item indices in [0, num_items).
        exclude (`torch.Tensor | np.ndarray` of shape (B, num_items), *optional*): True where an item is
            removed from the ranking (its score set to -inf), e.g. the user's training history under
            RecBole's general-model convention. UniMP's generative top-k masks nothing (peer_protocol.md §3).
            A mask that removes a row's own target raises `ValueError`.
        ties (`str`): `"pessimistic"` or `"optimistic"`, see above.

    Returns:
        `torch.LongTensor` of shape (B,): 1-based ranks, on `scores`' device.
    """
    if ties not in ("pessimistic", "optimistic"):
        raise ValueError(f"ties must be 'pessimistic' or 'optimistic', got {ties!r}")
    scores = torch.as_tensor(scores)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(
            f"scores must have shape (B, num_items) with num_items >= 1, got {tuple(scores.shape)}"
        )
    if not scores.is_floating_point():
        scores = scores.double()
    if torch.isnan(scores).any():
        raise ValueError("scores contains NaN; a NaN score has no rank")
    targets = torch.as_tensor(targets, device=scores.device)
    if targets.shape != scores.shape[:1] or targets.is_floating_point() or targets.is_complex():
        raise ValueError(
            f"targets must be integer item indices of shape ({scores.shape[0]},), got "
            f"{targets.dtype} {tuple(targets.shape)}"
        )
    targets = targets.long()
    if ((targets < 0) | (targets >= scores.shape[1])).any():
        raise ValueError(f"targets must lie in [0, {scores.shape[1]}) (the columns of scores)")
    if exclude is not None:
        exclude = torch.as_tensor(exclude, device=scores.device)
        if exclude.shape != scores.shape:
            raise ValueError(
                f"exclude must have the shape of scores {tuple(scores.shape)}, got {tuple(exclude.shape)}"
            )
        exclude = exclude.bool()
        if exclude.gather(1, targets[:, None]).any():
            raise ValueError("exclude masks the target of at least one row; a target cannot be excluded")
        scores = scores.masked_fill(exclude, -math.inf)
    target_scores = scores.gather(1, targets[:, None])  # (B, 1)
    ahead = scores >= target_scores if ties == "pessimistic" else scores > target_scores  # (B, num_items)
    if exclude is not None:
        ahead &= ~exclude  # an excluded item never outranks, even a target whose own score is -inf
    # pessimistic: the count includes the target itself, so it is already 1-based
    return ahead.sum(dim=1) + (0 if ties == "pessimistic" else 1)


# ---------------------------------------------------------------------------------------------------
# Rating prediction (reference §4.4)
# ---------------------------------------------------------------------------------------------------


def compute_rating_metrics(predicted, true) -> dict[str, float]:
    """MAE and RMSE of predicted against true ratings (reference §4.4).

        MAE  = mean_u |r̂_u - r_u|
        RMSE = sqrt(mean_u (r̂_u - r_u)^2)

    Args:
        predicted (`Sequence[float] | torch.Tensor | np.ndarray` of shape (B,)): predicted ratings
            (parse answers with `parse_ratings` first).
        true (`Sequence[float] | torch.Tensor | np.ndarray` of shape (B,)): ground-truth ratings.

    Returns:
        `dict[str, float]`: `mae` and `rmse`.
    """
    predicted = np.asarray(_to_list(predicted), dtype=np.float64)
    true = np.asarray(_to_list(true), dtype=np.float64)
    if predicted.ndim != 1 or predicted.size == 0:
        raise ValueError(
            f"predicted must be a non-empty 1-D sequence of ratings, got shape {predicted.shape}"
        )
    if true.shape != predicted.shape:
        raise ValueError(
            f"true has shape {true.shape} but predicted has {predicted.shape}; pass one rating each per user"
        )
    if not (np.isfinite(predicted).all() and np.isfinite(true).all()):
        raise ValueError("predicted and true must be finite; parse answers with parse_ratings first")
    errors = predicted - true
    return {"mae": float(np.abs(errors).mean()), "rmse": float(np.sqrt(np.square(errors).mean()))}


# ---------------------------------------------------------------------------------------------------
# Item selection (reference §4.3)
# ---------------------------------------------------------------------------------------------------


def _as_token_set(tokens: str | Iterable[Hashable]) -> set:
    return set(tokens.split()) if isinstance(tokens, str) else set(tokens)


def compute_selection_metrics(predicted_sets, true_sets) -> dict[str, float]:
    """Precision, recall and F1 of selected item tokens, per user then averaged (reference §4.3).

    Per user, with G the generated token set and T the ground truth (e.g. {"s_0", "s_3"}):
        precision = |G ∩ T| / |G|  (0 when G is empty)
        recall    = |G ∩ T| / |T|
        F1        = 2 · precision · recall / (precision + recall)  (0 when both are 0)
    Each of the three is the mean of the per-user values (F1 is not recomputed from the means),
    as in the official `eval_img_sel.py`.

    Args:
        predicted_sets (`Sequence[str | Iterable[str]]`): per user, the answer text (split on
            whitespace, as the official code does) or an iterable of tokens.
        true_sets (`Sequence[str | Iterable[str]]`): per user, the non-empty ground-truth tokens.

    Returns:
        `dict[str, float]`: `precision`, `recall`, `f1`.
    """
    predicted_sets, true_sets = _to_list(predicted_sets), _to_list(true_sets)
    if len(predicted_sets) != len(true_sets):
        raise ValueError(
            f"predicted_sets has {len(predicted_sets)} entries but true_sets has {len(true_sets)}; "
            "pass one each per user"
        )
    if not true_sets:
        raise ValueError("predicted_sets and true_sets are empty; there is nothing to average")
    precisions, recalls, f1s = [], [], []
    for index, (predicted, true) in enumerate(zip(predicted_sets, true_sets)):
        predicted, true = _as_token_set(predicted), _as_token_set(true)
        if not true:
            raise ValueError(f"true_sets[{index}] is empty; recall needs at least one ground-truth item")
        hits = len(predicted & true)
        precision = hits / len(predicted) if predicted else 0.0
        recall = hits / len(true)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        precisions.append(precision)
        recalls.append(recall)
        f1s.append(f1)
    return {
        "precision": float(np.mean(precisions)),
        "recall": float(np.mean(recalls)),
        "f1": float(np.mean(f1s)),
    }


# ---------------------------------------------------------------------------------------------------
# Explanation text (reference §4.4)
# ---------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _tokenizer_13a():
    # sacrebleu's "13a" (mteval-v13a) tokenizer, the one HF `bleu` copies and applies by default:
    # case kept, punctuation split off, "&amp;"-style entities unescaped.
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def _tokenize_13a(text: str) -> list[str]:
    return _tokenizer_13a()(text).split()


def compute_unigram_precision(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus-level clipped unigram precision: the paper's "BLEU" (HF `bleu` `precisions[0]`, reference §4.4).

        P1 = Σ_i Σ_w min(count_{pred_i}(w), count_{ref_i}(w)) / Σ_i |pred_i|    (0 when Σ_i |pred_i| = 0)

    No brevity penalty and no smoothing. Tokens are those of the 13a tokenizer (case-sensitive,
    punctuation split off), as HF `bleu` uses by default.

    Args:
        predictions (`Sequence[str]`): generated explanations.
        references (`Sequence[str]`): one reference explanation per prediction.

    Returns:
        `float`: P1 in [0, 1].
    """
    _check_texts(predictions, references)
    matches = total = 0
    for prediction, reference in zip(predictions, references):
        predicted_counts = Counter(_tokenize_13a(prediction))
        # Counter & Counter keeps each token's smaller count: the clipping
        matches += sum((predicted_counts & Counter(_tokenize_13a(reference))).values())
        total += sum(predicted_counts.values())
    return matches / total if total else 0.0


def _check_texts(predictions, references) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions has {len(predictions)} texts but references has {len(references)}; "
            "pass one reference per prediction"
        )
    if not predictions:
        raise ValueError("predictions and references are empty; there is nothing to score")
    if not all(isinstance(text, str) for text in [*predictions, *references]):
        raise ValueError("predictions and references must be strings (one reference per prediction)")


def compute_text_metrics(
    predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = True
) -> dict[str, float]:
    """ROUGE-1/2/L, BLEU-4 and the paper's unigram precision of generated explanations (reference §4.4).

    - `rouge1`, `rouge2`, `rougeL`: mean over pairs of the `rouge_score` F-measure (rougeL = sentence-level
      LCS). HF `rouge` reports the bootstrap median of this mean, which is the mean up to resampling noise.
      HF `rouge`, as the official code calls it, does not stem; `use_stemmer=False` reproduces that.
    - `bleu4`: `sacrebleu.corpus_bleu` (13a tokens, exp smoothing, brevity penalty) divided by 100,
      so that every value here lies in [0, 1].
    - `unigram_precision`: `compute_unigram_precision`, the number the paper calls "BLEU".

    Args:
        predictions (`Sequence[str]`): generated explanations (see `parse_explanation`).
        references (`Sequence[str]`): one reference explanation per prediction, unmodified.
        use_stemmer (`bool`): Porter-stem tokens before ROUGE matching.

    Returns:
        `dict[str, float]`: `rouge1`, `rouge2`, `rougeL`, `bleu4`, `unigram_precision`.
    """
    import sacrebleu
    from rouge_score import rouge_scorer

    predictions, references = _to_list(predictions), _to_list(references)
    _check_texts(predictions, references)
    rouge_types = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)
    scores = [scorer.score(reference, prediction) for prediction, reference in zip(predictions, references)]
    metrics = {name: float(np.mean([score[name].fmeasure for score in scores])) for name in rouge_types}
    metrics["bleu4"] = float(sacrebleu.corpus_bleu(predictions, [references]).score / 100.0)
    metrics["unigram_precision"] = float(compute_unigram_precision(predictions, references))
    return metrics


# ---------------------------------------------------------------------------------------------------
# `evaluate` wrappers
# ---------------------------------------------------------------------------------------------------


__all__ = [
    "DEFAULT_KS",
    "EMPTY_EXPLANATION",
    "compute_ranking_metrics",
    "compute_ranking_metrics_from_ranks",
    "compute_rating_metrics",
    "compute_selection_metrics",
    "compute_text_metrics",
    "compute_unigram_precision",
    "rank_of_targets",
]
