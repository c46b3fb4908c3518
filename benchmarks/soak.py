"""Soak benchmark (issue 16): many `pipeline("unimp-recommend")` calls on a demo-like checkpoint; RSS growth and
latency percentiles early vs late, sequentially and from 8 threads sharing one pipeline.

Usage: python -m benchmarks.soak [--checkpoint DIR] [--sequential 2000] [--threads 8] [--calls-per-thread 250]
       (make bench-soak). Writes outputs/bench/soak.json and prints a summary.

The checkpoint is `--checkpoint`, else `outputs/ml100k_tiny` (what `make demo` trains) when it exists, else a
demo-shaped one trained here for a few steps (ML-100K catalogue, UniMP-tiny, next_item layout, 50-item window with
the last 10 shown with poster and text): the output says which. Histories are the validation users' real ones.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

DEMO_CHECKPOINT = Path("outputs/ml100k_tiny")


def rss_mib() -> float:
    """Resident set size of this process now (Linux /proc), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def train_tiny_checkpoint(folder: Path, steps: int) -> None:
    """A demo-shaped checkpoint in seconds: the demo's catalogue, model preset and history layout, `steps` steps."""
    from modeling_unimp import UniMPConfig, UniMPForConditionalGeneration
    from modeling_unimp.trainer_unimp import UniMPTrainer, UniMPTrainingArguments
    from processing import UniMPDataCollator
    from recipes.common import RecipeArguments, build_processor, load_dataset_dict, render_examples

    recipe = RecipeArguments(dataset="ml-100k-posters", context_order="next_item", content_history_items=10,
                             max_train_users=64)
    dataset_dict = load_dataset_dict(recipe)
    model = UniMPForConditionalGeneration(UniMPConfig.tiny())
    processor = build_processor(dataset_dict, recipe, model.config.vision_config.image_size)
    processor.max_history_items = 50
    processor.prepare_model(model)
    examples = render_examples(dataset_dict, processor, tasks=["rec"], split="train", task_weights={"rec": 2.0},
                               max_users=64)
    args = UniMPTrainingArguments(output_dir=str(folder / "trainer"), per_device_train_batch_size=4, max_steps=steps,
                                  learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no",
                                  disable_tqdm=True, logging_steps=steps)
    UniMPTrainer(model=model, args=args, train_dataset=examples, data_collator=UniMPDataCollator(processor)).train()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def timed_calls(recommend, histories: list[list[str]], latencies: list[float], top_k: int) -> None:
    for history in histories:
        start = time.perf_counter()
        recommend(history, top_k=top_k)
        latencies.append(time.perf_counter() - start)


def summarise(latencies: list[float], window: int) -> dict:
    early, late = latencies[:window], latencies[-window:]
    return {"calls": len(latencies), "window": window,
            "p50_ms_first": round(1e3 * statistics.median(early), 1),
            "p50_ms_last": round(1e3 * statistics.median(late), 1),
            "p95_ms_first": round(1e3 * percentile(early, 95), 1), "p95_ms_last": round(1e3 * percentile(late, 95), 1),
            "p95_ms_all": round(1e3 * percentile(latencies, 95), 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="A recipes.train folder (default: outputs/ml100k_tiny).")
    parser.add_argument("--sequential", type=int, default=2000, help="Calls one after another.")
    parser.add_argument("--threads", type=int, default=8, help="Threads sharing one pipeline.")
    parser.add_argument("--calls-per-thread", type=int, default=250)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--train-steps", type=int, default=20, help="Steps of the checkpoint trained here.")
    parser.add_argument("--out", default="outputs/bench/soak.json")
    args = parser.parse_args(argv)

    import torch
    from transformers import pipeline

    import modeling_unimp  # noqa: F401  registers "unimp-recommend"
    from processing.datasets_unimp import load_unimp_dataset

    checkpoint = Path(args.checkpoint) if args.checkpoint else DEMO_CHECKPOINT
    if args.checkpoint or (checkpoint / "model.safetensors").is_file():
        source = f"existing checkpoint {checkpoint}"
    else:
        checkpoint = Path("outputs/bench/soak_checkpoint")
        start = time.perf_counter()
        train_tiny_checkpoint(checkpoint, args.train_steps)
        source = (f"no {DEMO_CHECKPOINT}: a demo-shaped checkpoint trained here for {args.train_steps} steps in "
                  f"{time.perf_counter() - start:.0f} s ({checkpoint})")
    print(f"checkpoint: {source}", flush=True)
    recommend = pipeline("unimp-recommend", model=str(checkpoint), device="cpu")
    validation = load_unimp_dataset("ml-100k-posters", protocol="leave_one_out")["validation"]
    pool = [row for row in validation["history_item_ids"] if row]
    histories = [pool[n % len(pool)] for n in range(max(args.sequential, args.threads * args.calls_per_thread))]

    timed_calls(recommend, histories[:20], [], args.top_k)  # warm-up: lazy imports, allocator pools
    rss = {"after_warmup": round(rss_mib(), 1)}
    sequential: list[float] = []
    timed_calls(recommend, histories[: args.sequential // 2], sequential, args.top_k)
    rss["sequential_half"] = round(rss_mib(), 1)
    timed_calls(recommend, histories[args.sequential // 2 : args.sequential], sequential, args.top_k)
    rss["sequential_end"] = round(rss_mib(), 1)

    threaded: list[float] = []  # list.append is atomic: completion order across threads
    expected = {n: recommend(histories[n], top_k=args.top_k) for n in range(args.threads)}
    mismatches = []

    def worker(index: int) -> None:
        chunk = histories[index * args.calls_per_thread : (index + 1) * args.calls_per_thread]
        timed_calls(recommend, chunk, threaded, args.top_k)
        if [r["item_id"] for r in recommend(histories[index], top_k=args.top_k)] != [
                r["item_id"] for r in expected[index]]:
            mismatches.append(index)

    start = time.perf_counter()
    workers = [threading.Thread(target=worker, args=(n,)) for n in range(args.threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    threaded_seconds = time.perf_counter() - start
    rss["threads_end"] = round(rss_mib(), 1)

    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), "unknown")
    result = {
        "date": time.strftime("%Y-%m-%d"), "cpu": cpu, "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(), "checkpoint": source,
        "history_lengths": {"median": statistics.median(len(h) for h in histories),
                            "window": recommend.processor.max_history_items},
        "rss_mib": rss, "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_growth_sequential_mib": round(rss["sequential_end"] - rss["after_warmup"], 1),
        "rss_growth_threads_mib": round(rss["threads_end"] - rss["sequential_end"], 1),
        "sequential": summarise(sequential, 200),
        "threads": {**summarise(threaded, 200), "threads": args.threads, "calls_per_thread": args.calls_per_thread,
                    "wall_seconds": round(threaded_seconds, 1),
                    "calls_per_second": round(len(threaded) / threaded_seconds, 1),
                    "threads_whose_repeat_differed": mismatches},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
