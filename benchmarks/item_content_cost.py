"""Training-step cost of content-composed item tokens (issue 12): `item_representation` id / content / id+content
on one real collated batch of a recipe config, at equal batch size.

Each round times one optimizer step (the trainer's masked-head focal loss, backward, AdamW) of every variant in turn,
so a busy machine slows all variants alike; the table gives the median step time per variant and its ratio to "id".
Also reported: the one-off cost of encoding the catalogue's content (MiniLM text + the image snapshot) and the
exact full-catalogue `score_items` time per evaluation batch.

Usage: python -m benchmarks.item_content_cost [--config recipes/configs/ml100k_tiny.yaml] [--rounds 7] [--out FILE]
"""

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("id", "content", "id+content")


def cpu_name() -> str:
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")]
    return names[0] if names else platform.processor()


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "recipes/configs/ml100k_tiny.yaml"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--out", default=str(REPO / "outputs/issue12/item_content_cost.json"))
    args = parser.parse_args()

    from recipes import train
    from recipes.common import load_dataset_dict, set_torch_threads

    set_torch_threads()
    recipe, training = train.parse_args([args.config, "disable_tqdm=true"])
    batch_size = args.batch_size or training.per_device_train_batch_size
    dataset_dict = load_dataset_dict(recipe)
    runs, attach_seconds = {}, {}
    images = None
    for variant in VARIANTS:
        recipe.item_representation = variant
        started = time.perf_counter()
        run = training_step_run(recipe, training, dataset_dict, batch_size, images)
        attach_seconds[variant] = time.perf_counter() - started
        images, processor = run["images"], run["processor"]
        records = _eval_records(dataset_dict, processor, training.per_device_eval_batch_size)
        run["eval_prompts"] = [processor.render_prompt({"task": "rec", "history": record["history"]})
                               for record in records]
        run.update(step_seconds=[], score_seconds=[])
        runs[variant] = run
    for _ in range(args.rounds):  # interleaved: machine load hits every variant alike
        for variant, run in runs.items():
            run["step_seconds"].append(time_training_step(run))
            run["model"].eval()
            prompts = run["eval_prompts"]
            inputs = run["processor"](text=[p["text"] for p in prompts], images=[p["images"] for p in prompts],
                                      padding_side="left")
            started = time.perf_counter()
            run["model"].score_items(**inputs)
            run["score_seconds"].append(time.perf_counter() - started)
            run["model"].train()
    id_step = statistics.median(runs["id"]["step_seconds"])
    id_score = statistics.median(runs["id"]["score_seconds"])
    result = {
        "config": str(Path(args.config).relative_to(REPO)), "batch_size": batch_size, "rounds": args.rounds,
        "date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "threads": torch.get_num_threads(),
        "variants": {
            variant: {
                "step_seconds_median": round(statistics.median(run["step_seconds"]), 4),
                "step_ratio_to_id": round(statistics.median(run["step_seconds"]) / id_step, 3),
                "score_items_seconds_median": round(statistics.median(run["score_seconds"]), 4),
                "score_ratio_to_id": round(statistics.median(run["score_seconds"]) / id_score, 3),
                "build_seconds": round(attach_seconds[variant], 1),
                "trainable_parameters": sum(p.numel() for p in run["model"].parameters() if p.requires_grad),
            } for variant, run in runs.items()
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"| variant | train step (s, median of {args.rounds}) | x id | score_items batch (s) | x id | build (s) |")
    print("|---|---|---|---|---|---|")
    for variant, row in result["variants"].items():
        print(f"| {variant} | {row['step_seconds_median']} | {row['step_ratio_to_id']} | "
              f"{row['score_items_seconds_median']} | {row['score_ratio_to_id']} | {row['build_seconds']} |")
    return result


def training_step_run(recipe, training, dataset_dict, batch_size: int, images=None) -> dict:
    """A fresh model of `recipe` (seed 0) in training mode, its trainer (for `compute_loss`), an AdamW over the
    trainable parameters and one real collated batch of `batch_size` training windows; `images` (an ImageCache) is
    shared between runs when given."""
    from transformers import set_seed

    from modeling_unimp.trainer_unimp import UniMPTrainer, UniMPTrainingArguments, set_trainable
    from processing import UniMPDataCollator
    from recipes import train
    from recipes.common import ImageCache, render_examples

    set_seed(0)
    model, processor = train.build_model(recipe, dataset_dict)
    processor.max_history_items = training.max_history_items or processor.max_history_items
    set_trainable(model, training.trainable_stage)
    images = images or ImageCache(processor.image_processor.size["height"])
    examples = render_examples(dataset_dict, processor, tasks=recipe.tasks, split="train",
                               task_weights=training.task_weights, num_windows_per_user=1, seed=0,
                               images=images)[:batch_size]
    batch = UniMPDataCollator(processor, context_weight=training.context_weight)(examples)
    step_args = UniMPTrainingArguments(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True,
                                       focal_gamma=training.focal_gamma)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=training.learning_rate)
    return {"model": model.train(), "trainer": UniMPTrainer(model=model, args=step_args), "optimizer": optimizer,
            "batch": batch, "processor": processor, "images": images}


def time_training_step(run: dict, autocast_dtype=None) -> float:
    """Seconds of one optimizer step of a `training_step_run` (loss, backward, AdamW), optionally under
    `torch.autocast("cpu", autocast_dtype)`."""
    started = time.perf_counter()
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        loss = run["trainer"].compute_loss(run["model"], dict(run["batch"]))
    loss.backward()
    run["optimizer"].step()
    run["optimizer"].zero_grad(set_to_none=True)
    return time.perf_counter() - started


def _eval_records(dataset_dict, processor, count: int) -> list[dict]:
    from processing.task_records import build_task_records

    records = build_task_records(dataset_dict, "rec", "validation", max_history_items=processor.max_history_items)
    return records[:count]


if __name__ == "__main__":
    main()
