"""Evaluate a UniMP checkpoint: exact full-catalogue ranking from one forward pass (reference §4, issue 5).

Usage: python -m recipes.evaluate CHECKPOINT_DIR [--dataset ml-100k-posters] [--split test] [--task rec]
"""

import argparse
import sys
import time
from collections import Counter

import torch
from tqdm.auto import tqdm

from processing import UniMPDataCollator
from processing.metrics_unimp import compute_ranking_metrics_from_ranks, rank_of_targets

from .common import ImageCache, RecipeArguments, load_dataset_dict, render_examples, write_json


@torch.no_grad()
def score_examples(model, processor, examples: list[dict], *, batch_size: int = 32, progress: bool = False):
    """(n, num_items) item scores for evaluation prompts ending at `<answer>`; one forward pass per batch."""
    collator = UniMPDataCollator(processor, for_generation=True)
    model.eval()
    scores = []
    batches = range(0, len(examples), batch_size)
    for start in tqdm(batches, desc="scoring", disable=not progress):
        batch = collator(examples[start : start + batch_size])
        scores.append(model.score_items(**batch).float())
    return torch.cat(scores) if scores else torch.empty(0, processor.num_items)


def ranking_metrics(scores: torch.Tensor, targets: list[int], ks, exclude: torch.Tensor | None = None) -> dict:
    """HR/NDCG/MRR@k from a score matrix; nothing masked unless `exclude` (RecBole general-model convention)."""
    ranks = rank_of_targets(scores, torch.tensor(targets), exclude=exclude)
    return compute_ranking_metrics_from_ranks(ranks, ks=tuple(ks))


def training_history_mask(dataset_dict, processor, user_ids: list[str], split: str) -> torch.Tensor:
    """(n, num_items) True on each user's history items before the `split` target (general-model masking)."""
    rows = {row["user_id"]: row for row in dataset_dict[split]}
    mask = torch.zeros(len(user_ids), processor.num_items, dtype=torch.bool)
    for n, user_id in enumerate(user_ids):
        for item_id in rows[user_id]["history_item_ids"]:
            mask[n, processor.item_index(item_id)] = True
    return mask


def popularity_scores(dataset_dict, processor) -> torch.Tensor:
    """(num_items,) interaction counts in the training split (its histories and targets): the Pop baseline."""
    counts = Counter()
    for row in dataset_dict["train"]:
        counts.update(row["history_item_ids"])
        counts[row["target_item_id"]] += 1
    scores = torch.zeros(processor.num_items)
    for item_id, count in counts.items():
        scores[processor.item_index(item_id)] = float(count)
    return scores


def evaluate_recommendation(
    model,
    processor,
    dataset_dict,
    *,
    split: str,
    max_history_items: int,
    ks=(5, 10, 20),
    batch_size: int = 32,
    max_users: int | None = None,
    images: ImageCache | None = None,
    progress: bool = False,
    examples: list[dict] | None = None,
    use_images: bool = True,
    use_text_attributes: bool = True,
) -> dict:
    """Full-ranking metrics of UniMP and the popularity baseline on `split` (leave-one-out targets).

    Reports the sequential convention (nothing masked, like RecBole's SASRec/BERT4Rec) and a `masked_`
    column with each user's history masked (the convention of RecBole's Pop/BPR/LightGCN).
    """
    if examples is None:  # pre-rendered examples (render_examples(..., tasks=["rec"], split=split)) may be passed
        examples = render_examples(
            dataset_dict, processor, tasks=["rec"], split=split, task_weights=None,
            max_history_items=max_history_items, images=images, max_users=max_users, use_images=use_images,
            use_text_attributes=use_text_attributes,
        )
    targets = [example["target_index"] for example in examples]
    users = [example["user_id"] for example in examples]
    started = time.perf_counter()
    scores = score_examples(model, processor, examples, batch_size=batch_size, progress=progress)
    users_per_second = len(examples) / max(time.perf_counter() - started, 1e-9)
    history = training_history_mask(dataset_dict, processor, users, split)
    popularity = popularity_scores(dataset_dict, processor).expand(len(examples), -1)
    results = {"num_users": len(examples), "eval_users_per_second": round(users_per_second, 1),
               "unimp": ranking_metrics(scores, targets, ks),
               "unimp_masked": ranking_metrics(scores, targets, ks, exclude=history),
               "pop": ranking_metrics(popularity, targets, ks),
               "pop_masked": ranking_metrics(popularity, targets, ks, exclude=history)}
    return results


def main(argv: list[str] | None = None) -> dict:
    """Evaluate a saved checkpoint on one split and write `metrics.json` next to it (or to --output)."""
    from modeling_unimp import UniMPForConditionalGeneration, UniMPProcessor

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("--dataset", default="ml-100k-posters")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--split", default="test", choices=["validation", "test"])
    parser.add_argument("--task", default="rec", choices=["rec"])
    parser.add_argument("--max-history-items", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-users", type=int, default=None)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    model = UniMPForConditionalGeneration.from_pretrained(args.checkpoint).eval()
    processor = UniMPProcessor.from_pretrained(args.checkpoint)
    recipe = RecipeArguments(dataset=args.dataset, data_dir=args.data_dir)
    dataset_dict = load_dataset_dict(recipe)
    image_size = processor.image_processor.size["height"]
    metrics = evaluate_recommendation(
        model, processor, dataset_dict, split=args.split, max_history_items=args.max_history_items,
        batch_size=args.batch_size, max_users=args.max_users, images=ImageCache(image_size), progress=True,
    )
    metrics["split"], metrics["dataset"], metrics["task"] = args.split, args.dataset, args.task
    write_json(metrics, args.output or f"{args.checkpoint}/metrics.json")
    print(metrics)
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
