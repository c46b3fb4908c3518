"""Evaluate a UniMP checkpoint (reference §4, issue 5).

- rec: exact full-catalogue ranking from one forward pass, next to the popularity baseline.
- exp: rating MAE/RMSE (headline: the expected rating under the rating-token distribution at the answer slot; also
  the most likely rating token) next to mean baselines fit on the training interactions, and the text metrics of
  the generated explanations where the data has them.

Usage: python -m recipes.evaluate CHECKPOINT_DIR [--split validation test] [--task rec|exp] [--out FILE]
Dataset, protocol and ablation default to what the checkpoint recorded; the history window and layout are the saved
processor's. Writes `metrics_<split>.json` (exp: `metrics_exp_<split>.json`), never the training `metrics.json`.
"""

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from modeling_unimp.catalogue_cache import UniMPImageCache, iter_prompt_scores, score_prompts
from modeling_unimp.pipeline_unimp import (
    decode_rating_answer,
    expected_rating,
    generate_rating_answers,
    rating_probabilities,
)
from processing import UniMPDataCollator
from processing.datasets_unimp import PROTOCOLS
from processing.metrics_unimp import (
    EMPTY_EXPLANATION,
    compute_ranking_metrics_from_ranks,
    compute_rating_metrics,
    compute_text_metrics,
    rank_of_targets,
)
from processing.rating_baselines import predict_rating_baselines

from .common import ImageCache, RecipeArguments, load_dataset_dict, render_examples, write_json


def score_examples(model, processor, examples: list[dict], *, batch_size: int = 32, progress: bool = False,
                   image_cache: UniMPImageCache | None = None):
    """(n, num_items) item scores for evaluation prompts ending at `<answer>`; one forward pass per batch.

    `modeling_unimp.score_prompts` (issue 13): each image encoded once per model weights (`image_cache`, kept
    across calls by the caller, e.g. every validation of a training run), batches of similar length, right padding.
    """
    return score_prompts(model, processor, examples, cache=image_cache, batch_size=batch_size,
                         progress=lambda batches: tqdm(batches, desc="scoring", disable=not progress))


def ranking_metrics(scores: torch.Tensor, targets: list[int], ks, exclude: torch.Tensor | None = None) -> dict:
    """HR/NDCG/MRR@k from a score matrix; nothing masked unless `exclude` (RecBole general-model convention)."""
    ranks = rank_of_targets(scores, torch.tensor(targets), exclude=exclude)
    return compute_ranking_metrics_from_ranks(ranks, ks=tuple(ks))


def history_item_indices(dataset_dict, processor, user_ids: list[str], split: str) -> list[list[int]]:
    """Each user's history item indices before the `split` target, in `user_ids`' order."""
    rows = {row["user_id"]: row for row in dataset_dict[split]}
    return [[processor.item_index(item_id) for item_id in rows[user_id]["history_item_ids"]] for user_id in user_ids]


def history_mask(histories: list[list[int]], num_items: int) -> torch.Tensor:
    """(len(histories), num_items) True on each row's history item indices."""
    mask = torch.zeros(len(histories), num_items, dtype=torch.bool)
    rows = [n for n, history in enumerate(histories) for _ in history]
    mask[rows, [index for history in histories for index in history]] = True
    return mask


def training_history_mask(dataset_dict, processor, user_ids: list[str], split: str) -> torch.Tensor:
    """(n, num_items) True on each user's history items before the `split` target (general-model masking)."""
    return history_mask(history_item_indices(dataset_dict, processor, user_ids, split), processor.num_items)


def streamed_target_ranks(batches: Iterable[tuple[list[int], torch.Tensor]], targets: list[int],
                          histories: list[list[int]], *, top_k: int = 0) -> dict[str, torch.Tensor]:
    """Ranks of each user's target from score blocks, keeping nothing of size num_items across blocks (issue 13).

    Args:
        batches: `(rows, scores)` blocks (`iter_prompt_scores`), `scores` of shape (len(rows), num_items) for the
            users `rows` (indices into `targets`); every user once.
        targets: each user's target item index.
        histories: each user's history item indices (`history_item_indices`), masked for the `history` ranks.
        top_k: also keep each user's top-`top_k` item indices (scores descending; 0: none).
    Returns:
        `{"none", "history"}`: (n,) 1-based pessimistic ranks (`rank_of_targets`: ties count against the target)
        with nothing masked and with the user's history set to -inf, plus `"top_k"` (n, top_k) when asked. The same
        comparisons on the same scores as `rank_of_targets` on the full (n, num_items) matrix, so equal ranks; the
        peak is a few (batch, num_items) tensors (scores, mask, masked copy).
    """
    count = len(targets)
    ranks = {"none": torch.zeros(count, dtype=torch.long), "history": torch.zeros(count, dtype=torch.long)}
    top = torch.zeros(count, top_k, dtype=torch.long) if top_k else None
    seen = torch.zeros(count, dtype=torch.bool)
    for rows, scores in batches:
        index = torch.as_tensor(rows, dtype=torch.long)
        batch_targets = torch.as_tensor([targets[n] for n in rows], dtype=torch.long)
        ranks["none"][index] = rank_of_targets(scores, batch_targets)
        exclude = history_mask([histories[n] for n in rows], scores.shape[1])
        ranks["history"][index] = rank_of_targets(scores, batch_targets, exclude=exclude)
        if top is not None:
            top[index] = scores.topk(min(top_k, scores.shape[1]), dim=-1).indices
        seen[index] = True
    if not seen.all():
        raise ValueError(f"{int((~seen).sum())} of {count} users had no score block")
    return ranks if top is None else {**ranks, "top_k": top}


def _row_blocks(scores: torch.Tensor, count: int, batch_size: int):
    """`(rows, scores)` blocks of one shared (num_items,) score vector (a baseline), batch_size users at a time."""
    for start in range(0, count, batch_size):
        rows = list(range(start, min(start + batch_size, count)))
        yield rows, scores.expand(len(rows), -1)


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
    ks=(5, 10, 20),
    batch_size: int = 32,
    max_users: int | None = None,
    images: ImageCache | None = None,
    progress: bool = False,
    examples: list[dict] | None = None,
    use_images: bool = True,
    use_text_attributes: bool = True,
    return_ranks: bool = False,
    image_cache: UniMPImageCache | None = None,
) -> dict:
    """Full-ranking metrics of UniMP and the popularity baseline on `split` (leave-one-out targets).

    Reports the sequential convention (nothing masked, like RecBole's SASRec/BERT4Rec) and a `masked_`
    column with each user's history masked (the convention of RecBole's Pop/BPR/LightGCN). With `return_ranks`,
    also `ranks`: `{"user_ids", "target_item_ids", "none", "history"}` (lists), the 1-based rank of each user's target
    (ties counted against it, `rank_of_targets`) in the split's row order, for paired tests (issue 11).
    `image_cache` keeps encoded images across calls (`score_examples`).

    Memory O(batch_size x num_items), not O(users x num_items) (issue 13): scores come one batch at a time
    (`iter_prompt_scores`) and only each user's two target ranks are kept (`streamed_target_ranks`); the metrics are
    functions of the ranks. `eval_users_per_second` times scoring and ranking together.
    """
    if examples is None:  # pre-rendered examples (render_examples(..., tasks=["rec"], split=split)) may be passed
        examples = render_examples(
            dataset_dict, processor, tasks=["rec"], split=split, task_weights=None,
            images=images, max_users=max_users, use_images=use_images,
            use_text_attributes=use_text_attributes,
        )
    targets = [example["target_index"] for example in examples]
    users = [example["user_id"] for example in examples]
    histories = history_item_indices(dataset_dict, processor, users, split)
    started = time.perf_counter()
    blocks = iter_prompt_scores(model, processor, examples, cache=image_cache, batch_size=batch_size,
                                progress=lambda batches: tqdm(batches, desc="scoring", disable=not progress))
    ranks = streamed_target_ranks(blocks, targets, histories)
    users_per_second = len(examples) / max(time.perf_counter() - started, 1e-9)
    popularity = streamed_target_ranks(_row_blocks(popularity_scores(dataset_dict, processor), len(examples),
                                                   batch_size), targets, histories)
    ks = tuple(ks)
    results = {"num_users": len(examples), "eval_users_per_second": round(users_per_second, 1),
               "unimp": compute_ranking_metrics_from_ranks(ranks["none"], ks=ks),
               "unimp_masked": compute_ranking_metrics_from_ranks(ranks["history"], ks=ks),
               "pop": compute_ranking_metrics_from_ranks(popularity["none"], ks=ks),
               "pop_masked": compute_ranking_metrics_from_ranks(popularity["history"], ks=ks)}
    if return_ranks:
        results["ranks"] = {"user_ids": users, "target_item_ids": [processor.item_ids[t] for t in targets],
                            "none": ranks["none"].tolist(), "history": ranks["history"].tolist()}
    return results


def training_ratings(dataset_dict) -> list[tuple[str, str, float]]:
    """(user_id, item_id, rating) of every rated interaction in the training split (its histories and targets)."""
    triples = []
    for row in dataset_dict["train"]:
        ratings = row.get("history_ratings") or [None] * len(row["history_item_ids"])
        steps = list(zip(row["history_item_ids"], ratings)) + [(row["target_item_id"], row.get("target_rating"))]
        triples.extend((row["user_id"], item, float(rating)) for item, rating in steps if rating is not None)
    return triples


@torch.no_grad()
def predict_ratings_and_explanations(
    model, processor, examples: list[dict], *, batch_size: int = 32, max_new_tokens: int = 0,
    progress: bool = False,
) -> dict:
    """Rating distribution at the answer slot and (with `max_new_tokens` > 0) greedy explanations.

    Decoding is the pipeline's (`pipeline_unimp.generate_rating_answers`, greedy here): the first answer token is
    constrained to `rate_1..rate_5`, the explanation is the text that follows it, up to `<|endofchunk|>`/EOS.

    Returns: {"probabilities": (n, 5) tensor, "explanations": list[str] (empty unless generated)}.
    """
    tokenizer = processor.tokenizer
    collator = UniMPDataCollator(processor, for_generation=True)
    model.eval()
    probabilities, explanations = [], []
    for start in tqdm(range(0, len(examples), batch_size), desc="rating", disable=not progress):
        batch = collator(examples[start : start + batch_size])
        if max_new_tokens <= 0:
            logits = model(**batch, logits_to_keep=1, use_cache=False).logits[:, -1]
            probabilities.append(rating_probabilities(logits, tokenizer))
            continue
        prompt_length = batch["input_ids"].shape[1]
        generated = generate_rating_answers(model, tokenizer, batch, num_beams=1, max_new_tokens=max_new_tokens,
                                            output_logits=True, return_dict_in_generate=True)
        probabilities.append(rating_probabilities(generated.logits[0], tokenizer))
        for token_ids in generated.sequences[:, prompt_length:].tolist():
            explanations.append(decode_rating_answer(tokenizer, token_ids)["explanation"])
    return {"probabilities": torch.cat(probabilities) if probabilities else torch.empty(0, 5),
            "explanations": explanations}


def evaluate_explanation(
    model,
    processor,
    dataset_dict,
    *,
    split: str,
    batch_size: int = 32,
    max_users: int | None = None,
    images: ImageCache | None = None,
    progress: bool = False,
    max_new_tokens: int = 40,
    use_images: bool = True,
    use_text_attributes: bool = True,
) -> dict:
    """Rating MAE/RMSE of UniMP and the mean baselines on `split`, plus explanation text metrics (reference §4.4).

    `unimp_rating_expected` (the headline, as the pipeline's `rating`): the expectation under the rating-token
    distribution (the squared-error optimum); `unimp_rating`: the most likely rating token (the reference's first
    generated word, constrained to a rating; the pipeline's `rating_token`). Both keys stay, as in older files.
    Explanations are generated only when the split's targets have explanation text (Amazon reviews; MovieLens
    has none) and `max_new_tokens` > 0; they are scored against the unmodified ground truth.
    """
    examples = render_examples(
        dataset_dict, processor, tasks=["exp"], split=split, task_weights=None,
        images=images, max_users=max_users, use_images=use_images, use_text_attributes=use_text_attributes,
    )
    if not examples:
        raise ValueError(f"split {split!r} has no rated targets: the exp task needs ratings")
    references = [example["target_explanation"] for example in examples]
    has_text = any(reference for reference in references)
    started = time.perf_counter()
    predicted = predict_ratings_and_explanations(
        model, processor, examples, batch_size=batch_size, max_new_tokens=max_new_tokens if has_text else 0,
        progress=progress,
    )
    seconds = time.perf_counter() - started
    true = [float(example["target_rating"]) for example in examples]
    probabilities = predicted["probabilities"]
    results = {
        "num_users": len(examples), "eval_users_per_second": round(len(examples) / max(seconds, 1e-9), 1),
        "unimp_rating_expected": compute_rating_metrics(expected_rating(probabilities), true),  # the headline
        "unimp_rating": compute_rating_metrics((probabilities.argmax(-1) + 1).float(), true),
        "rating_distribution": {"true": _histogram(true), "unimp": _histogram(probabilities.argmax(-1) + 1)},
    }
    pairs = [(example["user_id"], example["target_item_id"]) for example in examples]
    for name, baseline in predict_rating_baselines(training_ratings(dataset_dict), pairs).items():
        results[name] = compute_rating_metrics(baseline, true)
    if predicted["explanations"]:
        scored = [(text or EMPTY_EXPLANATION, reference) for text, reference in zip(predicted["explanations"],
                                                                                  references) if reference]
        results["num_explanations"] = len(scored)
        results["unimp_explanation"] = compute_text_metrics(*map(list, zip(*scored)))
        results["explanation_samples"] = [{"generated": g, "reference": r} for g, r in scored[:5]]
    if has_text:  # baseline (needs no generation): repeat the user's latest explanation of an earlier item
        rows = {row["user_id"]: row for row in dataset_dict[split]}
        repeated = [(_latest_text(rows[example["user_id"]].get("history_explanations")), reference)
                    for example, reference in zip(examples, references) if reference]
        results["last_explanation_baseline"] = compute_text_metrics(*map(list, zip(*repeated)))
    return results


def rating_headline(metrics: dict) -> str:
    """One line for an exp metrics dict: the expected rating's MAE/RMSE (the reported rating), then the most likely
    rating token's."""
    expected, token = metrics["unimp_rating_expected"], metrics["unimp_rating"]
    return (f"rating (expected under the rating-token distribution): MAE {expected['mae']:.4f} RMSE "
            f"{expected['rmse']:.4f}; most likely rating token: MAE {token['mae']:.4f} RMSE {token['rmse']:.4f}")


def _latest_text(texts) -> str:
    return next((text for text in reversed(texts or []) if text), EMPTY_EXPLANATION)


def _histogram(ratings) -> dict[str, int]:
    counts = Counter(int(r) for r in (ratings.tolist() if torch.is_tensor(ratings) else ratings))
    return {str(r): counts.get(r, 0) for r in range(1, 6)}


TRAINING_METRICS = "metrics.json"  # written by recipes.train; evaluate reads it and never writes it (issue 11)


def recorded_settings(checkpoint: str | Path) -> dict:
    """What a checkpoint was trained and evaluated with, from its training `metrics.json` (`recipes.train`).

    A `checkpoint-N` folder without one reads its run folder's. The history window and layout are not here: the
    processor saved them (`max_history_items`, `context_order`, `content_history_items`), the one source.

    Returns:
        `{"dataset", "protocol", "use_images", "use_text_attributes", "rating_scale", "source"}` (those recorded);
        `{}` when nothing was recorded.
    """
    for folder in (Path(checkpoint), Path(checkpoint).parent):
        path = folder / TRAINING_METRICS
        if path.is_file():
            recorded = json.loads(path.read_text())
            variant = recorded.get("variant") or {}
            settings = {"dataset": recorded.get("dataset"), "protocol": recorded.get("protocol"),
                        "use_images": variant.get("use_images"),
                        "use_text_attributes": variant.get("use_text_attributes"),
                        "rating_scale": recorded.get("rating_scale"), "source": str(path)}
            return {key: value for key, value in settings.items() if value is not None}
    return {}


def output_path(checkpoint: str | Path, split: str, task: str, out: str | None) -> Path:
    """`--out`, else `<checkpoint>/metrics_<split>.json` (rec) or `metrics_exp_<split>.json`; never the training
    `metrics.json`, which holds what only training knows (global_step, best_checkpoint, variant, train_seconds)."""
    path = Path(out) if out else Path(checkpoint) / (f"metrics_{split}.json" if task == "rec"
                                                      else f"metrics_{task}_{split}.json")
    if path.resolve() == (Path(checkpoint) / TRAINING_METRICS).resolve():
        raise ValueError(f"{path} is the training metrics file of {checkpoint}; pass another --out")
    return path


def main(argv: list[str] | None = None) -> dict:
    """Evaluate a saved checkpoint on each `--split` and write `metrics_<split>.json` next to it (or `--out`).

    Dataset, protocol and the image/text ablation default to what the checkpoint recorded (`recorded_settings`);
    the history window and layout are the processor's. Returns `{split: metrics}`.
    """
    from modeling_unimp import UniMPForConditionalGeneration, UniMPProcessor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--dataset", default=None, help="default: the one the checkpoint was trained on")
    parser.add_argument("--protocol", default=None, choices=list(PROTOCOLS),
                        help="default: the checkpoint's")
    parser.add_argument("--use-images", action=argparse.BooleanOptionalAction, default=None,
                        help="default: the checkpoint's (the no_images ablation trains and tests without)")
    parser.add_argument("--use-text-attributes", action=argparse.BooleanOptionalAction, default=None,
                        help="default: the checkpoint's")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--split", nargs="+", default=["test"], choices=["validation", "test"])
    parser.add_argument("--task", default="rec", choices=["rec", "exp"])
    parser.add_argument("--max-new-tokens", type=int, default=40, help="exp: explanation length (0: ratings only)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-users", type=int, default=None, help="first N users only (smoke runs)")
    parser.add_argument("--no-ranks", dest="ranks", action="store_false",
                        help="rec: leave out the per-user ranks (kept by default for paired tests)")
    parser.add_argument("--out", "--output", dest="out", default=None,
                        help="output file (one --split only); default <checkpoint>/metrics_<split>.json")
    args = parser.parse_args(argv)
    if args.out and len(args.split) > 1:
        parser.error("--out takes one --split; without --out each split gets metrics_<split>.json")
    recorded = recorded_settings(args.checkpoint)
    dataset = args.dataset or recorded.get("dataset")
    if dataset is None:
        parser.error(f"{args.checkpoint} records no dataset (no {TRAINING_METRICS} from recipes.train): "
                     "pass --dataset")
    protocol = args.protocol or recorded.get("protocol", "leave_one_out")
    ablation = {key: recorded.get(key, True) if getattr(args, key) is None else getattr(args, key)
                for key in ("use_images", "use_text_attributes")}
    paths = {split: output_path(args.checkpoint, split, args.task, args.out) for split in args.split}
    model = UniMPForConditionalGeneration.from_pretrained(args.checkpoint).eval()
    processor = UniMPProcessor.from_pretrained(args.checkpoint)
    dataset_dict = load_dataset_dict(RecipeArguments(dataset=dataset, data_dir=args.data_dir, protocol=protocol,
                                                     rating_scale=recorded.get("rating_scale")))
    images = ImageCache(processor.image_processor.size["height"])
    results = {}
    for split in args.split:
        common = {"split": split, "batch_size": args.batch_size, "max_users": args.max_users, "images": images,
                  "progress": True, **ablation}
        if args.task == "exp":
            metrics = evaluate_explanation(model, processor, dataset_dict, max_new_tokens=args.max_new_tokens,
                                           **common)
        else:
            metrics = evaluate_recommendation(model, processor, dataset_dict, return_ranks=args.ranks, **common)
        metrics.update(split=split, dataset=dataset, protocol=protocol, task=args.task, checkpoint=args.checkpoint,
                       max_history_items=processor.max_history_items, context_order=processor.context_order,
                       content_history_items=processor.content_history_items, num_items=processor.num_items,
                       settings_from=recorded.get("source"),
                       **ablation)
        write_json(metrics, paths[split])
        print({key: value for key, value in metrics.items() if key != "ranks"}, f"-> {paths[split]}")
        if args.task == "exp":
            print(rating_headline(metrics))
        results[split] = metrics
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
