"""The UniMP Space (issue 15): pick a user or build a history by searching the catalogue, see the history's images,
the top-k recommendations with their scores and, where the checkpoint was trained with `exp`, a rating and an
explanation. Every UI step is a plain function below; `build_demo` only wires them to Gradio widgets."""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home, before gradio is imported

from PIL import Image  # noqa: E402

DEFAULT_CHECKPOINT = "outputs/ml100k_tiny"  # what `make demo` writes (recipes/configs/ml100k_tiny.yaml)
USERS_FILE = "users.jsonl"  # optional, next to the checkpoint: {"user_id", "history", "ratings"} per line
MAX_USERS = 300  # users offered in the dropdown (the demo evaluates 300)
DEFAULT_RATING = 5  # a history item added from the search box counts as liked (exp prompts need a rating)
THUMBNAIL = (96, 144)  # poster-shaped gallery cells
TABLE_HEADERS = ["rank", "title", "item_id", "score"]


# ---------------------------------------------------------------------------------------------- loading
def load_recommender(checkpoint: str, image_root: str | None = None):
    """`pipeline("unimp-recommend")` on a checkpoint folder or Hub id: the installed package's pipeline where
    `modeling_unimp` imports, else the checkpoint's own pipeline code (`trust_remote_code=True`, as on a Space)."""
    from transformers import pipeline

    try:
        import modeling_unimp  # noqa: F401  (registers "unimp-recommend")
        recommend = pipeline("unimp-recommend", model=checkpoint, device="cpu")
    except ImportError:
        recommend = pipeline("unimp-recommend", model=checkpoint, device="cpu", trust_remote_code=True)
    recommend.app_image_root = image_root
    return recommend


def read_training_info(checkpoint: str | Path) -> dict:
    """The checkpoint's training `metrics.json` (dataset, tasks, rating scale); {} where there is none."""
    path = Path(checkpoint) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def users_from_rows(rows, limit: int = MAX_USERS) -> dict[str, dict]:
    """Dataset user rows (`user_id`, `history_item_ids`, `history_ratings`?) -> {user_id: {"history", "ratings"}}."""
    users = {}
    for row in rows:
        if len(users) >= limit:
            break
        history = [str(item_id) for item_id in row["history_item_ids"]]
        ratings = row.get("history_ratings") or [None] * len(history)
        users[str(row["user_id"])] = {"history": history, "ratings": [r if r is None else int(r) for r in ratings]}
    return users


def load_users(checkpoint: str | Path, data_dir: str | None = None, limit: int = MAX_USERS) -> dict[str, dict]:
    """The users to offer: `users.jsonl` next to the checkpoint, else the test users of the dataset named in its
    `metrics.json` (needs the `processing` package and the raw data), else none (histories come from search)."""
    path = Path(checkpoint) / USERS_FILE
    if path.is_file():
        saved = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return users_from_rows([{"user_id": row["user_id"], "history_item_ids": row["history"],
                                 "history_ratings": row.get("ratings")} for row in saved], limit)
    info = read_training_info(checkpoint)
    if not info.get("dataset"):
        return {}
    try:
        from processing.datasets_unimp import load_unimp_dataset
    except ImportError:
        return {}
    try:
        dataset_dict = load_unimp_dataset(info["dataset"], data_dir, protocol=info.get("protocol", "leave_one_out"),
                                          rating_scale=info.get("rating_scale"))
    except (OSError, ValueError) as error:  # data not on this machine: search still works
        print(f"app: no users from {info['dataset']!r} ({error}); build a history by searching", file=sys.stderr)
        return {}
    return users_from_rows(dataset_dict["test"], limit)


def write_users_file(users: dict[str, dict], checkpoint: str | Path) -> Path:
    """Save the users next to the checkpoint, so a Space needs neither the raw data nor the `processing` package."""
    path = Path(checkpoint) / USERS_FILE
    path.write_text("".join(json.dumps({"user_id": u, **row}) + "\n" for u, row in users.items()))
    return path


# ---------------------------------------------------------------------------------------------- UI steps
def search_catalogue(processor, query: str, limit: int = 20) -> list[tuple[str, str]]:
    """Catalogue items whose title contains every word of `query` (case-insensitive) -> [(label, item_id)]."""
    words = query.lower().split()
    if not words:
        return []
    found = []
    for item_id, title in zip(processor.item_ids, processor.item_titles):
        if all(word in (title or "").lower() for word in words):
            found.append((f"{title} ({item_id})", item_id))
            if len(found) >= limit:
                break
    return found


def parse_history(text: str) -> list[str]:
    """The history box ("id, id, ...", oldest first) -> item ids."""
    return [part.strip() for part in (text or "").replace("\n", ",").split(",") if part.strip()]


def format_history(history: list[str]) -> str:
    return ", ".join(history)


def add_to_history(text: str, item_id: str | None) -> str:
    """Append a searched item (the newest) to the history box."""
    return format_history(parse_history(text) + ([item_id] if item_id else []))


def thumbnail(image) -> Image.Image:
    """A catalogue image (path, PIL or None) -> a poster-sized RGB picture; grey where there is none or it fails."""
    if image is not None:
        try:
            picture = image if isinstance(image, Image.Image) else Image.open(image)
            return picture.convert("RGB").resize(THUMBNAIL)
        except OSError:
            pass
    return Image.new("RGB", THUMBNAIL, "lightgray")


def _catalogue_image(recommender, item_id: str):
    processor = recommender.processor
    image = processor.item_images[processor.item_index(item_id)]
    root = getattr(recommender, "app_image_root", None)
    if isinstance(image, str) and root and not os.path.isabs(image):
        image = os.path.join(root, image)
    return image


def history_gallery(recommender, history: list[str]) -> list[tuple[Image.Image, str]]:
    """The history's items (oldest first) as (picture, "title (id)") gallery cells."""
    processor = recommender.processor
    cells = []
    for item_id in history:
        title = processor.item_titles[processor.item_index(item_id)] or item_id
        cells.append((thumbnail(_catalogue_image(recommender, item_id)), f"{title} ({item_id})"))
    return cells


def recommend(recommender, history: list[str], top_k: int = 5, exclude_history: bool = True):
    """Top-k recommendations for a history -> (table rows [rank, title, item_id, score], gallery cells, results)."""
    results = recommender(history, top_k=int(top_k), exclude_history=bool(exclude_history))
    rows = [[rank, r["title"] or r["item_id"], r["item_id"], round(r["score"], 4)]
            for rank, r in enumerate(results, start=1)]
    cells = [(thumbnail(r["image"] if r["image"] else _catalogue_image(recommender, r["item_id"])),
              f"{rank}. {r['title'] or r['item_id']} ({r['score']:.3f})") for rank, r in enumerate(results, start=1)]
    return rows, cells, results


def explain(recommender, history: list[str], ratings: dict[str, int], target: str) -> tuple[str, str]:
    """The `exp` task: the rating (1-5) and explanation the model gives `target` for this history. The rating is the
    expected rating with the generated rating token next to it; a checkpoint's older pipeline code returns the
    token's rating alone, shown as it is."""
    items = [{"item_id": item_id, "rating": int(ratings.get(item_id) or DEFAULT_RATING)} for item_id in history]
    answer = recommender({"task": "exp", "history": items, "target": target})
    rating, token = answer.get("rating"), answer.get("rating_token")
    if rating is None:
        text = "?"
    elif "rating_token" not in answer:
        text = str(rating)
    else:
        text = f"{rating:.2f} (rating token {'?' if token is None else token})"
    return text, answer.get("explanation") or ""


def show(recommender, history_text: str, ratings: dict, top_k: int, exclude_history: bool, with_exp: bool):
    """Everything the page shows for the history box: history gallery, table, gallery, rating, explanation, note."""
    history = parse_history(history_text)
    unknown = [item_id for item_id in history if item_id not in recommender.processor.item_ids]
    if not history or unknown:
        note = f"unknown item ids: {', '.join(unknown)}" if unknown else "the history is empty: pick a user or search"
        return [], [], [], "", "", note
    rows, cells, results = recommend(recommender, history, top_k, exclude_history)
    rating, explanation = ("", "")
    if with_exp and results:
        rating, explanation = explain(recommender, history, ratings, results[0]["item_id"])
    note = f"{len(history)} history items; the model reads the last {recommender.processor.max_history_items}"
    return history_gallery(recommender, history), rows, cells, rating, explanation, note


def user_history(users: dict[str, dict], user_id: str | None) -> tuple[str, dict]:
    """A user's history box text and their ratings by item id."""
    row = users.get(user_id or "", {"history": [], "ratings": []})
    ratings = {item_id: r for item_id, r in zip(row["history"], row["ratings"]) if r is not None}
    return format_history(row["history"]), ratings


# ---------------------------------------------------------------------------------------------- Gradio
def offline_theme():
    """Gradio's default look with system fonts only: the stock themes fetch Google fonts from the web."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def build_demo(recommender, users: dict[str, dict], tasks=("rec",)):
    """The Blocks page, opening on the first user's history and recommendations (empty without users)."""
    import gradio as gr

    with_exp = "exp" in tasks
    first_user = next(iter(users), None)
    # the first user's page is computed here, so it renders with the page (no queued model call on load)
    first_text, first_ratings = user_history(users, first_user)
    first = show(recommender, first_text, first_ratings, 5, True, with_exp) if first_text else ([], [], [], "", "", "")
    kwargs = {} if int(gr.__version__.split(".")[0]) >= 6 else {"theme": offline_theme()}
    with gr.Blocks(title="UniMP recommendations", analytics_enabled=False, **kwargs) as demo:
        gr.Markdown("# UniMP: multi-modal personalization\nPick a user, or build a history by searching the "
                    "catalogue; the model ranks the whole catalogue for the history (oldest first).")
        ratings = gr.State(first_ratings)
        with gr.Row():
            user = gr.Dropdown(choices=list(users), value=first_user, label="user", visible=bool(users))
            query = gr.Textbox(label="search the catalogue by title")
            found = gr.Dropdown(choices=[], label="matches", allow_custom_value=False)
            add = gr.Button("add to history")
        history_box = gr.Textbox(value=first_text, label="history item ids (oldest first)", lines=2)
        with gr.Row():
            top_k = gr.Slider(1, 20, value=5, step=1, label="top-k")
            exclude = gr.Checkbox(value=True, label="leave out items already in the history")
            run = gr.Button("recommend", variant="primary")
        note = gr.Markdown(first[5])
        history_cells = gr.Gallery(first[0], label="history", columns=10, height=220)
        table = gr.Dataframe(first[1] or None, headers=TABLE_HEADERS, label="recommendations",
                             elem_id="recommendations")
        recommended_cells = gr.Gallery(first[2], label="recommended", columns=10, height=220)
        with gr.Row(visible=with_exp):
            rating = gr.Textbox(first[3], label="predicted rating of the top recommendation (1-5)")
            explanation = gr.Textbox(first[4], label="explanation")

        outputs = [history_cells, table, recommended_cells, rating, explanation, note]

        def refresh(history_text, ratings_by_item, k, leave_out):
            return show(recommender, history_text, ratings_by_item, k, leave_out, with_exp)

        def pick_user(user_id, k, leave_out):
            text, by_item = user_history(users, user_id)
            return [text, by_item, *refresh(text, by_item, k, leave_out)]

        user_outputs = [history_box, ratings, *outputs]
        user.change(pick_user, [user, top_k, exclude], user_outputs)
        query.submit(lambda q: gr.update(choices=search_catalogue(recommender.processor, q), value=None),
                     query, found)
        add.click(add_to_history, [history_box, found], history_box)
        run.click(refresh, [history_box, ratings, top_k, exclude], outputs)
    return demo


def launch(demo, *, port: int | None = None, block: bool = True):
    """Serve on 127.0.0.1 only, no share link; the offline theme where gradio takes it at launch (gradio >= 6)."""
    import gradio as gr

    kwargs = {"theme": offline_theme()} if int(gr.__version__.split(".")[0]) >= 6 else {}
    return demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), server_port=port,
                       share=False, prevent_thread_lock=not block, show_error=True, **kwargs)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", nargs="?", default=os.environ.get("UNIMP_CHECKPOINT", DEFAULT_CHECKPOINT),
                        help="a checkpoint folder or Hub id (env UNIMP_CHECKPOINT; default: the `make demo` output)")
    parser.add_argument("--image-root", default=os.environ.get("UNIMP_IMAGE_ROOT"),
                        help="folder that relative catalogue image paths are under")
    parser.add_argument("--data-dir", default=None, help="raw data of the checkpoint's dataset (users)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--write-users", action="store_true",
                        help=f"save the dataset's users as {USERS_FILE} next to the checkpoint (for a Space) and exit")
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint
    is_hub_id = checkpoint.count("/") == 1 and not checkpoint.startswith(("/", "outputs", "."))
    if not Path(checkpoint).exists() and is_hub_id:
        from huggingface_hub import snapshot_download

        checkpoint = snapshot_download(checkpoint)  # a Space: the model repo, users.jsonl included
    if not Path(checkpoint).is_dir():
        parser.error(f"no checkpoint at {checkpoint}: run `make demo` first, or pass a folder / UNIMP_CHECKPOINT")
    users = load_users(checkpoint, args.data_dir)
    if args.write_users:
        print(write_users_file(users, checkpoint))
        return None
    recommender = load_recommender(checkpoint, args.image_root)
    demo = build_demo(recommender, users, read_training_info(checkpoint).get("tasks") or ("rec",))
    return launch(demo, port=args.port)


if __name__ == "__main__":
    main(sys.argv[1:])
