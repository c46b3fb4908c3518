"""Where a training step's time goes (issue 13): one optimizer step (the trainer's loss, backward, AdamW) of a recipe
config on one real collated batch, in float32 and under bfloat16 autocast (rounds interleaved, so machine load hits
both alike; medians), the batch's token counts, and torch.profiler's self-CPU time per operator group of float32
steps.

Usage: python -m benchmarks.train_step [--config recipes/configs/ml100k_tiny.yaml] [--rounds 7] [--out FILE]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.item_content_cost import REPO, cpu_name, time_training_step, training_step_run

GROUPS = {  # operator-name prefixes of each group (self CPU time; the rest is "other")
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm"),
    "attention (sdpa)": ("aten::_scaled_dot_product", "aten::scaled_dot_product"),
    "log-softmax (loss)": ("aten::_log_softmax",),
    "elementwise": ("aten::mul", "aten::add", "aten::copy_", "aten::fill_", "aten::div", "aten::pow", "aten::neg",
                    "aten::silu", "aten::gelu", "aten::where", "aten::sum", "aten::sqrt", "aten::lerp",
                    "aten::rsqrt", "aten::mean", "aten::cat", "aten::native_layer_norm", "aten::tanh"),
}


def operator_group(name: str) -> str:
    for group, prefixes in GROUPS.items():
        if name.startswith(prefixes):
            return group
    return "other"


def batch_counts(run: dict) -> dict:
    batch, processor = run["batch"], run["processor"]
    labels = batch["labels"]
    supervised = labels != -100
    start = processor.item_token_start_id
    items = supervised & (labels >= start) & (labels < start + processor.num_items)
    return {"rows": int(labels.shape[0]), "padded_tokens": int(labels.numel()),
            "attended_tokens": int(batch["attention_mask"].sum()), "supervised_positions": int(supervised.sum()),
            "item_labels": int(items.sum()), "images": int(batch["pixel_values"].shape[1]) * int(labels.shape[0])
            if "pixel_values" in batch else 0, "vocabulary": int(run["model"].lm_head.weight.shape[0])}


def profile_groups(run: dict, steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            time_training_step(run)
    totals: dict[str, float] = {}
    top = []
    for event in profiler.key_averages():
        group = operator_group(event.key)
        totals[group] = totals.get(group, 0.0) + event.self_cpu_time_total
        top.append((event.self_cpu_time_total, event.key))
    whole = sum(totals.values())
    return {"share": {group: round(value / whole, 3) for group, value in sorted(totals.items(), key=lambda kv: -kv[1])},
            "top_operators": [{"name": name, "share": round(value / whole, 3)}
                              for value, name in sorted(top, reverse=True)[:10]]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "recipes/configs/ml100k_tiny.yaml"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--out", default=str(REPO / "outputs/speed/train_step.json"))
    args = parser.parse_args(argv)

    from recipes import train
    from recipes.common import load_dataset_dict, set_torch_threads

    set_torch_threads()
    recipe, training = train.parse_args([args.config, "disable_tqdm=true"])
    batch_size = args.batch_size or training.per_device_train_batch_size
    run = training_step_run(recipe, training, load_dataset_dict(recipe), batch_size)
    precisions = {"float32": None, "bfloat16 autocast": torch.bfloat16}
    for dtype in precisions.values():  # warm-up: first-call allocations and kernel selection
        time_training_step(run, dtype)
    seconds = {name: [] for name in precisions}
    for _ in range(args.rounds):
        for name, dtype in precisions.items():
            seconds[name].append(time_training_step(run, dtype))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    result = {
        "config": str(Path(args.config).resolve().relative_to(REPO)), "batch_size": batch_size,
        "rounds": args.rounds, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_name(),
        "threads": torch.get_num_threads(), "batch": batch_counts(run),
        "step_seconds_median": {name: round(value, 4) for name, value in medians.items()},
        "bf16_speedup": round(medians["float32"] / medians["bfloat16 autocast"], 3),
        "examples_per_s_float32": round(batch_size / medians["float32"], 2),
        "profile_float32": profile_groups(run, args.profile_steps),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
