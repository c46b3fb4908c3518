"""A builder's `DatasetDict` -> task records (rec, exp, select, search, imggen) for
`modeling_unimp.prompt_templates.render_record`: history windows, negatives, queries (reference §2.2, §3).
"""

import logging
import os
import random
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, NamedTuple

from datasets import Dataset, Image

from modeling_unimp.prompt_templates import TRAIN_SPLIT

from .datasets_unimp import ITEMS_SPLIT, USER_SPLITS

logger = logging.getLogger(__name__)

_TITLE_STOPWORDS = frozenset("a an and the of for in on with to by at from or".split())


def items_by_id(items: Dataset | Iterable[Mapping[str, Any]], *, decode_images: bool = False) -> dict[str, dict]:
    """The item table as prompt-template items: item_id -> {item_id, title, category, attributes, image}.

    Args:
        items: the "items" split (or dicts with ITEM_FEATURES fields).
        decode_images: give PIL images instead of file paths (images stay lazy paths by default).

    Returns:
        dict real item_id -> item dict; `image` is a path str, a PIL image, or None.
    """
    if isinstance(items, Dataset) and not decode_images:
        items = items.cast_column("image", Image(decode=False))
    table = {}
    for item in items:
        image = item.get("image")
        if isinstance(image, Mapping):  # undecoded datasets.Image value
            if image.get("path") and os.path.exists(image["path"]):
                image = image["path"]
            elif image.get("bytes") is not None:  # e.g. after save_to_disk embedded the bytes
                image = Image().decode_example(dict(image))
            else:
                image = None
        attributes = [(entry["key"], entry["value"]) if isinstance(entry, Mapping) else tuple(entry)
                      for entry in item.get("attributes") or []]
        table[item["item_id"]] = {"item_id": item["item_id"], "title": item.get("title"),
                                  "category": item.get("category"), "attributes": attributes, "image": image}
    return table


def collect_touched_item_ids(dataset_dict: Mapping[str, Dataset]) -> dict[str, set[str]]:
    """user -> every item the user interacted with in any user split (negatives must avoid all of them).

    Args:
        dataset_dict: a builder's DatasetDict.

    Returns:
        dict user_id -> set of item ids.
    """
    touched: dict[str, set[str]] = {}
    for split in USER_SPLITS:
        if split in dataset_dict:
            for user, history, target in zip(dataset_dict[split]["user_id"], dataset_dict[split]["history_item_ids"],
                                             dataset_dict[split]["target_item_id"]):
                touched.setdefault(user, set()).update(history, [target])
    return touched


class _Step(NamedTuple):
    item_id: str
    rating: int | None
    explanation: str | None


def _row_steps(row: Mapping[str, Any]) -> list[_Step]:
    """The row's sequence, history then target, each step with its rating and explanation."""
    history = row["history_item_ids"]
    if not history:
        raise ValueError(f"user {row.get('user_id')!r}: field 'history_item_ids' is empty; every task needs at "
                         "least one history item")
    ratings = row.get("history_ratings") or [None] * len(history)
    explanations = row.get("history_explanations") or [None] * len(history)
    steps = [_Step(*step) for step in zip(history, ratings, explanations)]
    steps.append(_Step(row["target_item_id"], row.get("target_rating"), row.get("target_explanation")))
    return steps


def _record_item(lookup: Mapping[str, dict], step: _Step, user_id: str, field: str, **extra) -> dict:
    if step.item_id not in lookup:
        raise KeyError(f"user {user_id!r}: {field} item_id {step.item_id!r} is not in the item table")
    item = dict(lookup[step.item_id])
    item.update(extra)
    return item


def _as_lookup(items) -> Mapping[str, dict]:
    if isinstance(items, Mapping):
        return items
    return items_by_id(items)


def _is_train(split: str) -> bool:
    if split not in (TRAIN_SPLIT, "validation", "test"):
        raise ValueError(f"split={split!r} must be 'train', 'validation' or 'test'")
    return split == TRAIN_SPLIT


def _window_ends(num_steps: int, max_history_items: int, num_windows: int | None, rng: random.Random) -> list[int]:
    """Target positions of training windows over a sequence of `num_steps` (each keeps >= 1 history item).

    None = every position 1..n-1 (sliding windows); k = k distinct positions drawn among those with a
    full history of `max_history_items` (all positions when the sequence is shorter), sorted.
    """
    if num_steps < 2:
        return []
    if num_windows is None:
        return list(range(1, num_steps))
    first_full = min(max_history_items, num_steps - 1)
    candidates = list(range(first_full, num_steps))
    return sorted(rng.sample(candidates, min(num_windows, len(candidates))))


def _user_rng(seed: int, task: str, user_id: str) -> random.Random:
    # one generator per (seed, task, user): a user's examples do not move when other users change
    return random.Random(f"{seed}:{task}:{user_id}")


def _sequence_records(
    rows, items, *, task: str, split: str, max_history_items: int, num_windows_per_user: int | None, seed: int,
    make_record: Callable[[str, list[_Step], _Step, Mapping[str, dict]], dict | None],
    keep_step: Callable[[_Step], bool] = lambda step: True,
) -> list[dict]:
    """Shared windowing of rec / exp / search / imggen: history = the most recent `max_history_items`."""
    if max_history_items < 1:
        raise ValueError(f"max_history_items={max_history_items} must be >= 1")
    is_train = _is_train(split)
    lookup = _as_lookup(items)
    records, skipped_steps, skipped_users = [], 0, 0
    for row in rows:
        user_id = row["user_id"]
        all_steps = _row_steps(row)
        steps = [step for step in all_steps if keep_step(step)]
        skipped_steps += len(all_steps) - len(steps)
        if is_train:
            rng = _user_rng(seed, task, user_id)
            ends = _window_ends(len(steps), max_history_items, num_windows_per_user, rng)
        else:  # the row's own target; the history budget keeps the most recent items
            ends = [len(steps) - 1] if len(steps) >= 2 and steps[-1] is all_steps[-1] else []
        if not ends:
            skipped_users += 1
        for end in ends:
            record = make_record(user_id, steps[max(0, end - max_history_items):end], steps[end], lookup)
            if record is not None:
                records.append(record)
    if skipped_steps or skipped_users:
        logger.info("%s %s records: skipped %d interactions the task cannot use and %d users left without a "
                    "usable (history, target)", task, split, skipped_steps, skipped_users)
    return records


def build_recommendation_records(
    rows: Iterable[Mapping[str, Any]],
    items: Dataset | Mapping[str, dict],
    *,
    split: str,
    max_history_items: int = 5,
    num_windows_per_user: int | None = 1,
    seed: int = 0,
) -> list[dict]:
    """Sequential recommendation records (reference §2.2 i) for `render_record`.

    Training: windows over each row's sequence (history + target); the windows' history items are
    labelled, which `render_record` turns into context reconstruction. Evaluation: the row's target,
    after its `max_history_items` most recent history items.

    Args:
        rows: a user split (USER_ROW_FEATURES rows).
        items: the "items" split or an `items_by_id` mapping.
        split: "train", "validation" or "test" (selects windowing vs the row's target).
        max_history_items: history budget; the most recent items are kept.
        num_windows_per_user: training windows per user with a full history, drawn with the seed;
            None = every sliding window (target positions 1..n-1).
        seed: seed of the window draw.

    Returns:
        records {"task": "rec", "user_id", "history": [item, ...], "target": item}.
    """
    def make_record(user_id, history, target, lookup):
        return {"task": "rec", "user_id": user_id,
                "history": [_record_item(lookup, step, user_id, "history") for step in history],
                "target": _record_item(lookup, target, user_id, "target")}

    return _sequence_records(rows, items, task="rec", split=split, max_history_items=max_history_items,
                             num_windows_per_user=num_windows_per_user, seed=seed, make_record=make_record)


def build_explanation_records(
    rows: Iterable[Mapping[str, Any]],
    items: Dataset | Mapping[str, dict],
    *,
    split: str,
    max_history_items: int = 4,
    num_windows_per_user: int | None = 1,
    seed: int = 0,
) -> list[dict]:
    """Rating + explanation records (task "exp", reference §2.2 ii-iii) for `render_record`.

    Only interactions with a rating are used; the explanation is the row's text (None gives a rating-only
    answer, as on ML-100K). Evaluation rows whose target has no rating are skipped (reported).

    Args:
        rows: a user split (USER_ROW_FEATURES rows).
        items: the "items" split or an `items_by_id` mapping.
        split: "train", "validation" or "test".
        max_history_items: history budget; the most recent rated items are kept.
        num_windows_per_user: training windows per user (None = every window).
        seed: seed of the window draw.

    Returns:
        records {"task": "exp", "user_id", "history": [item + rating/explanation], "target": item + ...}.
    """
    rows = list(rows)
    if rows and not any(row.get("target_rating") is not None for row in rows):
        raise ValueError("the exp task needs ratings, and no row of this split has a target_rating "
                         "(H&M has none)")

    def make_record(user_id, history, target, lookup):
        def with_rating(step, field):
            return _record_item(lookup, step, user_id, field, rating=step.rating, explanation=step.explanation)

        return {"task": "exp", "user_id": user_id,
                "history": [with_rating(step, "history") for step in history],
                "target": with_rating(target, "target")}

    return _sequence_records(rows, items, task="exp", split=split, max_history_items=max_history_items,
                             num_windows_per_user=num_windows_per_user, seed=seed, make_record=make_record,
                             keep_step=lambda step: step.rating is not None)


def _title_keywords(title: str | None) -> str:
    words = [re.sub(r"[^\w'-]", "", word) for word in (title or "").split()]
    return " ".join(word for word in words if word and word.lower() not in _TITLE_STOPWORDS)


def item_query(item: Mapping[str, Any], *, source: str = "category") -> str:
    """The search query for a target item (reference §2.2 v).

    "category": the category/genre path, falling back to title keywords; "title": title keywords
    (title words minus a few stopwords), falling back to the category. With neither (Amazon MI), the
    item's attribute values except its "ASIN" identifier (the review summaries).

    Args:
        item: item dict (title, category, attributes).
        source: "category" or "title".

    Returns:
        the query text ("" only for an item with no text at all).
    """
    if source not in ("category", "title"):
        raise ValueError(f"source={source!r} must be 'category' or 'title'")
    category = item.get("category") or ""
    keywords = _title_keywords(item.get("title"))
    first, second = (category, keywords) if source == "category" else (keywords, category)
    if first or second:
        return first or second
    values = [value for key, value in item.get("attributes") or [] if key != "ASIN" and value]
    return " ".join(" ".join(str(value).split()) for value in values)


def build_search_records(
    rows: Iterable[Mapping[str, Any]],
    items: Dataset | Mapping[str, dict],
    *,
    split: str,
    max_history_items: int = 5,
    num_windows_per_user: int | None = 1,
    seed: int = 0,
    query_source: str = "category",
) -> list[dict]:
    """Personalized search records (reference §2.2 v): the recommendation windows plus a query.

    Args:
        rows: a user split (USER_ROW_FEATURES rows).
        items: the "items" split or an `items_by_id` mapping.
        split: "train", "validation" or "test".
        max_history_items: history budget; the most recent items are kept.
        num_windows_per_user: training windows per user (None = every window).
        seed: seed of the window draw.
        query_source: "category" or "title", see `item_query`.

    Returns:
        records {"task": "search", "user_id", "history", "target", "query"}.
    """
    def make_record(user_id, history, target, lookup):
        target_item = _record_item(lookup, target, user_id, "target")
        return {"task": "search", "user_id": user_id,
                "history": [_record_item(lookup, step, user_id, "history") for step in history],
                "target": target_item, "query": item_query(target_item, source=query_source)}

    return _sequence_records(rows, items, task="search", split=split, max_history_items=max_history_items,
                             num_windows_per_user=num_windows_per_user, seed=seed, make_record=make_record)


def build_image_generation_records(
    rows: Iterable[Mapping[str, Any]],
    items: Dataset | Mapping[str, dict],
    *,
    image_codes: Mapping[str, str],
    split: str,
    max_history_items: int = 2,
    num_windows_per_user: int | None = 1,
    seed: int = 0,
) -> list[dict]:
    """User-guided image generation records (reference §2.2 vi); items without codes are skipped.

    Args:
        rows: a user split (USER_ROW_FEATURES rows).
        items: the "items" split or an `items_by_id` mapping.
        image_codes: item_id -> the item's image code string (from an image tokenizer).
        split: "train", "validation" or "test".
        max_history_items: history budget.
        num_windows_per_user: training windows per user (None = every window).
        seed: seed of the window draw.

    Returns:
        records {"task": "imggen", "user_id", "history", "target", "query"} with `image_codes` on items.
    """
    def make_record(user_id, history, target, lookup):
        def with_codes(step, field):
            return _record_item(lookup, step, user_id, field, image_codes=image_codes[step.item_id])

        target_item = with_codes(target, "target")
        return {"task": "imggen", "user_id": user_id, "history": [with_codes(step, "history") for step in history],
                "target": target_item, "query": item_query(target_item, source="title")}

    return _sequence_records(rows, items, task="imggen", split=split, max_history_items=max_history_items,
                             num_windows_per_user=num_windows_per_user, seed=seed, make_record=make_record,
                             keep_step=lambda step: bool(image_codes.get(step.item_id)))


def build_selection_records(
    rows: Iterable[Mapping[str, Any]],
    items: Dataset | Mapping[str, dict],
    *,
    split: str,
    max_history_items: int = 4,
    num_candidates: int = 3,
    two_positive_probability: float = 0.4,
    touched_item_ids: Mapping[str, Collection[str]] | None = None,
    seed: int = 0,
) -> list[dict]:
    """Item selection records (reference §2.2 iv): pick the user's next item(s) among shuffled candidates.

    One positive (the window's target) with probability 1 - `two_positive_probability`, else two (the
    target and the item before it, the original's 0.6 / 0.4); the other candidates are negatives drawn
    from items the user never touched. Training draws a window per user; evaluation uses the row's
    target. Draws, negatives and slot order all come from the seed.

    Args:
        rows: a user split (USER_ROW_FEATURES rows).
        items: the "items" split or an `items_by_id` mapping (its order is the negative pool's order).
        split: "train", "validation" or "test".
        max_history_items: history items before the positives.
        num_candidates: candidates shown, 2 to 5 (slot tokens `s_0`..`s_4`).
        two_positive_probability: chance of a second positive.
        touched_item_ids: user -> every item the user touched (see `collect_touched_item_ids`); default
            the row's own items, which under leave-one-out misses the later splits' items.
        seed: seed of every draw.

    Returns:
        records {"task": "select", "user_id", "history", "candidates", "answer_slots"}.
    """
    if not 2 <= num_candidates <= 5:
        raise ValueError(f"num_candidates={num_candidates} must be 2 to 5 (one slot token s_i each)")
    is_train = _is_train(split)
    lookup = _as_lookup(items)
    catalogue = list(lookup)
    records, skipped = [], 0
    for row in rows:
        user_id = row["user_id"]
        steps = _row_steps(row)
        rng = _user_rng(seed, "select", user_id)
        if is_train:
            ends = _window_ends(len(steps), max_history_items + 1, 1, rng)
            if not ends:
                skipped += 1
                continue
            end = ends[0]
        else:
            end = len(steps) - 1
        num_positives = 2 if end >= 2 and rng.random() < two_positive_probability else 1
        num_positives = min(num_positives, num_candidates - 1)
        positives = steps[end - num_positives + 1:end + 1]
        history = steps[max(0, end - num_positives + 1 - max_history_items):end - num_positives + 1]
        if not history:
            skipped += 1
            continue
        touched = set(touched_item_ids.get(user_id, ())) if touched_item_ids is not None else set()
        touched.update(step.item_id for step in steps)
        if len(catalogue) - len(touched & set(catalogue)) < num_candidates - num_positives:
            raise ValueError(f"user {user_id!r}: fewer than {num_candidates - num_positives} untouched items "
                             "to draw negatives from")
        negatives: list[str] = []
        while len(negatives) < num_candidates - num_positives:
            item_id = catalogue[rng.randrange(len(catalogue))]
            if item_id not in touched and item_id not in negatives:
                negatives.append(item_id)
        candidates = [(step.item_id, True) for step in positives] + [(item_id, False) for item_id in negatives]
        rng.shuffle(candidates)
        records.append({
            "task": "select", "user_id": user_id,
            "history": [_record_item(lookup, step, user_id, "history") for step in history],
            "candidates": [_record_item(lookup, _Step(item_id, None, None), user_id, "candidates")
                           for item_id, _ in candidates],
            "answer_slots": [slot for slot, (_, positive) in enumerate(candidates) if positive],
        })
    if skipped:
        logger.info("select %s records: skipped %d users too short for a history before the positives",
                    split, skipped)
    return records


_TASK_BUILDERS = {
    "rec": build_recommendation_records,
    "exp": build_explanation_records,
    "select": build_selection_records,
    "search": build_search_records,
}


def build_task_records(dataset_dict: Mapping[str, Dataset], task: str, split: str, **kwargs: Any) -> list[dict]:
    """Records of one task from a builder's DatasetDict (items and touched sets taken from it).

    Args:
        dataset_dict: a builder's DatasetDict (user splits + "items").
        task: "rec", "exp", "select" or "search" (imggen needs codes: call its builder directly).
        split: "train", "validation" or "test".
        **kwargs: passed to the task's builder (max_history_items, seed, ...).

    Returns:
        the records, ready for `prompt_templates.render_record`.
    """
    if task not in _TASK_BUILDERS:
        raise ValueError(f"task={task!r} must be one of {tuple(_TASK_BUILDERS)}")
    items = items_by_id(dataset_dict[ITEMS_SPLIT])
    if task == "select" and "touched_item_ids" not in kwargs:
        kwargs["touched_item_ids"] = collect_touched_item_ids(dataset_dict)
    return _TASK_BUILDERS[task](dataset_dict[split], items, split=split, **kwargs)


__all__ = [
    "build_explanation_records",
    "build_image_generation_records",
    "build_recommendation_records",
    "build_search_records",
    "build_selection_records",
    "build_task_records",
    "collect_touched_item_ids",
    "item_query",
    "items_by_id",
]
