"""Item -> text chunk and the per-task prompt templates (reference unimp_method.md §2); pure Python.

Stdlib only: this file is copied into checkpoints as remote code next to the processor.
"""

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Token strings shared by the templates, the processor and the model config (reference §1.5).
IMAGE_TOKEN = "<image>"
END_OF_CHUNK_TOKEN = "<|endofchunk|>"
ANSWER_TOKEN = "<answer>"
RATING_TOKENS = tuple(f"rate_{r}" for r in range(1, 6))  # rating answers, reference §1.5
SELECTION_TOKENS = tuple(f"s_{i}" for i in range(5))  # selection slots, reference §1.5


def item_token(index: int) -> str:
    """The single added token that names catalogue item `index` (issue 2: one `<item_k>` per item)."""
    return f"<item_{index}>"


def image_code_token(code: int) -> str:
    """The single added token of image code `code` (issue 7), as `UniMPImageTokenizer.code_token` spells it."""
    return f"<img_{int(code)}>"


TASKS = ("rec", "exp", "select", "search", "imggen")
# λ_a per task, applied to every supervised token of the sample (reference §3.4).
DEFAULT_TASK_WEIGHTS = {"rec": 2.0, "exp": 1.0, "select": 1.0, "search": 1.0, "imggen": 1.0}
TRAIN_SPLIT = "train"
EVAL_SPLITS = ("validation", "valid", "eval", "test")

UNKNOWN_VALUE = "Unknown"  # the one rule for a missing or empty attribute value (reference §2.1)
DEFAULT_WORD_BUDGET = 20  # words kept per attribute value (reference §2.1)
DEFAULT_EXPLANATION_WORD_BUDGET = 30  # words kept per explanation, train and eval alike (reference §2.2 ii)
DEFAULT_QUERY_WORD_BUDGET = 30  # words kept per search / image-generation query (reference §2.2 vi)
# Where a rec/search history item's token sits in its chunk. "paper": after the item's image and attributes
# (reference §2.1-§3.2), so context reconstruction asks for an item's id right after its own content.
# "next_item": before them (`<answer> <item_k> <image> attrs <|endofchunk|>`), so every history answer predicts
# an item from the earlier items only: a next-item prediction at every position, as SASRec trains.
CONTEXT_ORDERS = ("paper", "next_item")

# Instructions, worded identically in the training and the evaluation form (reference §2.2; the
# original's "Image ID" wording at image-generation test time is not copied).
REC_INSTRUCTION = "What is the next item recommended to the user?"
EXP_INSTRUCTION = "What is the rating and explanation for the item?"
SELECT_INSTRUCTION = "Can you select the suitable item from above for the user?"
SEARCH_INSTRUCTION = "What is the related item ID to the query based on the history?"
IMGGEN_INSTRUCTION = "What is the generated image ID to the query based on the history?"
HISTORY_PREFIX = "User history:"
CANDIDATES_PREFIX = "Select from:"
QUERY_PREFIX = "Query:"

# Control-token strings must never come from free text, or the `<image>` count and the answer spans
# break: `<image>`, `<answer>`, `<item_k>` and any `<|...|>` (end of chunk, BOS/EOS of common tokenizers).
_CONTROL_TOKEN_PATTERN = re.compile(r"<\|[^|>]*\|>|<image>|<answer>|<item_\d+>|<img_\d+>|</?s>|<pad>|<PAD>")
# Rating and slot tokens are plain words (`rate_5`, `s_1`) that the tokenizer matches anywhere, even inside a word
# ("files_1" -> "file" + `s_1`): in free text their underscore becomes a space, so they stay ordinary text.
_PLAIN_WORD_TOKEN_PATTERN = re.compile(r"(?<=rate)_(?=[1-5])|(?<=s)_(?=[0-4])")


def build_item_index(item_ids: Iterable[str]) -> dict[str, int]:
    """Number the catalogue: the k-th id gets index k, the `<item_k>` token (convention of `render_record`).

    Args:
        item_ids: the catalogue's real item ids (str) in a fixed order, e.g. the item table's rows.

    Returns:
        dict real item id -> catalogue index k, 0-based.
    """
    index: dict[str, int] = {}
    for position, item_id in enumerate(item_ids):
        if item_id in index:
            raise ValueError(f"item_id {item_id!r} appears twice in the catalogue (positions {index[item_id]} "
                             f"and {position}); item ids must be unique")
        index[item_id] = position
    return index


def _clean_text(value: Any, *, keep_image_codes: bool = False) -> str:
    """Free text -> single-spaced words with every control-token string removed and the rating/slot words split
    (`rate_5` -> `rate 5`), so no text becomes a control token. `keep_image_codes` keeps `<img_c>` (code strings)."""
    if isinstance(value, (list, tuple)):
        value = " ".join(str(part) for part in value if part is not None)
    text = str(value)
    if keep_image_codes:
        text = " ".join(_CONTROL_TOKEN_PATTERN.sub(lambda m: m[0] if m[0].startswith("<img_") else " ", text).split())
        return text
    text = _PLAIN_WORD_TOKEN_PATTERN.sub(" ", _CONTROL_TOKEN_PATTERN.sub(" ", text))
    return " ".join(text.split())


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return False


def _truncate_words(text: str, word_budget: int | None) -> str:
    words = text.split()
    if word_budget is not None:
        words = words[:word_budget]
    return " ".join(words)


def _attribute_pairs(attributes: Any) -> list[tuple[str, Any]]:
    """Accept a Mapping, (key, value) pairs or {"key", "value"} dicts (the datasets row form)."""
    if attributes is None:
        return []
    if isinstance(attributes, Mapping):
        return list(attributes.items())
    pairs = []
    for position, entry in enumerate(attributes):
        if isinstance(entry, Mapping):
            if "key" not in entry:
                raise ValueError(f"attributes[{position}] = {entry!r} has no 'key'; use {{'key': ..., 'value': ...}}")
            pairs.append((entry["key"], entry.get("value")))
        elif isinstance(entry, Sequence) and not isinstance(entry, str) and len(entry) == 2:
            pairs.append((entry[0], entry[1]))
        else:
            raise ValueError(f"attributes[{position}] = {entry!r} is not a (key, value) pair")
    return pairs


def render_item_text(attributes: Any, word_budget: int | None = DEFAULT_WORD_BUDGET) -> str:
    """Flatten an item's attributes to "Key value Key value ..." in the given order (reference §2.1).

    Each value is cut to its first `word_budget` whitespace words; a missing (None, NaN) or empty value
    becomes "Unknown". Control-token strings inside keys or values are removed.

    Args:
        attributes: ordered (key, value) pairs, a list of {"key", "value"} dicts, or an ordered Mapping.
        word_budget: words kept per value; None keeps all.

    Returns:
        the flattened text, "" for no attributes.
    """
    parts = []
    for key, value in _attribute_pairs(attributes):
        key_text = _clean_text(key)
        value_text = "" if _is_missing(value) else _truncate_words(_clean_text(value), word_budget)
        parts.append(f"{key_text} {value_text or UNKNOWN_VALUE}".strip())
    return " ".join(parts)


def render_item_chunk(
    item: Mapping[str, Any],
    *,
    label: str | None = None,
    with_answer: bool = False,
    prefix: str | None = None,
    word_budget: int | None = DEFAULT_WORD_BUDGET,
) -> str:
    """One item chunk: `<image> [{prefix}] {attrs} [<answer>] [{label}] <|endofchunk|> ` (reference §2.1).

    Args:
        item: dict with `attributes` (see `render_item_text`); `image` is not read here.
        label: text after the attributes (an item token, `rate_r ...`), None for none.
        with_answer: put `<answer>` before the label, making it a supervised span (reference §3.1).
        prefix: text between `<image>` and the attributes (e.g. "Selection s_0").
        word_budget: words kept per attribute value.

    Returns:
        the chunk, ending in "<|endofchunk|> " (trailing space).
    """
    if with_answer and not label:
        raise ValueError("with_answer=True needs a non-empty label: an <answer> span cannot be empty")
    parts = [_render_item_head(item, prefix, word_budget), ANSWER_TOKEN if with_answer else None, label]
    return " ".join(part for part in parts if part) + f" {END_OF_CHUNK_TOKEN} "


def _render_item_head(item: Mapping[str, Any], prefix: str | None, word_budget: int | None) -> str:
    """`<image> [{prefix}] {attrs}`: the part of a chunk shared by history items and an exp target."""
    parts = [IMAGE_TOKEN, prefix, render_item_text(item.get("attributes"), word_budget)]
    return " ".join(part for part in parts if part)


def _record_name(record: Mapping[str, Any]) -> str:
    return f"record (user_id={record.get('user_id')!r}, task={record.get('task')!r})"


def _is_train_split(split: str, record: Mapping[str, Any]) -> bool:
    if split == TRAIN_SPLIT:
        return True
    if split in EVAL_SPLITS:
        return False
    raise ValueError(f"{_record_name(record)}: split={split!r} is not one of {(TRAIN_SPLIT, *EVAL_SPLITS)}")


def _require_item(record: Mapping[str, Any], field: str) -> Mapping[str, Any]:
    item = record.get(field)
    if not isinstance(item, Mapping):
        raise ValueError(f"{_record_name(record)}: field {field!r} must be an item dict, got {type(item).__name__}")
    return item


def _require_history(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    history = record.get("history")
    if not history:
        raise ValueError(f"{_record_name(record)}: field 'history' is empty; every task needs at least one "
                         "history item (drop users without history before rendering)")
    for position, item in enumerate(history):
        if not isinstance(item, Mapping):
            raise ValueError(f"{_record_name(record)}: history[{position}] must be an item dict, "
                             f"got {type(item).__name__}")
    return list(history)


def _item_label(record, field: str, item, item_index: Mapping[str, int] | None) -> str:
    if item_index is None:
        raise ValueError(f"{_record_name(record)}: task {record.get('task')!r} names items by token; "
                         "pass item_index (real item_id -> catalogue index, see build_item_index)")
    item_id = item.get("item_id")
    if item_id not in item_index:
        raise KeyError(f"{_record_name(record)}: {field}.item_id {item_id!r} is not in item_index "
                       f"({len(item_index)} catalogue items)")
    return item_token(item_index[item_id])


def _rating_label(record, field: str, item, explanation_word_budget: int | None, *,
                  with_explanation: bool = True) -> str:
    """`rate_r [explanation]` of an item with a `rating` 1-5 (the explanation cut to its word budget)."""
    rating = item.get("rating")
    is_integral = isinstance(rating, int) or (isinstance(rating, float) and rating.is_integer())
    if isinstance(rating, bool) or not is_integral or not 1 <= int(rating) <= 5:
        raise ValueError(f"{_record_name(record)}: {field}.rating must be an int from 1 to 5, got {rating!r}")
    if not with_explanation:
        return RATING_TOKENS[int(rating) - 1]
    explanation = item.get("explanation")
    text = "" if _is_missing(explanation) else _truncate_words(_clean_text(explanation), explanation_word_budget)
    return f"{RATING_TOKENS[int(rating) - 1]} {text}".strip()


def _codes_label(record, field: str, item) -> str:
    codes = item.get("image_codes")
    if hasattr(codes, "tolist"):  # a tensor or array of code indices
        codes = codes.tolist()
    if isinstance(codes, Sequence) and not isinstance(codes, str) and codes and all(
        isinstance(code, int) and not isinstance(code, bool) for code in codes
    ):  # code indices: rendered exactly as UniMPImageTokenizer.codes_to_string writes them
        codes_text = " ".join(image_code_token(code) for code in codes)
    else:  # a code string, normally codes_to_string's "<img_3> <img_41> ..."; kept as given, single-spaced
        codes_text = "" if _is_missing(codes) else _clean_text(codes, keep_image_codes=True)
    if not codes_text:
        raise ValueError(f"{_record_name(record)}: {field}.image_codes is missing; the image-generation task "
                         "needs each item's image code string")
    return codes_text


def _query_text(record, query_word_budget: int | None) -> str:
    query = record.get("query")
    text = "" if _is_missing(query) else _truncate_words(_clean_text(query), query_word_budget)
    if not text:
        raise ValueError(f"{_record_name(record)}: field 'query' is empty; search and image generation need a "
                         "query (the target's category path or title keywords)")
    return text


def _item_title(item: Mapping[str, Any], word_budget: int | None) -> str:
    title = item.get("title")
    if _is_missing(title) or not _clean_text(title):
        title = dict((_clean_text(k), v) for k, v in _attribute_pairs(item.get("attributes"))).get("Title")
    text = "" if _is_missing(title) else _truncate_words(_clean_text(title), word_budget)
    return text or UNKNOWN_VALUE


def render_record(
    record: Mapping[str, Any],
    split: str,
    *,
    item_index: Mapping[str, int] | None = None,
    task_weights: Mapping[str, float] | None = None,
    word_budget: int | None = DEFAULT_WORD_BUDGET,
    explanation_word_budget: int | None = DEFAULT_EXPLANATION_WORD_BUDGET,
    query_word_budget: int | None = DEFAULT_QUERY_WORD_BUDGET,
    history_answer_marker: bool | None = None,
    context_order: str = "paper",
    content_history_items: int | None = None,
) -> dict[str, Any]:
    """Render one record with its task template, training or evaluation form (reference §2.2).

    Record schema (items are dicts `{"item_id": str, "attributes": ..., "image": any | None, "title"?,
    "rating"?: int 1-5, "explanation"?: str, "image_codes"?: str | list[int]}`; `item_id` is always the real id):

    - rec:    {"task", "user_id"?, "history": [item, ...] oldest first, "target": item}
    - exp:    same; history items and the target carry `rating` (and optionally `explanation`)
    - select: {"task", "history", "candidates": [item, ...] (1-5), "answer_slots": [int, ...]}
    - search: {"task", "history", "target", "query": str}
    - imggen: {"task", "history", "target", "query"}; history items and the target carry `image_codes`: the
      string `UniMPImageTokenizer.codes_to_string` writes ("<img_3> <img_41> ...") or the code indices

    Training form: rec/search/exp history chunks carry `<answer> {label}` (context reconstruction,
    reference §3.2) and the text ends with the final answer. Evaluation form: rec/search history labels
    are plain context (no `<answer>`), exp keeps them, and the text ends right after the final
    `<answer>`. Neither form emits BOS/EOS (reference §8.7): the processor adds them uniformly.

    Args:
        record: the example, schema above.
        split: "train" for the training form; "validation"/"valid"/"eval"/"test" for the evaluation form.
        item_index: real item_id -> catalogue index k (token `<item_k>`); required by rec and search, and by
            exp when `content_history_items` leaves history items as their token alone.
        task_weights: λ per task; defaults to DEFAULT_TASK_WEIGHTS (rec 2.0, others 1.0, reference §3.4).
        word_budget: words kept per attribute value (and per title in imggen history).
        explanation_word_budget: words kept per explanation, in both forms.
        query_word_budget: words kept of the query.
        history_answer_marker: override whether rec/search history labels get `<answer>`; None = the
            form's default (train True, eval False). True at eval removes the §8.7 marker mismatch.
        context_order: "paper" or "next_item" (see CONTEXT_ORDERS): where rec/search history items put their
            token. In "next_item" the first history item's token is plain context (nothing precedes it to
            predict it from); the other tasks always use the paper's order.
        content_history_items: rec/search/exp; when set, only the last N history items show their image and
            attributes, and the older ones are their item token alone (rec/search: `[<answer>] <item_k>
            <|endofchunk|>`; exp: `<item_k> <answer> rate_r <|endofchunk|>`, the rating without its explanation),
            no `<image>`: a long history at a few tokens per item and no image encoding, as SASRec sees it. Token-only
            items need `item_index`. None: every history item shows its content; select and imggen ignore it.

    Returns:
        {"text": str, "images": list (one per `<image>` in text, None for an image-less item),
        "task": str, "task_weight": float, "answer": str (the final answer, also for eval prompts)}.
    """
    task = record.get("task")
    if task not in TASKS:
        raise ValueError(f"{_record_name(record)}: field 'task' must be one of {TASKS}, got {task!r}")
    is_train = _is_train_split(split, record)
    weights = DEFAULT_TASK_WEIGHTS if task_weights is None else task_weights
    if task not in weights:
        raise KeyError(f"{_record_name(record)}: task_weights has no weight for task {task!r}")
    history = _require_history(record)
    chunks: list[str] = []
    images: list[Any] = []

    def add_chunk(item, **chunk_kwargs):
        chunks.append(render_item_chunk(item, word_budget=word_budget, **chunk_kwargs))
        images.append(item.get("image"))

    if context_order not in CONTEXT_ORDERS:
        raise ValueError(f"{_record_name(record)}: context_order must be one of {CONTEXT_ORDERS}, "
                         f"got {context_order!r}")
    if content_history_items is not None and content_history_items < 0:
        raise ValueError(f"{_record_name(record)}: content_history_items must be >= 0 or None, "
                         f"got {content_history_items}")
    # rec/search/exp: the history items before the last `content_history_items` are their item token alone
    id_only = len(history) - content_history_items if content_history_items is not None else 0
    if task in ("rec", "search"):
        target = _require_item(record, "target")
        marker = is_train if history_answer_marker is None else history_answer_marker
        for position, item in enumerate(history):
            label = _item_label(record, f"history[{position}]", item, item_index)
            answered = marker and (position > 0 or context_order == "paper")  # nothing precedes a first next item
            lead = f"{ANSWER_TOKEN} {label}" if answered else label
            if position < id_only:
                chunks.append(f"{lead} {END_OF_CHUNK_TOKEN} ")
            elif context_order == "next_item":  # `[<answer>] <item_k> <image> attrs <|endofchunk|>`
                chunks.append(f"{lead} {render_item_chunk(item, word_budget=word_budget)}")
                images.append(item.get("image"))
            else:
                add_chunk(item, label=label, with_answer=marker)
        answer = _item_label(record, "target", target, item_index)
        if task == "rec":
            chunks.append(f"{REC_INSTRUCTION} {ANSWER_TOKEN}")
        else:
            query = _query_text(record, query_word_budget)
            chunks.append(f"{QUERY_PREFIX} {query} {SEARCH_INSTRUCTION} {ANSWER_TOKEN}")
    elif task == "exp":
        target = _require_item(record, "target")
        if id_only > 0 and item_index is None:
            raise ValueError(f"{_record_name(record)}: field 'history' has {id_only} item(s) "
                             f"before the last content_history_items={content_history_items}, rendered as their "
                             "item token alone; pass item_index (real item_id -> catalogue index, see "
                             "build_item_index)")
        for position, item in enumerate(history):
            field = f"history[{position}]"
            if position < id_only:  # `<item_k> <answer> rate_r <|endofchunk|>`: no image, no explanation
                rating = _rating_label(record, field, item, explanation_word_budget, with_explanation=False)
                token = _item_label(record, field, item, item_index)
                chunks.append(f"{token} {ANSWER_TOKEN} {rating} {END_OF_CHUNK_TOKEN} ")
            else:
                label = _rating_label(record, field, item, explanation_word_budget)
                add_chunk(item, label=label, with_answer=True)
        answer = _rating_label(record, "target", target, explanation_word_budget)
        # the target item is shown (image + attributes) and asked about in the same chunk, reference §2.2 (ii)
        chunks.append(f"{_render_item_head(target, None, word_budget)} {EXP_INSTRUCTION} {ANSWER_TOKEN}")
        images.append(target.get("image"))
    elif task == "select":
        candidates = record.get("candidates") or []
        if not 1 <= len(candidates) <= len(SELECTION_TOKENS):
            raise ValueError(f"{_record_name(record)}: field 'candidates' must hold 1 to {len(SELECTION_TOKENS)} "
                             f"items (one per slot token), got {len(candidates)}")
        slots = record.get("answer_slots") or []
        if not slots or any(not isinstance(s, int) or not 0 <= s < len(candidates) for s in slots):
            raise ValueError(f"{_record_name(record)}: field 'answer_slots' must list candidate positions "
                             f"0..{len(candidates) - 1}, got {slots!r}")
        chunks.append(f"{HISTORY_PREFIX} ")
        for item in history:
            add_chunk(item)
        chunks.append(f"{CANDIDATES_PREFIX} ")
        for slot, item in enumerate(candidates):
            add_chunk(item, prefix=f"Selection {SELECTION_TOKENS[slot]}")
        answer = " ".join(SELECTION_TOKENS[slot] for slot in sorted(set(slots)))
        chunks.append(f"{SELECT_INSTRUCTION} {ANSWER_TOKEN}")
    else:  # imggen: history chunks show the codes as an attribute, never as an answer (reference §3.2)
        target = _require_item(record, "target")
        for position, item in enumerate(history):
            title = _item_title(item, word_budget)
            codes = _codes_label(record, f"history[{position}]", item)
            chunks.append(f"{IMAGE_TOKEN} Title {title} ID {codes} {END_OF_CHUNK_TOKEN} ")
            images.append(item.get("image"))
        answer = _codes_label(record, "target", target)
        chunks.append(f"{QUERY_PREFIX} {_query_text(record, query_word_budget)} {IMGGEN_INSTRUCTION} {ANSWER_TOKEN}")

    text = "".join(chunks)
    if is_train:
        text = f"{text} {answer}"
    num_image_tokens = text.count(IMAGE_TOKEN)
    if num_image_tokens != len(images):  # guards the template code itself; free text is cleaned above
        raise ValueError(f"{_record_name(record)}: rendered {num_image_tokens} <image> tokens but "
                         f"{len(images)} images")
    return {"text": text, "images": images, "task": task, "task_weight": float(weights[task]), "answer": answer}


__all__ = [
    "ANSWER_TOKEN",
    "CANDIDATES_PREFIX",
    "CONTEXT_ORDERS",
    "DEFAULT_EXPLANATION_WORD_BUDGET",
    "DEFAULT_QUERY_WORD_BUDGET",
    "DEFAULT_TASK_WEIGHTS",
    "DEFAULT_WORD_BUDGET",
    "END_OF_CHUNK_TOKEN",
    "EVAL_SPLITS",
    "EXP_INSTRUCTION",
    "HISTORY_PREFIX",
    "IMAGE_TOKEN",
    "IMGGEN_INSTRUCTION",
    "QUERY_PREFIX",
    "RATING_TOKENS",
    "REC_INSTRUCTION",
    "SEARCH_INSTRUCTION",
    "SELECTION_TOKENS",
    "SELECT_INSTRUCTION",
    "TASKS",
    "TRAIN_SPLIT",
    "UNKNOWN_VALUE",
    "build_item_index",
    "image_code_token",
    "item_token",
    "render_item_chunk",
    "render_item_text",
    "render_record",
]
