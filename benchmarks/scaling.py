"""How UniMP-tiny's costs grow with the catalogue: synthetic catalogues of 1k to 1M items (issue 13).

Per catalogue size N (each in its own process, so peak memory is per size): the catalogue build (tokenizer with one
`<item_k>` per item, model resized to it), exact full-ranking evaluation users/s (one forward pass per batch, then
scores over all N items, each target's rank with nothing masked and with the history masked, and a top-10), the
peak RSS, the training step time (full stage, AdamW, focal loss on the answer positions only) and the checkpoint size.

Evaluation paths (`--eval`, each measured in turn in the same process, the peak RSS reset before each through
/proc/self/clear_refs, so each path's peak is its own): `streamed` (what `recipes.evaluate` does: score blocks from
`iter_prompt_scores`, ranks and top-10 kept per batch, O(batch x N) scores) and `full` (what it did before: the
(users, N) matrix from `score_prompts`, then ranks, history mask and top-10 over all of it).

Titles are random words and images random pixels, generated here; each user has a 50-item history, the last 10
shown with title and image (the ML-100K config's layout).
Writes `outputs/scaling/scaling.json`, the PNG (`--png`) and prints the Markdown table with the fitted log-log slope.

Usage: python -m benchmarks.scaling [--sizes 1000 10000 100000 1000000] [--users 64] [--png FILE]
       [--eval streamed full] [--eval-batch 32] [--skip-train]
"""

import argparse
import gc
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import results as contract  # noqa: E402  (standard library only)

WORDS = [f"w{n}" for n in range(300)]
HISTORY, CONTENT = 50, 10  # history items per user, the latest shown with title and image


def _synthetic_users(num_items: int, users: int, rng: random.Random, image_size: int):
    import numpy as np
    from PIL import Image

    titles, images, histories = {}, {}, []
    for _ in range(users):
        history = [rng.randrange(num_items) for _ in range(HISTORY + 1)]  # the last one is the training target
        histories.append(history)
        for k in history:
            titles.setdefault(k, " ".join(rng.choice(WORDS) for _ in range(4)))
            if k not in images:
                pixels = np.random.default_rng(k).integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
                images[k] = Image.fromarray(pixels)
    return titles, images, histories


def _reset_peak_rss() -> bool:
    """Set this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_mib() -> float:
    for text in Path("/proc/self/status").read_text().splitlines():
        if text.startswith("VmRSS:"):
            return int(text.split()[1]) / 1024.0
    return float("nan")


def evaluate_path(path: str, model, processor, prompts: list[dict], targets: list[int], histories: list[list[int]],
                  batch_size: int):
    """Ranks (nothing masked, history masked) and top-10 of every user: `streamed` or `full` (see the module doc)."""
    import torch

    from modeling_unimp.catalogue_cache import iter_prompt_scores, score_prompts
    from processing.metrics_unimp import rank_of_targets
    from recipes.evaluate import history_mask, streamed_target_ranks

    if path == "streamed":
        blocks = iter_prompt_scores(model, processor, prompts, batch_size=batch_size)
        return streamed_target_ranks(blocks, targets, histories, top_k=10)
    scores = score_prompts(model, processor, prompts, batch_size=batch_size)
    exclude = history_mask(histories, processor.num_items)
    return {"none": rank_of_targets(scores, torch.tensor(targets)),
            "history": rank_of_targets(scores, torch.tensor(targets), exclude=exclude),
            "top_k": scores.topk(10, dim=-1).indices}


def measure(num_items: int, users: int, train_batch: int, train_steps: int, seed: int = 0, *,
            eval_paths=("streamed",), eval_batch: int = 32, skip_train: bool = False) -> dict:
    """One catalogue size, in this process."""
    import torch
    from transformers import set_seed

    from modeling_unimp import (
        UniMPConfig,
        UniMPForConditionalGeneration,
        UniMPProcessor,
        score_prompts,
        train_catalogue_tokenizer,
    )
    from modeling_unimp.prompt_templates import render_record
    from modeling_unimp.trainer_unimp import UniMPTrainer, UniMPTrainingArguments
    from processing import UniMPDataCollator
    from recipes.common import set_torch_threads

    set_torch_threads()  # every core, unless OMP_NUM_THREADS says otherwise
    set_seed(seed)
    rng = random.Random(seed)
    out = {"num_items": num_items, "users": users, "torch_threads": torch.get_num_threads()}
    started = time.perf_counter()
    config = UniMPConfig.tiny()
    image_size = config.vision_config.image_size
    titles, images, histories = _synthetic_users(num_items, users, rng, image_size)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(2000)] + ["What is the next item"] * 20
    tokenizer = train_catalogue_tokenizer(corpus, vocab_size=600)
    processor = UniMPProcessor.from_catalogue(tokenizer, [f"i{k}" for k in range(num_items)], image_size=image_size,
                                              context_order="next_item", content_history_items=CONTENT,
                                              max_history_items=HISTORY)
    model = UniMPForConditionalGeneration(config)
    processor.prepare_model(model)
    out["build_s"] = time.perf_counter() - started
    out["parameters_m"] = sum(p.numel() for p in model.parameters()) / 1e6

    def item(k):
        return {"item_id": f"i{k}", "attributes": [("Title", titles[k])], "image": images[k]}

    prompts = [processor.render_prompt({"task": "rec", "history": [item(k) for k in history[:-1]]})
               for history in histories]
    targets = [history[-1] for history in histories]
    # the history mask must not hide the target (random histories may repeat it): mask the other items only
    masked = [[k for k in history[:-1] if k != history[-1]] for history in histories]
    model.eval()
    score_prompts(model, processor, prompts[:2])  # warm-up (allocations)
    peak_so_far = contract.peak_rss_mib()  # the build's peak
    out["eval_batch"], out["eval"], ranks = eval_batch, {}, {}
    for path in eval_paths:
        gc.collect()
        reset = _reset_peak_rss()
        before = _rss_mib()
        started = time.perf_counter()
        result = evaluate_path(path, model, processor, prompts, targets, masked, eval_batch)
        seconds = time.perf_counter() - started
        out["eval"][path] = {"users_per_s": users / seconds, "seconds_per_user": seconds / users,
                             "rss_mib_before": before, "peak_rss_mib": contract.peak_rss_mib(),
                             "peak_is_this_path_only": reset}
        assert result["top_k"].shape == (users, 10)
        ranks[path] = {key: value.tolist() for key, value in result.items()}
        peak_so_far = max(peak_so_far, out["eval"][path]["peak_rss_mib"])
        del result
    if len(ranks) > 1:  # the paths rank the same scores the same way
        out["eval_paths_agree"] = all(value == next(iter(ranks.values())) for value in ranks.values())
    main_path = "streamed" if "streamed" in eval_paths else eval_paths[0]
    out["eval_users_per_s"] = out["eval"][main_path]["users_per_s"]
    out["eval_seconds_per_user"] = out["eval"][main_path]["seconds_per_user"]
    out["peak_rss_mib_eval"] = peak_so_far  # the process's peak up to here (build and every eval path)
    if skip_train:
        return out

    records = [{"task": "rec", "user_id": str(n), "history": [item(k) for k in h[:-1]], "target": item(h[-1])}
               for n, h in enumerate(histories)]
    item_index = {f"i{k}": k for k in range(num_items)}
    train_examples = [render_record(record, "train", item_index=item_index, history_answer_marker=True,
                                    context_order="next_item", content_history_items=CONTENT) for record in records]
    times = []

    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory(prefix="scaling-") as folder:
        args = UniMPTrainingArguments(output_dir=folder, per_device_train_batch_size=train_batch, max_steps=train_steps,
                                      learning_rate=1e-3, save_strategy="no", eval_strategy="no", report_to=[],
                                      disable_tqdm=True, use_cpu=True, logging_steps=1000, seed=seed)
        model.train()
        trainer = UniMPTrainer(model=model, args=args, train_dataset=train_examples,
                               data_collator=UniMPDataCollator(processor), callbacks=[Clock()])
        trainer.train()
        out["train_step_s"] = (times[-1] - times[1]) / (len(times) - 2)  # steps after the first (optimizer state)
        out["train_batch"] = train_batch
        out["peak_rss_mib"] = max(peak_so_far, contract.peak_rss_mib())
        model.save_pretrained(folder + "/checkpoint")
        processor.save_pretrained(folder + "/checkpoint")
        out["checkpoint_mib"] = sum(path.stat().st_size for path in Path(folder, "checkpoint").iterdir()) / 2**20
    return out


def fitted_slope(rows: list[dict], key: str) -> float:
    """Least-squares slope of log(key) against log(num_items): 1 = linear growth, 0 = flat."""
    xs = [math.log(row["num_items"]) for row in rows]
    ys = [math.log(row[key]) for row in rows]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [row["num_items"] for row in rows]
    panels = [("eval_seconds_per_user", "eval s / user"), ("peak_rss_mib", "peak RSS (MiB)"),
              ("train_step_s", f"train step s (batch {rows[0]['train_batch']})"), ("checkpoint_mib", "checkpoint MiB")]
    figure, axes = plt.subplots(1, len(panels), figsize=(16, 3.6))
    for axis, (key, label) in zip(axes, panels):
        axis.loglog(sizes, [row[key] for row in rows], "o-")
        axis.set_xlabel("catalogue items")
        axis.set_title(f"{label}\nlog-log slope {fitted_slope(rows, key):.2f}", fontsize=10)
        axis.grid(True, which="both", alpha=0.3)
    figure.suptitle("UniMP-tiny cost vs catalogue size (synthetic catalogues, benchmarks/scaling.py)", fontsize=11)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def table(rows: list[dict]) -> str:
    if any("train_step_s" not in row for row in rows):  # --skip-train: evaluation only
        return eval_table(rows)
    lines = ["| items | params (M) | build s | eval users/s | eval s/user | peak RSS MiB | train step s "
             "| checkpoint MiB |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['num_items']:,} | {row['parameters_m']:.1f} | {row['build_s']:.0f} | "
                     f"{row['eval_users_per_s']:.1f} | {row['eval_seconds_per_user']:.4f} | "
                     f"{row['peak_rss_mib']:.0f} | "
                     f"{row['train_step_s']:.2f} | {row['checkpoint_mib']:.1f} |")
    slopes = ", ".join(f"{key} {fitted_slope(rows, key):.2f}" for key in
                       ("eval_seconds_per_user", "peak_rss_mib", "train_step_s", "checkpoint_mib"))
    return "\n".join(lines) + f"\n\nFitted log-log slopes vs items: {slopes}"


def eval_table(rows: list[dict]) -> str:
    lines = ["| items | eval path | eval batch | eval users/s | RSS before eval MiB | peak RSS during eval MiB |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        for path, measured in row["eval"].items():
            lines.append(f"| {row['num_items']:,} | {path} | {row['eval_batch']} | {measured['users_per_s']:.1f} | "
                         f"{measured['rss_mib_before']:,.0f} | {measured['peak_rss_mib']:,.0f} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000, 1000000])
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=4)
    parser.add_argument("--out", default=str(REPO / "outputs/scaling/scaling.json"))
    parser.add_argument("--png", default=str(REPO / "benchmarks/results/scaling.png"))
    parser.add_argument("--eval", nargs="+", default=["streamed"], choices=["streamed", "full"],
                        help="evaluation paths, measured in this order in each size's process")
    parser.add_argument("--eval-batch", type=int, default=32, help="users per evaluation forward pass")
    parser.add_argument("--skip-train", action="store_true",
                        help="evaluation only: no training step, no checkpoint (no PNG; the eval table)")
    parser.add_argument("--_one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._one:
        print(json.dumps(measure(args._one, args.users, args.train_batch, args.train_steps,
                                 eval_paths=tuple(args.eval), eval_batch=args.eval_batch,
                                 skip_train=args.skip_train)))
        return []
    rows = []
    for size in args.sizes:
        command = [sys.executable, "-m", "benchmarks.scaling", "--_one", str(size), "--users", str(args.users),
                   "--train-batch", str(args.train_batch), "--train-steps", str(args.train_steps),
                   "--eval", *args.eval, "--eval-batch", str(args.eval_batch)] + (
                       ["--skip-train"] if args.skip_train else [])
        print(f"[scaling] {size:,} items ...", flush=True)
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"[scaling] {size:,} items failed ({done.returncode}): {done.stderr[-2000:]}", flush=True)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"[scaling] {json.dumps(rows[-1])}", flush=True)
    report = {"date": contract.utc_now(), "commit": contract.git_commit(), "cpu": contract.cpu_info(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if len(rows) >= 2 and not args.skip_train:
        plot(rows, Path(args.png))
    if rows and (len(rows) >= 2 or args.skip_train):
        print(table(rows))
    return rows


if __name__ == "__main__":
    main()
