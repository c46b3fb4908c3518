"""Dataset builders, splits, task records and the RecBole export (reference §5, peer_protocol.md §2)."""

import json
import logging
import warnings
from pathlib import Path

import pandas as pd
import PIL.Image
import pytest
from datasets import Image

from benchmarks.recbole_export import export_recbole_atomic
from modeling_unimp.prompt_templates import IMAGE_TOKEN, build_item_index, render_item_text, render_record
from processing import datasets_unimp as data
from processing import task_records

# ----------------------------------------------------------------------------------------------
# Fixtures: each real dataset is parsed once per session
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ml100k(data_dir):
    return data.build_ml100k(data_dir)


@pytest.fixture(scope="session")
def hm(data_dir):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("processing.datasets_unimp")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        dataset_dict = data.build_hm(data_dir)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    dataset_dict.build_log = [record.getMessage() for record in records]  # for the filter-report test
    return dataset_dict


@pytest.fixture(scope="session")
def amazon_mi(data_dir):
    return data.build_amazon_mi(data_dir)


@pytest.fixture(scope="session")
def amazon_2018(data_dir):
    return data.build_amazon_2018(data_dir)


@pytest.fixture(scope="session")
def exported(tmp_path_factory, ml100k, hm, amazon_mi):
    out = tmp_path_factory.mktemp("atomic")
    return {name: export_recbole_atomic(dd, out) for name, dd in
            (("ml100k", ml100k), ("hm", hm), ("amazon-mi", amazon_mi))}


def _sequences(dataset_dict, split="test"):
    """user -> full chronological sequence, from a leave-one-out test split."""
    rows = dataset_dict[split]
    return {user: [*history, target] for user, history, target in
            zip(rows["user_id"], rows["history_item_ids"], rows["target_item_id"])}


# ----------------------------------------------------------------------------------------------
# Real data: counts and leave-one-out
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fixture", "users", "items", "interactions"), [
    ("ml100k", 943, 1682, 100_000),
    ("hm", 496, 1710, 7070),
    ("amazon_mi", 1429, 900, 10_261),
])
def test_leave_one_out_counts_match_peer_protocol(request, fixture, users, items, interactions):
    dataset_dict = request.getfixturevalue(fixture)
    assert len(dataset_dict["items"]) == items
    for split in data.USER_SPLITS:  # every user is a train, validation and test user (peer §2.1)
        assert len(dataset_dict[split]) == users
    assert sum(len(history) + 1 for history in dataset_dict["test"]["history_item_ids"]) == interactions
    assert sum(len(history) + 1 for history in dataset_dict["train"]["history_item_ids"]) == interactions - 2 * users


@pytest.mark.parametrize("fixture", ["ml100k", "hm", "amazon_mi"])
def test_leave_one_out_targets_are_last_and_second_to_last(request, fixture):
    dataset_dict = request.getfixturevalue(fixture)
    for train, valid, test in zip(dataset_dict["train"], dataset_dict["validation"], dataset_dict["test"]):
        assert train["user_id"] == valid["user_id"] == test["user_id"]
        assert test["history_item_ids"] == valid["history_item_ids"] + [valid["target_item_id"]]
        assert valid["history_item_ids"] == train["history_item_ids"] + [train["target_item_id"]]
        assert len(train["history_item_ids"]) >= 1


def test_ml100k_split_equals_an_independent_stable_sort(ml100k, data_dir):
    frame = pd.read_csv(data_dir / "ml-100k-posters" / "ml-100k.inter", sep="\t", dtype=str)
    frame.columns = ["user", "item", "rating", "time"]
    frame["time"] = frame["time"].astype(float)
    frame = frame.sort_values("time", kind="stable")  # stable: ties keep the file's row order
    expected = frame.groupby("user", sort=False)["item"].agg(list).to_dict()
    assert _sequences(ml100k) == expected


@pytest.mark.parametrize("fixture", ["ml100k", "hm", "amazon_mi"])
def test_sequences_are_chronological_and_ties_keep_source_order(request, fixture):
    for row in request.getfixturevalue(fixture)["test"]:
        keys = list(zip([*row["history_timestamps"], row["target_timestamp"]],
                        [*row["history_source_rows"], row["target_source_row"]]))
        assert keys == sorted(keys)


def test_ml100k_items_carry_ratings_posters_and_genres(ml100k):
    items = ml100k["items"].cast_column("image", Image(decode=False))
    assert items[0]["item_id"] == "1"
    assert [entry["key"] for entry in items[0]["attributes"]] == ["Title", "Release Date", "Genres"]
    assert sum(image is not None for image in items["image"]) == 1418  # PROVENANCE: 1,418 items have a poster
    assert set(ml100k["test"]["target_rating"]) <= {1, 2, 3, 4, 5}
    assert set(ml100k["test"]["target_explanation"]) == {None}


def test_hm_keeps_only_articles_with_images_and_reports_each_filter(hm):
    items = hm["items"].cast_column("image", Image(decode=False))
    assert all(image is not None for image in items["image"])
    assert [entry["key"] for entry in items[0]["attributes"]] == ["Name", "Appearance", "Color", "Section", "Price"]
    log = "\n".join(hm.build_log)
    assert "dropped 13139 of 31662 transactions whose article has no image" in log
    assert "dropped 2643 repeated (user, item) rows" in log
    assert "took 9 removal rounds; 7070 rows, 496 users, 1710 items left" in log


@pytest.mark.parametrize("fixture", ["ml100k", "hm"])
def test_every_image_bearing_item_yields_an_image_that_decodes(request, fixture):
    items = request.getfixturevalue(fixture)["items"]
    paths = [image["path"] for image in items.cast_column("image", Image(decode=False))["image"] if image]
    assert paths
    for path in paths:
        with PIL.Image.open(path) as image:
            image.draft("RGB", (image.width // 8, image.height // 8))  # decodes the whole stream, 8x faster
            image.load()
    first = items[next(i for i, image in enumerate(items.cast_column("image", Image(decode=False))["image"])
                       if image)]
    assert first["image"].mode == "RGB"  # the datasets.Image column itself decodes to PIL


def test_amazon_mi_rows_carry_rating_and_one_review_sentence(amazon_mi):
    row = amazon_mi["test"][0]
    assert row["target_rating"] in range(1, 6)
    assert all(explanation for explanation in row["history_explanations"])
    assert amazon_mi["items"][0]["image"] is None
    assert [entry["key"] for entry in amazon_mi["items"][0]["attributes"]] == ["ASIN", "Reviews"]


def test_amazon_2018_unescapes_html_and_replaces_junk_titles(amazon_2018):
    items = amazon_2018["items"]
    assert len(set(items["item_id"])) == len(items)
    values = [entry["value"] or "" for attributes in items["attributes"] for entry in attributes]
    assert not any("&amp;" in value or "<span" in value for value in values)
    keys = {entry["key"] for attributes in items["attributes"] for entry in attributes}
    assert {"Title", "Description"} <= keys
    assert all(user.endswith(("_Gift_Cards", "_Magazine_Subscriptions")) for user in amazon_2018["test"]["user_id"])


def test_user_disjoint_split_is_seeded_and_disjoint(data_dir):
    first = data.build_amazon_mi(data_dir, protocol="user_disjoint", seed=1)
    again = data.build_amazon_mi(data_dir, protocol="user_disjoint", seed=1)
    other = data.build_amazon_mi(data_dir, protocol="user_disjoint", seed=2)
    users = {split: set(first[split]["user_id"]) for split in data.USER_SPLITS}
    assert [len(users[split]) for split in data.USER_SPLITS] == [1143, 143, 143]
    assert not (users["train"] & users["validation"] or users["train"] & users["test"]
                or users["validation"] & users["test"])
    assert first["test"]["user_id"] == again["test"]["user_id"]
    assert set(other["test"]["user_id"]) != users["test"]


# ----------------------------------------------------------------------------------------------
# RecBole export
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "fixture"), [("ml100k", "ml100k"), ("hm", "hm"), ("amazon-mi", "amazon_mi")])
def test_exported_split_equals_builder_split_user_by_user(request, exported, name, fixture):
    dataset_dict = request.getfixturevalue(fixture)
    split = pd.read_csv(exported[name] / f"{name}.split.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert list(split.columns) == ["user_id", "train_items", "valid_item", "test_item"]
    expected = {row["user_id"]: (" ".join(row["history_item_ids"] + [row["target_item_id"]]),)
                for row in dataset_dict["train"]}
    for row in dataset_dict["validation"]:
        expected[row["user_id"]] += (row["target_item_id"],)
    for row in dataset_dict["test"]:
        expected[row["user_id"]] += (row["target_item_id"],)
    exported_split = {user: (train, valid, test) for user, train, valid, test in split.itertuples(index=False)}
    assert exported_split == expected


def test_exported_inter_keeps_source_order_and_dense_time_rank(exported, data_dir):
    inter = pd.read_csv(exported["ml100k"] / "ml100k.inter", sep="\t", dtype=str)
    assert list(inter.columns) == ["user_id:token", "item_id:token", "timestamp:float", "unix_time:token"]
    source = pd.read_csv(data_dir / "ml-100k-posters" / "ml-100k.inter", sep="\t", dtype=str)
    assert inter["user_id:token"].tolist() == source["user_id:token"].tolist()
    assert inter["item_id:token"].tolist() == source["item_id:token"].tolist()
    unix = inter["unix_time:token"].astype(int)
    rank = inter["timestamp:float"].astype(int)
    assert rank.tolist() == unix.rank(method="dense").astype(int).tolist()
    assert len(pd.read_csv(exported["ml100k"] / "ml100k.item", sep="\t")) == 1682
    hm_inter = pd.read_csv(exported["hm"] / "hm.inter", sep="\t", dtype=str)
    assert len(hm_inter) == 7070 and hm_inter["item_id:token"].str.len().eq(10).all()


def _rated_dataset(tmp_path, drop_rating_of=None):
    """Two users, four items each (a time tie for u2), ratings 1-5; `drop_rating_of` = (user, item) unrated."""
    items = _write_jsonl(tmp_path / "items.jsonl", [{"item_id": i, "attributes": {"Title": i}} for i in "abcd"])
    rows = [("u1", "a", 10, 5), ("u1", "b", 30, 3), ("u1", "c", 20, 1), ("u1", "d", 40, 4),
            ("u2", "d", 15, 2), ("u2", "c", 15, 5), ("u2", "a", 5, 4), ("u2", "b", 50, 3)]
    interactions = _write_jsonl(tmp_path / "interactions.jsonl", [
        {"user_id": u, "item_id": i, "timestamp": t, **({} if (u, i) == drop_rating_of else {"rating": r})}
        for u, i, t, r in rows])
    return data.build_generic(interactions, items, name="rated", check_images=False)


def test_export_with_ratings_adds_rating_columns_and_keeps_the_default(tmp_path):
    dataset_dict = _rated_dataset(tmp_path)
    plain = export_recbole_atomic(dataset_dict, tmp_path / "plain")
    rated = export_recbole_atomic(dataset_dict, tmp_path / "rated", with_ratings=True)
    inter = pd.read_csv(rated / "rated.inter", sep="\t", dtype=str)
    assert list(inter.columns) == ["user_id:token", "item_id:token", "timestamp:float", "unix_time:token",
                                   "rating:float"]
    assert inter.drop(columns="rating:float").equals(pd.read_csv(plain / "rated.inter", sep="\t", dtype=str))
    assert inter["rating:float"].tolist() == ["5", "3", "1", "4", "2", "5", "4", "3"]  # source order
    split = pd.read_csv(rated / "rated.split.tsv", sep="\t", dtype=str)
    assert list(split.columns) == ["user_id", "train_items", "valid_item", "test_item", "valid_rating", "test_rating"]
    # u1: a(10) c(20) b(30) d(40); u2: a(5), then the tie at 15 keeps file order d, c, then b(50)
    assert split.values.tolist() == [["u1", "a c", "b", "d", "3", "4"], ["u2", "a d", "c", "b", "5", "3"]]
    assert split.iloc[:, :4].equals(pd.read_csv(plain / "rated.split.tsv", sep="\t", dtype=str))


def test_export_with_ratings_names_the_unrated_interaction(tmp_path):
    dataset_dict = _rated_dataset(tmp_path, drop_rating_of=("u2", "c"))
    export_recbole_atomic(dataset_dict, tmp_path / "plain")  # the default export needs no rating
    with pytest.raises(ValueError, match="user 'u2' with item 'c' has no rating"):
        export_recbole_atomic(dataset_dict, tmp_path / "rated", with_ratings=True)


# ----------------------------------------------------------------------------------------------
# Task records on real data
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["rec", "exp", "select", "search"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_task_records_render_with_one_image_per_image_token(ml100k, task, split):
    records = task_records.build_task_records(ml100k, task, split, seed=0)
    assert len(records) == 943
    index = build_item_index(ml100k["items"]["item_id"])
    for record in records[:50]:
        rendered = render_record(record, split, item_index=index)
        assert rendered["text"].count(IMAGE_TOKEN) == len(rendered["images"])


@pytest.mark.parametrize("builder", [task_records.build_recommendation_records, task_records.build_selection_records])
def test_task_records_are_reproducible_from_the_seed(amazon_mi, builder):
    rows, items = amazon_mi["train"].select(range(200)), task_records.items_by_id(amazon_mi["items"])
    first = builder(rows, items, split="train", seed=3)
    assert first == builder(rows, items, split="train", seed=3)
    assert first != builder(rows, items, split="train", seed=4)


def test_recommendation_windows_follow_the_sequence(ml100k):
    rows = ml100k["train"].select(range(20))
    items = task_records.items_by_id(ml100k["items"])
    records = task_records.build_recommendation_records(rows, items, split="train", max_history_items=5,
                                                num_windows_per_user=None)
    sequences = {row["user_id"]: row["history_item_ids"] + [row["target_item_id"]] for row in rows}
    assert len(records) == sum(len(sequence) - 1 for sequence in sequences.values())  # every sliding window
    for record in records:
        sequence = sequences[record["user_id"]]
        ids = [item["item_id"] for item in record["history"]] + [record["target"]["item_id"]]
        start = next(i for i in range(len(sequence)) if sequence[i:i + len(ids)] == ids)
        assert 1 <= len(record["history"]) <= 5 and (len(ids) == 6 or start == 0)


def test_eval_history_keeps_the_most_recent_items(ml100k):
    row = ml100k["test"][0]
    record = task_records.build_recommendation_records([row], task_records.items_by_id(ml100k["items"]), split="test",
                                               max_history_items=4)[0]
    assert [item["item_id"] for item in record["history"]] == row["history_item_ids"][-4:]
    assert record["target"]["item_id"] == row["target_item_id"]


def test_selection_negatives_were_never_touched_by_the_user(amazon_mi):
    touched = task_records.collect_touched_item_ids(amazon_mi)
    for split in ("train", "test"):
        for record in task_records.build_task_records(amazon_mi, "select", split, seed=0):
            ids = [item["item_id"] for item in record["candidates"]]
            positives = {ids[slot] for slot in record["answer_slots"]}
            assert len(ids) == 3 and 1 <= len(positives) <= 2
            assert positives <= touched[record["user_id"]]
            assert not (set(ids) - positives) & touched[record["user_id"]]


def test_explanation_records_use_ratings_and_review_sentences(amazon_mi, ml100k, hm):
    record = task_records.build_task_records(amazon_mi, "exp", "test")[0]
    assert record["target"]["rating"] in range(1, 6) and record["target"]["explanation"]
    ml_record = task_records.build_task_records(ml100k, "exp", "test")[0]
    assert render_record(ml_record, "test")["answer"] in {f"rate_{r}" for r in range(1, 6)}
    with pytest.raises(ValueError, match="needs ratings"):
        task_records.build_task_records(hm, "exp", "test")


def test_search_query_is_the_target_genre_path(ml100k):
    record = task_records.build_task_records(ml100k, "search", "test")[0]
    assert record["query"] == record["target"]["category"]
    assert task_records.item_query({"title": "The Red Soap of Doom", "category": None}) == "Red Soap Doom"


def test_image_generation_records_carry_the_caller_codes(hm):
    codes = {item_id: f"img_{k}," for k, item_id in enumerate(hm["items"]["item_id"])}
    records = task_records.build_image_generation_records(hm["test"], hm["items"], image_codes=codes, split="test")
    rendered = render_record(records[0], "test")
    assert rendered["answer"] == codes[hm["test"][0]["target_item_id"]]
    assert rendered["text"].count(IMAGE_TOKEN) == len(rendered["images"]) == 2


# ----------------------------------------------------------------------------------------------
# Generic JSONL / Parquet schema and bad input (no real data needed)
# ----------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def generic_files(tmp_path):
    PIL.Image.new("RGB", (16, 16), "red").save(tmp_path / "good.png")
    (tmp_path / "garbage.jpg").write_bytes(b"this is not a jpeg")
    items = _write_jsonl(tmp_path / "items.jsonl", [
        {"item_id": "a", "title": "Red Mug", "attributes": {"Title": "Red Mug", "Price": 3}, "image": "good.png"},
        {"item_id": "b", "attributes": [{"key": "Title", "value": "Broken"}], "image": "garbage.jpg"},
        {"item_id": "c", "attributes": [["Title", "Ghost"]], "image": "missing.jpg"},
        {"item_id": "d", "category": "Kitchen Cups", "attributes": {"Title": "Cup"}},
    ])
    rows = []
    for user in ("u1", "u2"):
        for time, item in enumerate(["a", "b", "c", "d", "a"]):
            rows.append({"user_id": user, "item_id": item, "timestamp": 100 + time, "rating": 4,
                         "explanation": f"{user} liked {item}"})
    # each user's second "a" is a repeated pair: dropped, so users keep a, b, c, d
    rows.append({"user_id": "u3", "item_id": "a", "timestamp": "2020-01-02"})
    interactions = _write_jsonl(tmp_path / "interactions.jsonl", rows)
    return interactions, items


def test_corrupt_and_missing_images_keep_text_with_one_warning(generic_files):
    interactions, items = generic_files
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset_dict = data.build_generic(interactions, items, name="tiny")
    image_warnings = [w for w in caught if "missing or undecodable" in str(w.message)]
    assert len(image_warnings) == 1 and "2 of 4 items" in str(image_warnings[0].message)
    table = task_records.items_by_id(dataset_dict["items"])
    assert table["a"]["image"].endswith("good.png")
    assert table["b"]["image"] is None and table["c"]["image"] is None and table["d"]["image"] is None
    assert render_item_text(table["b"]["attributes"]) == "Title Broken"
    record = task_records.build_recommendation_records(dataset_dict["test"], table, split="test")[0]
    rendered = render_record(record, "test", item_index=build_item_index(table))
    assert rendered["text"].count(IMAGE_TOKEN) == len(rendered["images"]) == 3
    assert rendered["images"][0].endswith("good.png") and rendered["images"][1:] == [None, None]


def test_generic_builder_reports_filters(generic_files, caplog):
    interactions, items = generic_files
    with caplog.at_level(logging.INFO, logger="processing.datasets_unimp"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset_dict = data.build_generic(interactions, items, name="tiny")
    assert "dropped 2 repeated (user, item) rows" in caplog.text
    assert "dropped 1 users with fewer than 4 interactions" in caplog.text  # u3, one interaction
    assert dataset_dict["test"]["user_id"] == ["u1", "u2"]
    assert dataset_dict["test"][0]["history_item_ids"] == ["a", "b", "c"]
    assert dataset_dict["test"][0]["target_item_id"] == "d"
    assert dataset_dict["test"].info.dataset_name == "tiny"


def test_generic_parquet_matches_jsonl(generic_files, tmp_path):
    interactions, items = generic_files
    frame = pd.read_json(interactions, lines=True, dtype={"timestamp": str}, convert_dates=False)
    frame.to_parquet(tmp_path / "inter.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_jsonl = data.build_generic(interactions, items, check_images=False)
        from_parquet = data.build_generic(tmp_path / "inter.parquet", items, check_images=False)
    assert from_jsonl["test"].to_list() == from_parquet["test"].to_list()


@pytest.mark.parametrize(("bad_line", "error", "match"), [
    ("{not json", ValueError, r"interactions.jsonl:2: malformed JSON"),
    ('{"user_id": "u1", "timestamp": 3}', ValueError, r"interactions.jsonl:2: field 'item_id' is missing"),
    ('{"user_id": "u1", "item_id": "zz", "timestamp": 3}', KeyError, r"interactions.jsonl:2: item_id 'zz'"),
    ('{"user_id": "u1", "item_id": "a", "timestamp": 3, "rating": 7}', ValueError, r":2: field 'rating'"),
    ('{"user_id": "u1", "item_id": "a", "timestamp": "soon"}', ValueError, r":2: field 'timestamp'"),
])
def test_malformed_rows_raise_with_file_and_line(tmp_path, bad_line, error, match):
    items = _write_jsonl(tmp_path / "items.jsonl", [{"item_id": "a", "attributes": {"Title": "A"}}])
    interactions = tmp_path / "interactions.jsonl"
    interactions.write_text('{"user_id": "u1", "item_id": "a", "timestamp": 1}\n' + bad_line + "\n")
    with pytest.raises(error, match=match):
        data.build_generic(interactions, items)


def test_record_builders_name_unknown_items_empty_histories_and_protocols():
    items = {"a": {"item_id": "a", "attributes": []}}
    row = {"user_id": "u1", "history_item_ids": ["a"], "target_item_id": "zz"}
    with pytest.raises(KeyError, match="target item_id 'zz'"):
        task_records.build_recommendation_records([row], items, split="test")
    with pytest.raises(ValueError, match="user 'u1': field 'history_item_ids' is empty"):
        task_records.build_selection_records([dict(row, history_item_ids=[])], items, split="test")
    with pytest.raises(ValueError, match="protocol='random'"):
        data._split_sequences({}, "random", 0, (0.8, 0.1, 0.1))
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        data.load_unimp_dataset("nope")


def test_malformed_table_row_names_file_and_line(tmp_path):
    folder = tmp_path / "ml-100k-posters"
    folder.mkdir()
    (folder / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                          "1\t2\t3\t100\n1\t2\tthree\t101\n")
    with pytest.raises(ValueError, match=r"ml-100k.inter:3: column 'rating:float' value 'three'"):
        data.build_ml100k(tmp_path)
    (folder / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                          "1\t2\t3\n")
    with pytest.raises(ValueError, match=r"ml-100k.inter:2: column 'timestamp:float' is empty"):
        data.build_ml100k(tmp_path)


def test_missing_data_folder_names_the_env_var(tmp_path):
    with pytest.raises(FileNotFoundError, match="UNIMP_DATA_DIR"):
        data.build_ml100k(tmp_path)


def _write_hm_folder(root: Path, purchases: list[tuple[str, str, int, float]]) -> None:
    """A tiny `hm-sample/` folder: (customer, article, day of November 2020, price) per transaction."""
    folder = root / "hm-sample"
    folder.mkdir()
    articles = sorted({article for _, article, _, _ in purchases})
    pd.DataFrame([{"t_dat": f"2020-11-{day:02d}", "customer_id": customer, "article_id": article, "price": price}
                  for customer, article, day, price in purchases]).to_csv(folder / "transactions.csv", index=False)
    pd.DataFrame([{"article_id": a, "prod_name": f"name {a}", "graphical_appearance_name": "Solid",
                   "perceived_colour_value_name": "Dark", "section_name": "Womens", "index_group_name": "Ladieswear",
                   "product_group_name": "Garment", "product_type_name": "Top"} for a in articles]
                 ).to_csv(folder / "articles.csv", index=False)
    pd.DataFrame([{"article_id": a, "has_image": "1", "image_path": f"images/{a}.jpg"} for a in articles]
                 ).to_csv(folder / "image_manifest.csv", index=False)


def test_hm_price_is_the_median_of_training_transactions_only(tmp_path):
    # Customers c1-c5 buy A..E on days 1-5 (E is their test target, D their validation target); c6 buys them in
    # reverse, so E and D are in c6's training rows. Prices: E 0.1 in training, 0.9 at test; D 0.2 / 0.8.
    price = {"A": 0.05, "B": 0.06, "C": 0.07}
    purchases = [(f"c{u}", a, day, price.get(a, {"D": 0.8, "E": 0.9}.get(a)))
                 for u in range(1, 6) for day, a in enumerate("ABCDE", start=1)]
    purchases += [("c6", a, day, {"E": 0.1, "D": 0.2}.get(a, price.get(a))) for day, a in enumerate("EDCBA", 1)]
    _write_hm_folder(tmp_path, purchases)
    dataset_dict = data.build_hm(tmp_path, check_images=False)
    prices = {item_id: {entry["key"]: entry["value"] for entry in attributes}["Price"]
              for item_id, attributes in zip(dataset_dict["items"]["item_id"], dataset_dict["items"]["attributes"])}
    assert set(dataset_dict["test"]["target_item_id"]) == {"E", "A"}
    # the median over all transactions would be 0.9 for E and 0.8 for D (their validation/test purchases)
    assert prices == {"A": "0.0500", "B": "0.0600", "C": "0.0700", "D": "0.2000", "E": "0.1000"}
