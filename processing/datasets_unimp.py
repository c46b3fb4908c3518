"""Local raw files -> `datasets.DatasetDict` (item table + per-split user rows) with the leave-one-out,
user-disjoint or cold-items split; task records are `processing.task_records`, the RecBole export
`benchmarks/recbole_export.py`.

Datasets and splits: reference unimp_method.md §2.1 and §5; leave-one-out and the atomic export: peer_protocol.md §2.
"""

import gzip
import html
import json
import logging
import math
import os
import random
import re
import statistics
import warnings
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import PIL.Image
import pyarrow as pa
from datasets import Dataset, DatasetDict, DatasetInfo, Features, Image, List, Value
from datasets.table import InMemoryTable

logger = logging.getLogger(__name__)

# Builder names are the folder names under the data dir; RecBole names are peer_protocol.md §2's.
DATASET_NAMES = ("ml-100k-posters", "hm-sample", "amazon-mi-2014-5core", "amazon-2018-small-5core")
RECBOLE_NAMES = {
    "ml-100k-posters": "ml100k",
    "amazon-mi-2014-5core": "amazon-mi",
    "hm-sample": "hm",
    "amazon-2018-small-5core": "amazon-2018",
}
PROTOCOLS = ("leave_one_out", "user_disjoint", "cold_items")
USER_SPLITS = ("train", "validation", "test")
ITEMS_SPLIT = "items"  # the item table travels in the DatasetDict next to the user splits
AMAZON_2018_CATEGORIES = ("Gift_Cards", "Magazine_Subscriptions")
# Fewest interactions a user needs: leave-one-out keeps a train row with >= 1 history item (peer §2.1).
MIN_USER_INTERACTIONS = {"leave_one_out": 4, "user_disjoint": 2, "cold_items": 4}
# "cold_items" (issue 12): this share of the catalogue, drawn with the builder's seed, is held out of training.
COLD_ITEM_FRACTION = 0.1

ITEM_FEATURES = Features({
    "item_id": Value("string"),  # the real id (ML-100K movie id, H&M article_id, Amazon asin)
    "title": Value("string"),  # None when the source has no usable title
    "category": Value("string"),  # category / genre path, the search query source; None when unknown
    "attributes": List({"key": Value("string"), "value": Value("string")}),  # ordered; value None = Unknown
    "image": Image(),  # path-based (bytes are not read); None for an image-less item
})
USER_ROW_FEATURES = Features({
    "user_id": Value("string"),
    "history_item_ids": List(Value("string")),  # oldest first
    "history_timestamps": List(Value("int64")),  # Unix seconds
    "history_ratings": List(Value("int32")),  # 1-5, None where the dataset has no rating
    "history_explanations": List(Value("string")),  # None where there is no text
    "history_source_rows": List(Value("int64")),  # 0-based data row in the source file(s)
    "target_item_id": Value("string"),
    "target_timestamp": Value("int64"),
    "target_rating": Value("int32"),
    "target_explanation": Value("string"),
    "target_source_row": Value("int64"),
})


class _Interaction(NamedTuple):
    user_id: str
    item_id: str
    timestamp: int  # Unix seconds
    source_row: int  # 0-based data row of the source file; ties in time keep this order (peer §2.1)
    rating: int | None = None
    explanation: str | None = None


def default_data_dir() -> Path:
    """The raw-data folder: `$UNIMP_DATA_DIR`, else `../shared/data` relative to the current working directory.

    The fallback is the layout of a checkout next to `shared/` when run from the repository root; an installed
    package has no repository, so set `UNIMP_DATA_DIR` (the Makefile does) anywhere else. Every caller that takes a
    `data_dir` falls back to this function.

    Returns:
        the folder path (not checked for existence).
    """
    return Path(os.environ.get("UNIMP_DATA_DIR") or Path("..") / "shared" / "data")


def _dataset_folder(data_dir: str | os.PathLike | None, name: str) -> Path:
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    folder = folder / name
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} is missing; set UNIMP_DATA_DIR or pass data_dir")
    return folder


# ----------------------------------------------------------------------------------------------
# Text helpers
# ----------------------------------------------------------------------------------------------

_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")  # real tags only: "< 5 stars" and "<3" stay
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _clean_html(value: Any) -> str | None:
    """Unescape HTML entities (`&amp;`) and drop tags; None for an empty result."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = _HTML_TAG.sub(" ", html.unescape(str(value)))
    text = " ".join(html.unescape(text).split())
    return text or None


def _first_sentence(review_text: Any, summary: Any) -> str | None:
    """The explanation rule: the review's first sentence of >= 4 words, else the review, else the summary."""
    review = _clean_html(review_text)
    if review:
        for sentence in _SENTENCE_END.split(review):
            if len(sentence.split()) >= 4:
                return sentence
        return review
    return _clean_html(summary)


# ----------------------------------------------------------------------------------------------
# Reading with line numbers
# ----------------------------------------------------------------------------------------------

def _first_undecodable_line(path: Path) -> tuple[int, str]:
    """(1-based line number, reason) of the first line of `path` that is not UTF-8."""
    with open(path, "rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                return line_number, f"byte {line[error.start:error.start + 1]!r} at column {error.start + 1}"
    return 0, "undecodable bytes"


def _read_table(path: Path, *, sep: str, required: Iterable[str], nonempty: Iterable[str] = ()) -> pd.DataFrame:
    """A CSV/TSV as strings (no NA guessing: ids keep leading zeros); missing columns or empty cells raise."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, quoting=0 if sep == "," else 3)
    except pd.errors.ParserError as error:  # its message names the line ("Expected 4 fields in line 7")
        raise ValueError(f"{path}: malformed table ({error})") from None
    except UnicodeDecodeError:
        line_number, reason = _first_undecodable_line(path)
        raise ValueError(f"{path}:{line_number}: not UTF-8 ({reason}); re-encode the file as UTF-8") from None
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: columns {missing} are missing (found {list(frame.columns)})")
    for column in nonempty:  # also catches rows with too few fields, which pandas pads with ""
        empty = (frame[column].fillna("") == "").to_numpy().nonzero()[0]
        if len(empty):
            raise ValueError(f"{path}:{empty[0] + 2}: column {column!r} is empty (or the row has too few fields)")
    return frame


def _to_int_column(frame: pd.DataFrame, column: str, path: Path) -> list[int]:
    """Parse a numeric column to ints; a bad cell raises naming the file and line (header = line 1)."""
    numbers = pd.to_numeric(frame[column], errors="coerce")
    bad = numbers.isna() | ~numbers.between(*_TIMESTAMP_RANGE) | (numbers != numbers.round())  # inf, 1e30 too
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise ValueError(f"{path}:{row + 2}: column {column!r} value {frame[column].iat[row]!r} is not an integer "
                         "(finite, within the Unix seconds of years 1-9999)")
    return numbers.astype("int64").tolist()


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict]]:
    """Yield (line number, object) from JSON lines, gzip'd when the name ends in .gz.

    Lines are decoded one by one, so a non-UTF-8 byte, malformed JSON or a truncated/corrupt gzip stream is a
    `ValueError` naming the file and the line.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    opener = gzip.open if path.suffix == ".gz" else open
    line_number = 0
    with opener(path, "rb") as handle:
        lines = iter(handle)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                break
            except (EOFError, OSError, zlib.error) as error:  # a truncated or corrupt .gz stream
                raise ValueError(f"{path}:{line_number + 1}: the gzip stream is truncated or corrupt after line "
                                 f"{line_number} ({error})") from None
            line_number += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}:{line_number}: not UTF-8 (byte {raw[error.start:error.start + 1]!r} at "
                                 f"column {error.start + 1}); re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: malformed JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}")
            yield line_number, row


class _IdReader:
    """Ids of one file's columns: str or integer, one kind per column, so 0 and "0" never merge silently."""

    def __init__(self):
        self.kinds: dict[str, tuple[str, str]] = {}  # field -> (kind, where it was first seen)

    def __call__(self, value: Any, field: str, where: str) -> str:
        if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars from Parquet
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            hint = " (a float id is ambiguous: 1.0 vs '1'; store ids as strings or integers)" if isinstance(
                value, float) else ""
            raise ValueError(f"{where}: field {field!r} value {value!r} is a {type(value).__name__}; ids must be "
                             f"strings or integers{hint}")
        kind = "str" if isinstance(value, str) else "int"
        first = self.kinds.setdefault(field, (kind, where))
        if first[0] != kind:
            names = {"str": "a string", "int": "an integer"}
            raise ValueError(f"{where}: field {field!r} value {value!r} is {names[kind]} but it was "
                             f"{names[first[0]]} at {first[1]}; one column mixes id types (0 and \"0\" would "
                             f"merge): write every {field} in one type")
        return str(value)


def _require_fields(row: Mapping, fields: Iterable[str], where: str) -> None:
    for field in fields:
        if row.get(field) is None or row.get(field) == "":
            raise ValueError(f"{where}: field {field!r} is missing or empty")


def check_rating_scale(rating_scale: Sequence[float] | None) -> tuple[float, float] | None:
    """(low, high) of an explicit rating scale, or None for the default (integers 1-5).

    Raises:
        ValueError: not two finite numbers with low < high.
    """
    if rating_scale is None:
        return None
    try:
        low, high = (float(bound) for bound in rating_scale)
    except (TypeError, ValueError):
        raise ValueError(f"rating_scale must be two numbers [low, high], got {rating_scale!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"rating_scale must be finite with low < high, got {rating_scale!r}")
    return low, high


def rating_to_token_scale(number: float, low: float, high: float) -> int:
    """A rating on [low, high] -> the rating tokens' 1-5: linear, rounded half up (0.5..5.0 stars: 0.5 -> 1,
    2.75 -> 3, 5.0 -> 5; on [1, 5] an integer maps to itself)."""
    return 1 + math.floor(4 * (number - low) / (high - low) + 0.5)


def _parse_rating(value: Any, where: str, rating_scale: tuple[float, float] | None = None) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):  # JSON true would otherwise be rating 1
        raise ValueError(f"{where}: field 'rating' value {value!r} is a boolean, not a rating from 1 to 5")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: field 'rating' value {value!r} is not a number") from None
    if rating_scale is not None:  # any float on the declared scale, mapped to the five rating tokens (issue 15)
        low, high = rating_scale
        if not low <= number <= high:
            raise ValueError(f"{where}: field 'rating' value {value!r} lies outside rating_scale [{low}, {high}]")
        return rating_to_token_scale(number, low, high)
    if not number.is_integer() or not 1 <= number <= 5:
        raise ValueError(f"{where}: field 'rating' value {value!r} is not an integer from 1 to 5 (other scales: "
                         "declare rating_scale [low, high], e.g. [0.5, 5.0])")
    return int(number)


# Unix seconds of 0001-01-01 and 9999-12-31T23:59:59 UTC: the ISO-date range, and far inside int64
_TIMESTAMP_RANGE = (-62135596800, 253402300799)


def _parse_timestamp(value: Any, where: str) -> int:
    """Unix seconds (int, float or numeric string) or an ISO date/time (UTC when no zone is given)."""
    if not isinstance(value, bool):
        try:
            seconds = float(value)
        except (TypeError, ValueError, OverflowError):
            seconds = None
        if seconds is not None:
            if not _TIMESTAMP_RANGE[0] <= seconds <= _TIMESTAMP_RANGE[1]:  # also inf and nan
                raise ValueError(f"{where}: field 'timestamp' value {value!r} is not a Unix time in seconds between "
                                 "years 1 and 9999")
            return int(seconds)
        try:
            stamp = pd.Timestamp(value)
            stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp
            return int(stamp.timestamp())
        except (TypeError, ValueError):
            pass
    raise ValueError(f"{where}: field 'timestamp' value {value!r} is neither Unix seconds nor an ISO date")


# ----------------------------------------------------------------------------------------------
# Filters and splits
# ----------------------------------------------------------------------------------------------

def _drop_repeated_pairs(interactions: list[_Interaction], name: str, dropped: Counter) -> list[_Interaction]:
    """Keep the first (user, item) interaction in source order (peer §2.2, H&M step 3); counts into `dropped`."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for interaction in interactions:
        pair = (interaction.user_id, interaction.item_id)
        if pair not in seen:
            seen.add(pair)
            kept.append(interaction)
    dropped["repeated (user, item) rows (the first kept)"] += len(interactions) - len(kept)
    logger.info("%s: dropped %d repeated (user, item) rows, keeping each pair's first; %d rows left",
                name, len(interactions) - len(kept), len(kept))
    return kept


def _iterative_core(interactions: list[_Interaction], min_user: int, min_item: int, name: str,
                    dropped: Counter) -> list[_Interaction]:
    """Drop users with < min_user and items with < min_item rows, counted on the current data, until stable."""
    rounds, before = 0, len(interactions)
    while True:
        user_counts = Counter(interaction.user_id for interaction in interactions)
        item_counts = Counter(interaction.item_id for interaction in interactions)
        kept = [i for i in interactions if user_counts[i.user_id] >= min_user and item_counts[i.item_id] >= min_item]
        if len(kept) == len(interactions):
            break
        rounds += 1
        interactions = kept
    dropped[f"rows of users under {min_user} or items under {min_item} interactions (iterative core)"] += (
        before - len(interactions))
    logger.info("%s: %d-core users / %d-core items took %d removal rounds; %d rows, %d users, %d items left",
                name, min_user, min_item, rounds, len(interactions),
                len({i.user_id for i in interactions}), len({i.item_id for i in interactions}))
    return interactions


def _user_sequences(interactions: list[_Interaction]) -> dict[str, list[_Interaction]]:
    """user -> interactions sorted by (time, source row); users in order of first appearance (peer §2.1)."""
    sequences: dict[str, list[_Interaction]] = {}
    for interaction in interactions:
        sequences.setdefault(interaction.user_id, []).append(interaction)
    for sequence in sequences.values():
        sequence.sort(key=lambda interaction: (interaction.timestamp, interaction.source_row))
    return sequences


def _drop_short_users(sequences: dict[str, list[_Interaction]], protocol: str, name: str, dropped: Counter):
    minimum = MIN_USER_INTERACTIONS[protocol]
    kept = {user: sequence for user, sequence in sequences.items() if len(sequence) >= minimum}
    if len(kept) < len(sequences):
        dropped[f"users with fewer than {minimum} interactions (the {protocol} minimum)"] += len(sequences) - len(kept)
        logger.info("%s: dropped %d users with fewer than %d interactions, which the %s protocol needs",
                    name, len(sequences) - len(kept), minimum, protocol)
    if not kept:
        raise ValueError(f"{name}: no user has the {minimum} interactions the {protocol} protocol needs "
                         f"({len(sequences)} users, at most {max((len(q) for q in sequences.values()), default=0)} "
                         "interactions each); nothing to split")
    return kept


def _split_sequences(sequences, protocol: str, seed: int, fractions: tuple[float, float, float]):
    """split -> [(history, target)]: leave-one-out (peer §2.1; also the rows of "cold_items" before
    `_hold_out_cold_items`) or user-disjoint (reference §5.1)."""
    splits: dict[str, list[tuple[list[_Interaction], _Interaction]]] = {split: [] for split in USER_SPLITS}
    if protocol in ("leave_one_out", "cold_items"):
        for sequence in sequences.values():
            splits["train"].append((sequence[:-3], sequence[-3]))
            splits["validation"].append((sequence[:-2], sequence[-2]))
            splits["test"].append((sequence[:-1], sequence[-1]))
        return splits
    if protocol != "user_disjoint":
        raise ValueError(f"protocol={protocol!r} is not one of {PROTOCOLS}")
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"fractions={fractions!r} must be three non-negative numbers summing to 1")
    users = sorted(sequences)  # sorted, so the split does not depend on the file's row order
    random.Random(seed).shuffle(users)
    num_validation = round(fractions[1] * len(users))
    num_test = round(fractions[2] * len(users))
    num_train = len(users) - num_validation - num_test
    assignment = {user: "train" for user in users[:num_train]}
    assignment.update({user: "validation" for user in users[num_train:num_train + num_validation]})
    assignment.update({user: "test" for user in users[num_train + num_validation:]})
    empty = [split for split, count in zip(USER_SPLITS, (num_train, num_validation, num_test)) if count == 0]
    if empty:
        raise ValueError(f"user_disjoint with fractions {tuple(fractions)} and {len(users)} users leaves the "
                         f"{' and '.join(empty)} split(s) empty; give more users or other fractions")
    for user, sequence in sequences.items():  # rows keep the users' first-appearance order
        splits[assignment[user]].append((sequence[:-1], sequence[-1]))
    return splits


def draw_cold_items(item_ids: Iterable[str], fraction: float = COLD_ITEM_FRACTION, seed: int = 42) -> list[str]:
    """The cold items of the "cold_items" protocol: round(fraction x n) of the n distinct `item_ids`, drawn with
    `seed` from the sorted ids (so the draw does not depend on file order), returned sorted.

    Raises:
        ValueError: `fraction` outside [0, 1).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"cold_fraction={fraction!r} must lie in [0, 1): the share of items held out of training")
    ids = sorted(set(item_ids))
    return sorted(random.Random(f"cold_items:{seed}").sample(ids, round(fraction * len(ids))))


def _hold_out_cold_items(splits, cold: set[str], name: str, dropped: Counter):
    """The "cold_items" train rows: every interaction with a cold item is deleted from the user's training sequence
    (train history + target), and the row becomes (the rest[:-1], the rest[-1]): a cold target is replaced by the
    user's last warm item before it, so no warm training interaction is lost. A user left with fewer than 2 warm
    training interactions has no train row (nothing to predict from). Validation and test rows are kept as they
    are: their histories are the user's real ones, cold items included, and their targets may be cold."""
    train, removed, retargeted, lost_rows, lost_warm = [], 0, 0, 0, 0
    for history, target in splits["train"]:
        sequence = [*history, target]
        warm = [interaction for interaction in sequence if interaction.item_id not in cold]
        removed += len(sequence) - len(warm)
        if len(warm) < 2:
            lost_rows, lost_warm = lost_rows + 1, lost_warm + len(warm)
            continue
        retargeted += target.item_id in cold
        train.append((warm[:-1], warm[-1]))
    dropped["training interactions of cold items (held out of training only; validation/test keep them)"] += removed
    dropped["train rows of users left with < 2 warm training interactions (cold_items)"] += lost_rows
    dropped["warm training interactions of those users"] += lost_warm
    cold_targets = {split: sum(target.item_id in cold for _, target in splits[split])
                    for split in ("validation", "test")}
    logger.info("%s (cold_items): %d cold items; removed %d training interactions with them, %d train targets "
                "were cold and moved to the user's last warm item, %d users lost their train row; cold targets: "
                "%d of %d validation rows, %d of %d test rows", name, len(cold), removed, retargeted, lost_rows,
                cold_targets["validation"], len(splits["validation"]), cold_targets["test"], len(splits["test"]))
    return {**splits, "train": train}


def _training_interactions(splits) -> list[_Interaction]:
    """What training may see: the train rows' history + target (every protocol; "cold_items" has no cold item
    there)."""
    return [interaction for history, target in splits["train"] for interaction in (*history, target)]


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------

_IMAGE_CHECKS: dict[tuple[str, int, int], bool] = {}  # (path, size, mtime_ns) -> decodes; per process


def _image_decodes(path: str) -> bool:
    """Whether the file decodes (JPEG at 1/8 scale: the whole entropy-coded stream is still read)."""
    try:
        stat = os.stat(path)
    except OSError:
        return False
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _IMAGE_CHECKS:
        try:
            with PIL.Image.open(path) as image:
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
            _IMAGE_CHECKS[key] = True
        except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError):
            _IMAGE_CHECKS[key] = False
    return _IMAGE_CHECKS[key]


def _check_images(items: list[dict], name: str) -> None:
    """Mark items whose image file is missing or undecodable image-less, with one warning for all of them."""
    bad = [item for item in items if item["image"] is not None and not _image_decodes(item["image"])]
    for item in bad:
        item["image"] = None
    if bad:
        examples = ", ".join(repr(item["item_id"]) for item in bad[:3])
        warnings.warn(f"{name}: {len(bad)} of {len(items)} items have a missing or undecodable image file "
                      f"(e.g. items {examples}); they keep their text and are image-less", UserWarning,
                      stacklevel=4)


# ----------------------------------------------------------------------------------------------
# Assembly into a DatasetDict
# ----------------------------------------------------------------------------------------------

def _make_item(item_id: str, attributes: list[tuple[str, Any]], *, title=None, category=None, image=None) -> dict:
    return {"item_id": item_id, "title": title, "category": category, "attributes": attributes, "image": image}


def _rows_to_columns(rows: list[tuple[list[_Interaction], _Interaction]]) -> dict[str, list]:
    columns: dict[str, list] = {name: [] for name in USER_ROW_FEATURES}
    for history, target in rows:
        columns["user_id"].append(target.user_id)
        columns["history_item_ids"].append([i.item_id for i in history])
        columns["history_timestamps"].append([i.timestamp for i in history])
        columns["history_ratings"].append([i.rating for i in history])
        columns["history_explanations"].append([i.explanation for i in history])
        columns["history_source_rows"].append([i.source_row for i in history])
        columns["target_item_id"].append(target.item_id)
        columns["target_timestamp"].append(target.timestamp)
        columns["target_rating"].append(target.rating)
        columns["target_explanation"].append(target.explanation)
        columns["target_source_row"].append(target.source_row)
    return columns


BUILD_REPORT_PREFIX = "unimp build report: "  # the line of DatasetInfo.description that holds the JSON report


def _describe_dropped(dropped: Mapping[str, int]) -> str:
    """'3 repeated (user, item) rows (the first kept); 2 users with ...' for the non-zero classes."""
    return "; ".join(f"{count} {what}" for what, count in dropped.items() if count)


def read_build_report(dataset: Dataset) -> dict:
    """What the builder dropped, from a split's `info.description`: {"dropped": {class: count}} ({} if unknown).

    Args:
        dataset: any split of a builder's DatasetDict (also after `save_to_disk` / the Hub).
    """
    for line in (dataset.info.description or "").splitlines():
        if line.startswith(BUILD_REPORT_PREFIX):
            return json.loads(line[len(BUILD_REPORT_PREFIX):])
    return {}


def read_cold_items(dataset: Dataset | Mapping[str, Dataset]) -> list[str]:
    """The cold item ids of a "cold_items" build (sorted), from its build report (`read_build_report`).

    Args:
        dataset: the DatasetDict or any of its splits.
    Raises:
        ValueError: the data was not built with protocol "cold_items".
    """
    split = dataset if isinstance(dataset, Dataset) else next(iter(dataset.values()))
    cold = read_build_report(split).get("cold_items")
    if cold is None:
        raise ValueError(f"{split.info.dataset_name or 'this dataset'} was built with protocol "
                         f"{split.info.config_name!r}, not 'cold_items': it has no cold items")
    return list(cold["item_ids"])


def read_licence(provenance_path: str | os.PathLike) -> str | None:
    """The '## Licence' section of a PROVENANCE.md (shared/data's layout), or None when there is none."""
    path = Path(provenance_path)
    if not path.is_file():
        return None
    match = re.search(r"^##\s+Licen[cs]e[^\n]*\n(.*?)(?=^##\s|\Z)", path.read_text(), flags=re.M | re.S)
    return match.group(1).strip() if match else None


def _make_dataset(columns: dict[str, list], features: Features, info: dict, split: str) -> Dataset:
    """Columns already in Arrow storage form -> Dataset, without datasets' per-value encoding (10x faster)."""
    table = pa.Table.from_pydict(columns, schema=features.arrow_schema)
    return Dataset(InMemoryTable(table), info=DatasetInfo(features=features, **info), split=split)


def _assemble(
    name: str,
    interactions: list[_Interaction],
    items: Mapping[str, dict] | Callable[[list[_Interaction]], Mapping[str, dict]],
    *,
    protocol: str,
    seed: int,
    fractions: tuple[float, float, float],
    check_images: bool,
    dropped: Counter,
    licence: str | None,
    source: str | os.PathLike,
    item_order: Iterable[str] | None = None,
    cold_fraction: float = COLD_ITEM_FRACTION,
) -> DatasetDict:
    """Sequences -> split rows -> DatasetDict; `items` may be a function of the training interactions.

    Protocol "cold_items": leave-one-out on every user, then `draw_cold_items(catalogue, cold_fraction, seed)` are
    held out of training (`_hold_out_cold_items`); they stay in the item table (rankable by content) and their ids
    are in the build report (`read_cold_items`). Item text built from training interactions (H&M's price, Amazon
    MI's review summaries) therefore has none of a cold item's interactions.

    The item table holds the items of the kept interactions, in `item_order` (the item file's order)
    when given, else in order of first appearance in the source rows. Everything dropped on the way (`dropped`,
    plus the items nobody interacted with) is logged in one WARNING line and stored in the splits'
    `DatasetInfo.description` (`read_build_report`); `licence` (the source's terms) goes to `DatasetInfo.license`.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} is not one of {PROTOCOLS}")
    if not interactions:
        raise ValueError(f"{source}: no interactions to build {name} from (an empty file, or every row was "
                         f"dropped: {_describe_dropped(dropped) or 'nothing dropped'})")
    sequences = _drop_short_users(_user_sequences(interactions), protocol, name, dropped)
    splits = _split_sequences(sequences, protocol, seed, fractions)
    used = {interaction.item_id for sequence in sequences.values() for interaction in sequence}
    cold = draw_cold_items(used, cold_fraction, seed) if protocol == "cold_items" else None
    if cold is not None:
        splits = _hold_out_cold_items(splits, set(cold), name, dropped)
    if callable(items):  # item text built from training interactions only, so no eval target leaks into it
        items = items(_training_interactions(splits))
    if item_order is None:
        first_rows = {}
        for sequence in sequences.values():
            for interaction in sequence:
                first_rows[interaction.item_id] = min(first_rows.get(interaction.item_id, math.inf),
                                                      interaction.source_row)
        item_order = sorted(first_rows, key=first_rows.__getitem__)
    table = [dict(items[item_id]) for item_id in item_order if item_id in used]
    dropped["items nobody interacted with (after the filters above)"] += len(set(items) - used)
    summary = _describe_dropped(dropped)
    if summary:
        logger.warning("%s (%s): dropped %s", name, protocol, summary)
    if check_images:
        _check_images(table, name)
    for item in table:
        item["attributes"] = [{"key": str(key), "value": None if value is None else str(value)}
                              for key, value in item["attributes"]]
    report = {"dropped": {what: count for what, count in dropped.items() if count}}
    held_out = ""
    if cold is not None:
        report["cold_items"] = {"fraction": cold_fraction, "seed": seed, "item_ids": cold}
        held_out = f", {len(cold)} of {len(used)} items cold (held out of training)"
    info = {"dataset_name": name, "config_name": protocol, "license": licence,
            "description": f"unimp {name}, {protocol} split (seed {seed}{held_out}); built by "
                           f"processing/datasets_unimp.py\n{BUILD_REPORT_PREFIX}{json.dumps(report)}"}
    dataset_dict = DatasetDict({
        split: _make_dataset(_rows_to_columns(rows), USER_ROW_FEATURES, info, split)
        for split, rows in splits.items()
    })
    item_columns = {field: [item[field] for item in table] for field in ITEM_FEATURES}
    item_columns["image"] = [None if path is None else {"bytes": None, "path": path} for path in item_columns["image"]]
    dataset_dict[ITEMS_SPLIT] = _make_dataset(item_columns, ITEM_FEATURES, info, ITEMS_SPLIT)
    logger.info("%s (%s): %d users, %d items, %d interactions; rows train %d / validation %d / test %d",
                name, protocol, len(sequences), len(table), sum(len(s) for s in sequences.values()),
                *(len(splits[split]) for split in USER_SPLITS))
    return dataset_dict


# ----------------------------------------------------------------------------------------------
# Dataset builders
# ----------------------------------------------------------------------------------------------

def build_ml100k(
    data_dir: str | os.PathLike | None = None,
    *,
    protocol: str = "leave_one_out",
    seed: int = 42,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    cold_fraction: float = COLD_ITEM_FRACTION,
    check_images: bool = True,
) -> DatasetDict:
    """MovieLens-100K with posters: every rating is an interaction (no filter, peer §2.2).

    Items: `Title {movie_title} Release Date {release_year} Genres {class}` (the Netflix order of reference
    §2.1 plus genres); category = genres; image = the poster from `ml100k_to_ml1m_posters.csv`, None for the
    items without one. Ratings 1-5 are kept per interaction; there is no review text.

    Args:
        data_dir: folder holding `ml-100k-posters/`; default `default_data_dir()`.
        protocol: "leave_one_out" (peer §2.1), "user_disjoint" (reference §5.1) or "cold_items" (leave-one-out
            with `cold_fraction` of the items held out of training, issue 12).
        seed: user shuffle seed of "user_disjoint"; cold-item draw of "cold_items".
        fractions: train/validation/test user fractions of "user_disjoint".
        cold_fraction: share of the items held out of training under "cold_items".
        check_images: decode every poster once; failures make the item image-less with one warning.

    Returns:
        DatasetDict with "train", "validation", "test" (USER_ROW_FEATURES) and "items" (ITEM_FEATURES).
    """
    name = "ml-100k-posters"
    folder = _dataset_folder(data_dir, name)
    inter_path = folder / "ml-100k.inter"
    columns = ("user_id:token", "item_id:token", "rating:float", "timestamp:float")
    frame = _read_table(inter_path, sep="\t", required=columns, nonempty=columns)
    timestamps = _to_int_column(frame, "timestamp:float", inter_path)
    ratings = _to_int_column(frame, "rating:float", inter_path)
    interactions = [
        _Interaction(user, item, time, row, rating)
        for row, (user, item, time, rating) in enumerate(zip(frame["user_id:token"], frame["item_id:token"],
                                                             timestamps, ratings))
    ]
    item_path = folder / "ml-100k.item"
    item_frame = _read_table(item_path, sep="\t", required=("item_id:token", "movie_title:token_seq",
                                                            "release_year:token", "class:token_seq"),
                             nonempty=("item_id:token",))
    poster_path = folder / "ml100k_to_ml1m_posters.csv"
    posters = _read_table(poster_path, sep=",", required=("ml100k_item_id", "poster_file"))
    poster_of = {item_id: str(folder / poster) for item_id, poster in zip(posters["ml100k_item_id"],
                                                                          posters["poster_file"]) if poster}
    items = OrderedDict()
    for item_id, title, year, genres in zip(item_frame["item_id:token"], item_frame["movie_title:token_seq"],
                                            item_frame["release_year:token"], item_frame["class:token_seq"]):
        attributes = [("Title", title or None), ("Release Date", year or None), ("Genres", genres or None)]
        items[item_id] = _make_item(item_id, attributes, title=title or None, category=genres or None,
                                    image=poster_of.get(item_id))
    unknown = sorted({i.item_id for i in interactions} - set(items))
    if unknown:
        raise KeyError(f"{inter_path}: item_id {unknown[0]!r} (and {len(unknown) - 1} more) not in {item_path}")
    logger.info("%s: all %d ratings kept as implicit interactions (nothing filtered, peer §2.2)", name,
                len(interactions))
    logger.info("%s: %d of %d items have no poster and are image-less", name,
                sum(1 for item in items.values() if item["image"] is None), len(items))
    return _assemble(name, interactions, items, protocol=protocol, seed=seed, fractions=fractions,
                     check_images=check_images, dropped=Counter(), licence=read_licence(folder / "PROVENANCE.md"),
                     source=inter_path, item_order=list(items), cold_fraction=cold_fraction)


def build_hm(
    data_dir: str | os.PathLike | None = None,
    *,
    protocol: str = "leave_one_out",
    seed: int = 42,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    cold_fraction: float = COLD_ITEM_FRACTION,
    check_images: bool = True,
    min_user_interactions: int = 5,
    min_item_interactions: int = 3,
) -> DatasetDict:
    """H&M sample: articles with a photo, repeats dropped, iterative 5-core users / 3-core items (peer §2.2).

    Items: `Name {prod_name} Appearance {graphical_appearance_name} Color {perceived_colour_value_name}
    Section {section_name}` (reference §2.1) then `Price {median normalised price of the article's *training*
    transactions, 4 decimals}` (none when it has no training transaction);
    category = `{index_group_name} {product_group_name} {product_type_name}`. No ratings, no text.
    Time = `t_dat` at 00:00 UTC.

    Args:
        data_dir: folder holding `hm-sample/`; default `default_data_dir()`.
        protocol: "leave_one_out" (peer §2.1), "user_disjoint" (reference §5.1) or "cold_items" (leave-one-out
            with `cold_fraction` of the items held out of training, issue 12).
        seed: user shuffle seed of "user_disjoint"; cold-item draw of "cold_items".
        fractions: train/validation/test user fractions of "user_disjoint".
        cold_fraction: share of the items held out of training under "cold_items".
        check_images: decode every photo once; failures make the item image-less with one warning.
        min_user_interactions: core threshold for customers.
        min_item_interactions: core threshold for articles.

    Returns:
        DatasetDict with "train", "validation", "test" (USER_ROW_FEATURES) and "items" (ITEM_FEATURES).
    """
    name = "hm-sample"
    folder = _dataset_folder(data_dir, name)
    transactions_path = folder / "transactions.csv"
    frame = _read_table(transactions_path, sep=",", required=("t_dat", "customer_id", "article_id", "price"),
                        nonempty=("t_dat", "customer_id", "article_id"))
    dates = pd.to_datetime(frame["t_dat"], format="%Y-%m-%d", errors="coerce", utc=True)
    if dates.isna().any():
        row = int(dates.isna().to_numpy().nonzero()[0][0])
        raise ValueError(f"{transactions_path}:{row + 2}: column 't_dat' value {frame['t_dat'].iat[row]!r} "
                         "is not a YYYY-MM-DD date")
    seconds = ((dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).tolist()  # resolution-proof
    prices = pd.to_numeric(frame["price"], errors="coerce")
    manifest_path = folder / "image_manifest.csv"
    manifest = _read_table(manifest_path, sep=",", required=("article_id", "has_image", "image_path"),
                           nonempty=("article_id",))
    image_of = {article: str(folder / path) for article, has_image, path in zip(
        manifest["article_id"], manifest["has_image"], manifest["image_path"]) if has_image == "1" and path}
    interactions = [_Interaction(customer, article, time, row) for row, (customer, article, time) in enumerate(
        zip(frame["customer_id"], frame["article_id"], seconds))]
    raw_count, dropped = len(interactions), Counter()
    interactions = [interaction for interaction in interactions if interaction.item_id in image_of]
    dropped["transactions whose article has no image (image_manifest.csv)"] += raw_count - len(interactions)
    logger.info("%s: dropped %d of %d transactions whose article has no image (image_manifest.csv has_image "
                "!= 1); %d left", name, raw_count - len(interactions), raw_count, len(interactions))
    interactions.sort(key=lambda interaction: interaction.timestamp)  # stable; a no-op on the date-sorted file
    interactions = _drop_repeated_pairs(interactions, name, dropped)
    interactions = _iterative_core(interactions, min_user_interactions, min_item_interactions, name, dropped)

    articles_path = folder / "articles.csv"
    articles = _read_table(articles_path, sep=",", required=(
        "article_id", "prod_name", "graphical_appearance_name", "perceived_colour_value_name", "section_name",
        "index_group_name", "product_group_name", "product_type_name"), nonempty=("article_id",))
    unknown = sorted({i.item_id for i in interactions} - set(articles["article_id"]))
    if unknown:
        raise KeyError(f"{transactions_path}: article_id {unknown[0]!r} (and {len(unknown) - 1} more) "
                       f"not in {articles_path}")
    price_of_row = prices.tolist()  # source row -> normalised price (NaN when unparsable)

    def describe_items(training: list[_Interaction]) -> dict[str, dict]:
        # Price = median over the *training* transactions only (issue 11): a median over all transactions would
        # carry validation/test purchases into the item text; an article bought only later has no Price.
        price_lists: dict[str, list[float]] = {}
        for interaction in training:
            price = price_of_row[interaction.source_row]
            if not math.isnan(price):
                price_lists.setdefault(interaction.item_id, []).append(price)
        items = OrderedDict()
        for row in articles.itertuples(index=False):
            article = row.article_id
            price = f"{statistics.median(price_lists[article]):.4f}" if article in price_lists else None
            attributes = [("Name", row.prod_name or None), ("Appearance", row.graphical_appearance_name or None),
                          ("Color", row.perceived_colour_value_name or None),
                          ("Section", row.section_name or None), ("Price", price)]
            category = " ".join(part for part in (row.index_group_name, row.product_group_name,
                                                  row.product_type_name) if part) or None
            items[article] = _make_item(article, attributes, title=row.prod_name or None, category=category,
                                        image=image_of.get(article))
        return items

    return _assemble(name, interactions, describe_items, protocol=protocol, seed=seed, fractions=fractions,
                     check_images=check_images, dropped=dropped, licence=read_licence(folder / "PROVENANCE.md"),
                     source=transactions_path, item_order=list(dict.fromkeys(articles["article_id"])),
                     cold_fraction=cold_fraction)


def _read_amazon_reviews(path: Path, row_offset: int, user_suffix: str,
                         summaries: dict[int, tuple[int, str | None]] | None = None) -> list[_Interaction]:
    """Reviews -> interactions; fills `summaries` (source row -> (helpful votes, summary)) when given."""
    interactions, read_id = [], _IdReader()
    for line_number, row in _read_jsonl(path):
        where = f"{path}:{line_number}"
        if summaries is not None:
            helpful = row.get("helpful") or [0]
            summaries[row_offset + line_number - 1] = (int(helpful[0]), _clean_html(row.get("summary")))
        _require_fields(row, ("reviewerID", "asin", "unixReviewTime", "overall"), where)
        interactions.append(_Interaction(
            user_id=f"{read_id(row['reviewerID'], 'reviewerID', where)}{user_suffix}",
            item_id=read_id(row["asin"], "asin", where),
            timestamp=_parse_timestamp(row["unixReviewTime"], where),
            source_row=row_offset + line_number - 1,
            rating=_parse_rating(row["overall"], where),
            explanation=_first_sentence(row.get("reviewText"), row.get("summary")),
        ))
    return interactions


def build_amazon_mi(
    data_dir: str | os.PathLike | None = None,
    *,
    protocol: str = "leave_one_out",
    seed: int = 42,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    cold_fraction: float = COLD_ITEM_FRACTION,
    max_summaries: int = 8,
) -> DatasetDict:
    """Amazon Musical Instruments 2014 5-core: reviews with rating and text, no item metadata (peer §2.2).

    Nothing is filtered (the file is already a 5-core without repeated pairs; checked and reported).
    Explanation = the review's first sentence of >= 4 words (else the whole review, else the summary).
    Items have no title, category or image; they are described as `ASIN {asin} Reviews {summaries}`, where
    summaries = up to `max_summaries` review summaries of the item's *training* interactions, most helpful
    first (ties in source order), joined by "; " — so no validation/test review leaks into item text.

    Args:
        data_dir: folder holding `amazon-mi-2014-5core/`; default `default_data_dir()`.
        protocol: "leave_one_out" (peer §2.1), "user_disjoint" (reference §5.1) or "cold_items" (leave-one-out
            with `cold_fraction` of the items held out of training, issue 12).
        seed: user shuffle seed of "user_disjoint"; cold-item draw of "cold_items".
        fractions: train/validation/test user fractions of "user_disjoint".
        cold_fraction: share of the items held out of training under "cold_items".
        max_summaries: review summaries kept per item.

    Returns:
        DatasetDict with "train", "validation", "test" (USER_ROW_FEATURES) and "items" (ITEM_FEATURES).
    """
    name = "amazon-mi-2014-5core"
    path = _dataset_folder(data_dir, name) / "reviews_Musical_Instruments_5.json.gz"
    summaries: dict[int, tuple[int, str | None]] = {}  # source row -> (helpful votes, summary)
    interactions = _read_amazon_reviews(path, 0, "", summaries)
    repeated = len(interactions) - len({(i.user_id, i.item_id) for i in interactions})
    user_counts = Counter(i.user_id for i in interactions)
    item_counts = Counter(i.item_id for i in interactions)
    if repeated or min(user_counts.values()) < 5 or min(item_counts.values()) < 5:
        warnings.warn(f"{path}: not a clean 5-core ({repeated} repeated pairs, min user degree "
                      f"{min(user_counts.values())}, min item degree {min(item_counts.values())}); kept as is",
                      UserWarning, stacklevel=2)
    logger.info("%s: %d reviews, %d users, %d items; nothing filtered (already 5-core, no repeated pairs)",
                name, len(interactions), len(user_counts), len(item_counts))

    def describe_items(training: list[_Interaction]) -> dict[str, dict]:
        known: dict[str, list[tuple[int, int, str]]] = {}
        for interaction in training:
            votes, summary = summaries[interaction.source_row]
            if summary:
                known.setdefault(interaction.item_id, []).append((-votes, interaction.source_row, summary))
        items = {}
        for item_id in item_counts:
            texts = [summary for _, _, summary in sorted(known.get(item_id, []))[:max_summaries]]
            items[item_id] = _make_item(item_id, [("ASIN", item_id), ("Reviews", "; ".join(texts) or None)])
        return items

    return _assemble(name, interactions, describe_items, protocol=protocol, seed=seed, fractions=fractions,
                     check_images=False, dropped=Counter(), licence=read_licence(path.parent / "PROVENANCE.md"),
                     source=path, cold_fraction=cold_fraction)


def _amazon_2018_item(meta: Mapping[str, Any], category: str) -> dict:
    """`Category Price Brand Title` (reference §2.1); a junk HTML title becomes `Description {description[0]}`."""
    raw_title = meta.get("title")
    junk_title = raw_title is not None and bool(re.search(r"<[A-Za-z/!]", html.unescape(str(raw_title))))
    title = None if junk_title else _clean_html(raw_title)
    path: list[str] = []
    for part in meta.get("category") or [category.replace("_", " ")]:
        part = _clean_html(part)
        if part and part not in path:  # 2018 paths repeat levels ("Gift Cards", "Gift Cards")
            path.append(part)
    category_path = " ".join(path) or None
    attributes = [("Category", category_path), ("Price", _clean_html(meta.get("price"))),
                  ("Brand", _clean_html(meta.get("brand")))]
    if title is not None:
        attributes.append(("Title", title))
    else:  # PROVENANCE: Magazine titles are scraped HTML; describe by description[0] + brand + category
        descriptions = [_clean_html(text) for text in meta.get("description") or []]
        attributes.append(("Description", next((text for text in descriptions if text), None)))
    return _make_item(str(meta["asin"]), attributes, title=title, category=category_path)


def build_amazon_2018(
    data_dir: str | os.PathLike | None = None,
    *,
    categories: Iterable[str] = AMAZON_2018_CATEGORIES,
    protocol: str = "leave_one_out",
    seed: int = 42,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    cold_fraction: float = COLD_ITEM_FRACTION,
    min_user_interactions: int = 5,
    min_item_interactions: int = 5,
) -> DatasetDict:
    """Amazon 2018 small 5-core files (Gift Cards, Magazine Subscriptions), reviews + product metadata.

    Users are keyed `{reviewerID}_{category}`, so sequences never cross categories (reference §5.1). Repeated
    (user, item) rows are dropped keeping the first, then an iterative 5-core is re-applied (the shipped
    files have users with 3 reviews). Metadata is deduplicated on asin (first row kept) and HTML-unescaped;
    items are `Category {path} Price {price} Brand {brand} Title {title}`, where an HTML-junk title (almost
    every Magazine item, see its PROVENANCE) is replaced by `Description {description[0]}`. Items without a
    metadata row keep only their asin with Unknown attributes. The meta files hold image URLs, not files,
    so every item is image-less. Explanation = the review's first sentence of >= 4 words.

    Args:
        data_dir: folder holding `amazon-2018-small-5core/`; default `default_data_dir()`.
        categories: file stems to combine, in this order.
        protocol: "leave_one_out" (peer §2.1), "user_disjoint" (reference §5.1) or "cold_items" (leave-one-out
            with `cold_fraction` of the items held out of training, issue 12).
        seed: user shuffle seed of "user_disjoint"; cold-item draw of "cold_items".
        fractions: train/validation/test user fractions of "user_disjoint".
        cold_fraction: share of the items held out of training under "cold_items".
        min_user_interactions: core threshold for users.
        min_item_interactions: core threshold for items.

    Returns:
        DatasetDict with "train", "validation", "test" (USER_ROW_FEATURES) and "items" (ITEM_FEATURES).
    """
    name = "amazon-2018-small-5core"
    folder = _dataset_folder(data_dir, name)
    interactions: list[_Interaction] = []
    items: dict[str, dict] = {}
    dropped = Counter()
    for category in categories:
        reviews = _read_amazon_reviews(folder / f"{category}_5.json.gz", len(interactions), f"_{category}")
        interactions.extend(reviews)
        duplicates = 0
        for line_number, meta in _read_jsonl(folder / f"meta_{category}.json.gz"):
            _require_fields(meta, ("asin",), f"{folder / f'meta_{category}.json.gz'}:{line_number}")
            if str(meta["asin"]) in items:
                duplicates += 1
                continue
            items[str(meta["asin"])] = _amazon_2018_item(meta, category)
        dropped["duplicate asin rows of the meta files (the first kept)"] += duplicates
        logger.info("%s: meta_%s has %d duplicate asin rows, dropped keeping the first", name, category,
                    duplicates)
        missing = {i.item_id for i in reviews} - set(items)
        for item_id in sorted(missing):
            items[item_id] = _make_item(item_id, [("Category", category.replace("_", " ")), ("Price", None),
                                                  ("Brand", None), ("Title", None)],
                                        category=category.replace("_", " "))
        logger.info("%s: %d reviewed %s items have no metadata row; they keep Unknown attributes", name,
                    len(missing), category)
    interactions = _drop_repeated_pairs(interactions, name, dropped)
    interactions = _iterative_core(interactions, min_user_interactions, min_item_interactions, name, dropped)
    return _assemble(name, interactions, items, protocol=protocol, seed=seed, fractions=fractions,
                     check_images=False, dropped=dropped, licence=read_licence(folder / "PROVENANCE.md"),
                     source=folder, cold_fraction=cold_fraction)


def _read_records(path: Path) -> Iterable[tuple[int, dict]]:
    """(line or row number, dict) from .jsonl/.json(.gz) lines or .parquet (row number 1-based)."""
    if path.suffix == ".parquet":
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing")
        frame = pd.read_parquet(path)
        for row_number, row in enumerate(frame.to_dict(orient="records"), start=1):
            yield row_number, {key: (None if _is_nan(value) else value) for key, value in row.items()}
    else:
        yield from _read_jsonl(path)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _parse_attributes(value: Any, where: str) -> list[tuple[str, Any]]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [(str(key), item) for key, item in value.items()]
    if hasattr(value, "tolist"):  # parquet gives numpy arrays of structs
        value = value.tolist()
    if isinstance(value, list):
        pairs = []
        for entry in value:
            if isinstance(entry, Mapping) and "key" in entry:
                pairs.append((str(entry["key"]), entry.get("value")))
            elif isinstance(entry, (list, tuple)) and len(entry) == 2:
                pairs.append((str(entry[0]), entry[1]))
            else:
                raise ValueError(f"{where}: field 'attributes' entry {entry!r} is not a (key, value) pair")
        return pairs
    raise ValueError(f"{where}: field 'attributes' must be an object or a list of (key, value) pairs")


def build_generic(
    interactions_path: str | os.PathLike,
    items_path: str | os.PathLike,
    *,
    name: str = "custom",
    image_root: str | os.PathLike | None = None,
    protocol: str = "leave_one_out",
    seed: int = 42,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    cold_fraction: float = COLD_ITEM_FRACTION,
    check_images: bool = True,
    drop_repeated_pairs: bool = True,
    licence: str | None = None,
    rating_scale: Sequence[float] | None = None,
) -> DatasetDict:
    """Your own data, as JSON lines (`.jsonl`, `.json`, optionally `.gz`) or Parquet, in this schema.

    Interactions, one per line/row: `user_id` (str|int), `item_id` (str|int), `timestamp` (Unix seconds or
    an ISO date; ties keep file order), optional `rating` (int 1-5, or any number on `rating_scale`), optional
    `explanation` (str). Each id
    column holds one type (strings or integers: 0 and "0" would otherwise merge), the same for `item_id` in
    both files.
    Items, one per line/row: `item_id`, optional `title`, optional `category` (path used as search query),
    `attributes` (an ordered object {key: value} or a list of {"key", "value"}), optional `image` (a file
    path; relative paths resolve against `image_root`, default the items file's folder).

    Args:
        interactions_path: the interactions file.
        items_path: the items file; every interacted item must be in it.
        name: dataset name, used in messages and as the RecBole export name.
        image_root: folder for relative image paths.
        protocol: "leave_one_out" (peer §2.1), "user_disjoint" (reference §5.1) or "cold_items" (leave-one-out
            with `cold_fraction` of the items held out of training, issue 12).
        seed: user shuffle seed of "user_disjoint"; cold-item draw of "cold_items".
        fractions: train/validation/test user fractions of "user_disjoint".
        cold_fraction: share of the items held out of training under "cold_items".
        check_images: decode every image once; failures make the item image-less with one warning.
        drop_repeated_pairs: keep only the first interaction of each (user, item) pair.
        licence: the data's terms of use, stored as `DatasetInfo.license` and carried into checkpoints trained
            on it (recipes/push_to_hub.py refuses a public push of data whose terms forbid redistribution).
        rating_scale: [low, high] of the ratings (e.g. [0.5, 5.0] for half stars); every rating on it is mapped
            linearly to the rating tokens' 1-5 (`rating_to_token_scale`), so the splits, the `exp` task and its
            MAE/RMSE use the 1-5 scale. None: ratings must be integers 1-5.

    Returns:
        DatasetDict with "train", "validation", "test" (USER_ROW_FEATURES) and "items" (ITEM_FEATURES).

    Raises:
        ValueError: a malformed line/row (named by file and line), a repeated item id, an id that is not a
            string or integer, a column mixing both, an empty interactions file.
        KeyError: an interaction names an item missing from the items file.
    """
    items_path, interactions_path = Path(items_path), Path(interactions_path)
    root = Path(image_root) if image_root is not None else items_path.parent
    scale = check_rating_scale(rating_scale)
    items: dict[str, dict] = {}
    read_id = _IdReader()  # one reader for both files: item_id must have one type in both
    for line_number, row in _read_records(items_path):
        where = f"{items_path}:{line_number}"
        _require_fields(row, ("item_id",), where)
        item_id = read_id(row["item_id"], "item_id", where)
        if item_id in items:
            raise ValueError(f"{where}: item_id {item_id!r} appears a second time")
        image = row.get("image")
        if image is not None and not isinstance(image, str):
            raise ValueError(f"{where}: field 'image' must be a file path string, got {type(image).__name__}")
        items[item_id] = _make_item(item_id, _parse_attributes(row.get("attributes"), where),
                                    title=None if row.get("title") is None else str(row["title"]),
                                    category=None if row.get("category") is None else str(row["category"]),
                                    image=str(root / image) if image else None)
    interactions = []
    for line_number, row in _read_records(interactions_path):
        where = f"{interactions_path}:{line_number}"
        _require_fields(row, ("user_id", "item_id", "timestamp"), where)
        item_id = read_id(row["item_id"], "item_id", where)
        user_id = read_id(row["user_id"], "user_id", where)
        if item_id not in items:
            raise KeyError(f"{where}: item_id {item_id!r} is not in {items_path}")
        explanation = row.get("explanation")
        if explanation is not None and not isinstance(explanation, str):
            raise ValueError(f"{where}: field 'explanation' must be a string, got {type(explanation).__name__}")
        interactions.append(_Interaction(user_id, item_id, _parse_timestamp(row["timestamp"], where),
                                         len(interactions), _parse_rating(row.get("rating"), where, scale),
                                         explanation or None))
    dropped = Counter()
    if drop_repeated_pairs:
        interactions = _drop_repeated_pairs(interactions, name, dropped)
    return _assemble(name, interactions, items, protocol=protocol, seed=seed, fractions=fractions,
                     check_images=check_images, dropped=dropped, licence=licence, source=interactions_path,
                     item_order=list(items), cold_fraction=cold_fraction)


_BUILDERS: dict[str, Callable[..., DatasetDict]] = {
    "ml-100k-posters": build_ml100k,
    "hm-sample": build_hm,
    "amazon-mi-2014-5core": build_amazon_mi,
    "amazon-2018-small-5core": build_amazon_2018,
}


GENERIC_FILE_SUFFIXES = (".jsonl", ".parquet", ".jsonl.gz", ".json")  # folder datasets: interactions.*, items.*


def _folder_file(folder: Path, stem: str) -> Path:
    found = [folder / f"{stem}{suffix}" for suffix in GENERIC_FILE_SUFFIXES if (folder / f"{stem}{suffix}").is_file()]
    if len(found) != 1:
        raise FileNotFoundError(f"dataset folder {folder} needs exactly one {stem} file "
                                f"({' or '.join(stem + suffix for suffix in GENERIC_FILE_SUFFIXES)}), found "
                                f"{[path.name for path in found] or 'none'}")
    return found[0]


def build_folder(folder: str | os.PathLike, **kwargs: Any) -> DatasetDict:
    """A folder of your own data: `interactions.{jsonl,parquet}` + `items.{jsonl,parquet}` in `build_generic`'s
    schema, item images relative to the folder, optionally a PROVENANCE.md whose "## Licence" section becomes the
    data's terms. `kwargs` go to `build_generic` (protocol, seed, rating_scale, ...)."""
    folder = Path(folder)
    if "licence" not in kwargs and (folder / "PROVENANCE.md").is_file():
        kwargs["licence"] = read_licence(folder / "PROVENANCE.md")
    kwargs.setdefault("name", folder.name)
    return build_generic(_folder_file(folder, "interactions"), _folder_file(folder, "items"), **kwargs)


def load_hub_dataset(repo_id: str, *, revision: str | None = None, image_dir: str | os.PathLike | None = None,
                     **kwargs: Any) -> DatasetDict:
    """A dataset pushed by `recipes/push_to_hub.py --dataset`: its user splits (the default config) and item table
    (config "items"), read with `datasets.load_dataset` (which honours `HF_ENDPOINT` and the Hub cache).

    The item images travel as embedded bytes; they are written once to `image_dir` (default: under
    `HF_DATASETS_CACHE`) so the catalogue holds file paths like a local build. The splits are the pushed ones:
    builder options (`protocol`, `rating_scale`, ...) do not apply and are refused.
    """
    import datasets
    from datasets import load_dataset

    if kwargs.get("protocol", "leave_one_out") not in (None, "leave_one_out") or set(kwargs) - {"protocol"}:
        logger.warning("%s: a pushed dataset keeps its pushed splits; ignoring %s", repo_id, sorted(kwargs))
    users = load_dataset(repo_id, revision=revision)
    missing = [split for split in USER_SPLITS if split not in users]
    if missing:
        raise ValueError(f"Hub dataset {repo_id!r} has no {missing} split(s) in its default config (found "
                         f"{sorted(users)}); push it with recipes/push_to_hub.py --dataset")
    try:
        items = load_dataset(repo_id, "items", revision=revision)[ITEMS_SPLIT]
    except ValueError as error:
        raise ValueError(f"Hub dataset {repo_id!r} has no 'items' config with an 'items' split (the item table "
                         f"recipes/push_to_hub.py --dataset pushes): {error}") from error
    folder = Path(image_dir) if image_dir is not None else (
        Path(datasets.config.HF_DATASETS_CACHE) / "unimp_images" / repo_id.replace("/", "--") / (revision or "main"))
    items = items.cast_column("image", Image(decode=False))
    paths = []
    for index, cell in enumerate(items["image"]):
        if cell is None or not cell.get("bytes"):
            paths.append(cell.get("path") if cell else None)
            continue
        suffix = Path(cell.get("path") or "").suffix or ".png"
        path = folder / f"{index:06d}{suffix}"
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(cell["bytes"])
        paths.append(str(path))
    items = items.remove_columns("image").add_column("image", paths).cast_column("image", Image())
    items = items.select_columns(list(ITEM_FEATURES))
    return DatasetDict({**{split: users[split] for split in USER_SPLITS}, ITEMS_SPLIT: items})


def load_unimp_dataset(name: str, data_dir: str | os.PathLike | None = None, **kwargs: Any) -> DatasetDict:
    """Any dataset, one key: a built-in name, a folder of your own data, or a Hub dataset id (issue 15).

    Args:
        name: a DATASET_NAMES entry or its RECBOLE_NAMES value; else an existing folder (`build_folder`); else a Hub
            dataset id `ORG/NAME` pushed by recipes/push_to_hub.py (`load_hub_dataset`).
        data_dir: raw-data folder of the built-in builders; default `default_data_dir()`.
        **kwargs: passed to the builder (protocol, seed, fractions, check_images, rating_scale for own data, ...).

    Returns:
        the builder's DatasetDict.
    """
    by_recbole_name = {value: key for key, value in RECBOLE_NAMES.items()}
    builder = _BUILDERS.get(by_recbole_name.get(name, name))
    if builder is not None:
        if kwargs.get("rating_scale") is not None:
            raise ValueError(f"rating_scale applies to your own data, not to the built-in dataset {name!r}")
        kwargs.pop("rating_scale", None)
        return builder(data_dir, **kwargs)
    if Path(name).expanduser().is_dir():
        return build_folder(Path(name).expanduser(), **kwargs)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not Path(name).exists():
        kwargs.pop("rating_scale", None)
        return load_hub_dataset(name, **kwargs)
    raise ValueError(f"unknown dataset {name!r}: give one of {DATASET_NAMES}, a folder holding interactions.jsonl|"
                     f".parquet and items.jsonl|.parquet, or a Hub dataset id ORG/NAME")


__all__ = [
    "AMAZON_2018_CATEGORIES",
    "BUILD_REPORT_PREFIX",
    "COLD_ITEM_FRACTION",
    "DATASET_NAMES",
    "ITEMS_SPLIT",
    "ITEM_FEATURES",
    "MIN_USER_INTERACTIONS",
    "PROTOCOLS",
    "RECBOLE_NAMES",
    "USER_ROW_FEATURES",
    "USER_SPLITS",
    "build_amazon_2018",
    "build_amazon_mi",
    "build_folder",
    "build_generic",
    "build_hm",
    "build_ml100k",
    "default_data_dir",
    "draw_cold_items",
    "check_rating_scale",
    "load_hub_dataset",
    "load_unimp_dataset",
    "rating_to_token_scale",
    "read_build_report",
    "read_cold_items",
    "read_licence",
]
