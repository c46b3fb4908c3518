"""Cold-start items (issue 12): the `cold_items` protocol, scored on the test users whose target is a cold item.

Protocol (`processing/datasets_unimp.py`, protocol "cold_items", the builders' defaults: 10 % of the items, seed
42): leave-one-out on every user; every interaction with a cold item is deleted from training (train histories and
targets; a cold train target is replaced by the user's last warm item), while validation and test rows keep the
user's real history, cold items included, and their target. The catalogue keeps every item, so a cold item is ranked
like any other, from its content. Scored here: the users whose test target is cold ("cold-target test users"; the
validation columns: the users whose validation target is cold), full catalogue, ties counted against the target
(pessimistic: r = #{unmasked j : s_j >= s_target}), masking `none` and `history` (`benchmarks/results.py`).

Models (one contract line per model and masking in `benchmarks/results/<dataset>.jsonl`, `protocol: cold_items`,
`variant` starting with "cold_items", so `report.py` keeps them out of §1.1):
- Pop: training interaction counts. A cold item has count 0, like any item absent from training, so a cold target
  ties with every zero-count item and the pessimistic rule ranks it after all of them: rank = the number of unmasked
  items, the worst rank there is, for every cold-target user. Pop cannot rank a cold item.
- ContentKNN-MiniLM: the all-MiniLM-L6-v2 embedding of each item's text (`item_content_unimp.item_text`, the text a
  content UniMP encodes), score = cosine to the mean of the user's last k history items' embeddings ("mean") or the
  highest cosine to any of them ("max"); (pool, k) chosen per masking on the cold-target validation users' NDCG@10
  among k in KNN_KS. It never sees a count, so cold and warm items rank alike.
- UniMP-tiny, `item_representation` content and id+content (run_benchmark's variants `content`, `id_content`):
  `recipes.train` with `protocol=cold_items` at the dataset's step budget (`results/step_budgets.json`, schedule of
  `run_benchmark.schedule_overrides`; checkpoint chosen on validation NDCG@10 of all users, as in §1.1), then
  `recipes.evaluate` ranks every validation and test user and the cold-target users' ranks are kept. Under
  id+content the cold items' id-residual rows are reset to zero first (`cold_residual_zero/`), the state
  `add_catalogue_items` gives an item added after training (`--keep-cold-residual` evaluates the trained rows
  instead). The cold items are in the catalogue while training, so by default they are softmax negatives of every
  training target (through their content, and their residual rows); the `_seen` variants (`content_seen`,
  `id_content_seen`) train with `train_negatives=seen`, which leaves every item without a training interaction out
  of the training softmax, as if it had been added after training. Which of the two is reported is chosen on the
  cold-target validation users.

Usage: python -m benchmarks.cold_items --baselines-only              # Pop + ContentKNN (minutes on 2 cores)
       python -m benchmarks.cold_items --unimp-only --seeds 0        # UniMP-tiny, ~20 min per run and dataset
"""

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks import run_benchmark as bench
from processing.datasets_unimp import load_unimp_dataset, read_build_report, read_cold_items
from processing.metrics_unimp import rank_of_targets
from processing.task_baselines import CONTENT_KNN_POOLS, content_knn_scores, count_training_popularity
from processing.task_records import items_by_id

contract = bench.contract  # benchmarks/results.py, the module run_benchmark writes with
PROTOCOL = "cold_items"
SUBSET = "cold-target test users"
VALID_SUBSET = "cold-target validation users"
DATASETS = ("ml100k", "hm", "amazon-mi")
POP_MODEL = "Pop"
KNN_MODEL = "ContentKNN-MiniLM"
KNN_KS = (1, 3, 5, 10, 20)
# run_benchmark.VARIANTS content / id_content (item_representation content / id+content); "_seen": trained with
# `train_negatives=seen`, i.e. the cold items are left out of the training softmax, as items added after training
UNIMP_VARIANTS = ("content", "id_content", "content_seen", "id_content_seen")
SEEN = "_seen"
RESIDUAL_DIR = "cold_residual_zero"
RANK_TIES = "pessimistic: r = #{items j not masked : s_j >= s_target}"
MASKING_NOTES = {
    "none": "nothing masked: every catalogue item is ranked",
    "history": "the user's history items (the test row's history: training items and the validation item, cold "
               "items included) set to -inf before ranking",
}
POP_TIES = ("training counts; every cold item has count 0 and so has every other item absent from training: with "
            "pessimistic ties a cold target ranks after all of them, i.e. last among the unmasked items")


def variant_overrides(variant: str, dataset: str) -> list[str]:
    """The recipes.train overrides of a cold-items UniMP variant (after `protocol=cold_items`)."""
    seen = variant.endswith(SEEN)
    return [*bench.variant_overrides(variant.removesuffix(SEEN), dataset), *(["train_negatives=seen"] if seen else [])]


def has_id_residual(variant: str) -> bool:
    return variant.removesuffix(SEEN) == "id_content"


@dataclass
class ColdSplit:
    """A `cold_items` build and what every model here needs from it."""

    dataset: str
    dataset_dict: object
    item_ids: list
    index: dict
    cold: set
    fraction: float
    seed: int

    def rows(self, split: str) -> list[int]:
        """Row indices of `split` whose target is cold, in the split's (user) order."""
        return [n for n, target in enumerate(self.dataset_dict[split]["target_item_id"]) if target in self.cold]

    def subset(self, split: str) -> tuple[list[str], list[int], list[list[int]]]:
        """(user ids, target indices, history indices) of the cold-target rows of `split`."""
        rows = self.dataset_dict[split].select(self.rows(split))
        return (list(rows["user_id"]), [self.index[t] for t in rows["target_item_id"]],
                [[self.index[i] for i in history] for history in rows["history_item_ids"]])

    def cold_record(self) -> dict:
        return {"fraction": self.fraction, "seed": self.seed, "count": len(self.cold),
                "num_items": len(self.item_ids)}


def load_cold_split(dataset: str, data_dir=None, dataset_dict=None) -> ColdSplit:
    """The builder's `cold_items` split of a contract dataset name (the defaults `recipes.train` builds too)."""
    if dataset_dict is None:
        dataset_dict = load_unimp_dataset(bench.BUILDER_NAMES[dataset], data_dir, protocol=PROTOCOL)
    item_ids = list(dataset_dict["items"]["item_id"])
    report = read_build_report(dataset_dict["test"])["cold_items"]
    return ColdSplit(dataset, dataset_dict, item_ids, {item_id: n for n, item_id in enumerate(item_ids)},
                     set(read_cold_items(dataset_dict)), report["fraction"], report["seed"])


def history_mask(histories: list[list[int]], num_items: int) -> torch.Tensor:
    """(U, num_items) True on each user's history items."""
    mask = torch.zeros(len(histories), num_items, dtype=torch.bool)
    for row, history in enumerate(histories):
        mask[row, history] = True
    return mask


def ranks_both_maskings(scores, targets: list[int], histories: list[list[int]]) -> dict[str, list[int]]:
    """{masking: 1-based pessimistic rank of each target}: `none` ranks every item, `history` masks the history."""
    scores = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    targets = torch.tensor(targets)
    exclude = history_mask(histories, scores.shape[1])
    return {"none": rank_of_targets(scores, targets).tolist(),
            "history": rank_of_targets(scores, targets, exclude=exclude).tolist()}


def popularity_scores(split: ColdSplit) -> np.ndarray:
    """(num_items,) training interaction counts: 0 for every cold item."""
    scores = np.zeros(len(split.item_ids))
    for item_id, count in count_training_popularity(split.dataset_dict["train"]).items():
        scores[split.index[item_id]] = count
    return scores


def encode_catalogue(split: ColdSplit, text_encoder=None) -> np.ndarray:
    """(num_items, 384) L2-normalised MiniLM embeddings of the items' texts (zeros for an item without text)."""
    from modeling_unimp.item_content_unimp import encode_item_texts, item_text

    items = items_by_id(split.dataset_dict["items"])
    texts = [item_text(items[item_id]["attributes"], items[item_id]["title"]) for item_id in split.item_ids]
    features, _ = encode_item_texts(texts, text_encoder)
    return features.numpy()


def choose_knn(split: ColdSplit, features: np.ndarray) -> dict[str, dict]:
    """{masking: {"pool", "k", "grid"}}: the (pool, k) with the best NDCG@10 on the cold-target validation users
    (ties: the first in KNN_KS order, "mean" before "max"); grid = every candidate's validation NDCG@10."""
    _, targets, histories = split.subset("validation")
    grid = {masking: {} for masking in contract.MASKINGS}
    for pool in CONTENT_KNN_POOLS:
        for k in KNN_KS:
            ranks = ranks_both_maskings(content_knn_scores(features, histories, k=k, pool=pool), targets, histories)
            for masking in contract.MASKINGS:
                grid[masking][f"{pool} k={k}"] = contract.metrics_from_ranks(ranks[masking])["ndcg@10"]
    chosen = {}
    for masking, values in grid.items():
        best = max(values.values())
        name = next(key for key, value in values.items() if value == best)
        pool, k = name.split(" k=")
        chosen[masking] = {"pool": pool, "k": int(k), "grid": {key: round(v, 6) for key, v in values.items()}}
    return chosen


def _line(split: ColdSplit, *, model: str, variant: str, seed: int, masking: str, test_ranks: list[int],
          valid_ranks: list[int], test_users: list[str], budget: dict, train_seconds: float,
          eval_users_per_s: float, peak_rss_mib: float, **extra) -> dict:
    return {
        "dataset": split.dataset, "task": "rec", "model": model, "variant": variant, "seed": seed,
        "masking": masking, "split": "test", "metrics": contract.metrics_from_ranks(test_ranks),
        "valid_metrics": contract.metrics_from_ranks(valid_ranks), "budget": budget,
        "train_seconds": float(train_seconds), "eval_users_per_s": float(eval_users_per_s),
        "peak_rss_mib": float(peak_rss_mib), "commit": contract.git_commit(bench.REPO), "date": contract.utc_now(),
        "cpu": contract.cpu_info(), "ranks": list(test_ranks),
        "protocol": PROTOCOL, "subset": SUBSET, "valid_subset": VALID_SUBSET, "n_users": len(test_ranks),
        "valid_users": len(valid_ranks), "n_items": len(split.item_ids),
        "users_sha256": contract.users_digest(test_users), "cold_items": split.cold_record(),
        "rank_ties": RANK_TIES, "masking_note": MASKING_NOTES[masking], **extra,
    }


def baseline_lines(split: ColdSplit, features: np.ndarray, encode_seconds: float) -> list[dict]:
    """Pop and ContentKNN-MiniLM lines (both maskings) on the cold-target test users."""
    users, targets, histories = split.subset("test")
    _, valid_targets, valid_histories = split.subset("validation")
    if not targets or not valid_targets:
        raise ValueError(f"{split.dataset}: {len(targets)} cold-target test and {len(valid_targets)} validation "
                         "users: nothing to score (raise the cold fraction)")
    lines = []
    started = time.perf_counter()
    popularity = popularity_scores(split)
    pop_test = ranks_both_maskings(np.tile(popularity, (len(targets), 1)), targets, histories)
    pop_speed = len(targets) / max(time.perf_counter() - started, 1e-9)
    pop_valid = ranks_both_maskings(np.tile(popularity, (len(valid_targets), 1)), valid_targets, valid_histories)
    for masking in contract.MASKINGS:
        lines.append(_line(split, model=POP_MODEL, variant=PROTOCOL, seed=0, masking=masking,
                           test_ranks=pop_test[masking], valid_ranks=pop_valid[masking], test_users=users,
                           budget={"steps": 0}, train_seconds=0.0, eval_users_per_s=pop_speed,
                           peak_rss_mib=contract.peak_rss_mib(), scores=POP_TIES))
    chosen = choose_knn(split, features)
    for masking in contract.MASKINGS:
        pool, k = chosen[masking]["pool"], chosen[masking]["k"]
        started = time.perf_counter()
        test_ranks = ranks_both_maskings(content_knn_scores(features, histories, k=k, pool=pool), targets,
                                         histories)[masking]
        speed = len(targets) / max(time.perf_counter() - started, 1e-9)
        valid_ranks = ranks_both_maskings(content_knn_scores(features, valid_histories, k=k, pool=pool),
                                          valid_targets, valid_histories)[masking]
        lines.append(_line(
            split, model=KNN_MODEL, variant=f"{PROTOCOL}, {pool} of the last {k} history items", seed=0,
            masking=masking, test_ranks=test_ranks, valid_ranks=valid_ranks, test_users=users,
            budget={"steps": 0}, train_seconds=0.0, eval_users_per_s=speed, peak_rss_mib=contract.peak_rss_mib(),
            scores="cosine of all-MiniLM-L6-v2 item-text embeddings (item_content_unimp.item_text) to the user's "
                   f"last {k} history items ({pool}); no interaction counts",
            selection={"on": f"{VALID_SUBSET}, NDCG@10", "grid": chosen[masking]["grid"]},
            encode_seconds=round(encode_seconds, 1)))
    return lines


# ---------------------------------------------------------------------------------------------------------------
# UniMP-tiny
# ---------------------------------------------------------------------------------------------------------------


def zero_cold_id_residual(run_dir: Path, cold_ids, out_name: str = RESIDUAL_DIR) -> Path:
    """`run_dir`'s model and processor with the id-residual rows (input embedding and head) of `cold_ids` set to 0,
    saved to `run_dir/out_name` (reused when there); `recipes.evaluate` reads the run's `metrics.json` one folder
    up. Only for item_representation "id+content"."""
    from modeling_unimp import UniMPForConditionalGeneration, UniMPProcessor
    from modeling_unimp.item_content_unimp import _zero_id_residual  # add_catalogue_items' own reset

    target = Path(run_dir) / out_name
    if (target / "config.json").exists():
        return target
    model = UniMPForConditionalGeneration.from_pretrained(run_dir).eval()
    if model.config.item_representation != "id+content":
        raise ValueError(f"{run_dir} is item_representation {model.config.item_representation!r}: only id+content "
                         "has an id residual to reset")
    processor = UniMPProcessor.from_pretrained(run_dir)
    _zero_id_residual(model, [processor.item_index(item_id) for item_id in cold_ids])
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target


def subset_ranks(evaluated: dict, split: ColdSplit, name: str) -> tuple[list[str], dict[str, list[int]]]:
    """The cold-target users' ranks from `recipes.evaluate`'s `ranks` of every user of split `name`, in the split's
    order; every such user must be there with the same target."""
    ranks = evaluated["ranks"]
    position = {user: n for n, user in enumerate(ranks["user_ids"])}
    users, targets, _ = split.subset(name)
    missing = [user for user in users if user not in position]
    if missing:
        raise ValueError(f"{name}: {len(missing)} cold-target users (e.g. {missing[:3]}) were not ranked; evaluate "
                         "every user (no --max-users)")
    for user, target in zip(users, targets):
        if ranks["target_item_ids"][position[user]] != split.item_ids[target]:
            raise ValueError(f"{name}: user {user!r} has another target in the evaluated split: a stale "
                             "evaluation or another cold-item draw")
    return users, {masking: [ranks[masking][position[user]] for user in users] for masking in contract.MASKINGS}


def unimp_lines(split: ColdSplit, variant: str, seed: int, steps: int, run_dir: Path, eval_dir: Path) -> list[dict]:
    """UniMP-tiny lines (both maskings) from a finished run's `metrics.json` and `eval_dir`'s metrics_<split>.json."""
    training = json.loads((run_dir / "metrics.json").read_text())
    if training.get("protocol") != PROTOCOL:
        raise ValueError(f"{run_dir} was trained with protocol {training.get('protocol')!r}, not {PROTOCOL!r}")
    test = json.loads((eval_dir / "metrics_test.json").read_text())
    valid = json.loads((eval_dir / "metrics_validation.json").read_text())
    users, test_ranks = subset_ranks(test, split, "test")
    _, valid_ranks = subset_ranks(valid, split, "validation")
    best = training.get("best_checkpoint")
    budget = {"steps": steps, "global_step": training["global_step"], "eval_every": bench.EVAL_EVERY[split.dataset],
              "best_step": int(Path(best).name.split("-")[1]) if best else None,
              "schedule": f"warmup_stable_decay, linear decay over the last {bench.DECAY_FRACTION:.0%}",
              "selected_on": "validation NDCG@10 of all validation users (max_eval_users of the config)"}
    residual = ("zeroed for the cold items after training (as add_catalogue_items)" if eval_dir != run_dir
                else "as trained") if has_id_residual(variant) else None
    window = {key: test[key] for key in ("max_history_items", "context_order", "content_history_items")}
    return [_line(split, model=bench.MODEL_NAME, variant=f"{PROTOCOL}+{variant}", seed=seed, masking=masking,
                  test_ranks=test_ranks[masking], valid_ranks=valid_ranks[masking], test_users=users, budget=budget,
                  train_seconds=training["trainer_seconds"], eval_users_per_s=test["eval_users_per_second"],
                  peak_rss_mib=training["peak_rss_mib"],
                  config=str(bench.CONFIGS[split.dataset].relative_to(bench.REPO)),
                  overrides=[f"protocol={PROTOCOL}", *variant_overrides(variant, split.dataset)],
                  cold_id_residual=residual, history_window=window)
            for masking in contract.MASKINGS]


def run_unimp(split: ColdSplit, variant: str, seed: int, steps: int, out_dir: Path, extra: list[str], *,
              keep_cold_residual: bool = False) -> list[dict]:
    """Train (resumes), reset the cold residual (id+content), evaluate every user, return the contract lines."""
    dataset = split.dataset
    run_dir = out_dir / f"{dataset}-{PROTOCOL}-{variant}-s{seed}"
    log = out_dir / f"{dataset}-{PROTOCOL}-{variant}-s{seed}.log"
    if not (run_dir / "metrics.json").exists():
        schedule = bench.schedule_overrides(steps, bench.EVAL_EVERY[dataset])
        bench.run_logged([sys.executable, "-m", "recipes.train", str(bench.CONFIGS[dataset]), f"output_dir={run_dir}",
                          f"seed={seed}", "disable_tqdm=true", *schedule, f"protocol={PROTOCOL}",
                          *variant_overrides(variant, dataset), *extra], log)
    eval_dir = run_dir
    if has_id_residual(variant) and not keep_cold_residual:
        eval_dir = zero_cold_id_residual(run_dir, sorted(split.cold))
    if not all((eval_dir / f"metrics_{name}.json").exists() for name in ("validation", "test")):
        bench.run_logged([sys.executable, "-m", "recipes.evaluate", str(eval_dir), "--split", "validation", "test"],
                         log)
    return unimp_lines(split, variant, seed, steps, run_dir, eval_dir)


# ---------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------


def existing_keys(results_dir: Path | None) -> set:
    if results_dir is None or not results_dir.exists():
        return set()
    return {(line["dataset"], line["model"], line["variant"].split(",")[0], line["seed"], line["masking"])
            for line in contract.read_results(results_dir)
            if line["task"] == "rec" and line.get("protocol") == PROTOCOL}


def _summary(lines: list[dict]) -> str:
    return ", ".join(f"{line['masking']} NDCG@10 {line['metrics']['ndcg@10']:.4f} HR@10 {line['metrics']['hr@10']:.4f}"
                     for line in lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--baselines-only", action="store_true", help="Pop and ContentKNN only (minutes)")
    parser.add_argument("--unimp-only", action="store_true", help="UniMP-tiny only (~20 min per run)")
    parser.add_argument("--variants", nargs="+", default=list(UNIMP_VARIANTS), choices=list(UNIMP_VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="UniMP-tiny training seeds")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"UniMP optimizer steps (default: the dataset's in <results-dir>/{bench.BUDGETS_FILE})")
    parser.add_argument("--keep-cold-residual", action="store_true",
                        help="id+content: evaluate the cold items' trained id-residual rows (default: reset to 0)")
    parser.add_argument("--force", action="store_true", help="rerun rows already in the results files")
    parser.add_argument("--results-dir", type=Path, default=contract.RESULTS_DIR)
    parser.add_argument("--no-results", action="store_true", help="write no contract lines (smoke runs)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=bench.REPO / "outputs/bench/cold_items")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every UniMP run")
    args = parser.parse_args(argv)
    if args.baselines_only and args.unimp_only:
        parser.error("--baselines-only and --unimp-only exclude each other")
    args.out.mkdir(parents=True, exist_ok=True)
    results_dir = None if args.no_results else args.results_dir
    done = set() if args.force else existing_keys(results_dir)
    summary, failures = {}, []
    for dataset in args.datasets:
        split = load_cold_split(dataset, args.data_dir)
        counts = {name: len(split.rows(name)) for name in ("validation", "test")}
        print(f"[cold] {dataset}: {len(split.cold)} of {len(split.item_ids)} items cold (seed {split.seed}); "
              f"cold-target users: validation {counts['validation']}, test {counts['test']}", flush=True)
        summary[dataset] = {"cold_items": split.cold_record(), "cold_target_users": counts}
        if not args.unimp_only:
            keys = {(dataset, model, PROTOCOL, 0, m) for model in (POP_MODEL, KNN_MODEL) for m in contract.MASKINGS}
            if keys <= done:
                print(f"[cold] {dataset}: baselines in {results_dir} already (--force reruns them)")
            else:
                started = time.perf_counter()
                features = encode_catalogue(split)
                lines = baseline_lines(split, features, time.perf_counter() - started)
                if results_dir is not None:
                    contract.append_results(lines, results_dir)
                for model in (POP_MODEL, KNN_MODEL):
                    mine = [line for line in lines if line["model"] == model]
                    summary[dataset][model] = {line["masking"]: {"variant": line["variant"], **line["metrics"]}
                                               for line in mine}
                    print(f"[cold] {dataset}/{model} ({mine[0]['n_users']} users): {_summary(mine)}", flush=True)
        if args.baselines_only:
            continue
        steps = bench.step_budget(dataset, args.results_dir / bench.BUDGETS_FILE, args.steps)
        if steps is None:
            failures.append(f"{dataset}: no step budget in {args.results_dir / bench.BUDGETS_FILE}; choose one "
                            f"first (python -m benchmarks.run_benchmark --datasets {dataset} --choose-budget) or "
                            "pass --steps")
            print(f"[cold] SKIPPED {failures[-1]}", flush=True)
            continue
        for variant in args.variants:
            for seed in args.seeds:
                keys = {(dataset, bench.MODEL_NAME, f"{PROTOCOL}+{variant}", seed, m) for m in contract.MASKINGS}
                if keys <= done:
                    print(f"[cold] {dataset}/{variant}/seed {seed}: in {results_dir} already (--force reruns it)")
                    continue
                try:
                    lines = run_unimp(split, variant, seed, steps, args.out, args.overrides,
                                      keep_cold_residual=args.keep_cold_residual)
                except (RuntimeError, ValueError) as error:  # one failed run does not stop the queue; rerun resumes
                    failures.append(f"{dataset}/{variant}/seed {seed}: {error}")
                    print(f"[cold] FAILED {failures[-1]}", flush=True)
                    continue
                if results_dir is not None:
                    contract.append_results(lines, results_dir)
                summary[dataset][f"UniMP-tiny {variant} s{seed}"] = {line["masking"]: line["metrics"] for line in lines}
                print(f"[cold] {dataset}/UniMP-tiny {variant}/seed {seed}: {_summary(lines)}", flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if failures:
        raise SystemExit("[cold] failed or skipped runs (rerun the same command to resume them):\n"
                         + "\n".join(failures))
    return summary


if __name__ == "__main__":
    main()
