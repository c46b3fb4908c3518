"""`make demo`: train UniMP-tiny on MovieLens-100K with posters, rank the full catalogue for every test user,
compare with popularity, show one user's history and top-5 recommendations (text and a poster PNG)."""

import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from processing import UniMPDataCollator

from . import train
from .common import ImageCache, load_dataset_dict, render_examples

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


def recommend_for_user(model, processor, dataset_dict, *, user_index: int, max_history_items: int, top_k: int = 5):
    """One test user's rendered prompt, history items and top-k catalogue indices with scores."""
    images = ImageCache(processor.image_processor.size["height"])
    example = render_examples(dataset_dict, processor, tasks=["rec"], split="test", task_weights=None,
                              max_history_items=max_history_items, images=images)[user_index]
    batch = UniMPDataCollator(processor, for_generation=True)([example])
    scores = model.score_items(**batch)[0]
    top = torch.topk(scores, top_k)
    row = dataset_dict["test"][user_index]
    return row, top.indices.tolist(), top.values.tolist()


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
    row, top, scores = recommend_for_user(model, processor, dataset_dict, user_index=0,
                                          max_history_items=training.max_history_items)
    window = row["history_item_ids"][-training.max_history_items:]
    history = window[-(processor.content_history_items or len(window)):]  # the items shown with poster + text
    titles = dict(zip(processor.item_ids, processor.item_titles))
    posters = dict(zip(processor.item_ids, processor.item_images))
    older = f" (and {len(window) - len(history)} older ones, as item ids)" if len(window) > len(history) else ""
    print(f"\nUser {row['user_id']}: the last {len(history)} movies watched{older}")
    for item_id in history:
        print(f"  - {titles[item_id]} (item {item_id})")
    print("Top-5 recommendations:")
    recommended = [processor.item_ids[k] for k in top]
    for rank, (item_id, score) in enumerate(zip(recommended, scores), start=1):
        print(f"  {rank}. {titles[item_id]} (item {item_id}, score {score:.2f})")
    print(f"True next movie: {titles[row['target_item_id']]} (item {row['target_item_id']})")
    sheet = poster_sheet([posters[i] for i in history], [posters[i] for i in recommended],
                         posters[row["target_item_id"]], Path(training.output_dir) / "demo_user_posters.png")
    print(f"\nPoster sheet: {sheet}\nTraining curve: {Path(training.output_dir) / 'training_curve.png'}")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
