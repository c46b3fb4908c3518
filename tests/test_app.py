"""The Space (app/app.py, issue 15): its plain UI functions on a tiny checkpoint folder, then the page itself,
served on a loopback port and rendered by headless Chromium (skipped, saying why, without chromium or gradio)."""

import copy
import importlib.util
import json
import re
import shutil
import socket
import subprocess

import pytest
from conftest import REPO_ROOT, make_tiny_model
from PIL import Image

from modeling_unimp import UniMPProcessor

_spec = importlib.util.spec_from_file_location("unimp_space_app", REPO_ROOT / "app" / "app.py")
space = importlib.util.module_from_spec(_spec)  # app/app.py: a Space's entry point, not a package
_spec.loader.exec_module(space)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NUM_ITEMS = 8
TITLES = ["Toy Story", "Heat", "Up", "Toy Soldiers", "Alien", "Heat Wave", "Big", "Fargo"]
USERS = {"u1": {"history": ["m0", "m2", "m4"], "ratings": [5, 3, 4]}, "u2": {"history": ["m1"], "ratings": [2]}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer):
    """A saved tiny model + processor (half the items with poster files), trained with rec and exp (metrics.json),
    and a users.jsonl next to it."""
    folder = tmp_path_factory.mktemp("space_checkpoint")
    images = []
    for k in range(NUM_ITEMS):
        path = folder / f"poster_{k}.png"
        Image.new("RGB", (32, 32), (30 * k, 255 - 30 * k, 60)).save(path)
        images.append(str(path) if k % 2 == 0 else None)
    item_ids = [f"m{k}" for k in range(NUM_ITEMS)]
    processor = UniMPProcessor.from_catalogue(copy.deepcopy(tiny_tokenizer), item_ids, TITLES, images, image_size=32)
    model = make_tiny_model(processor)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "metrics.json").write_text(json.dumps({"dataset": "own", "tasks": ["rec", "exp"]}))
    space.write_users_file(USERS, folder)
    return folder


@pytest.fixture(scope="module")
def recommender(checkpoint):
    return space.load_recommender(str(checkpoint))


def test_users_file_round_trips_and_dataset_rows_keep_their_ratings(checkpoint):
    assert space.load_users(checkpoint) == USERS
    rows = [{"user_id": 7, "history_item_ids": ["m1", "m3"], "history_ratings": [4, 1]},
            {"user_id": 8, "history_item_ids": ["m2"]}]
    assert space.users_from_rows(rows) == {"7": {"history": ["m1", "m3"], "ratings": [4, 1]},
                                           "8": {"history": ["m2"], "ratings": [None]}}
    assert list(space.users_from_rows(rows, limit=1)) == ["7"]
    assert space.user_history(USERS, "u1") == ("m0, m2, m4", {"m0": 5, "m2": 3, "m4": 4})
    assert space.user_history(USERS, None) == ("", {})


def test_search_matches_every_word_of_the_query_in_the_title(recommender):
    processor = recommender.processor
    assert space.search_catalogue(processor, "heat") == [("Heat (m1)", "m1"), ("Heat Wave (m5)", "m5")]
    assert space.search_catalogue(processor, "TOY sto") == [("Toy Story (m0)", "m0")]
    assert space.search_catalogue(processor, "   ") == []
    assert space.search_catalogue(processor, "toy", limit=1) == [("Toy Story (m0)", "m0")]


def test_history_box_parses_and_grows_with_searched_items():
    assert space.parse_history(" m1, m2 ,\nm3,, ") == ["m1", "m2", "m3"]
    assert space.add_to_history("m1, m2", "m5") == "m1, m2, m5"
    assert space.add_to_history("", "m5") == "m5"
    assert space.add_to_history("m1", None) == "m1"


def test_recommendations_are_the_pipelines_ranking_without_the_history(recommender):
    history = ["m0", "m2", "m4"]
    rows, cells, results = space.recommend(recommender, history, top_k=4, exclude_history=True)
    expected = recommender(history, top_k=4, exclude_history=True)
    assert [row[2] for row in rows] == [r["item_id"] for r in expected] and len(rows) == 4
    assert not set(history) & {row[2] for row in rows}
    assert [row[0] for row in rows] == [1, 2, 3, 4]
    assert [row[3] for row in rows] == pytest.approx([r["score"] for r in expected], abs=1e-4)
    assert [row[1] for row in rows] == [TITLES[int(row[2][1:])] for row in rows]
    assert all(caption.startswith(f"{n}. {row[1]} (") for n, ((_, caption), row) in enumerate(zip(cells, rows), 1))
    kept = space.recommend(recommender, history, top_k=NUM_ITEMS, exclude_history=False)[0]
    assert {row[2] for row in kept} == {f"m{k}" for k in range(NUM_ITEMS)}


def test_history_gallery_shows_posters_and_grey_cells_for_items_without_one(recommender):
    cells = space.history_gallery(recommender, ["m0", "m1"])
    assert [caption for _, caption in cells] == ["Toy Story (m0)", "Heat (m1)"]
    poster, missing = (picture for picture, _ in cells)
    assert poster.size == missing.size == space.THUMBNAIL
    assert poster.getpixel((5, 5)) == (0, 255, 60)  # item m0's colour
    assert missing.getpixel((5, 5)) == (211, 211, 211)  # lightgray


def test_show_explains_the_top_recommendation_and_reports_bad_histories(recommender):
    history_cells, rows, cells, rating, explanation, note = space.show(
        recommender, "m0, m2, m4", {"m0": 5}, 3, True, with_exp=True)
    assert len(history_cells) == 3 and len(rows) == len(cells) == 3
    assert isinstance(explanation, str)
    direct = recommender({"task": "exp", "target": rows[0][2],
                          "history": [{"item_id": "m0", "rating": 5}, {"item_id": "m2", "rating": 5},
                                      {"item_id": "m4", "rating": 5}]})
    # the expected rating, with the generated rating token next to it
    assert rating == f"{direct['rating']:.2f} (rating token {direct['rating_token']})"
    assert 1.0 <= float(rating.split()[0]) <= 5.0 and explanation == direct["explanation"]
    assert space.show(recommender, "m0, m2", {}, 3, True, with_exp=False)[3:5] == ("", "")
    assert space.show(recommender, "m0, zz", {}, 3, True, False)[-1] == "unknown item ids: zz"
    assert space.show(recommender, "", {}, 3, True, False)[-1].startswith("the history is empty")


def test_app_import_and_the_page_build_fetch_nothing_from_the_web(recommender):
    pytest.importorskip("gradio", reason="gradio is not installed: pip install -e '.[app]'")
    import os

    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    import gradio as gr

    web_font = gr.themes.Default(font=[gr.themes.GoogleFont("Inter"), "sans-serif"])
    assert any("fonts.googleapis.com" in sheet for sheet in web_font._stylesheets)  # what the check would catch
    theme = space.offline_theme()
    assert theme._stylesheets == [] and theme.font.startswith("ui-sans-serif")  # system fonts only


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(importlib.util.find_spec("gradio") is None,
                    reason="gradio is not installed: pip install -e '.[app]' (make app)")
@pytest.mark.skipif(not shutil.which(CHROMIUM),
                    reason="no /usr/bin/chromium: apt-get install -y chromium (make app installs it)")
def test_page_in_headless_chromium_shows_the_first_users_recommendations(recommender, tmp_path):
    port = _free_port()
    demo = space.build_demo(recommender, USERS, ("rec", "exp"))
    space.launch(demo, port=port, block=False)
    try:
        url = f"http://127.0.0.1:{port}/"
        chromium = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1800",
                    "--virtual-time-budget=30000"]
        dom = subprocess.run([*chromium, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
        artifacts = REPO_ROOT / "outputs" / "test_app"
        artifacts.mkdir(parents=True, exist_ok=True)
        subprocess.run([*chromium, f"--screenshot={artifacts / 'space.png'}", url], capture_output=True,
                       timeout=180)
    finally:
        demo.close()
    (artifacts / "space.html").write_text(dom)
    rendered = re.sub(r"<script.*?</script>", "", dom, flags=re.S)  # the page, not the config it was built from
    table = rendered[rendered.index('id="recommendations"'):]
    assert "UniMP: multi-modal personalization" in rendered
    expected = recommender(USERS["u1"]["history"], top_k=5, exclude_history=True)
    for result in expected:  # the default user's recommendations, rendered with the page
        assert f">{result['title']}<" in table or f"> {result['title']} <" in table, result["title"]
        assert result["item_id"] in table
    assert (artifacts / "space.png").stat().st_size > 10_000
