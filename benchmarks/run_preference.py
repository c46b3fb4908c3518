"""SFT only vs SFT + S-DPO vs SFT + DPO (vs SFT + as many extra supervised steps) on the benchmark's SFT starts
(issue 14), at a fixed step budget, 3 seeds, as contract lines.

The supervised starts are `run_benchmark`'s UniMP-tiny runs, `<sft-dir>/<dataset>-unimp-s<seed>/` (read only; their
own contract lines are the "SFT only" rows, variant `default`). Each preference run is `python -m
recipes.preference_tune <preference config> key=value ...` in its own process: PREFERENCE_STEPS optimizer steps at the
config's constant LR (1e-4, no warmup), validation NDCG@10 every EVAL_EVERY steps on the config's validation users,
the best of those checkpoints kept (`load_best_model_at_end`). Its own test pass scores one user (`max_test_users=1`):
nothing in this file reads it.

1. `--grid` (one dataset and start, default ML-100K seed 0): each setting of GRID (S-DPO with N negatives, plain DPO
   with one popularity negative, each at several β) at that budget; each run's best validation NDCG@10 goes to
   `results/preference_grid.json` next to the start's, with the seconds per preference step. The chosen setting of
   each loss is the one with the highest validation NDCG@10 (ties: the smaller β, then the smaller N:
   `choose_settings`). Test is never read.
2. Seeds (default): for every dataset and seed whose SFT start exists, the chosen S-DPO and DPO settings (a dataset
   without its own grid uses the grid of the first of GRID_FALLBACK that has one), and the control `sft+sft`: the same
   start trained by `recipes.train` for the same number of steps at the preference LR and batch, constant LR, on the
   same rec examples (the supervised focal loss instead of the preference loss). Then `python -m recipes.evaluate RUN
   --split validation test` ranks every validation and test user, and one contract line per masking is appended to
   `results/<dataset>.jsonl` (`benchmarks/results.py`): model UniMP-tiny, variant `sft+sdpo` / `sft+dpo` / `sft+sft`,
   budget = SFT steps + preference steps, with the preference settings (loss, β, N) in `budget` and `preference`.
   Rows already in the results files are skipped (resumable; `--force` reruns them); a run with a `metrics.json` is
   not trained again.

Usage: python -m benchmarks.run_preference --grid --datasets ml100k            # the β / N grid on seed 0's start
       python -m benchmarks.run_preference --datasets ml100k hm amazon-mi --seeds 0 1 2
       python -m benchmarks.run_preference --datasets ml100k --seeds 0 --steps 4 --eval-every 2 \\
           --no-results --grid-file /tmp/grid.json max_eval_users=20           # a smoke run
"""

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import results as contract  # noqa: E402  (standard library only)
import run_benchmark as bench  # noqa: E402  (the SFT runs' configs, split order, ranks, logging)

PREFERENCE_CONFIGS = {dataset: REPO / f"recipes/configs/preference_{dataset.replace('-', '_')}.yaml"
                      for dataset in bench.CONFIGS}
# Optimizer steps of every preference (and control) run, and validation NDCG@10 (and a checkpoint) every EVAL_EVERY:
# a preference step took 5.3-5.4 s on one core (ML-100K and H&M, batch 32, N = 8, 2 cores under a load of 4-7), so
# a run is about 80 x 5.4 s + 5 validations, ~10 minutes (BENCHMARKS.md §6).
PREFERENCE_STEPS = 80
EVAL_EVERY = 20
# (loss_type, N negatives, β). S-DPO's negatives: half from the reference's top-50, half by popularity (the config);
# DPO's one negative is drawn by popularity (hard_negative_fraction 0).
GRID = [("sdpo", 4, 0.1), ("sdpo", 4, 1.0), ("sdpo", 8, 0.1), ("sdpo", 8, 1.0), ("sigmoid", 1, 0.1),
        ("sigmoid", 1, 1.0)]
GRID_FILE = "preference_grid.json"
GRID_FALLBACK = ("ml100k", "hm", "amazon-mi")  # a dataset without its own grid runs uses the first one with runs
GRID_RULE = ("per loss: the highest best validation NDCG@10 over the run's checkpoints; ties: the smaller beta, then "
             "the smaller N (benchmarks/run_preference.py choose_settings); test is not read")
LOSS_VARIANTS = {"sdpo": "sft+sdpo", "sigmoid": "sft+dpo"}
CONTROL_VARIANT = "sft+sft"
VARIANT_NAMES = (*LOSS_VARIANTS.values(), CONTROL_VARIANT)


def setting_name(loss_type: str, num_negatives: int, beta: float) -> str:
    return f"{loss_type}-n{num_negatives}-b{beta:g}"


def parse_setting(text: str) -> tuple[str, int, float]:
    """'sdpo:8:1.0' -> ('sdpo', 8, 1.0)."""
    try:
        loss_type, num_negatives, beta = text.split(":")
        setting = (loss_type, int(num_negatives), float(beta))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LOSS:N:BETA, e.g. sdpo:8:1.0") from None
    if loss_type not in LOSS_VARIANTS:
        raise argparse.ArgumentTypeError(f"{text!r}: loss must be one of {sorted(LOSS_VARIANTS)}")
    return setting


def budget_overrides(steps: int, eval_every: int) -> list[str]:
    """Fixed-step overrides shared by the preference and control runs; the budget must end on a validation."""
    if steps < 1 or eval_every < 1 or steps % eval_every:
        raise ValueError(f"a budget of {steps} steps must be a positive multiple of eval_every={eval_every}, so that "
                         "the last step is validated and saved")
    return [f"max_steps={steps}", f"eval_steps={eval_every}", f"save_steps={eval_every}", "max_train_seconds=null",
            "max_test_users=1",  # the run's own test pass: one user, never read (recipes.evaluate ranks them all)
            "disable_tqdm=true"]


def preference_overrides(loss_type: str, num_negatives: int, beta: float, steps: int, eval_every: int) -> list[str]:
    """`recipes.preference_tune` overrides of one setting over the dataset's preference config."""
    out = [f"loss_type={loss_type}", f"num_negatives={num_negatives}", f"beta={beta:g}"]
    if num_negatives == 1:  # plain DPO: one popularity negative
        out.append("hard_negative_fraction=0.0")
    return out + budget_overrides(steps, eval_every)


def read_config(dataset: str) -> dict:
    import yaml

    return yaml.safe_load(PREFERENCE_CONFIGS[dataset].read_text())


def control_overrides(dataset: str, steps: int, eval_every: int) -> list[str]:
    """`recipes.train` overrides of the `sft+sft` control over the dataset's SFT config: the preference run's rec
    examples, batch, learning rate and validation users, constant LR without warmup, the same steps."""
    preference = read_config(dataset)
    return ["tasks=[rec]", f"num_windows_per_user={preference['num_windows_per_user']}",
            f"per_device_train_batch_size={preference['per_device_train_batch_size']}",
            f"learning_rate={preference['learning_rate']}", f"weight_decay={preference['weight_decay']}",
            "lr_scheduler_type=constant", "warmup_steps=0", "time_decay_fraction=0",
            f"max_eval_users={preference['max_eval_users']}", *budget_overrides(steps, eval_every)]


def start_dir(sft_dir: Path, dataset: str, seed: int) -> Path:
    """`run_benchmark`'s UniMP-tiny run of that dataset and seed (its best checkpoint is the folder's model)."""
    return sft_dir / f"{dataset}-unimp-s{seed}"


def start_ready(start: Path) -> bool:
    return (start / "metrics.json").exists() and (start / "model.safetensors").exists()


# --- grid --------------------------------------------------------------------------------------------------------


def read_grid(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"rule": GRID_RULE, "runs": []}


def grid_run_key(run: dict) -> tuple:
    return (run["dataset"], run["seed"], run["loss_type"], run["num_negatives"], float(run["beta"]), run["steps"],
            run["eval_every"])


def override_value(extra: list[str], key: str, default):
    """The value a `key=value` in `extra` sets (the last wins, as the recipes read it), else `default`."""
    import yaml

    values = [yaml.safe_load(token.split("=", 1)[1]) for token in extra if token.startswith(f"{key}=")]
    return values[-1] if values else default


def grid_entry(dataset: str, seed: int, setting: tuple, steps: int, eval_every: int, run_dir: Path,
               start: Path, extra: list[str] = ()) -> dict:
    """One grid record from a finished `recipes.preference_tune` run's `metrics.json` (validation numbers only)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    loss_type, num_negatives, beta = setting
    best = metrics.get("best_checkpoint")
    return {
        "dataset": dataset, "seed": seed, "loss_type": loss_type, "num_negatives": num_negatives, "beta": beta,
        "steps": steps, "eval_every": eval_every,
        "best_valid_ndcg@10": metrics["best_validation"]["ndcg@10"],
        "best_step": int(Path(best).name.split("-")[1]) if best else None,
        "start_valid_ndcg@10": (metrics.get("validation_before") or {}).get("ndcg@10"),
        "seconds_per_step": metrics["preference"]["seconds_per_step"],
        "hard_negative_fraction": metrics["preference"]["hard_negative_fraction"],
        "valid_users": override_value(extra, "max_eval_users", read_config(dataset).get("max_eval_users")),
        "start": _relative(start), "run_dir": _relative(run_dir), "trainer_seconds": metrics["trainer_seconds"],
        "commit": contract.git_commit(REPO), "date": contract.utc_now(), "cpu": contract.cpu_info(),
    }


def choose_settings(runs: list[dict]) -> dict[str, dict]:
    """{loss_type: the grid run chosen}: the highest best validation NDCG@10; ties: smaller β, then smaller N."""
    chosen: dict[str, dict] = {}
    for run in runs:
        key = (run["best_valid_ndcg@10"], -run["beta"], -run["num_negatives"])
        current = chosen.get(run["loss_type"])
        if current is None or key > (current["best_valid_ndcg@10"], -current["beta"], -current["num_negatives"]):
            chosen[run["loss_type"]] = run
    return chosen


def settings_for(dataset: str, grid: dict) -> tuple[str, dict[str, dict]]:
    """(the grid's dataset, {loss_type: chosen run}) for `dataset`: its own grid runs, else GRID_FALLBACK's first."""
    runs = grid.get("runs", [])
    for source in (dataset, *GRID_FALLBACK):
        own = [run for run in runs if run["dataset"] == source]
        if own:
            return source, choose_settings(own)
    raise ValueError("no grid runs yet: run `python -m benchmarks.run_preference --grid` first")


def run_grid(dataset: str, seed: int, *, sft_dir: Path, out_dir: Path, grid_path: Path, steps: int,
             eval_every: int, extra: list[str], force: bool = False, settings=GRID) -> dict:
    """Every setting of `settings` from the start `<sft_dir>/<dataset>-unimp-s<seed>`; records them in `grid_path`."""
    start = start_dir(sft_dir, dataset, seed)
    if not start_ready(start):
        raise FileNotFoundError(f"{start} is not a finished recipes.train run (no metrics.json): the SFT start of "
                                f"{dataset} seed {seed} comes from benchmarks/run_benchmark.py first")
    for setting in settings:
        grid = read_grid(grid_path)
        key = (dataset, seed, setting[0], setting[1], float(setting[2]), steps, eval_every)
        if not force and key in {grid_run_key(run) for run in grid["runs"]}:
            print(f"[pref] grid {dataset}/s{seed} {setting_name(*setting)}: in {grid_path} already", flush=True)
            continue
        run_dir = grid_dir(out_dir, dataset, seed, setting, steps)
        run_preference(dataset, seed, setting, steps, eval_every, start, run_dir, extra)
        entry = grid_entry(dataset, seed, setting, steps, eval_every, run_dir, start, extra)
        grid = read_grid(grid_path)
        grid["rule"] = GRID_RULE
        grid["runs"] = [run for run in grid["runs"] if grid_run_key(run) != key] + [entry]
        grid["chosen"] = {source: {loss: setting_name(r["loss_type"], r["num_negatives"], r["beta"])
                                   for loss, r in choose_settings(
                                       [run for run in grid["runs"] if run["dataset"] == source]).items()}
                          for source in sorted({run["dataset"] for run in grid["runs"]})}
        grid_path.parent.mkdir(parents=True, exist_ok=True)
        grid_path.write_text(json.dumps(grid, indent=2) + "\n")
        print(f"[pref] grid {dataset}/s{seed} {setting_name(*setting)}: best validation NDCG@10 "
              f"{entry['best_valid_ndcg@10']:.4f} (start {entry['start_valid_ndcg@10']:.4f}), "
              f"{entry['seconds_per_step']} s/step", flush=True)
    return read_grid(grid_path)


def grid_dir(out_dir: Path, dataset: str, seed: int, setting: tuple, steps: int) -> Path:
    return out_dir / "grid" / f"{dataset}-s{seed}" / f"{setting_name(*setting)}-{steps}steps"


# --- runs --------------------------------------------------------------------------------------------------------


def run_preference(dataset: str, seed: int, setting: tuple, steps: int, eval_every: int, start: Path,
                   run_dir: Path, extra: list[str]) -> None:
    """One `recipes.preference_tune` run into `run_dir` (skipped when its metrics.json exists; resumes otherwise)."""
    if (run_dir / "metrics.json").exists():
        return
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    bench.run_logged([sys.executable, "-m", "recipes.preference_tune", str(PREFERENCE_CONFIGS[dataset]),
                      f"model_name_or_path={start}", f"output_dir={run_dir}", f"seed={seed}",
                      *preference_overrides(*setting, steps, eval_every), *extra], log_path(run_dir))


def run_control(dataset: str, seed: int, steps: int, eval_every: int, start: Path, run_dir: Path,
                extra: list[str]) -> None:
    """The `sft+sft` control: `recipes.train` from the start (fresh optimizer, as the preference run)."""
    if (run_dir / "metrics.json").exists():
        return
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    bench.run_logged([sys.executable, "-m", "recipes.train", str(bench.CONFIGS[dataset]),
                      f"model_name_or_path={start}", f"output_dir={run_dir}", f"seed={seed}",
                      *control_overrides(dataset, steps, eval_every), *extra], log_path(run_dir))


def contract_lines(dataset: str, variant: str, seed: int, *, run_dir: Path, start: Path, order, steps: int,
                   eval_every: int, command: dict, setting: dict | None) -> list[dict]:
    """One contract line per masking for a preference (or control) run on top of an SFT start.

    `budget.steps` is the whole training (the start's SFT steps + this run's), `train_seconds` both runs' trainer
    time; the preference setting (loss, β, N, where it was chosen) is in `budget` and `preference`.
    """
    training = json.loads((run_dir / "metrics.json").read_text())
    start_training = json.loads((start / "metrics.json").read_text())
    test = json.loads((run_dir / "metrics_test.json").read_text())
    valid = json.loads((run_dir / "metrics_validation.json").read_text())
    test_ranks = bench.ranks_in_split_order(test, order, "test")
    valid_ranks = bench.ranks_in_split_order(valid, order, "validation")
    best = training.get("best_checkpoint")
    start_best = start_training.get("best_checkpoint")
    preference = read_config(dataset)
    budget = {
        "steps": int(start_training["global_step"]) + steps, "sft_steps": int(start_training["global_step"]),
        "sft_best_step": int(Path(start_best).name.split("-")[1]) if start_best else None,
        "extra_steps": steps, "global_step": training["global_step"], "eval_every": eval_every,
        "best_step": int(Path(best).name.split("-")[1]) if best else None,
        "learning_rate": preference["learning_rate"], "batch_size": preference["per_device_train_batch_size"],
        "schedule": "the start's (warmup_stable_decay), then constant LR, no warmup; best extra checkpoint on "
                    "validation NDCG@10",
    }
    if setting is not None:
        budget |= {key: setting[key] for key in ("loss_type", "beta", "num_negatives")}
    import platform

    import torch
    import transformers

    common = {
        "dataset": dataset, "task": "rec", "model": bench.MODEL_NAME, "variant": variant, "seed": seed,
        "split": "test", "budget": budget,
        "train_seconds": float(start_training["trainer_seconds"]) + float(training["trainer_seconds"]),
        "eval_users_per_s": float(test["eval_users_per_second"]),
        "peak_rss_mib": float(max(training["peak_rss_mib"], start_training["peak_rss_mib"])),
        "commit": contract.git_commit(REPO), "date": contract.utc_now(), "cpu": contract.cpu_info(),
        "n_users": len(order), "n_items": test["num_items"],
        "users_sha256": contract.users_digest(row[0] for row in order),
        "valid_users": len(valid_ranks["none"]),
        "rank_ties": "pessimistic: r = #{items j not masked : s_j >= s_target}",
        "config": command["config"], "overrides": command["overrides"], "start": _relative(start),
        "preference": None if setting is None else {
            **training.get("preference", {}), "grid_dataset": setting.get("grid_dataset"),
            "grid_valid_ndcg@10": setting.get("best_valid_ndcg@10")},
        "validation_before": training.get("validation_before"),
        "history_window": {k: test[k] for k in ("max_history_items", "context_order", "content_history_items")},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }
    return [dict(common, masking=masking, metrics=contract.metrics_from_ranks(test_ranks[masking]),
                 valid_metrics=contract.metrics_from_ranks(valid_ranks[masking]), ranks=test_ranks[masking],
                 masking_note=bench.MASKING_NOTES[masking])
            for masking in contract.MASKINGS]


def row_keys(dataset: str, variant: str, seed: int) -> set:
    return {(dataset, "rec", bench.MODEL_NAME, variant, seed, masking) for masking in contract.MASKINGS}


def already_done(dataset: str, variant: str, seed: int, results_dir: Path | None, force: bool) -> bool:
    """True when both maskings' rows are in `results_dir` (never with --force or without a results dir)."""
    if force or results_dir is None:
        return False
    return row_keys(dataset, variant, seed) <= bench.existing_keys(results_dir)


def run_seed(dataset: str, seed: int, variant: str, *, grid: dict, sft_dir: Path, out_dir: Path, steps: int,
             eval_every: int, extra: list[str], atomic_dir: Path, results_dir: Path | None) -> list[dict]:
    """Train (or reuse) one variant's run from the seed's start, rank every user, append the contract lines."""
    start = start_dir(sft_dir, dataset, seed)
    started = time.time()
    setting = None
    if variant == CONTROL_VARIANT:
        run_dir = out_dir / f"{dataset}-{variant}-s{seed}"
        run_control(dataset, seed, steps, eval_every, start, run_dir, extra)
        command = {"config": str(bench.CONFIGS[dataset].relative_to(REPO)),
                   "overrides": [f"model_name_or_path={_relative(start)}",
                                 *control_overrides(dataset, steps, eval_every), *extra]}
    else:
        loss_type = next(loss for loss, name in LOSS_VARIANTS.items() if name == variant)
        grid_dataset, chosen = settings_for(dataset, grid)
        if loss_type not in chosen:
            raise ValueError(f"the grid of {grid_dataset} has no {loss_type} run")
        setting = dict(chosen[loss_type], grid_dataset=grid_dataset)
        triple = (loss_type, setting["num_negatives"], setting["beta"])
        run_dir = grid_dir(out_dir, dataset, seed, triple, steps)  # the grid's own run when it is this one
        if not (run_dir / "metrics.json").exists() or setting["eval_every"] != eval_every:
            run_dir = out_dir / f"{dataset}-{variant}-{setting_name(*triple)}-s{seed}"
        run_preference(dataset, seed, triple, steps, eval_every, start, run_dir, extra)
        command = {"config": str(PREFERENCE_CONFIGS[dataset].relative_to(REPO)),
                   "overrides": [f"model_name_or_path={_relative(start)}",
                                 *preference_overrides(*triple, steps, eval_every), *extra]}
    if not (run_dir / "metrics_test.json").exists():
        bench.run_logged([sys.executable, "-m", "recipes.evaluate", str(run_dir), "--split", "validation", "test"],
                         log_path(run_dir))
    lines = contract_lines(dataset, variant, seed, run_dir=run_dir, start=start,
                           order=bench.read_split_order(atomic_dir, dataset), steps=steps, eval_every=eval_every,
                           command=command, setting=setting)
    if results_dir is not None:
        contract.append_results(lines, results_dir)
    summary = {line["masking"]: round(line["metrics"]["ndcg@10"], 4) for line in lines}
    print(f"[pref] {dataset}/{variant}/seed {seed}: +{steps} steps, test NDCG@10 {summary}, "
          f"{time.time() - started:.0f} s", flush=True)
    return lines


def log_path(run_dir: Path) -> Path:
    """`<run_dir>.log` (not `with_suffix`: a β of 0.1 puts a dot in the folder name)."""
    return run_dir.parent / f"{run_dir.name}.log"


def _relative(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", action="store_true",
                        help=f"run the beta / N grid on each --datasets' start of --grid-seed (writes {GRID_FILE})")
    parser.add_argument("--datasets", nargs="+", default=None, choices=list(PREFERENCE_CONFIGS),
                        help="default: ml100k with --grid, else all three")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--grid-seed", type=int, default=0, help="the SFT start the grid runs from")
    parser.add_argument("--grid-settings", nargs="+", type=parse_setting, default=GRID, metavar="LOSS:N:BETA",
                        help="the grid's settings, e.g. sdpo:8:1.0 sigmoid:1:0.1 (default: GRID)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANT_NAMES), choices=list(VARIANT_NAMES))
    parser.add_argument("--steps", type=int, default=PREFERENCE_STEPS, help="optimizer steps of every run")
    parser.add_argument("--eval-every", type=int, default=EVAL_EVERY)
    parser.add_argument("--sft-dir", type=Path, default=REPO / "outputs/bench",
                        help="run_benchmark's output folder holding <dataset>-unimp-s<seed>/ (read only)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs/pref_bench2")
    parser.add_argument("--grid-file", type=Path, default=None,
                        help=f"default: <results-dir>/{GRID_FILE}")
    parser.add_argument("--results-dir", type=Path, default=contract.RESULTS_DIR)
    parser.add_argument("--no-results", action="store_true", help="write no contract lines (smoke runs)")
    parser.add_argument("--force", action="store_true", help="rerun rows already in the results (or grid) files")
    parser.add_argument("--atomic-dir", type=Path, default=REPO / "outputs/recbole_atomic",
                        help="the RecBole export whose <ds>.split.tsv orders the ranks (written when missing)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run (smoke runs)")
    args = parser.parse_args(argv)
    if args.datasets is None:
        args.datasets = ["ml100k"] if args.grid else list(PREFERENCE_CONFIGS)
    if args.grid_file is None:
        args.grid_file = args.results_dir / GRID_FILE
    budget_overrides(args.steps, args.eval_every)  # a budget off the validation grid fails here, not hours later
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.grid:
        for dataset in args.datasets:
            grid = run_grid(dataset, args.grid_seed, sft_dir=args.sft_dir, out_dir=args.out,
                            grid_path=args.grid_file, steps=args.steps, eval_every=args.eval_every,
                            extra=args.overrides, force=args.force, settings=args.grid_settings)
        print(f"[pref] chosen on validation: {grid.get('chosen')}", flush=True)
        return grid
    results_dir = None if args.no_results else args.results_dir
    grid = read_grid(args.grid_file)
    done, failures = {}, []
    for dataset in args.datasets:   # datasets outer, seeds inner: complete seed sets land first
        for seed in args.seeds:
            if not start_ready(start_dir(args.sft_dir, dataset, seed)):
                print(f"[pref] {dataset}/seed {seed}: no SFT start at {start_dir(args.sft_dir, dataset, seed)} "
                      "yet; skipped", flush=True)
                continue
            for variant in args.variants:
                if already_done(dataset, variant, seed, results_dir, args.force):
                    print(f"[pref] {dataset}/{variant}/seed {seed}: in {results_dir} already", flush=True)
                    continue
                try:
                    done[f"{dataset}/{variant}/s{seed}"] = run_seed(
                        dataset, seed, variant, grid=grid, sft_dir=args.sft_dir, out_dir=args.out, steps=args.steps,
                        eval_every=args.eval_every, extra=args.overrides, atomic_dir=args.atomic_dir,
                        results_dir=results_dir)
                except (RuntimeError, ValueError) as error:  # one failed run does not stop the queue
                    failures.append(f"{dataset}/{variant}/seed {seed}: {error}")
                    print(f"[pref] FAILED {failures[-1]}", flush=True)
    if failures:
        raise SystemExit("[pref] failed runs (rerun the same command to resume them):\n" + "\n".join(failures))
    return done


if __name__ == "__main__":
    main()
