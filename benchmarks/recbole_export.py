"""A builder's `DatasetDict` -> RecBole atomic files with the exact leave-one-out split (peer_protocol.md §2),
the input of `run_peers.py` and `run_rating_peers.py`.

Usage: python -m benchmarks.recbole_export OUT_DIR DATASET [DATASET ...] [--with-ratings]
"""

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from datasets import Dataset

from processing.datasets_unimp import ITEMS_SPLIT, RECBOLE_NAMES, USER_SPLITS, load_unimp_dataset

logger = logging.getLogger(__name__)


def _all_interactions(dataset_dict: Mapping[str, Dataset]) -> list[tuple[int, str, str, int, int | None]]:
    """(source row, user, item, time, rating) of every interaction, in source order, from the user splits."""
    by_row: dict[int, tuple[int, str, str, int, int | None]] = {}
    for split in USER_SPLITS:
        rows = dataset_dict[split]
        columns = [rows[c] for c in ("user_id", "history_item_ids", "history_timestamps", "history_source_rows",
                                     "history_ratings", "target_item_id", "target_timestamp", "target_source_row",
                                     "target_rating")]
        for user, items, times, source_rows, ratings, target, target_time, target_row, target_rating in zip(*columns):
            for item, time, source_row, rating in zip((*items, target), (*times, target_time),
                                                      (*source_rows, target_row), (*ratings, target_rating)):
                by_row[source_row] = (source_row, user, item, time, rating)
    return [by_row[row] for row in sorted(by_row)]


def export_recbole_atomic(
    dataset_dict_or_name: Mapping[str, Dataset] | str,
    out_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    recbole_name: str | None = None,
    with_ratings: bool = False,
) -> Path:
    """Write RecBole atomic files and the exact leave-one-out split (peer_protocol.md §2).

    `<out>/<ds>/<ds>.inter`: `user_id:token item_id:token timestamp:float unix_time:token`, rows in source
    order, timestamp = dense rank of the Unix time over the file (1 = earliest). `<ds>.split.tsv`: one row
    per user (first-appearance order): `user_id`, `train_items` (space-separated, chronological),
    `valid_item`, `test_item`, from the (time, source row) order. For ml100k also `<ds>.item`:
    `item_id:token release_year:token class:token_seq`.

    With `with_ratings=True` (rating prediction, issue 5) the `.inter` file gets a last column `rating:float`
    (the interaction's 1-5 rating) and the split file the columns `valid_rating` and `test_rating`; the
    default output is unchanged.

    Args:
        dataset_dict_or_name: a builder's DatasetDict (either protocol: the files cover every interaction
            of its user splits) or a dataset name, built here with the leave-one-out protocol.
        out_dir: parent folder; `<out>/<ds>/` is created.
        data_dir: raw-data folder when a name is given.
        recbole_name: `<ds>`; default RECBOLE_NAMES of the dataset (the generic builder's name otherwise).
        with_ratings: also write the ratings (see above).

    Returns:
        the folder `<out>/<ds>`.

    Raises:
        ValueError: a user with fewer than 3 interactions, or (with_ratings) an interaction without a rating.
    """
    if isinstance(dataset_dict_or_name, str):
        dataset_dict = load_unimp_dataset(dataset_dict_or_name, data_dir)
    else:
        dataset_dict = dataset_dict_or_name
    source_name = dataset_dict[USER_SPLITS[0]].info.dataset_name or "custom"
    name = recbole_name or RECBOLE_NAMES.get(source_name, source_name)
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    interactions = _all_interactions(dataset_dict)
    if with_ratings:
        for _, user, item, _, rating in interactions:
            if rating is None:
                raise ValueError(f"{name}: the interaction of user {user!r} with item {item!r} has no rating; "
                                 "with_ratings=True needs a 1-5 rating on every interaction")
    rank_of = {time: rank for rank, time in enumerate(sorted({row[3] for row in interactions}), start=1)}
    with open(folder / f"{name}.inter", "w", encoding="utf-8") as handle:
        handle.write("user_id:token\titem_id:token\ttimestamp:float\tunix_time:token"
                     + ("\trating:float\n" if with_ratings else "\n"))
        for _, user, item, time, rating in interactions:
            rating_cell = f"\t{rating}" if with_ratings else ""
            handle.write(f"{user}\t{item}\t{rank_of[time]}\t{time}{rating_cell}\n")
    sequences: dict[str, list[tuple[int, int, str, int | None]]] = {}
    for source_row, user, item, time, rating in interactions:
        sequences.setdefault(user, []).append((time, source_row, item, rating))
    with open(folder / f"{name}.split.tsv", "w", encoding="utf-8") as handle:
        handle.write("user_id\ttrain_items\tvalid_item\ttest_item"
                     + ("\tvalid_rating\ttest_rating\n" if with_ratings else "\n"))
        for user, sequence in sequences.items():
            ordered = sorted(sequence)  # (time, source row): ties keep the source order (peer §2.1)
            if len(ordered) < 3:
                raise ValueError(f"user {user!r} has {len(ordered)} interactions; leave-one-out needs >= 3")
            items = [item for _, _, item, _ in ordered]
            ratings = f"\t{ordered[-2][3]}\t{ordered[-1][3]}" if with_ratings else ""
            handle.write(f"{user}\t{' '.join(items[:-2])}\t{items[-2]}\t{items[-1]}{ratings}\n")
    if name == "ml100k":
        with open(folder / f"{name}.item", "w", encoding="utf-8") as handle:
            handle.write("item_id:token\trelease_year:token\tclass:token_seq\n")
            for item_id, attributes in zip(dataset_dict[ITEMS_SPLIT]["item_id"],
                                           dataset_dict[ITEMS_SPLIT]["attributes"]):
                values = {entry["key"]: entry["value"] or "" for entry in attributes}
                handle.write(f"{item_id}\t{values.get('Release Date', '')}\t{values.get('Genres', '')}\n")
    logger.info("exported %d interactions of %d users to %s", len(interactions), len(sequences), folder)
    return folder


def main(argv: list[str] | None = None) -> list[Path]:
    """Export each named dataset (leave-one-out) under OUT_DIR; the data folder is `default_data_dir()`."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("datasets", nargs="+", help="builder names, e.g. ml-100k-posters amazon-mi-2014-5core")
    parser.add_argument("--with-ratings", action="store_true", help="add the rating columns (rating prediction)")
    args = parser.parse_args(argv)
    return [export_recbole_atomic(name, args.out_dir, with_ratings=args.with_ratings) for name in args.datasets]


__all__ = ["export_recbole_atomic"]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
