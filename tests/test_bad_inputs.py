"""Issue 16's table of bad inputs and faults, one test per row: a clear error naming the record, file and line or
argument; a warning with a count; or the correct result. Also what already held (unknown ids, image-less items,
threads, no code execution from checkpoints). Resume, builder and push rows are further down."""

import copy
import struct
import threading
import warnings
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_tiny_config, make_tiny_model
from PIL import Image
from transformers import pipeline

from modeling_unimp import UniMPForConditionalGeneration, UniMPProcessor
from modeling_unimp.image_utils import load_image
from modeling_unimp.prompt_templates import RATING_TOKENS, SELECTION_TOKENS, render_item_text

NUM_ITEMS = 12
ITEM_IDS = [f"m{k}" for k in range(NUM_ITEMS)]


@pytest.fixture(scope="module")
def catalogue(tiny_tokenizer):
    """A 12-item processor with `<img_c>` tokens for 4 codes, and a matching tiny model with open gates."""
    processor = UniMPProcessor.from_catalogue(copy.deepcopy(tiny_tokenizer), ITEM_IDS,
                                              [f"Movie {k}" for k in range(NUM_ITEMS)], image_size=32,
                                              num_image_code_tokens=4)
    model = make_tiny_model(processor, gate=0.5)  # open gates: images move the scores
    return model, processor


@pytest.fixture(scope="module")
def recommend(catalogue):
    model, processor = catalogue
    return pipeline("unimp-recommend", model=model, processor=processor, device="cpu")


# ------------------------------------------------------------------ processor
@pytest.mark.parametrize("token, message", [
    ("<item_99>", r"<item_99> at character \d+ is not a token of this processor \(12 catalogue items: "
                  r"<item_0> to <item_11>\)"),
    ("<item_12>", r"<item_12> .*12 catalogue items"),
    ("<img_4>", r"<img_4> .*4 image codes: <img_0> to <img_3>"),
])
def test_processor_refuses_numbered_tokens_outside_its_vocabulary(catalogue, token, message):
    _, processor = catalogue
    with pytest.raises(ValueError, match=message):
        processor(text=[f"<answer> <item_3> <|endofchunk|> <answer> {token}"], images=[[]])
    ids = processor(text=["<answer> <item_11> <img_3>"], images=[[]])["input_ids"][0].tolist()
    assert ids[-2:] == [processor.item_token_start_id + 11, processor.image_code_token_start_id + 3]


@pytest.mark.parametrize("title", ["Ocean's_1 rate_5 <img_2> <item_3>", "files_1 corporate_4 <image>"])
def test_titles_with_control_token_strings_stay_plain_text(catalogue, title):
    _, processor = catalogue
    text = render_item_text([("Title", title)])
    ids = processor(text=[text], images=[[]], add_bos=False)["input_ids"][0].tolist()
    control = {processor.tokenizer.convert_tokens_to_ids(t) for t in (*RATING_TOKENS, *SELECTION_TOKENS)}
    control |= set(range(processor.item_token_start_id, processor.item_token_start_id + NUM_ITEMS))
    control |= set(range(processor.image_code_token_start_id, processor.image_code_token_start_id + 4))
    control.add(processor.image_token_id)
    assert not control & set(ids), processor.tokenizer.convert_ids_to_tokens(ids)
    assert text.startswith("Title ") and ("s 1" in text or "rate 5" in text or "corporate 4" in text)


@pytest.mark.parametrize("value", [-3, 0, 2.5, True, "5"])
def test_processor_config_rejects_a_bad_history_window(tiny_tokenizer, value):
    with pytest.raises(ValueError, match=f"max_history_items must be an integer >= 1.*got {value!r}"):
        UniMPProcessor.from_catalogue(copy.deepcopy(tiny_tokenizer), ["a"], ["A"], image_size=32,
                                      max_history_items=value)


def test_saved_processor_config_with_a_negative_window_fails_at_load(catalogue, tmp_path):
    import json

    _, processor = catalogue
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    config["max_history_items"] = -3
    (tmp_path / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="max_history_items must be an integer >= 1.*-3"):
        UniMPProcessor.from_pretrained(tmp_path)


def test_image_count_mismatch_still_raises_naming_both_counts(catalogue):
    _, processor = catalogue
    with pytest.raises(ValueError, match="prompt 0 has 2 <image> tokens but 1 images"):
        processor(text=["<image> a <image> b"], images=[[None]])


# ------------------------------------------------------------------ images
def test_sixteen_bit_png_keeps_its_grey_levels(tmp_path):
    levels = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(levels).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I;16")
    rgb = np.asarray(load_image(tmp_path / "grey16.png"))
    expected = np.round(levels[0] / 257.0)  # 0-65535 onto 0-255
    np.testing.assert_allclose(rgb[0, :, 0], expected, atol=1)
    assert (rgb[..., 0] == rgb[..., 2]).all()


@pytest.mark.parametrize("values, expected", [
    ([0.0, 0.25, 0.5, 1.0], [0, 64, 128, 255]),  # 0-1 floats (the common float TIFF)
    ([0.0, 100.0, 200.0, 255.0], [0, 100, 200, 255]),  # 0-255 floats
    ([-1.0, 0.0, 1.0, 3.0], [0, 64, 128, 255]),  # any other range: stretched to 0-255
])
def test_float_tiff_is_scaled_not_clipped_to_black(tmp_path, values, expected):
    Image.fromarray(np.array([values], dtype=np.float32).repeat(2, axis=0)).save(tmp_path / "float.tif")
    assert Image.open(tmp_path / "float.tif").mode == "F"
    np.testing.assert_allclose(np.asarray(load_image(tmp_path / "float.tif"))[0, :, 1], expected, atol=1)


def _bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A few dozen bytes of PNG whose header claims width x height RGB pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(
        b"IEND", b"")


@pytest.mark.parametrize("size", [(20000, 20000), (10000, 10000)])  # over 2x PIL's limit (error), 1-2x (warning)
def test_decompression_bomb_makes_that_one_image_image_less_with_a_warning(catalogue, tmp_path, size):
    _, processor = catalogue
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_bomb_png(*size))
    assert bomb.stat().st_size < 100
    Image.new("RGB", (8, 8), "red").save(tmp_path / "fine.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = processor(text=["<image> a <image> b"], images=[[str(bomb), str(tmp_path / "fine.png")]])
    messages = [str(w.message) for w in caught]
    assert any("decompression bomb" in m and "bomb.png" in m for m in messages), messages
    assert any(m.startswith("1 image(s) could not be decoded") for m in messages), messages
    assert batch["image_attention_mask"].any(dim=1)[0].tolist() == [False, True]  # only the bomb is image-less


def test_undecodable_image_file_is_still_image_less_with_a_counted_warning(catalogue, tmp_path):
    _, processor = catalogue
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.warns(UserWarning, match="^2 image"):
        batch = processor(text=["<image> a <image> b"], images=[[str(tmp_path / "broken.jpg"), b"junk"]])
    assert not batch["image_attention_mask"].any()


# ------------------------------------------------------------------ pipeline
def test_exp_with_zero_new_tokens_is_refused_not_silently_sixty_four(recommend):
    with pytest.raises(ValueError, match=r"max_new_tokens must be an integer >= 1, got 0"):
        recommend([{"item_id": "m1", "rating": 4}], task="exp", target="m2", max_new_tokens=0)
    answer = recommend([{"item_id": "m1", "rating": 4}], task="exp", target="m2", max_new_tokens=1)
    assert answer["rating_token"] in range(1, 6) and answer["explanation"] == ""  # exactly the one rating token


@pytest.mark.parametrize("history", [ITEM_IDS, ITEM_IDS[:11], ["m1", "m7", "m3"]])
def test_beam_search_with_exclude_history_never_returns_an_excluded_item(recommend, history):
    beam = recommend(history, top_k=12, method="beam", exclude_history=True)
    exact = recommend(history, top_k=12, method="exact", exclude_history=True)
    assert [r["item_id"] for r in beam] == [r["item_id"] for r in exact]
    assert len(beam) == NUM_ITEMS - len(set(history)) and not {r["item_id"] for r in beam} & set(history)


def test_beam_search_batch_gives_each_history_its_own_top_k(recommend):
    histories = [["m1"], ITEM_IDS[:11]]
    beam = recommend(histories, top_k=3, method="beam", exclude_history=True)
    assert [len(rows) for rows in beam] == [3, 1]
    assert beam == recommend(histories, top_k=3, method="beam", exclude_history=True)
    assert [[r["item_id"] for r in rows] for rows in beam] == [
        [r["item_id"] for r in rows] for rows in recommend(histories, top_k=3, exclude_history=True)]


@pytest.mark.parametrize("name, value", [
    ("top_k", 2.5), ("top_k", True), ("top_k", "5"), ("top_k", 0), ("num_beams", 1.5), ("max_history_items", -3),
    ("max_new_tokens", "64"),
])
def test_numeric_arguments_of_the_wrong_type_name_the_argument(recommend, name, value):
    with pytest.raises(ValueError, match=f"{name} must be an integer >= 1, got {value!r}"):
        recommend(["m1"], **{name: value})


def test_numpy_integer_arguments_are_accepted(recommend):
    assert [r["item_id"] for r in recommend(["m1"], top_k=np.int64(2))] == [
        r["item_id"] for r in recommend(["m1"], top_k=2)]


@pytest.mark.parametrize("entry, message", [
    (1.0, r"input history\[1\]: 1\.0 \(float\) is not an item id; a float id is ambiguous"),
    (None, r"input history\[1\]: None \(NoneType\) is not an item id"),
    (b"m1", r"input history\[1\]: b'm1' \(bytes\) is not an item id; decode it to str first"),
])
def test_history_entries_of_the_wrong_type_name_their_position(recommend, entry, message):
    with pytest.raises(ValueError, match=message):
        recommend(["m2", entry])


def test_numpy_integer_ids_are_read_as_their_decimal_string(recommend):
    with pytest.raises(KeyError, match="'7'"):  # np.int64(7) is the id "7", which this catalogue lacks
        recommend(["m2", np.int64(7)])


def test_unknown_ids_and_empty_histories_still_raise(recommend):
    with pytest.raises(KeyError, match="nope"):
        recommend(["m1", "nope"])
    with pytest.raises(ValueError, match="empty"):
        recommend([])


def test_four_threads_on_one_pipeline_give_the_results_of_one(recommend):
    histories = [[ITEM_IDS[k], ITEM_IDS[(k + 5) % NUM_ITEMS]] for k in range(8)]
    expected = [recommend(history, top_k=5) for history in histories]
    results: dict[int, list] = {}

    def work(worker: int) -> None:
        results[worker] = [recommend(history, top_k=5) for history in histories]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for worker in range(4):
        for got, want in zip(results[worker], expected):
            assert [r["item_id"] for r in got] == [r["item_id"] for r in want]
            assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], rel=1e-5)


# ------------------------------------------------------------------ builders
def _jsonl(path, rows) -> str:
    import json

    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def _interactions(num_users: int = 2, num_items: int = 4, user=lambda u: f"u{u}") -> list[dict]:
    return [{"user_id": user(u), "item_id": f"i{k}", "timestamp": 100 + k, "rating": 3}
            for u in range(num_users) for k in range(num_items)]


@pytest.fixture
def items_file(tmp_path):
    return _jsonl(tmp_path / "items.jsonl", [{"item_id": f"i{k}", "title": f"Item {k}"} for k in range(6)])


def _build(tmp_path, items_file, rows, **kwargs):
    from processing.datasets_unimp import build_generic

    return build_generic(_jsonl(tmp_path / "interactions.jsonl", rows), items_file, check_images=False, **kwargs)


@pytest.mark.parametrize("timestamp", ["inf", 1e30, "nan", -1e12])
def test_builder_timestamp_out_of_range_names_file_and_line(tmp_path, items_file, timestamp):
    rows = _interactions()
    rows[5]["timestamp"] = timestamp
    with pytest.raises(ValueError, match=r"interactions\.jsonl:6: field 'timestamp' value .* is not a Unix time"):
        _build(tmp_path, items_file, rows)


def test_builder_infinite_timestamp_in_a_table_names_file_and_line(tmp_path):
    from processing.datasets_unimp import build_ml100k

    folder = tmp_path / "ml-100k-posters"
    folder.mkdir()
    (folder / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                          "1\t1\t4\t880000000\n1\t2\t4\tinf\n")
    with pytest.raises(ValueError, match=r"ml-100k\.inter:3: column 'timestamp:float' value 'inf' is not an integer"):
        build_ml100k(tmp_path)


def test_builder_non_utf8_byte_names_file_and_line(tmp_path, items_file):
    path = tmp_path / "interactions.jsonl"
    _jsonl(path, _interactions())
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"u0", b"u\xff0")
    path.write_bytes(b"".join(lines))
    from processing.datasets_unimp import build_generic

    with pytest.raises(ValueError, match=r"interactions\.jsonl:3: not UTF-8 \(byte b'\\xff' at column \d+\)"):
        build_generic(path, items_file, check_images=False)


def test_builder_non_utf8_byte_in_a_table_names_file_and_line(tmp_path):
    from processing.datasets_unimp import build_ml100k

    folder = tmp_path / "ml-100k-posters"
    folder.mkdir()
    (folder / "ml-100k.inter").write_bytes(b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                           b"1\t1\t4\t880000000\n1\t2\t4\t880000001\n1\t\xe93\t4\t880000002\n")
    with pytest.raises(ValueError, match=r"ml-100k\.inter:4: not UTF-8 \(byte b'\\xe9' at column 3\)"):
        build_ml100k(tmp_path)


def test_builder_truncated_gzip_names_file_and_line(tmp_path, items_file):
    import gzip

    from processing.datasets_unimp import build_generic

    text = "".join(__import__("json").dumps(row) + "\n" for row in _interactions(num_users=40))
    packed = gzip.compress(text.encode())
    path = tmp_path / "interactions.jsonl.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ValueError, match=r"interactions\.jsonl\.gz:\d+: the gzip stream is truncated or corrupt "
                                         r"after line \d+"):
        build_generic(path, items_file, check_images=False)


def test_builder_parquet_float_item_id_names_file_and_row(tmp_path, items_file):
    import pandas as pd

    from processing.datasets_unimp import build_generic

    frame = pd.DataFrame({"user_id": ["u0"] * 4, "item_id": [1.0, 2.0, 3.0, 4.0], "timestamp": [1, 2, 3, 4]})
    frame.to_parquet(tmp_path / "interactions.parquet")
    with pytest.raises(ValueError, match=r"interactions\.parquet:1: field 'item_id' value 1\.0 is a float; ids "
                                         r"must be strings or integers \(a float id is ambiguous"):
        build_generic(tmp_path / "interactions.parquet", items_file, check_images=False)


def test_builder_empty_interactions_file_is_an_error_naming_it(tmp_path, items_file):
    with pytest.raises(ValueError, match=r"interactions\.jsonl: no interactions to build custom from"):
        _build(tmp_path, items_file, [])


def test_builder_logs_one_warning_line_with_every_dropped_class_and_stores_it(tmp_path, items_file, caplog):
    import logging

    from processing.datasets_unimp import read_build_report

    rows = _interactions(num_users=2, num_items=4)
    rows += [rows[0], rows[1], rows[5]]  # 3 repeated pairs
    rows += [{"user_id": "short", "item_id": "i0", "timestamp": 1}]  # a user under the minimum of 4
    with caplog.at_level(logging.WARNING, logger="processing.datasets_unimp"):
        dataset_dict = _build(tmp_path, items_file, rows)
    lines = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(lines) == 1
    assert lines[0].getMessage() == (
        "custom (leave_one_out): dropped 3 repeated (user, item) rows (the first kept); 1 users with fewer than 4 "
        "interactions (the leave_one_out minimum); 2 items nobody interacted with (after the filters above)")
    expected = {"repeated (user, item) rows (the first kept)": 3,
                "users with fewer than 4 interactions (the leave_one_out minimum)": 1,
                "items nobody interacted with (after the filters above)": 2}
    for split in dataset_dict.values():
        assert read_build_report(split) == {"dropped": expected}
    dataset_dict.save_to_disk(tmp_path / "saved")
    from datasets import load_from_disk

    assert read_build_report(load_from_disk(str(tmp_path / "saved"))["train"]) == {"dropped": expected}


@pytest.mark.parametrize("rows, message", [
    ([{"user_id": 0, "item_id": "i0", "timestamp": 1}, {"user_id": "0", "item_id": "i1", "timestamp": 2}],
     r"interactions\.jsonl:2: field 'user_id' value '0' is a string but it was an integer at .*interactions\.jsonl:1"
     r"; one column mixes id types"),
    ([{"user_id": {"a": 1}, "item_id": "i0", "timestamp": 1}],
     r"interactions\.jsonl:1: field 'user_id' value \{'a': 1\} is a dict; ids must be strings or integers"),
    ([{"user_id": "u0", "item_id": "i0", "timestamp": 1, "rating": True}],
     r"interactions\.jsonl:1: field 'rating' value True is a boolean"),
    ([{"user_id": "u0", "item_id": True, "timestamp": 1}], r"field 'item_id' value True is a bool"),
])
def test_builder_ambiguous_ids_and_boolean_ratings_are_errors(tmp_path, items_file, rows, message):
    with pytest.raises(ValueError, match=message):
        _build(tmp_path, items_file, rows)


def test_builder_item_ids_of_another_type_than_the_items_file_are_an_error(tmp_path):
    items = _jsonl(tmp_path / "items.jsonl", [{"item_id": k, "title": f"Item {k}"} for k in range(4)])
    with pytest.raises(ValueError, match=r"interactions\.jsonl:1: field 'item_id' value 'i0' is a string but it was "
                                         r"an integer at .*items\.jsonl:1"):
        _build(tmp_path, items, _interactions())


def test_builder_user_disjoint_with_too_few_users_for_every_split_is_an_error(tmp_path, items_file):
    rows = _interactions(num_users=5, num_items=3)
    with pytest.raises(ValueError, match=r"user_disjoint with fractions \(0\.8, 0\.1, 0\.1\) and 5 users leaves the "
                                         r"validation and test split\(s\) empty"):
        _build(tmp_path, items_file, rows, protocol="user_disjoint")
    dataset_dict = _build(tmp_path, items_file, rows, protocol="user_disjoint", fractions=(0.6, 0.2, 0.2))
    assert [len(dataset_dict[split]) for split in ("train", "validation", "test")] == [3, 1, 1]


def test_builder_records_the_licence_of_built_in_data(data_dir, tmp_path):
    from test_push_to_hub import LICENCE, _write_tiny_ml100k

    from processing.datasets_unimp import build_ml100k, read_licence

    for name in ("ml-100k-posters", "hm-sample", "amazon-mi-2014-5core", "amazon-2018-small-5core"):
        licence = read_licence(data_dir / name / "PROVENANCE.md")
        assert licence and "redistribut" in licence, name
    _write_tiny_ml100k(tmp_path / "ml-100k-posters")  # the shared layout, with its own PROVENANCE.md
    dataset_dict = build_ml100k(tmp_path, check_images=False)
    assert {split.info.license for split in dataset_dict.values()} == {LICENCE}


def test_builder_stores_the_given_licence(tmp_path, items_file):
    dataset_dict = _build(tmp_path, items_file, _interactions(), licence="CC BY 4.0")
    assert {split.info.license for split in dataset_dict.values()} == {"CC BY 4.0"}


# ------------------------------------------------------------------ checkpoints and recipes
def test_checkpoint_without_lm_head_is_an_error_at_load(tmp_path):
    from safetensors.torch import load_file, save_file

    UniMPForConditionalGeneration(make_tiny_config()).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks 1 weight tensor\(s\) \(lm_head\.weight\); they would be random"):
        UniMPForConditionalGeneration.from_pretrained(tmp_path)
    model, info = UniMPForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)  # the opt-out
    assert set(info["missing_keys"]) == {"lm_head.weight"}
    assert model.lm_head.weight.shape[0] == model.config.text_config.vocab_size


def test_tied_head_is_not_stored_and_is_re_tied_at_load(tmp_path):
    from safetensors.torch import load_file

    UniMPForConditionalGeneration(make_tiny_config(tie_word_embeddings=True)).save_pretrained(tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    model = UniMPForConditionalGeneration.from_pretrained(tmp_path)
    assert model.lm_head.weight is model.get_input_embeddings().weight


def test_every_torch_load_in_the_code_passes_weights_only_true():
    import ast
    from pathlib import Path

    from conftest import REPO_ROOT

    calls = []
    for package in ("modeling_unimp", "processing", "recipes", "benchmarks"):
        for path in sorted(Path(REPO_ROOT, package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                    weights_only = [k for k in node.keywords if k.arg == "weights_only"]
                    ok = bool(weights_only) and ast.unparse(weights_only[0].value) == "True"
                    calls.append((f"{path.relative_to(REPO_ROOT)}:{node.lineno}", ok))
    assert len(calls) >= 4 and [where for where, ok in calls if not ok] == []


class _Exploit:
    """Unpickling this runs `open(marker, "w")`: the test fails if any loader unpickles it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_code_and_pickles_in_a_checkpoint_are_never_executed_or_loaded(catalogue, tmp_path):
    import pickle

    model, processor = catalogue
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    marker = tmp_path / "pwned"
    for name in ("modeling_unimp.py", "processing_unimp.py", "pipeline_unimp.py"):  # the remote-code files
        (folder / name).write_text(f"open({str(marker)!r}, 'w').close()\n")
    for name in ("pytorch_model.bin", "training_args.bin", "rng_state.pth"):
        (folder / name).write_bytes(pickle.dumps(_Exploit(marker)))
    from transformers import AutoModel, AutoProcessor

    AutoModel.from_pretrained(folder)
    AutoProcessor.from_pretrained(folder)
    results = pipeline("unimp-recommend", model=str(folder), device="cpu")(["m1"], top_k=2)
    assert len(results) == 2 and not marker.exists()


# ------------------------------------------------------------------ resume
def test_resume_skips_an_incomplete_newest_checkpoint_with_a_warning_and_matches_the_straight_run(
        tiny_processor, tiny_config, tmp_path, caplog):
    import logging

    from test_recipes import _trainer

    from recipes.common import last_complete_checkpoint

    initial = UniMPForConditionalGeneration(tiny_config)
    tiny_processor.prepare_model(initial)
    straight = _trainer(copy.deepcopy(initial), tiny_processor, tmp_path / "straight", 4)
    straight.train()
    killed = _trainer(copy.deepcopy(initial), tiny_processor, tmp_path / "killed", 4)
    killed.train()  # leaves checkpoint-2 and checkpoint-4
    (tmp_path / "killed" / "checkpoint-4" / "model.safetensors").unlink()  # the newest lost its weights
    (tmp_path / "killed" / "checkpoint-6").mkdir()  # a save cut short: no trainer_state.json
    with caplog.at_level(logging.WARNING, logger="unimp.recipes"):
        checkpoint = last_complete_checkpoint(tmp_path / "killed")
    assert checkpoint == str(tmp_path / "killed" / "checkpoint-2")
    assert [r.getMessage() for r in caplog.records] == [
        "skipped 2 incomplete checkpoint(s) (checkpoint-6: no trainer_state.json (the save was cut short); "
        "checkpoint-4: no weights (model.safetensors or model.safetensors.index.json or adapter_model.safetensors)); "
        "resuming from checkpoint-2, the newest complete one"]
    resumed = _trainer(copy.deepcopy(initial), tiny_processor, tmp_path / "killed", 4)
    resumed.train(resume_from_checkpoint=checkpoint)
    assert resumed.state.global_step == 4
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_truncated_weights_make_a_checkpoint_incomplete_and_none_left_starts_over(tmp_path, caplog):
    import logging

    from recipes.common import last_complete_checkpoint

    folder = tmp_path / "run" / "checkpoint-3"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")  # a cut-off header
    with caplog.at_level(logging.WARNING, logger="unimp.recipes"):
        assert last_complete_checkpoint(tmp_path / "run") is None
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("none of the 1 checkpoint(s) in") and "checkpoint-3: model.safetensors is unreadable" in \
        message and message.endswith("training starts from the beginning")
    assert last_complete_checkpoint(tmp_path / "absent") is None


def test_a_resumed_time_capped_run_continues_the_budget_and_the_learning_rate_decay(monkeypatch, tmp_path):
    from transformers import TrainerState

    from recipes import common

    clock = {"now": 100.0}
    monkeypatch.setattr(common.time, "monotonic", lambda: clock["now"])

    def schedule_with(callback, state):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        callback.on_train_begin(None, state, None, lr_scheduler=scheduler)
        return optimizer, scheduler

    first = common.TimeBudgetCallback(max_seconds=10.0, decay_fraction=0.5)
    schedule_with(first, TrainerState(stateful_callbacks=[first]))
    clock["now"] += 7.0  # 7 of the 10 s spent, then a checkpoint and the process is killed
    saved = TrainerState(global_step=119, stateful_callbacks=[first])
    saved.save_to_json(tmp_path / "trainer_state.json")
    clock["now"] += 1000.0  # the restart happens much later
    resumed = common.TimeBudgetCallback(max_seconds=10.0, decay_fraction=0.5)
    optimizer, scheduler = schedule_with(resumed, TrainerState.load_from_json(tmp_path / "trainer_state.json"))
    assert resumed.elapsed() == pytest.approx(7.0)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.6)  # 3 s left of a 5 s decay window, not 1.0
    args = SimpleNamespace(eval_strategy="no", save_strategy="steps")
    assert not resumed.on_step_end(args, saved, _Control()).should_training_stop
    clock["now"] += 3.5  # past the budget counted over both runs
    assert resumed.on_step_end(args, saved, _Control()).should_training_stop


class _Control:
    should_training_stop = should_evaluate = should_save = False


# ------------------------------------------------------------------ push
@pytest.fixture
def trained_checkpoint(catalogue, tmp_path):
    """A checkpoint folder whose processor recorded the (test) terms of its training data, as recipes.train does."""
    from recipes.common import record_training_data_licence

    model, processor = catalogue
    processor = copy.deepcopy(processor)

    class _Split:
        info = type("Info", (), {"license": "Research use only; do not redistribute the data."})()

    record_training_data_licence(processor, {"train": _Split()}, "ml-100k-posters")
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_training_records_the_dataset_licence_in_the_checkpoint(trained_checkpoint):
    processor = UniMPProcessor.from_pretrained(trained_checkpoint)
    assert processor.training_data_licences == {"ml-100k-posters": "Research use only; do not redistribute the data."}


def test_push_of_a_model_trained_on_data_that_forbids_redistribution_needs_private(trained_checkpoint, tmp_path):
    from recipes import push_to_hub

    argv = [str(trained_checkpoint), "org/x", "--dry-run", "--data-dir", str(tmp_path / "no-data")]
    with pytest.raises(ValueError, match=r"the terms of 'ml-100k-posters' forbid redistributing the data.*--private"):
        push_to_hub.main(argv)
    result = push_to_hub.main([*argv, "--private", "--export-dir", str(tmp_path / "export")])
    licence = (tmp_path / "export" / "LICENSE.md").read_text()
    assert result["dry_run"] and "Research use only; do not redistribute the data." in licence


@pytest.mark.parametrize("repo_id", ["a/b/c", "not a valid/repo id!!"])
def test_dry_run_with_an_invalid_repo_id_exits_non_zero_naming_it(trained_checkpoint, repo_id, capsys):
    from recipes import push_to_hub

    with pytest.raises(SystemExit) as exit_info:
        push_to_hub.main([str(trained_checkpoint), repo_id, "--dry-run", "--private"])
    assert exit_info.value.code == 2
    assert f"repo_id {repo_id!r} is not a valid Hub repo id" in capsys.readouterr().err


def test_the_temporary_export_folder_is_deleted_after_a_dry_run_and_a_failed_push(
        trained_checkpoint, tmp_path, monkeypatch):
    import tempfile

    from recipes import push_to_hub

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    result = push_to_hub.main([str(trained_checkpoint), "org/x", "--dry-run", "--private"])
    assert result["export_dir"] is None and "model.safetensors" in result["files"]
    assert list(scratch.iterdir()) == []

    def fail(args, export_dir):
        assert (export_dir / "model.safetensors").is_file()  # the upload was assembled in the scratch folder
        raise ConnectionError("the Hub went away")

    monkeypatch.setattr(push_to_hub, "push_model", fail)
    with pytest.raises(ConnectionError):
        push_to_hub.main([str(trained_checkpoint), "org/x", "--private"])
    assert list(scratch.iterdir()) == []


def test_dataset_card_lists_what_the_build_dropped(tmp_path, items_file):
    from recipes import push_to_hub

    rows = _interactions(num_users=2, num_items=4)
    rows += [rows[0], {"user_id": "short", "item_id": "i0", "timestamp": 1}]
    dataset_dict = _build(tmp_path, items_file, rows, licence="Do not redistribute.")
    card = str(push_to_hub.render_dataset_card(
        dataset_dict=dataset_dict, dataset_id="org/d", dataset_name="custom", protocol="leave_one_out",
        provenance="# custom\n", licence_text="Do not redistribute.", model_id=None))
    for line in ("| repeated (user, item) rows (the first kept) | 1 |",
                 "| users with fewer than 4 interactions (the leave_one_out minimum) | 1 |",
                 "| items nobody interacted with (after the filters above) | 2 |"):
        assert line in card, line
