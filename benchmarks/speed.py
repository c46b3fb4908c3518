"""Speed of UniMP-tiny on ML-100K next to RecBole's SASRec, in one run on one machine (issue 13).

Measures: full-ranking evaluation users/s on the test split (UniMP: prompt rendering, images, forward and top-10,
everything a user waits for; SASRec: RecBole's full-sort test pass on the project's split, in `.venv-recbole`, by
`benchmarks/sasrec_eval_speed.py`: evaluation costs the same trained or not, so it is not trained); UniMP's fast
path against the collator path it replaced (same top-10); exact one-pass ranking against 10-beam decoding (users/s
and top-10 agreement); training examples/s of the ML-100K default config with and without the image cache;
`pipeline("unimp-recommend")` latency for one user with a 50-item history; peak RSS. The last line is
`eval throughput UniMP/SASRec = R`: a ratio, so it survives a busy machine better than either number.

Usage: python -m benchmarks.speed [--train-steps 12] [--compare-users 128] [--beam-users 48] [--out FILE]
       python -m benchmarks.speed --only exact-vs-beam [--checkpoint DIR] [--beam-users 48]
         (that part alone: a saved checkpoint, else the default config trained --train-steps steps with the cache)
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import results as contract  # noqa: E402  (standard library only)

CONFIG = REPO / "recipes/configs/ml100k_tiny.yaml"
RECBOLE_PYTHON = REPO / ".venv-recbole/bin/python"
PEER_DATA = REPO / "outputs/recbole_atomic"


def log(message: str) -> None:
    print(f"[speed] {message}", flush=True)


class StepClock:
    """Wall time of each optimizer step (a TrainerCallback built lazily: transformers imports late)."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Clock(TrainerCallback):
            def __init__(self):
                self.times = []

            def on_step_end(self, args, state, control, **kwargs):
                self.times.append(time.perf_counter())

        return _Clock()


def train_steps(recipe, training, dataset_dict, *, steps: int, use_cache: bool, seed: int = 0):
    """Train the default config from scratch for `steps` steps; returns (model, processor, examples/s, images)."""
    from transformers import set_seed

    from modeling_unimp import UniMPImageCache
    from modeling_unimp.trainer_unimp import UniMPTrainer, set_trainable
    from processing import UniMPDataCollator
    from recipes.common import ImageCache, render_examples
    from recipes.train import build_model

    set_seed(seed)
    model, processor = build_model(recipe, dataset_dict)
    processor.max_history_items = training.max_history_items
    set_trainable(model, training.trainable_stage)
    images = ImageCache(processor.image_processor.size["height"])
    examples = render_examples(dataset_dict, processor, tasks=recipe.tasks, split="train",
                               task_weights=training.task_weights, num_windows_per_user=recipe.num_windows_per_user,
                               seed=training.seed, images=images)
    training.max_steps = steps
    clock = StepClock()
    cache = UniMPImageCache(processor) if use_cache else None
    trainer = UniMPTrainer(model=model, args=training, train_dataset=examples,
                           data_collator=UniMPDataCollator(processor, context_weight=training.context_weight,
                                                           image_cache=cache),
                           callbacks=[clock])
    trainer.train()
    warm = clock.times[2:]  # the first steps pay for first-touch work (allocations, the cache filling)
    per_step = (warm[-1] - warm[0]) / (len(warm) - 1)
    return model.eval(), processor, training.per_device_train_batch_size / per_step, images


def time_exact_eval(model, processor, dataset_dict, images, *, batch_size: int, fast: bool, max_users=None):
    """Users/s of render + score + top-10 on the test split; returns (users/s, top-10 (n, 10), n)."""
    from modeling_unimp import UniMPImageCache
    from processing import UniMPDataCollator
    from recipes.common import render_examples
    from recipes.evaluate import score_examples

    started = time.perf_counter()
    examples = render_examples(dataset_dict, processor, tasks=["rec"], split="test", task_weights=None,
                               images=images, max_users=max_users)
    if fast:  # the path recipes.evaluate uses: latents of each image computed once for these weights
        scores = score_examples(model, processor, examples, batch_size=batch_size,
                                image_cache=UniMPImageCache(processor))
    else:  # the path it replaced: the collator per batch (every poster preprocessed and encoded per prompt)
        collator, parts = UniMPDataCollator(processor, for_generation=True), []
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                parts.append(model.score_items(**collator(examples[start : start + batch_size])).float())
        scores = torch.cat(parts)
    top = scores.topk(10, dim=-1).indices
    return len(examples) / (time.perf_counter() - started), top, len(examples)


def exact_vs_beam(model, processor, dataset_dict, users: int):
    """Pipeline users/s with method="exact" and method="beam" (10 beams), and their top-10 agreement.

    Both timed passes find the pipeline's image cache filled for these users (an untimed exact pass first: each
    poster decoded and preprocessed, its latents encoded): before, the timed exact pass filled it and the beam pass
    then read it, so the ratio charged that one-time work to the exact path. The first, cold exact pass is reported
    too (`exact_cold_users_per_s`).
    """
    from transformers import pipeline

    recommend = pipeline("unimp-recommend", model=model, processor=processor, device="cpu")
    histories = [row["history_item_ids"] for row in dataset_dict["test"].select(range(users))]
    started = time.perf_counter()
    recommend(histories, method="exact", top_k=10, batch_size=16)  # fills the image cache (untimed in the ratio)
    cold = users / (time.perf_counter() - started)
    results = {}
    for method in ("exact", "beam"):
        recommend(histories[:2], method=method, top_k=10, batch_size=16)  # warm-up
        started = time.perf_counter()
        ranked = recommend(histories, method=method, top_k=10, batch_size=16, num_beams=10)
        results[method] = (users / (time.perf_counter() - started), [[r["item_id"] for r in row] for row in ranked])
    same = sum(a == b for a, b in zip(results["exact"][1], results["beam"][1]))
    return {"exact_users_per_s": results["exact"][0], "beam_users_per_s": results["beam"][0],
            "exact_cold_users_per_s": cold, "top10_identical_users": same, "users": users,
            "load_average": os.getloadavg()}, recommend


def beam_line(beam: dict) -> str:
    return (f"exact vs 10-beam ({beam['users']} users, warm image cache): {beam['exact_users_per_s']:.1f} vs "
            f"{beam['beam_users_per_s']:.1f} users/s = {beam['exact_users_per_s'] / beam['beam_users_per_s']:.1f}x, "
            f"identical top-10 for {beam['top10_identical_users']}/{beam['users']} (cold first exact pass "
            f"{beam['exact_cold_users_per_s']:.1f} users/s; load average {beam['load_average'][0]:.1f})")


def only_exact_vs_beam(args, recipe, training, dataset_dict, report: dict) -> dict:
    """`--only exact-vs-beam`: that measurement alone, on `--checkpoint` or on the default config trained briefly."""
    if args.checkpoint:
        from modeling_unimp import UniMPForConditionalGeneration, UniMPProcessor

        log(f"exact vs 10-beam (pipeline), checkpoint {args.checkpoint} ...")
        model = UniMPForConditionalGeneration.from_pretrained(args.checkpoint).eval()
        processor = UniMPProcessor.from_pretrained(args.checkpoint)
        report["model"] = str(args.checkpoint)
    else:
        log(f"training {args.train_steps} steps of {CONFIG.name} with the image cache ...")
        model, processor, _, _ = train_steps(recipe, training, dataset_dict, steps=args.train_steps, use_cache=True)
        report["model"] = f"{CONFIG.name}, {args.train_steps} steps"
        log("exact vs 10-beam (pipeline) ...")
    report["exact_vs_beam"], _ = exact_vs_beam(model, processor, dataset_dict, args.beam_users)
    out = Path(args.out or REPO / "outputs/speed/speed_exact_vs_beam.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"machine: {report['cpu']['model']}, {report['cpu']['cores']} cores, {report['torch_threads']} torch "
          f"threads; commit {report['commit'][:7]}; {report['date']}; model {report['model']}")
    print(beam_line(report["exact_vs_beam"]))
    return report


def pipeline_latency(recommend, dataset_dict, repeats: int) -> dict:
    """p50/p95 seconds of one call for one user whose history has >= 50 items (the window is the processor's)."""
    row = next(row for row in dataset_dict["test"] if len(row["history_item_ids"]) >= 50)
    history = row["history_item_ids"][-50:]
    recommend(history, top_k=10)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        recommend(history, top_k=10)
        times.append(time.perf_counter() - started)
    times.sort()
    return {"p50_s": statistics.median(times), "p95_s": times[min(len(times) - 1, round(0.95 * (len(times) - 1)))],
            "repeats": repeats, "history_items": len(history)}


def sasrec_users_per_s(threads: int) -> dict:
    """SASRec's full-sort test throughput, measured now by `sasrec_eval_speed.py` in `.venv-recbole` (same split)."""
    if not RECBOLE_PYTHON.exists() or not (PEER_DATA / "ml100k" / "ml100k.split.tsv").exists():
        return committed_sasrec("no .venv-recbole or no RecBole export (make bench-peers sets both up)")
    command = [str(RECBOLE_PYTHON), str(REPO / "benchmarks/sasrec_eval_speed.py"), "--data-dir", str(PEER_DATA),
               "--threads", str(threads)]
    done = subprocess.run(command, cwd=REPO, env=dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1"),
                          capture_output=True, text=True)
    if done.returncode != 0:
        return committed_sasrec(f"sasrec_eval_speed.py failed ({done.returncode}): {done.stderr[-300:]}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    return {"eval_users_per_s": measured["eval_users_per_s"],
            "source": f"measured in this run, {threads} threads (benchmarks/sasrec_eval_speed.py)"}


def committed_sasrec(reason: str) -> dict:
    lines = [line for line in contract.read_results(contract.results_path("ml100k"))
             if line["model"] == "SASRec" and line["masking"] == "none"]
    if not lines:
        raise SystemExit(f"SASRec could not run ({reason}) and benchmarks/results/ml100k.jsonl has no SASRec line")
    return {"eval_users_per_s": statistics.median(line["eval_users_per_s"] for line in lines),
            "source": f"committed result lines (median of {len(lines)}); not run here: {reason}"}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-steps", type=int, default=12, help="optimizer steps per training measurement")
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--compare-users", type=int, default=128, help="test users for the old-vs-new comparison")
    parser.add_argument("--beam-users", type=int, default=48, help="test users for exact vs 10-beam")
    parser.add_argument("--latency-repeats", type=int, default=20)
    parser.add_argument("--no-sasrec", action="store_true", help="read SASRec from the committed result lines")
    parser.add_argument("--only", choices=["exact-vs-beam"], help="run only this part")
    parser.add_argument("--checkpoint", help="with --only: a saved UniMP folder instead of training one")
    parser.add_argument("--threads", type=int, help="torch threads (default: every core)")
    parser.add_argument("--out", help="the JSON report (default outputs/speed/speed.json, "
                                      "speed_exact_vs_beam.json with --only)")
    args = parser.parse_args(argv)
    if args.checkpoint and not args.only:
        parser.error("--checkpoint goes with --only (the full run measures training too)")
    threads = args.threads or max(1, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    from recipes.common import load_dataset_dict
    from recipes.train import parse_args

    recipe, training = parse_args([str(CONFIG), f"output_dir={tempfile.mkdtemp(prefix='speed-')}",
                                   "eval_strategy=no", "save_strategy=no", "disable_tqdm=true", "logging_steps=1000"])
    dataset_dict = load_dataset_dict(recipe)
    report = {"date": contract.utc_now(), "commit": contract.git_commit(), "cpu": contract.cpu_info(),
              "torch_threads": threads, "python": platform.python_version(), "torch": torch.__version__}
    if args.only == "exact-vs-beam":
        return only_exact_vs_beam(args, recipe, training, dataset_dict, report)

    log(f"training {args.train_steps} steps of {CONFIG.name}, collator without the image cache ...")
    _, _, slow_rate, _ = train_steps(recipe, training, dataset_dict, steps=args.train_steps, use_cache=False)
    log(f"training {args.train_steps} steps with the image cache ...")
    model, processor, fast_rate, images = train_steps(recipe, training, dataset_dict, steps=args.train_steps,
                                                      use_cache=True)
    report["train_examples_per_s"] = {"image_cache": fast_rate, "no_image_cache": slow_rate}

    log("exact evaluation, the collator path it replaced, on the first test users ...")
    slow, slow_top, _ = time_exact_eval(model, processor, dataset_dict, images, batch_size=args.eval_batch_size,
                                        fast=False, max_users=args.compare_users)
    fast_small, fast_top, _ = time_exact_eval(model, processor, dataset_dict, images,
                                              batch_size=args.eval_batch_size, fast=True, max_users=args.compare_users)
    report["old_vs_new"] = {"users": args.compare_users, "old_users_per_s": slow, "new_users_per_s": fast_small,
                            "top10_identical_users": int((slow_top == fast_top).all(dim=-1).sum())}
    log("exact evaluation, the whole test split ...")
    unimp, _, num_users = time_exact_eval(model, processor, dataset_dict, images, batch_size=args.eval_batch_size,
                                          fast=True)
    report["unimp_eval_users_per_s"], report["test_users"] = unimp, num_users
    log("exact vs 10-beam (pipeline) ...")
    report["exact_vs_beam"], recommend = exact_vs_beam(model, processor, dataset_dict, args.beam_users)
    report["pipeline_latency"] = pipeline_latency(recommend, dataset_dict, args.latency_repeats)
    report["peak_rss_mib"] = contract.peak_rss_mib()
    log("SASRec (RecBole, its own venv) ...")
    report["sasrec"] = (committed_sasrec("--no-sasrec") if args.no_sasrec else sasrec_users_per_s(threads))
    report["ratio"] = unimp / report["sasrec"]["eval_users_per_s"]
    out = Path(args.out or REPO / "outputs/speed/speed.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    beam = report["exact_vs_beam"]
    old = report["old_vs_new"]
    latency = report["pipeline_latency"]
    print(f"machine: {report['cpu']['model']}, {report['cpu']['cores']} cores, {threads} torch threads; "
          f"commit {report['commit'][:7]}; {report['date']}")
    print(f"UniMP-tiny exact eval, ML-100K test ({num_users} users): {unimp:.1f} users/s")
    print(f"SASRec full-sort eval: {report['sasrec']['eval_users_per_s']:.1f} users/s ({report['sasrec']['source']})")
    print(f"old collator path vs new ({old['users']} users): {old['old_users_per_s']:.1f} -> "
          f"{old['new_users_per_s']:.1f} users/s, identical top-10 for {old['top10_identical_users']}/{old['users']}")
    print(beam_line(beam))
    print(f"training examples/s (batch {training.per_device_train_batch_size}): {fast_rate:.1f} with the image "
          f"cache, {slow_rate:.1f} without = {fast_rate / slow_rate:.2f}x")
    print(f"pipeline latency, one user, {latency['history_items']}-item history: p50 {latency['p50_s'] * 1e3:.0f} ms, "
          f"p95 {latency['p95_s'] * 1e3:.0f} ms")
    print(f"peak RSS: {report['peak_rss_mib']:.0f} MiB")
    print(f"eval throughput UniMP/SASRec = {report['ratio']:.3f}")
    return report


if __name__ == "__main__":
    main()
