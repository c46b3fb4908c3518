"""`make demo`: train UniMP-tiny on MovieLens-100K with posters, rank the full catalogue for every test user,
compare with popularity, show one user's history and top-5 recommendations (text and a poster PNG)."""

import sys
from pathlib import Path

from PIL import Image, ImageDraw

from processing.task_records import items_by_id

from . import train
from .common import load_dataset_dict

CONFIG = Path(__file__).parent / "configs" / "ml100k_tiny.yaml"
POSTER = (96, 144)


def format_table(metrics: dict, k: int = 10) -> str:
    """UniMP vs popularity at cut-off k, sequential convention and history-masked convention."""
    rows = [("UniMP-tiny", "unimp"), ("Popularity", "pop"), ("UniMP-tiny, history masked", "unimp_masked"),
            ("Popularity, history masked", "pop_masked")]
    lines = [f"{'model':<30} {'HR@' + str(k):>8} {'NDCG@' + str(k):>8} {'MRR@' + str(k):>8}"]
    for label, key in rows:
        values = metrics[key]
        lines.append(f"{label:<30} {values[f'hr@{k}']:8.4f} {values[f'ndcg@{k}']:8.4f} {values[f'mrr@{k}']:8.4f}")
    return "\n".join(lines)


def recommend_for_user(model, processor, dataset_dict, *, user_index: int, top_k: int = 5) -> tuple[dict, list[dict]]:
    """One test user's row and top-k recommendations, through the public inference path (`unimp-recommend`).

    Returns: (the test row, [{"item_id", "score", "title", "image"}] best first; score = softmax over the catalogue).
    """
    from transformers import pipeline

    row = dataset_dict["test"][user_index]
    recommend = pipeline("unimp-recommend", model=model, processor=processor, device="cpu")
    return row, recommend(row["history_item_ids"], top_k=top_k, items=items_by_id(dataset_dict["items"]))


def poster_sheet(history_paths, recommended_paths, target_path, path: Path) -> Path:
    """History posters (top row) beside the recommended posters (bottom row); the true next movie framed."""
    columns = max(len(history_paths), len(recommended_paths) + 1)
    sheet = Image.new("RGB", (columns * (POSTER[0] + 8) + 8, 2 * (POSTER[1] + 28) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    rows = [("history (oldest -> newest)", history_paths), ("top-5 recommended | true next", recommended_paths)]
    for r, (label, paths) in enumerate(rows):
        y = 8 + r * (POSTER[1] + 28)
        draw.text((8, y), label, fill="black")
        cells = list(paths) + ([target_path] if r == 1 else [])
        for c, poster in enumerate(cells):
            x = 8 + c * (POSTER[0] + 8)
            if poster:
                with Image.open(poster) as picture:
                    sheet.paste(picture.convert("RGB").resize(POSTER), (x, y + 14))
            else:
                draw.rectangle([x, y + 14, x + POSTER[0], y + 14 + POSTER[1]], outline="gray")
                draw.text((x + 4, y + 20), "no poster", fill="gray")
            if r == 1 and c == len(cells) - 1:
                draw.rectangle([x - 2, y + 12, x + POSTER[0] + 2, y + 16 + POSTER[1]], outline="red", width=3)
    sheet.save(path)
    return path


def main(argv: list[str] | None = None) -> dict:
    recipe, training = train.parse_args([str(CONFIG), *(argv or [])])
    metrics = train.main(recipe, training)
    print("\nFull-ranking results on the ML-100K leave-one-out test split "
          f"({metrics['num_users']} users, {metrics['global_step']} training steps, {metrics['train_seconds']} s):")
    print(format_table(metrics))

    from modeling_unimp import UniMPForConditionalGeneration, UniMPProcessor

    model = UniMPForConditionalGeneration.from_pretrained(training.output_dir).eval()
    processor = UniMPProcessor.from_pretrained(training.output_dir)
    dataset_dict = load_dataset_dict(recipe)
    row, recommendations = recommend_for_user(model, processor, dataset_dict, user_index=0)
    window = row["history_item_ids"][-processor.max_history_items:]
    history = window[-(processor.content_history_items or len(window)):]  # the items shown with poster + text
    titles = dict(zip(processor.item_ids, processor.item_titles))
    posters = dict(zip(processor.item_ids, processor.item_images))
    older = f" (and {len(window) - len(history)} older ones, as item ids)" if len(window) > len(history) else ""
    print(f"\nUser {row['user_id']}: the last {len(history)} movies watched{older}")
    for item_id in history:
        print(f"  - {titles[item_id]} (item {item_id})")
    print("Top-5 recommendations:")
    recommended = [result["item_id"] for result in recommendations]
    for rank, result in enumerate(recommendations, start=1):
        print(f"  {rank}. {result['title']} (item {result['item_id']}, score {result['score']:.3f})")
    print(f"True next movie: {titles[row['target_item_id']]} (item {row['target_item_id']})")
    sheet = poster_sheet([posters[i] for i in history], [posters[i] for i in recommended],
                         posters[row["target_item_id"]], Path(training.output_dir) / "demo_user_posters.png")
    print(f"\nPoster sheet: {sheet}\nTraining curve: {Path(training.output_dir) / 'training_curve.png'}")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
