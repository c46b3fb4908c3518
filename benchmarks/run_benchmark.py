"""UniMP-tiny on the peers' leave-one-out splits, with fixed step budgets and seeds, as contract lines (issues 5, 11).

Each run trains in its own process (`python -m recipes.train CONFIG key=value ...`) for a fixed number of optimizer
steps per dataset (`results/step_budgets.json`, chosen on a validation curve: `choose_budget`), with a step-based
schedule (warmup, then constant, then linear decay to 0 over the last 30 % of the steps: transformers'
`warmup_stable_decay`), so a result does not depend on how busy the machine was. The checkpoint is selected on
validation NDCG@10, then `python -m recipes.evaluate CHECKPOINT --split validation test` ranks EVERY validation and
test user, and the run appends one line per masking (`none`, `history`) to `benchmarks/results/<dataset>.jsonl`
(`benchmarks/results.py`), with the ranks in the order of the RecBole export's `<ds>.split.tsv`, so the report pairs
them user by user with the peers. `make demo` keeps its wall-clock budget; these runs do not use one.

Usage: python -m benchmarks.run_benchmark --datasets ml100k amazon-mi hm --seeds 0 1 2
       python -m benchmarks.run_benchmark --datasets ml100k --choose-budget   # the validation curve behind a budget
"""

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import results as contract  # noqa: E402  (standard library only, shared with run_peers.py)

CONFIGS = {
    "ml100k": REPO / "recipes/configs/ml100k_tiny.yaml",
    "hm": REPO / "recipes/configs/hm_tiny.yaml",
    "amazon-mi": REPO / "recipes/configs/amazon_mi_tiny.yaml",
}
BUILDER_NAMES = {"ml100k": "ml-100k-posters", "hm": "hm-sample", "amazon-mi": "amazon-mi-2014-5core"}
MODEL_NAME = "UniMP-tiny"
# Optimizer steps per dataset for benchmark runs live in `<results dir>/step_budgets.json` (committed), each with the
# validation curve it was chosen on (`choose_budget` on the curve of `--choose-budget`: constant LR after warmup,
# seed CURVE_SEED, validation NDCG@10 every EVAL_EVERY steps). A dataset missing there gets its curve run first.
BUDGETS_FILE = "step_budgets.json"
EVAL_EVERY = {"ml100k": 150, "amazon-mi": 150, "hm": 100}   # validation (and checkpoint) every this many steps
CURVE_STEPS = {"ml100k": 600, "amazon-mi": 600, "hm": 600}  # length of the budget-choosing curve
CURVE_SEED = 100            # not a benchmark seed: the budget is chosen on a run whose test numbers are never read
DECAY_FRACTION = 0.3        # the LR decays linearly to 0 over the last 30 % of the steps (was time_decay_fraction)
# Ablations of issue 5: each is a set of overrides of the dataset's config; "unimp" is the default config, whose
# contract lines carry variant "default" (benchmarks/report.py pairs that variant with the best peer).
VARIANTS = {
    "unimp": [],
    "no_images": ["use_images=false"],
    "no_text": ["use_text_attributes=false"],
    "gamma0": ["focal_gamma=0.0"],
    "no_context": ["context_weight=0.0"],
    "single_task": ["tasks=[rec]"],
    "multi_task": ["tasks=[rec,exp]"],  # + rating (and explanation where the data has text): issue 5's rating table
    # the paper's history layout (ids after their content, reference §2.1); the configs use next_item
    "paper_order": ["context_order=paper"],
    # ml100k_tiny shows 50 history items (the last 10 with image + text): these show 10, or 50 with content
    "short_history": ["max_history_items=10", "content_history_items=null"],
    "long_history": ["max_history_items=50", "content_history_items=10"],
    "user_disjoint": ["protocol=user_disjoint"],  # the paper's protocol (reference §5.1): no contract lines
    # issue 12: <item_k> vectors from the item's content (MiniLM text + image), alone or plus an id residual; the
    # default ("unimp") is item_representation=id
    "content": ["item_representation=content"],
    "id_content": ["item_representation=id+content"],
    # issue 12 item 5: the vision tower starts from `recipes.pretrain_vision` (contrastive against MiniLM item text,
    # BENCHMARKS §4) instead of random; `{dataset}` is the builder name (the recipe's output folder)
    "pretrained_vision": ["vision_model_name_or_path=outputs/pretrain_vision/{dataset}"],
    # BENCHMARKS §7.3: with the Flamingo start (gates at tanh(0) = 0) the images hardly reach the prediction within
    # CPU step budgets; these open the gated cross-attention from the first step
    "gate_init_0.5": ["gate_init=0.5"],
    "gate_init_1": ["gate_init=1.0"],
    # issue 18 item 5, multi-task at the same number of rec examples seen (EQUAL_REC_EXAMPLES): the paper's claim that
    # the tasks help each other, against the rec-only default
    "mt_rec_exp": ["tasks=[rec,exp]"],
    "mt_all": ["tasks=[rec,exp,select,search]"],
    "mt_rec_select_search": ["tasks=[rec,select,search]"],
    # rec + search alone: ML-100K search over seeds without select prompts (which, before the 4-item select history of
    # recipes.common.SELECT_MAX_HISTORY_ITEMS, made a step with select ~2x a rec step; BENCHMARKS §9)
    "mt_rec_search": ["tasks=[rec,search]"],
}
# Variants whose step budget is the dataset's budget x (training examples of all their tasks / rec examples), rounded
# up to a multiple of EVAL_EVERY (`equal_rec_steps`): the trainer shuffles one pool of examples, so such a run shows
# the rec-only run's number of rec examples in expectation (the one multi_task run of §1.4 had the same steps, so
# fewer rec examples, and a confounded answer).
EQUAL_REC_EXAMPLES = {"mt_rec_exp", "mt_all", "mt_rec_select_search", "mt_rec_search"}
# Configs of the recipes that must have run before a variant: `make bench-ablations` runs them when their output is
# missing (`ensure_prerequisites`).
PREREQUISITES = {"pretrained_vision": ("recipes.pretrain_vision", "recipes/configs/pretrain_vision_{short}.yaml",
                                       "outputs/pretrain_vision/{dataset}")}
# Variants that only mean something on some datasets: the configs of ml100k and hm train rec alone (so
# single_task is their default), amazon-mi trains rec + exp (its multi_task), H&M has no ratings for the exp task,
# and only ml100k's config shows 50 history items.
APPLIES_TO = {"single_task": {"amazon-mi"}, "multi_task": {"ml100k"}, "short_history": {"ml100k"},
              # exp needs ratings (not H&M); select and search need images and categories (not Amazon MI)
              "mt_rec_exp": {"ml100k"}, "mt_all": {"ml100k"}, "mt_rec_select_search": {"ml100k", "hm"},
              "mt_rec_search": {"ml100k", "hm"},
              "long_history": {"hm", "amazon-mi"}, "pretrained_vision": {"ml100k", "hm"}}  # Amazon MI: no images
MASKING_NOTES = {
    "none": "nothing masked: every catalogue item is ranked (RecBole's sequential-model convention)",
    "history": "the user's history items (train items, + the valid item at test) set to -inf before ranking",
}


def variant_overrides(variant: str, dataset: str) -> list[str]:
    """The `recipes.train` overrides of `variant` on `dataset` (`{dataset}` = the builder name)."""
    return [override.format(dataset=BUILDER_NAMES[dataset]) for override in VARIANTS[variant]]


def ensure_prerequisites(variant: str, dataset: str, log: Path) -> None:
    """Run the recipe a variant starts from (e.g. the vision pretraining) when its output folder is missing."""
    if variant not in PREREQUISITES:
        return
    module, config, output = (part.format(dataset=BUILDER_NAMES[dataset], short=dataset.replace("-", "_"))
                              for part in PREREQUISITES[variant])
    if not (REPO / output).exists():
        run_logged([sys.executable, "-m", module, str(REPO / config), f"output_dir={REPO / output}"], log)


def equal_rec_steps(steps: int, counts: dict[str, int], eval_every: int) -> int:
    """The steps at which a run over the pooled examples `counts` ({task: training examples}) sees, in expectation,
    as many rec examples as `steps` steps of rec alone; rounded up to a multiple of `eval_every`."""
    if counts.get("rec", 0) <= 0:
        raise ValueError(f"no rec training examples among {counts}: nothing to hold equal")
    scaled = steps * sum(counts.values()) / counts["rec"]
    return eval_every * math.ceil(scaled / eval_every - 1e-9)


def training_example_counts(dataset: str, variant: str, extra: list[str]) -> dict[str, int]:
    """{task: training examples} that `recipes.train` would render for `variant` on `dataset` (records only)."""
    from processing.task_records import build_task_records
    from recipes import train as train_recipe
    from recipes.common import load_dataset_dict, task_record_kwargs

    recipe, training = train_recipe.parse_args([str(CONFIGS[dataset]), *variant_overrides(variant, dataset), *extra])
    if training.max_history_items is None:
        raise ValueError(f"{CONFIGS[dataset]}: set max_history_items to count {variant}'s training examples")
    dataset_dict = load_dataset_dict(recipe)
    return {task: len(build_task_records(dataset_dict, task, "train", **task_record_kwargs(
        task, "train", max_history_items=training.max_history_items, seed=training.seed,
        num_windows_per_user=recipe.num_windows_per_user))) for task in recipe.tasks}


def variant_name(variant: str) -> str:
    """The contract's `variant` of a run: 'default' for the default config, else the ablation's name."""
    return "default" if variant == "unimp" else variant


def schedule_overrides(steps: int, eval_every: int) -> list[str]:
    """`recipes.train` overrides for a fixed budget of `steps` optimizer steps (no wall-clock cap): warmup (the
    config's), constant LR, linear decay to 0 over the last DECAY_FRACTION of the steps; validation and a
    checkpoint every `eval_every` steps, and at the last step."""
    if steps < 1 or steps % eval_every:
        raise ValueError(f"a budget of {steps} steps must be a positive multiple of eval_every={eval_every}, so that "
                         "the last step is validated and saved")
    decay = max(1, round(DECAY_FRACTION * steps))
    return [f"max_steps={steps}", "max_train_seconds=null", "time_decay_fraction=0",
            "lr_scheduler_type=warmup_stable_decay",
            f"lr_scheduler_kwargs={{num_decay_steps: {decay}, decay_type: linear}}",
            f"eval_steps={eval_every}", f"save_steps={eval_every}"]


def validation_curve(run_dir: Path, metric: str = "eval_ndcg@10") -> dict[int, float]:
    """{step: validation metric} from the newest `checkpoint-*/trainer_state.json` of a `recipes.train` run."""
    states = sorted(run_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not states:
        raise FileNotFoundError(f"{run_dir} has no checkpoint-*/trainer_state.json (did the run save a checkpoint?)")
    history = json.loads(states[-1].read_text())["log_history"]
    return {entry["step"]: entry[metric] for entry in history if metric in entry}


def choose_budget(curve: dict[int, float]) -> int:
    """The step budget from a constant-LR validation curve: the first step with the highest validation NDCG@10.

    A step-based run of that length then decays its LR over its last 30 %, which gains over the constant-LR value
    (§1.3: +0.004 NDCG@10 on test from the time decay); where the curve still rises at its end, the budget is its
    last step (a cap, reported as such).
    """
    if not curve:
        raise ValueError("the validation curve is empty: no evaluation was logged")
    best = max(curve.values())
    return min(step for step, value in curve.items() if value == best)


def run_logged(command: list[str], log: Path) -> None:
    print(f"[bench] {' '.join(command[2:])}  (log {log})", flush=True)
    with log.open("a") as handle:
        result = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:5])} failed (exit {result.returncode}); see {log}")


def run_curve(dataset: str, out_dir: Path, extra: list[str], budgets_path: Path) -> dict:
    """Train the budget-choosing curve (constant LR, seed CURVE_SEED; resumes), choose the budget on it and record
    both in `budgets_path` (`{dataset: {"steps", "curve_valid_ndcg@10", ...}}`)."""
    run_dir = out_dir / "curves" / dataset
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "recipes.train", str(CONFIGS[dataset]), f"output_dir={run_dir}",
               f"seed={CURVE_SEED}", "max_train_seconds=null", "time_decay_fraction=0",
               "lr_scheduler_type=constant_with_warmup", f"max_steps={CURVE_STEPS[dataset]}",
               f"eval_steps={EVAL_EVERY[dataset]}", f"save_steps={EVAL_EVERY[dataset]}",
               "max_test_users=1",  # the test split is not what chooses a budget: score one user, read nothing
               "save_total_limit=null", "disable_tqdm=true", *extra]
    if not (run_dir / "metrics.json").exists():
        run_logged(command, out_dir / "curves" / f"{dataset}.log")
    curve = validation_curve(run_dir)
    choice = {"dataset": dataset, "steps": choose_budget(curve), "curve_valid_ndcg@10": curve,
              "curve_steps": CURVE_STEPS[dataset], "seed": CURVE_SEED, "valid_users": _valid_users(dataset),
              "rule": "first step with the highest validation NDCG@10 under constant LR (benchmarks/run_benchmark.py)"}
    budgets = json.loads(budgets_path.read_text()) if budgets_path.exists() else {}
    budgets[dataset] = choice
    budgets_path.parent.mkdir(parents=True, exist_ok=True)
    budgets_path.write_text(json.dumps(budgets, indent=2, sort_keys=True) + "\n")
    print(f"[bench] {dataset}: validation curve {curve} -> budget {choice['steps']} steps", flush=True)
    return choice


def _valid_users(dataset: str):
    import yaml

    return yaml.safe_load(CONFIGS[dataset].read_text()).get("max_eval_users")


def step_budget(dataset: str, budgets_path: Path, steps: int | None = None) -> int | None:
    """--steps, else the dataset's recorded budget in `budgets_path`, else None (no budget chosen yet)."""
    if steps:
        return steps
    budgets = json.loads(budgets_path.read_text()) if budgets_path.exists() else {}
    return budgets[dataset]["steps"] if dataset in budgets else None


def read_split_order(atomic_dir: Path, dataset: str) -> list[tuple[str, str, str]]:
    """(user_id, valid_item, test_item) per user in the order of `<atomic_dir>/<ds>/<ds>.split.tsv`, the order of
    the peers' `ranks`; the export is written first when missing."""
    path = atomic_dir / dataset / f"{dataset}.split.tsv"
    if not path.exists():
        from benchmarks.recbole_export import export_recbole_atomic

        export_recbole_atomic(BUILDER_NAMES[dataset], atomic_dir)
    rows = []
    with path.open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        for number, text in enumerate(handle, start=2):
            cells = dict(zip(header, text.rstrip("\n").split("\t")))
            if not all(cells.get(k) for k in ("user_id", "valid_item", "test_item")):
                raise ValueError(f"{path}:{number}: a row needs user_id, valid_item and test_item")
            rows.append((cells["user_id"], cells["valid_item"], cells["test_item"]))
    return rows


def ranks_in_split_order(evaluated: dict, order: list[tuple[str, str, str]], split: str) -> dict[str, list[int]]:
    """`recipes.evaluate`'s ranks re-ordered into the split file's user order; every user must be there once, with
    the same target (so the pairing with the peers is user by user on the identical split)."""
    ranks = evaluated["ranks"]
    column = 2 if split == "test" else 1
    position = {user: n for n, user in enumerate(ranks["user_ids"])}
    if len(position) != len(ranks["user_ids"]) or set(position) != {row[0] for row in order}:
        missing = sorted({row[0] for row in order} - set(position))[:3]
        extra = sorted(set(position) - {row[0] for row in order})[:3]
        raise ValueError(f"{split}: UniMP ranked {len(ranks['user_ids'])} users, the split file has {len(order)} "
                         f"(missing e.g. {missing}, extra e.g. {extra}); evaluate every user (no --max-users)")
    for row in order:
        target = ranks["target_item_ids"][position[row[0]]]
        if target != row[column]:
            raise ValueError(f"{split}: user {row[0]!r} has target {target!r} in UniMP's split but {row[column]!r} in "
                             "the split file: the export is stale (rerun benchmarks.recbole_export)")
    return {masking: [ranks[masking][position[row[0]]] for row in order] for masking in contract.MASKINGS}


def contract_lines(dataset: str, variant: str, seed: int, steps: int, run_dir: Path, order) -> list[dict]:
    """One contract line per masking from a finished run's `metrics.json` (training) and `metrics_<split>.json`."""
    training = json.loads((run_dir / "metrics.json").read_text())
    test = json.loads((run_dir / "metrics_test.json").read_text())
    valid = json.loads((run_dir / "metrics_validation.json").read_text())
    test_ranks = ranks_in_split_order(test, order, "test")
    valid_ranks = ranks_in_split_order(valid, order, "validation")
    best = training.get("best_checkpoint")
    import torch
    import transformers

    common = {
        "dataset": dataset, "task": "rec", "model": MODEL_NAME, "variant": variant_name(variant), "seed": seed,
        "split": "test",
        "budget": {"steps": steps, "global_step": training["global_step"], "eval_every": EVAL_EVERY[dataset],
                   "best_step": int(Path(best).name.split("-")[1]) if best else None,
                   "schedule": f"warmup_stable_decay, linear decay over the last {DECAY_FRACTION:.0%}"},
        "train_seconds": float(training["trainer_seconds"]),
        "eval_users_per_s": float(test["eval_users_per_second"]),
        "peak_rss_mib": float(training["peak_rss_mib"]),
        "commit": contract.git_commit(REPO), "date": contract.utc_now(), "cpu": contract.cpu_info(),
        "n_users": len(order), "n_items": test["num_items"],
        "users_sha256": contract.users_digest(row[0] for row in order),
        "valid_users": len(valid_ranks["none"]),
        "rank_ties": "pessimistic: r = #{items j not masked : s_j >= s_target}",
        "config": str(CONFIGS[dataset].relative_to(REPO)), "overrides": variant_overrides(variant, dataset),
        "history_window": {k: test[k] for k in ("max_history_items", "context_order", "content_history_items")},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }
    return [dict(common, masking=masking, metrics=contract.metrics_from_ranks(test_ranks[masking]),
                 valid_metrics=contract.metrics_from_ranks(valid_ranks[masking]), ranks=test_ranks[masking],
                 masking_note=MASKING_NOTES[masking])
            for masking in contract.MASKINGS]


def existing_keys(results_dir: Path) -> set:
    return {contract.row_key(line) for line in contract.read_results(results_dir)} if results_dir.exists() else set()


def run_seed(dataset: str, variant: str, seed: int, steps: int, out_dir: Path, extra: list[str], *,
             atomic_dir: Path, results_dir: Path | None) -> dict:
    """Train, evaluate every validation and test user, append the contract lines (unless `results_dir` is None)."""
    run_dir = out_dir / f"{dataset}-{variant}-s{seed}"
    log = out_dir / f"{dataset}-{variant}-s{seed}.log"
    started = time.time()
    if not (run_dir / "metrics.json").exists():   # recipes.train resumes from run_dir's last checkpoint
        ensure_prerequisites(variant, dataset, log)
        run_logged([sys.executable, "-m", "recipes.train", str(CONFIGS[dataset]), f"output_dir={run_dir}",
                    f"seed={seed}", "disable_tqdm=true", *schedule_overrides(steps, EVAL_EVERY[dataset]),
                    *variant_overrides(variant, dataset), *extra], log)
    if variant == "user_disjoint":   # other users than the peers' split: nothing to pair, no contract lines
        return json.loads((run_dir / "metrics.json").read_text())
    if not (run_dir / "metrics_test.json").exists():
        run_logged([sys.executable, "-m", "recipes.evaluate", str(run_dir), "--split", "validation", "test"], log)
    lines = contract_lines(dataset, variant, seed, steps, run_dir, read_split_order(atomic_dir, dataset))
    if results_dir is not None:
        contract.append_results(lines, results_dir)
    summary = {line["masking"]: round(line["metrics"]["ndcg@10"], 4) for line in lines}
    print(f"[bench] {dataset}/{variant}/seed {seed}: {steps} steps, test NDCG@10 {summary}, "
          f"{time.time() - started:.0f} s", flush=True)
    return json.loads((run_dir / "metrics.json").read_text())


def load_rating_peers(path: Path) -> dict[str, list[dict]]:
    """RecBole rating runs chosen on validation RMSE (one per model), by dataset, from run_rating_peers.py's file."""
    runs: dict[str, list[dict]] = {}
    if path.exists():
        for run in json.loads(path.read_text())["runs"]:
            if run.get("status") == "ok" and run.get("selected_by_valid_rmse"):
                runs.setdefault(run["dataset"], []).append(run)
    return runs


RATING_BASELINES = {"global_mean": "global mean", "user_mean": "per-user mean", "item_mean": "per-item mean",
                    "user_item_bias": "bias baseline mu + b_u + b_i"}


def format_rating_tables(dataset: str, unimp: dict[str, dict], peers: list[dict]) -> str:
    """Rating MAE/RMSE (test) of UniMP runs that trained the exp task, the mean baselines, the RecBole models;
    plus the explanation metrics where the data has explanation text. Empty when no UniMP run rated."""
    rated = {variant: metrics["exp"] for variant, metrics in unimp.items() if "exp" in metrics}
    if not rated:
        return ""
    lines = ["| model | test MAE | test RMSE | epochs / steps | train s |", "|---|---|---|---|---|"]
    first = next(iter(rated.values()))
    for key, label in RATING_BASELINES.items():  # computed by recipes/evaluate.py on the same test users
        lines.append(f"| {label} | {first[key]['mae']:.4f} | {first[key]['rmse']:.4f} | fit on train | 0 |")
    for run in sorted(peers, key=lambda r: r["valid"]["rmse"]):
        lr = run.get("overrides", {})
        label = f"RecBole {run['model']} (lr {lr.get('learning_rate')}, wd {lr.get('weight_decay')})"
        lines.append(f"| {label} | {run['test']['mae']:.4f} | {run['test']['rmse']:.4f} | "
                     f"{run['epochs_run']} ep (best {run['best_epoch']}) | {run['train_seconds']:.0f} |")
    for variant, exp in rated.items():
        steps, seconds = unimp[variant]["global_step"], unimp[variant]["trainer_seconds"]
        name = "UniMP-tiny" if variant == "unimp" else f"UniMP-tiny {variant}"
        for key, how in (("unimp_rating", "most likely rating token"), ("unimp_rating_expected", "expected rating")):
            lines.append(f"| {name}, {how} | {exp[key]['mae']:.4f} | {exp[key]['rmse']:.4f} | {steps} steps | "
                         f"{seconds:.0f} |")
    text = f"### {dataset}: rating prediction\n\n" + "\n".join(lines) + "\n"
    explained = {variant: exp for variant, exp in rated.items() if "unimp_explanation" in exp}
    if explained:
        names = ("rouge1", "rouge2", "rougeL", "bleu4", "unigram_precision")
        rows = ["| model | users | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        first = next(iter(explained.values()))
        rows.append(f"| repeat the user's latest explanation | {first['num_explanations']} | "
                    + " | ".join(f"{first['last_explanation_baseline'][n]:.4f}" for n in names) + " |")
        for variant, exp in explained.items():
            name = "UniMP-tiny" if variant == "unimp" else f"UniMP-tiny {variant}"
            rows.append(f"| {name} (greedy) | {exp['num_explanations']} | "
                        + " | ".join(f"{exp['unimp_explanation'][n]:.4f}" for n in names) + " |")
        text += f"\n### {dataset}: explanation generation\n\n" + "\n".join(rows) + "\n"
    return text


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--variants", nargs="+", default=["unimp"], choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None,
                        help=f"optimizer steps of every run (default: the dataset's in <results-dir>/{BUDGETS_FILE})")
    parser.add_argument("--choose-budget", action="store_true",
                        help=f"only train each dataset's validation curve and record its budget in {BUDGETS_FILE}")
    parser.add_argument("--force", action="store_true", help="rerun rows already in the results files")
    parser.add_argument("--results-dir", type=Path, default=contract.RESULTS_DIR)
    parser.add_argument("--no-results", action="store_true", help="write no contract lines (smoke runs)")
    parser.add_argument("--atomic-dir", type=Path, default=REPO / "outputs/recbole_atomic",
                        help="the RecBole export whose <ds>.split.tsv orders the ranks (written when missing)")
    parser.add_argument("--rating-peers", type=Path, default=REPO / "benchmarks/peer_results/rating.json")
    parser.add_argument("--out", type=Path, default=REPO / "outputs/bench")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every UniMP run")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rating_peers = load_rating_peers(args.rating_peers)
    results_dir = None if args.no_results else args.results_dir
    budgets_path = args.results_dir / BUDGETS_FILE
    report, results, failures = [], {}, []
    for dataset in args.datasets:   # datasets outer, seeds inner: complete seed sets land first
        if args.choose_budget:
            results[dataset] = run_curve(dataset, args.out, args.overrides, budgets_path)
            continue
        steps = step_budget(dataset, budgets_path, args.steps)
        if steps is None:   # no budget yet: choose it on validation first
            steps = run_curve(dataset, args.out, args.overrides, budgets_path)["steps"]
        results[dataset] = {}
        for variant in args.variants:
            if dataset not in APPLIES_TO.get(variant, {dataset}):
                print(f"[bench] {dataset}/{variant}: skipped (the variant applies to {sorted(APPLIES_TO[variant])})")
                continue
            variant_steps = steps
            if variant in EQUAL_REC_EXAMPLES:
                counts = training_example_counts(dataset, variant, args.overrides)
                variant_steps = equal_rec_steps(steps, counts, EVAL_EVERY[dataset])
                print(f"[bench] {dataset}/{variant}: training examples {counts}: {variant_steps} steps for the rec "
                      f"examples of {steps} rec-only steps", flush=True)
            for seed in args.seeds:
                keys = {(dataset, "rec", MODEL_NAME, variant_name(variant), seed, m) for m in contract.MASKINGS}
                if not args.force and results_dir is not None and keys <= existing_keys(results_dir):
                    print(f"[bench] {dataset}/{variant}/seed {seed}: in {results_dir} already (--force reruns it)")
                    continue
                try:
                    results[dataset][f"{variant} s{seed}"] = run_seed(
                        dataset, variant, seed, variant_steps, args.out, args.overrides, atomic_dir=args.atomic_dir,
                        results_dir=results_dir)
                except (RuntimeError, ValueError) as error:  # one failed run does not stop the queue; rerun resumes
                    failures.append(f"{dataset}/{variant}/seed {seed}: {error}")
                    print(f"[bench] FAILED {failures[-1]}", flush=True)
        report.append(format_rating_tables(dataset, results[dataset], rating_peers.get(dataset, [])))
    text = "\n".join(part for part in report if part)
    if text:
        (args.out / "rating_tables.md").write_text(text)
        print(text)
    if failures:
        raise SystemExit("[bench] failed runs (rerun the same command to resume them):\n" + "\n".join(failures))
    return results


if __name__ == "__main__":
    main()
