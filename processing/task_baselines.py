"""Baselines of personalized search (reference §4.2) and item selection (reference §4.3), none trained (issue 18).

Search: BM25 over item text, popularity filtered by the query, BM25 re-ranked by the user's history; each gives a
(num_items,) score row that `metrics_unimp.rank_of_targets` turns into exact full-catalogue ranks, the same path
as UniMP's item-token scores. Selection: evaluation candidates (the target plus sampled negatives with images,
shuffled), and the random, popularity and most-similar-image choices of one slot. Cold-start items (issue 12): a
content kNN over frozen item text embeddings, which can rank an item no one interacted with in training.
Explanation (reference §4.4): the nearest neighbour review, another user's training review of the target item.
"""

import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from modeling_unimp.image_utils import load_image

_TOKEN = re.compile(r"[a-z0-9]+")


# ---------------------------------------------------------------------------------------------------
# Search (reference §4.2)
# ---------------------------------------------------------------------------------------------------


def tokenize_text(text: str | None) -> list[str]:
    """Lower-case runs of letters and digits ("Children's Comedy" -> ["children", "s", "comedy"])."""
    return _TOKEN.findall((text or "").lower())


def item_search_text(item: Mapping[str, Any]) -> str:
    """What BM25 indexes for an item: title, category and attribute values (an "ASIN" identifier left out)."""
    values = [str(value) for key, value in item.get("attributes") or [] if key != "ASIN" and value]
    return " ".join([item.get("title") or "", item.get("category") or "", *values])


class BM25Index:
    """Okapi BM25 over a fixed list of documents (token lists).

    For a query with distinct terms q and a document d of |d| tokens (avgdl = mean length, N documents,
    df(t) = documents holding t, tf(t, d) = count of t in d):
        idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))      (Lucene's, never negative)
        score(q, d) = sum_{t in q} idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
    A query term repeated counts once; a term no document holds adds 0.
    """

    def __init__(self, documents: Sequence[Sequence[str]], *, k1: float = 1.5, b: float = 0.75):
        if not documents:
            raise ValueError("BM25Index needs at least one document")
        self.num_documents = len(documents)
        lengths = np.array([len(document) for document in documents], dtype=np.float64)
        average_length = lengths.mean() if lengths.mean() > 0 else 1.0
        norms = k1 * (1.0 - b + b * lengths / average_length)
        self._postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        by_term: dict[str, list[tuple[int, int]]] = {}
        for index, document in enumerate(documents):
            for term, count in Counter(document).items():
                by_term.setdefault(term, []).append((index, count))
        for term, entries in by_term.items():
            indices = np.array([index for index, _ in entries])
            counts = np.array([count for _, count in entries], dtype=np.float64)
            df = len(entries)
            idf = math.log(1.0 + (self.num_documents - df + 0.5) / (df + 0.5))
            self._postings[term] = (indices, idf * counts * (k1 + 1.0) / (counts + norms[indices]))

    def scores(self, query_terms: Iterable[str]) -> np.ndarray:
        """(num_documents,) BM25 score of every document for the query's distinct terms."""
        scores = np.zeros(self.num_documents)
        for term in set(query_terms):
            if term in self._postings:
                indices, weights = self._postings[term]
                scores[indices] += weights
        return scores


def count_training_popularity(train_rows: Iterable[Mapping[str, Any]]) -> Counter:
    """item_id -> interactions in the training split (each row's history and target), the Pop baseline's counts."""
    counts: Counter = Counter()
    for row in train_rows:
        counts.update(row["history_item_ids"])
        counts[row["target_item_id"]] += 1
    return counts


def query_filtered_popularity_scores(query_terms: Iterable[str], item_terms: Sequence[set[str]],
                                     popularity: np.ndarray) -> np.ndarray:
    """(num_items,) popularity ranked within the items matching the query first.

    An item matches when its text holds every query term. score = popularity + (max popularity + 1) for a
    matching item, popularity otherwise: every match ranks above every non-match, each group by popularity.
    No matching item (or an empty query) leaves plain popularity.
    """
    query = set(query_terms)
    popularity = np.asarray(popularity, dtype=np.float64)
    match = np.array([bool(query) and query <= terms for terms in item_terms])
    return popularity + match * (popularity.max(initial=0.0) + 1.0)


def tfidf_similarity_matrix(documents: Sequence[Sequence[str]]) -> np.ndarray:
    """(num_items, num_items) cosine similarity of the items' TF-IDF vectors (idf = ln(N / df)); 0 for empty texts."""
    vocabulary = {term: n for n, term in enumerate(sorted({term for document in documents for term in document}))}
    vectors = np.zeros((len(documents), max(len(vocabulary), 1)))
    for index, document in enumerate(documents):
        for term, count in Counter(document).items():
            vectors[index, vocabulary[term]] = count
    idf = np.log(len(documents) / np.maximum((vectors > 0).sum(axis=0), 1))
    vectors *= idf
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    return vectors @ vectors.T


def history_reranked_scores(bm25_scores: np.ndarray, history_indices: Sequence[int], similarity: np.ndarray,
                            weight: float) -> np.ndarray:
    """BM25 re-ranked by the history: bm25 / max(bm25) + weight * mean_{h in history} similarity[h, item].

    BM25 is scaled to [0, 1] per query (left as is when its maximum is 0) so that `weight` (λ, chosen on
    validation) means the same for every query.
    """
    top = bm25_scores.max(initial=0.0)
    scaled = bm25_scores / top if top > 0 else bm25_scores
    if not len(history_indices):
        return scaled
    return scaled + weight * similarity[list(history_indices)].mean(axis=0)


# ---------------------------------------------------------------------------------------------------
# Cold-start items (issue 12)
# ---------------------------------------------------------------------------------------------------

CONTENT_KNN_POOLS = ("mean", "max")


def content_knn_scores(item_features: np.ndarray, histories: Sequence[Sequence[int]], *, k: int,
                       pool: str = "mean") -> np.ndarray:
    """(U, num_items) content kNN: each item's similarity to the user's last `k` history items, from item features
    alone (no interaction count), so an item never seen in training ranks like any other.

    pool "mean": cosine of the item to the mean of the last k items' features; "max": the highest cosine of the item
    to any of them. A user without history, or an item without features (a zero row), scores 0.

    Args:
        item_features (`np.ndarray` of shape (num_items, F)): one row per catalogue item, e.g. L2-normalised MiniLM
            embeddings of the item texts (`modeling_unimp.item_content_unimp.encode_item_texts`).
        histories (`Sequence[Sequence[int]]` of length U): each user's history as catalogue indices, oldest first.
        k (`int`): how many of the most recent history items make the profile.
        pool (`str`): "mean" or "max".
    Returns:
        `np.ndarray` of shape (U, num_items), float64.
    """
    if pool not in CONTENT_KNN_POOLS:
        raise ValueError(f"pool must be one of {CONTENT_KNN_POOLS}, got {pool!r}")
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    features = np.asarray(item_features, dtype=np.float64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit = np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)  # (n, F)
    scores = np.zeros((len(histories), len(unit)))
    for row, history in enumerate(histories):
        recent = list(history)[-k:]
        if not recent:
            continue
        if pool == "max":
            scores[row] = (unit[recent] @ unit.T).max(axis=0)
            continue
        profile = unit[recent].mean(axis=0)
        length = np.linalg.norm(profile)
        if length > 0:
            scores[row] = unit @ (profile / length)
    return scores


# ---------------------------------------------------------------------------------------------------
# Selection (reference §4.3)
# ---------------------------------------------------------------------------------------------------


def sample_selection_candidates(target_id: str, pool: Sequence[str], touched: Iterable[str], *,
                                num_negatives: int, rng: random.Random) -> tuple[list[str], int]:
    """The target plus `num_negatives` distinct items of `pool` the user never touched, shuffled.

    Returns:
        (candidate item ids, slot of the target).
    """
    excluded = set(touched) | {target_id}
    allowed = [item_id for item_id in pool if item_id not in excluded]
    if len(allowed) < num_negatives:
        raise ValueError(f"only {len(allowed)} untouched items to draw {num_negatives} negatives from")
    candidates = [target_id, *rng.sample(allowed, num_negatives)]
    rng.shuffle(candidates)
    return candidates, candidates.index(target_id)


def choose_best_slot(candidate_scores: Sequence[float]) -> int:
    """The slot with the highest score; ties go to the earliest slot (shuffled candidates: no position bias)."""
    return int(np.argmax(np.asarray(candidate_scores, dtype=np.float64)))


def image_pixel_features(image, *, size: int = 16) -> np.ndarray:
    """A pixel-space image feature: RGB resized to size x size, flattened, mean-centred, unit length (0 if flat or
    undecodable)."""
    decoded = load_image(image, size=size, draft=True)
    if decoded is None:
        return np.zeros(size * size * 3)
    pixels = np.asarray(decoded, dtype=np.float64).reshape(-1)
    pixels -= pixels.mean()
    norm = np.linalg.norm(pixels)
    return pixels / norm if norm > 0 else pixels


def compute_selection_accuracy(chosen_slots: Sequence[int], answer_slots: Sequence[int]) -> float:
    """Fraction of records whose chosen slot is the answer slot (one positive per record)."""
    if len(chosen_slots) != len(answer_slots) or not answer_slots:
        raise ValueError(f"need one chosen slot per record, got {len(chosen_slots)} for {len(answer_slots)}")
    return float(np.mean([chosen == answer for chosen, answer in zip(chosen_slots, answer_slots)]))


# ---------------------------------------------------------------------------------------------------
# Explanation (reference §4.4)
# ---------------------------------------------------------------------------------------------------


def training_reviews(train_rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """item_id -> {user_id: review text} of every reviewed interaction in the training split (histories and
    targets; a user's later review of the same item wins, as in their sequence)."""
    reviews: dict[str, dict[str, str]] = {}
    for row in train_rows:
        texts = row.get("history_explanations") or [None] * len(row["history_item_ids"])
        steps = list(zip(row["history_item_ids"], texts)) + [(row["target_item_id"], row.get("target_explanation"))]
        for item_id, text in steps:
            if text and text.strip():
                reviews.setdefault(item_id, {})[row["user_id"]] = text
    return reviews


def nearest_review_explanations(train_rows: Iterable[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]
                                ) -> tuple[list[str | None], int]:
    """The nearest-neighbour review baseline: for each row (a held-out user), another user's training review of its
    target item, the one closest to the user's own earlier reviews (cosine of TF-IDF word vectors, idf = ln(N / df)
    over the training reviews; ties: the author id first in sort order). Where no other user reviewed the item in
    training, the user's own latest review (the repeat-latest baseline) stands in.

    Returns: one text per row (None where the user has no earlier review either), and how many rows fell back.
    """
    reviews = training_reviews(train_rows)
    documents = [tokenize_text(text) for by_user in reviews.values() for text in by_user.values()]
    document_frequency = Counter(term for document in documents for term in set(document))
    num_documents = max(len(documents), 1)

    def vector(text: str) -> dict[str, float]:
        counts = Counter(tokenize_text(text))
        weights = {term: count * math.log(num_documents / document_frequency[term])
                   for term, count in counts.items() if document_frequency.get(term)}
        norm = math.sqrt(sum(w * w for w in weights.values()))
        return {term: w / norm for term, w in weights.items()} if norm > 0 else {}

    chosen, fallbacks = [], 0
    for row in rows:
        own = [text for text in row.get("history_explanations") or [] if text and text.strip()]
        neighbours = {user: text for user, text in reviews.get(row["target_item_id"], {}).items()
                      if user != row["user_id"]}
        if not neighbours:
            fallbacks += 1
            chosen.append(own[-1] if own else None)
            continue
        profile = vector(" ".join(own))
        similarity = {user: sum(profile.get(term, 0.0) * w for term, w in vector(text).items())
                      for user, text in neighbours.items()}
        best = max(sorted(neighbours), key=lambda user: similarity[user])   # max keeps the first of equals
        chosen.append(neighbours[best])
    return chosen, fallbacks


__all__ = [
    "BM25Index",
    "CONTENT_KNN_POOLS",
    "choose_best_slot",
    "compute_selection_accuracy",
    "content_knn_scores",
    "count_training_popularity",
    "history_reranked_scores",
    "image_pixel_features",
    "item_search_text",
    "nearest_review_explanations",
    "query_filtered_popularity_scores",
    "sample_selection_candidates",
    "tfidf_similarity_matrix",
    "tokenize_text",
    "training_reviews",
]
