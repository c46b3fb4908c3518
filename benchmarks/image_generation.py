#!/usr/bin/env python
"""Offline metrics of user-guided image generation (issue 7, reference §4.5, which has none): for the test users of a
`recipes/train_image_generation.py` run, compare the generated target images with the real ones.

Every image is 64 px; features are the pooled (post-LayerNorm CLS) output of the project's own pretrained vision
tower (`recipes/pretrain_vision.py`, a CLIPVisionModel), so the distance is reported as "Fréchet distance in UniMP-tiny
vision features", not FID (which means Inception-v3 features). Methods compared, each one image per test user:

- generated: the model's constrained greedy (or sampled) code grid, decoded by the image tokenizer;
- most-recent baseline: the user's most recent history item's image (no generation at all);
- random baseline: a random catalogue image (seeded), the no-personalisation reference;
- tokenizer reconstruction: decode(encode(real target)), the upper bound of any generator using these codes.

Metrics per method: Fréchet distance to the real targets' features; nearest-catalogue-image retrieval (the generated
image's nearest catalogue image is the target: item_hit@1/@10; it shares the target's genre / product type:
category_hit@1, with its chance level); PSNR / SSIM against the real target. Also writes a PNG contact sheet.

    python benchmarks/image_generation.py --checkpoint outputs/imggen/ml100k
"""

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from transformers import CLIPVisionModel

from modeling_unimp import UniMPImageTokenizer
from modeling_unimp.processing_unimp import CLIP_MEAN, CLIP_STD
from processing.datasets_unimp import load_unimp_dataset
from processing.image_metrics import compute_frechet_distance, compute_psnr, compute_retrieval_metrics, compute_ssim
from processing.task_records import items_by_id
from recipes.train_image_generation import IMAGE_TOKENIZER_SUBFOLDER, load_item_pixels

logger = logging.getLogger("unimp.benchmarks.image_generation")

REPO_ROOT = Path(__file__).resolve().parents[1]
METHODS = ("generated", "most_recent_baseline", "random_baseline", "tokenizer_reconstruction")
FEATURE_SPACE = "UniMP-tiny vision features"
# ML-100K genres are space-separated single words ("Children's", "Film-Noir"); an H&M category is one product type.
DEFAULT_CATEGORY_MATCH = {"ml-100k-posters": "any_word", "hm-sample": "exact"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="output_dir of recipes/train_image_generation.py")
    parser.add_argument("--vision-tower", default=None,
                        help="CLIPVisionModel folder (default outputs/pretrain_vision/<dataset>)")
    parser.add_argument("--output-dir", default=None,
                        help="where metrics.json and the sheet go (default <checkpoint>/benchmark)")
    parser.add_argument("--generations", default=None,
                        help="a test_generations.jsonl (default: the checkpoint's, written by the recipe)")
    parser.add_argument("--decoding", choices=("recipe", "greedy", "sample"), default="recipe",
                        help="'recipe' scores the recipe's generations; 'greedy' / 'sample' regenerate the same test "
                             "users through pipeline('unimp-generate-image', model=<checkpoint>)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (--decoding sample)")
    parser.add_argument("--top-k", type=int, default=None, help="sampling top-k (--decoding sample)")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per generate call when regenerating")
    parser.add_argument("--category-match", choices=("any_word", "exact"), default=None,
                        help="same genre = a shared word of the category (ML-100K) or the same category (H&M)")
    parser.add_argument("--num-sheet-users", type=int, default=8, help="test users on the contact sheet")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random baseline and the sheet's users")
    parser.add_argument("--num-threads", type=int, default=1, help="torch CPU threads")
    return parser.parse_args(argv)


@torch.no_grad()
def extract_features(tower: CLIPVisionModel, pixels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(n, 3, R, R) uint8 -> (n, D) pooled features; CLIP-normalised at the tower's size, as in pretraining."""
    size = tower.config.image_size
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    chunks = []
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start : start + batch_size].float() / 255.0
        if batch.shape[-1] != size:
            batch = torch.nn.functional.interpolate(batch, size=(size, size), mode="bicubic", align_corners=False)
        chunks.append(tower(pixel_values=(batch - mean) / std).pooler_output)  # (b, D)
    return torch.cat(chunks)


def regenerate(checkpoint: Path, generations: list[dict], code_strings: dict[str, str], args: argparse.Namespace
               ) -> list[dict]:
    """The same test prompts (history items with their recipe codes, query) through the checkpoint's pipeline."""
    from transformers import pipeline

    import modeling_unimp  # noqa: F401  (registers "unimp-generate-image")

    torch.manual_seed(args.seed)
    generate_image = pipeline("unimp-generate-image", model=str(checkpoint), device="cpu")
    decoding = {"do_sample": args.decoding == "sample"}
    if decoding["do_sample"]:
        decoding.update(temperature=args.temperature, top_k=args.top_k)
    inputs = [{"history": [{"item_id": item_id, "image_codes": code_strings[item_id]}
                           for item_id in g["history_item_ids"]], "query": g["query"]} for g in generations]
    outputs = []
    for start in range(0, len(inputs), args.batch_size):
        outputs.extend(generate_image(inputs[start : start + args.batch_size], batch_size=args.batch_size,
                                      return_codes=True, max_history_items=len(inputs[0]["history"]), **decoding))
        logger.info("regenerated %d / %d", len(outputs), len(inputs))
    return [{**g, "generated_codes": output["codes"]} for g, output in zip(generations, outputs)]


@torch.no_grad()
def decode_codes(image_tokenizer: UniMPImageTokenizer, codes: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(n, S) codes -> (n, 3, R, R) uint8 images, rounded as a saved PNG would be."""
    chunks = [image_tokenizer.decode(codes[start : start + batch_size]) for start in range(0, len(codes), batch_size)]
    return ((torch.cat(chunks).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def category_sets(items: dict[str, dict], match: str) -> dict[str, frozenset[str]]:
    """item_id -> its category labels: the words of the category (any_word) or the whole category (exact)."""
    labels = {}
    for item_id, item in items.items():
        category = (item.get("category") or "").strip()
        words = category.split() if match == "any_word" else [category]
        labels[item_id] = frozenset(words) if category else frozenset()
    return labels


def save_contact_sheet(rows: list[dict], path: Path, cell: int = 96) -> Path:
    """One row per user: history images, the real target, the tokenizer's reconstruction, the generated image and the
    most-recent baseline, each labelled, upscaled from 64 px to `cell` px (nearest, so no detail is invented)."""
    max_history = max(len(row["history"]) for row in rows)
    headers = [f"history {n + 1}" for n in range(max_history)] + ["real target", "tokenizer recon.", "generated",
                                                                   "most recent"]
    label_height, query_height, pad = 14, 14, 4
    width = len(headers) * (cell + pad) + pad
    height = label_height + len(rows) * (cell + query_height + pad) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for column, header in enumerate(headers):
        draw.text((pad + column * (cell + pad), 2), header, fill="black")
    for row_index, row in enumerate(rows):
        top = label_height + row_index * (cell + query_height + pad)
        draw.text((pad, top), f"user {row['user_id']}: {row['query'][:90]}", fill="dimgray")
        cells = row["history"] + [None] * (max_history - len(row["history"])) + [
            row["target"], row["reconstruction"], row["generated"], row["baseline"]]
        for column, pixels in enumerate(cells):
            if pixels is None:
                continue
            image = Image.fromarray(pixels.permute(1, 2, 0).numpy(), mode="RGB").resize((cell, cell), Image.NEAREST)
            sheet.paste(image, (pad + column * (cell + pad), top + query_height))
    sheet.save(path)
    return path


def main(args: argparse.Namespace) -> dict:
    """Compute the metrics, write `metrics.json` and `contact_sheet.png`; returns the metrics."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.num_threads)
    started = time.time()
    checkpoint = Path(args.checkpoint)
    recipe_args = json.loads((checkpoint / "recipe_args.json").read_text())
    dataset = recipe_args["recipe"]["dataset"]
    output_dir = Path(args.output_dir) if args.output_dir else checkpoint / "benchmark"
    output_dir.mkdir(parents=True, exist_ok=True)
    tower_path = Path(args.vision_tower) if args.vision_tower else REPO_ROOT / "outputs" / "pretrain_vision" / dataset
    if not (tower_path / "config.json").is_file():
        raise SystemExit(f"no vision tower at {tower_path}: pretrain one with `python -m recipes.pretrain_vision "
                         f"recipes/configs/pretrain_vision_<dataset>.yaml` or pass --vision-tower")
    tower = CLIPVisionModel.from_pretrained(tower_path).eval()
    image_tokenizer = UniMPImageTokenizer.from_pretrained(checkpoint / IMAGE_TOKENIZER_SUBFOLDER).eval()

    dataset_dict = load_unimp_dataset(dataset, recipe_args["recipe"]["data_dir"],
                                      protocol=recipe_args["recipe"]["protocol"])
    items = items_by_id(dataset_dict["items"])
    resolution = image_tokenizer.config.resolution
    pixels = load_item_pixels(items, resolution, checkpoint / "cache" / f"item_pixels_{resolution}px.pt")
    generations_path = Path(args.generations) if args.generations else checkpoint / "test_generations.jsonl"
    generations = [json.loads(line) for line in generations_path.read_text().splitlines() if line.strip()]
    logger.info("%d generations from %s", len(generations), generations_path)
    if args.decoding != "recipe":
        code_strings = json.loads((checkpoint / "image_codes.json").read_text())
        generations = regenerate(checkpoint, generations, code_strings, args)
        generations_path = output_dir / "test_generations.jsonl"
        generations_path.write_text("".join(json.dumps(g) + "\n" for g in generations))

    # The catalogue: one row per distinct image file (ML-100K lists a few movies twice with one poster).
    match = args.category_match or DEFAULT_CATEGORY_MATCH.get(dataset, "exact")
    labels = category_sets(items, match)
    row_of_path, catalogue_ids, catalogue_labels = {}, [], []
    for item_id in pixels:
        path = items[item_id]["image"]
        if path not in row_of_path:
            row_of_path[path] = len(catalogue_ids)
            catalogue_ids.append(item_id)
            catalogue_labels.append(set())
        catalogue_labels[row_of_path[path]] |= labels[item_id]
    row_of_item = {item_id: row_of_path[items[item_id]["image"]] for item_id in pixels}
    catalogue_pixels = torch.stack([pixels[item_id] for item_id in catalogue_ids])  # (m, 3, R, R)
    catalogue_features = extract_features(tower, catalogue_pixels)  # (m, D)

    targets = [g["target_item_id"] for g in generations]
    target_rows = torch.tensor([row_of_item[t] for t in targets])
    target_codes = image_tokenizer.encode(torch.stack([pixels[t] for t in targets]).float() / 127.5 - 1.0)
    rng = random.Random(args.seed)
    images = {
        "real_target": torch.stack([pixels[t] for t in targets]),
        "generated": decode_codes(image_tokenizer, torch.tensor([g["generated_codes"] for g in generations])),
        "most_recent_baseline": torch.stack([pixels[g["history_item_ids"][-1]] for g in generations]),
        "random_baseline": catalogue_pixels[torch.tensor([rng.randrange(len(catalogue_ids)) for _ in generations])],
        "tokenizer_reconstruction": decode_codes(image_tokenizer, target_codes),
    }
    real_features = catalogue_features[target_rows]
    real_unit = images["real_target"].float() / 255.0
    results = {}
    for method in METHODS:
        features = extract_features(tower, images[method])
        retrieval = compute_retrieval_metrics(features, catalogue_features, target_rows,
                                              catalogue_categories=catalogue_labels, ks=(1, 10))
        candidate = images[method].float() / 255.0
        results[method] = {
            "frechet_distance": compute_frechet_distance(features, real_features),
            **{key: value for key, value in retrieval.items() if key not in ("category_chance", "num_queries")},
            "psnr": compute_psnr(candidate, real_unit).clamp(max=100).mean().item(),
            "ssim": compute_ssim(candidate, real_unit).mean().item(),
        }
        if method == "generated":
            results[method]["code_accuracy"] = (torch.tensor([g["generated_codes"] for g in generations])
                                                == target_codes).double().mean().item()
            results[method]["distinct_grids"] = len({tuple(g["generated_codes"]) for g in generations})
    chance = compute_retrieval_metrics(real_features, catalogue_features, target_rows,
                                       catalogue_categories=catalogue_labels)

    sheet_users = sorted(rng.sample(range(len(generations)), min(args.num_sheet_users, len(generations))))
    sheet_rows = [{
        "user_id": generations[n]["user_id"], "query": generations[n]["query"],
        "history": [pixels[i] for i in generations[n]["history_item_ids"]],
        "target": images["real_target"][n], "reconstruction": images["tokenizer_reconstruction"][n],
        "generated": images["generated"][n], "baseline": images["most_recent_baseline"][n],
    } for n in sheet_users]
    sheet_path = save_contact_sheet(sheet_rows, output_dir / "contact_sheet.png")

    metrics = {
        "dataset": dataset, "checkpoint": str(checkpoint), "generations": str(generations_path),
        "tasks": recipe_args["recipe"]["tasks"], "query_source": recipe_args["image_generation"]["query_source"],
        "decoding": _describe_decoding(args, recipe_args),
        "num_test_users": len(generations), "num_catalogue_images": len(catalogue_ids),
        "feature_space": f"{FEATURE_SPACE} ({tower_path}, pooled, dim {catalogue_features.shape[1]})",
        "category_match": match, "category_chance": chance["category_chance"],
        "real_target_self_retrieval_item_hit@1": chance["item_hit@1"],
        "image_resolution": resolution, "methods": results, "contact_sheet": str(sheet_path),
        "seconds": round(time.time() - started, 1),
    }
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    logger.info("wrote %s and %s", output_dir / "metrics.json", sheet_path)
    return metrics


def _describe_decoding(args: argparse.Namespace, recipe_args: dict) -> str:
    if args.decoding == "recipe":
        generation = recipe_args["image_generation"]
        if not generation["eval_do_sample"]:
            return "greedy (recipe)"
        return f"sample T={generation['eval_temperature']} top_k={generation['eval_top_k']} (recipe)"
    return "greedy" if args.decoding == "greedy" else f"sample T={args.temperature} top_k={args.top_k} seed={args.seed}"


if __name__ == "__main__":
    print(json.dumps(main(parse_args(sys.argv[1:])), indent=2))
