"""New-domain transfer (issue 12, item 4; reference §5.2 and §6.2b): UniMP-tiny trained on Amazon MI, ranked on the
Amazon 2018 small categories (Gift Cards + Magazine Subscriptions, users keyed per category) zero-shot and after a
short fine-tune, next to the target-only peers, as contract lines in ``benchmarks/results/amazon-2018.jsonl``.

Stages (``--stages``, all by default):

- ``pop``: popularity = interaction counts of the target's training split (histories and targets, i.e. every user's
  i_1..i_{n-2}), ranked over the target catalogue, both maskings (model ``Pop``, variant ``training counts``).
- ``zero-shot``: the source checkpoint (``--source-checkpoint``, else trained here: ``recipes.train`` on
  ``recipes/configs/amazon_mi_tiny.yaml`` with ``item_representation=content`` for the amazon-mi step budget of
  ``benchmarks/results/step_budgets.json``, else DEFAULT_SOURCE_STEPS, on run_benchmark's step-based schedule) gets the
  target catalogue's 279 items as new content items (`add_catalogue_items`: MiniLM text -> the trained content
  encoder, id residual zero, nothing retrained); every target validation and test user is then ranked over the
  target catalogue only. The checkpoint with the target items is saved (``<out>/zero-shot-s<seed>``).
- ``fine-tune``: that checkpoint trained on the target training split with the source config's tasks and settings
  (rec + exp, batch 32, lr 1e-3 after 20 warmup steps, then constant) for up to FINETUNE_STEPS steps, validated every
  FINETUNE_EVAL_EVERY steps on all target validation users (NDCG@10 over the target catalogue, nothing masked); the
  checkpoint with the highest validation NDCG@10 (the first on ties) is tested. Its step is the `budget` reported:
  the fine-tune budget is chosen on target validation, never on test.

Candidates. The source items stay in the model's vocabulary (the zero-shot model must keep them: its vocabulary
and content buffers are the source checkpoint's plus the target's) but are never candidates in the target domain:
`restricted_ranks` ranks each user's target among the target catalogue's columns of the score matrix only, which is
exactly the rank with every source item scored -inf (ties counted against the target, as everywhere here). During
fine-tuning the source item tokens remain in the softmax of the training loss (extra negatives); selection and test
rank over the target catalogue only.

The target-only SASRec and RecBole Pop rows come from ``run_peers.py`` on the export of the same split
(``make bench-new-domain`` runs them first); the ranks of every line here are in the order of that export's
``amazon-2018.split.tsv``, so all rows pair user by user.

Usage: python -m benchmarks.new_domain [--source-checkpoint DIR] [--seeds 0] [--stages pop zero-shot fine-tune]
       python -m benchmarks.new_domain --table   # the Markdown table of BENCHMARKS.md "New-domain transfer"
       python -m benchmarks.new_domain --source-steps 30 --finetune-steps 20 --finetune-eval-every 10 --no-results
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import results as contract  # noqa: E402  (standard library only, shared with run_peers.py)

SOURCE, TARGET = "amazon-mi", "amazon-2018"  # contract / RecBole names
SOURCE_BUILDER, TARGET_BUILDER = "amazon-mi-2014-5core", "amazon-2018-small-5core"
SOURCE_CONFIG = REPO / "recipes/configs/amazon_mi_tiny.yaml"
SOURCE_OVERRIDES = ["item_representation=content"]  # zero-shot needs item vectors made of content (issue 12)
DEFAULT_SOURCE_STEPS = 600  # when step_budgets.json has no amazon-mi budget: run_benchmark's curve length (CURVE_STEPS)
SOURCE_EVAL_EVERY = 150  # run_benchmark.EVAL_EVERY["amazon-mi"]
FINETUNE_STEPS = 300  # the fine-tune's cap: about 6 epochs of the target's 1,628 rec + exp training windows at batch 32
FINETUNE_EVAL_EVERY = 50
MODEL_NAME = "UniMP-tiny"
STAGES = ("pop", "zero-shot", "fine-tune")
RANK_TIES = "pessimistic: r = #{items j not masked : s_j >= s_target}"
CANDIDATES_NOTE = ("ranked over the target catalogue only: the source (amazon-mi) item tokens are in the model's "
                   "vocabulary but not candidates (exactly their scores at -inf)")
MASKING_NOTES = {
    "none": "nothing masked: every target catalogue item is ranked",
    "history": "the user's history items (train items, + the valid item at test) set to -inf before ranking",
}


def zero_shot_variant() -> str:
    return f"zero-shot from {SOURCE}"


def finetune_variant(cap: int) -> str:
    return f"fine-tuned from {SOURCE} (up to {cap} steps)"


# ---------------------------------------------------------------------------------------------- ranking
def restricted_ranks(scores: torch.Tensor, targets, candidates, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """1-based rank of each target among the `candidates` columns of `scores` only (ties counted against it).

    Equal to `rank_of_targets(scores, targets, exclude | ~candidate)`: every item that is not a candidate is out of
    the ranking, as if scored -inf; a target outside the candidates raises `ValueError`.

    Args:
        scores: (n, num_items) item scores of the model's whole catalogue.
        targets: n catalogue indices.
        candidates: the catalogue indices that are ranked (the target domain's items).
        exclude: optional (n, num_items) bool, True where an item is masked (the user's history).
    Returns: (n,) long ranks in [1, len(candidates)].
    """
    from processing.metrics_unimp import rank_of_targets

    candidates = torch.as_tensor(list(candidates), dtype=torch.long)
    position = {int(index): column for column, index in enumerate(candidates.tolist())}
    if len(position) != len(candidates):
        raise ValueError("candidates repeat an item")
    targets = [int(t) for t in targets]
    outside = [t for t in targets if t not in position]
    if outside:
        raise ValueError(f"{len(outside)} targets are not candidates (e.g. catalogue index {outside[0]})")
    columns = torch.tensor([position[t] for t in targets], dtype=torch.long)
    return rank_of_targets(scores[:, candidates], columns,
                           exclude=None if exclude is None else exclude[:, candidates])


def target_candidates(processor, dataset_dict) -> list[int]:
    """The processor's catalogue indices of the target dataset's items (its "items" split), in that order."""
    return [processor.item_index(item_id) for item_id in dataset_dict["items"]["item_id"]]


def rank_split(model, processor, dataset_dict, split: str, candidates, *, batch_size: int = 64, examples=None,
               image_cache=None) -> dict:
    """Every user of `split` ranked over `candidates` by the model, both maskings.

    Returns: {"user_ids", "target_item_ids", "none", "history"} (lists in the split's row order) and
    "eval_users_per_second".
    """
    from recipes.common import ImageCache, render_examples
    from recipes.evaluate import score_examples, training_history_mask

    if examples is None:
        examples = render_examples(dataset_dict, processor, tasks=["rec"], split=split, task_weights=None,
                                   images=ImageCache(processor.image_processor.size["height"]))
    users = [example["user_id"] for example in examples]
    targets = [example["target_index"] for example in examples]
    started = time.perf_counter()
    scores = score_examples(model, processor, examples, batch_size=batch_size, image_cache=image_cache)
    seconds = time.perf_counter() - started
    history = training_history_mask(dataset_dict, processor, users, split)
    return {"user_ids": users, "target_item_ids": [processor.item_ids[t] for t in targets],
            "none": restricted_ranks(scores, targets, candidates).tolist(),
            "history": restricted_ranks(scores, targets, candidates, exclude=history).tolist(),
            "eval_users_per_second": len(examples) / max(seconds, 1e-9)}


def popularity_ranks(dataset_dict, split: str) -> dict:
    """Popularity over the dataset's own catalogue ("items" split): scores = interaction counts of the training
    split (histories and targets); both maskings, ties counted against the target. Same keys as `rank_split`."""
    from processing.metrics_unimp import rank_of_targets

    items = list(dataset_dict["items"]["item_id"])
    index = {item_id: k for k, item_id in enumerate(items)}
    counts = Counter()
    for row in dataset_dict["train"]:
        counts.update(row["history_item_ids"])
        counts[row["target_item_id"]] += 1
    rows = dataset_dict[split]
    started = time.perf_counter()
    scores = torch.tensor([float(counts.get(item_id, 0)) for item_id in items]).expand(len(rows), -1)
    history = torch.zeros(len(rows), len(items), dtype=torch.bool)
    for n, past in enumerate(rows["history_item_ids"]):
        history[n, [index[item_id] for item_id in past]] = True
    targets = torch.tensor([index[item_id] for item_id in rows["target_item_id"]])
    ranks = {"none": rank_of_targets(scores, targets).tolist(),
             "history": rank_of_targets(scores, targets, exclude=history).tolist()}
    seconds = time.perf_counter() - started
    return {"user_ids": list(rows["user_id"]), "target_item_ids": list(rows["target_item_id"]), **ranks,
            "eval_users_per_second": len(rows) / max(seconds, 1e-9)}


# ---------------------------------------------------------------------------------------------- models
def target_item_dicts(dataset_dict) -> list[dict]:
    """The target catalogue as `add_catalogue_items` input: item_id, title, (key, value) attributes, image path."""
    from processing.task_records import items_by_id

    return [{"item_id": item_id, "title": item.get("title") or "",
             "attributes": list(item["attributes"]),  # (key, value) pairs (items_by_id)
             "image": item["image"] if isinstance(item.get("image"), str) else None}
            for item_id, item in items_by_id(dataset_dict["items"]).items()]


def add_target_catalogue(model, processor, dataset_dict, *, text_encoder=None) -> list[int]:
    """Add the target dataset's items to a trained content model and its processor as new content items (no
    retraining); returns their catalogue indices (the candidates, in the "items" split's order).

    Raises `ValueError` for an id model (nothing to compose a new item from) or an item id already in the catalogue
    (a target item must not reuse a source item's trained token).
    """
    from modeling_unimp.item_content_unimp import add_catalogue_items

    if not model.config.uses_item_content:
        raise ValueError(f"zero-shot transfer needs a source model with item_representation 'content' (or "
                         f"'id+content'); this one is {model.config.item_representation!r}: train the source with "
                         "item_representation=content")
    items = target_item_dicts(dataset_dict)
    shared = [item["item_id"] for item in items if item["item_id"] in set(processor.item_ids)]
    if shared:
        raise ValueError(f"{len(shared)} target items are source items too (e.g. {shared[0]!r}): the target "
                         "catalogue would not be new")
    return add_catalogue_items(model, processor, items, text_encoder=text_encoder)


def source_budget(budgets_path: Path, steps: int | None) -> tuple[int, str]:
    """(source steps, where they come from): --source-steps, else the amazon-mi budget of step_budgets.json, else
    DEFAULT_SOURCE_STEPS."""
    if steps:
        return steps, "--source-steps"
    budgets = json.loads(budgets_path.read_text()) if budgets_path.exists() else {}
    if SOURCE in budgets:
        return int(budgets[SOURCE]["steps"]), f"{budgets_path.name} ({SOURCE}, chosen on validation)"
    return DEFAULT_SOURCE_STEPS, f"fixed default (no {SOURCE} budget in {budgets_path.name})"


def source_eval_every(steps: int) -> int:
    """Validation interval of the source run: SOURCE_EVAL_EVERY, or the whole run when it does not divide it."""
    return SOURCE_EVAL_EVERY if steps % SOURCE_EVAL_EVERY == 0 else steps


def train_source(run_dir: Path, steps: int, seed: int, extra: list[str], log: Path) -> Path:
    """`recipes.train` on the amazon-mi config with item_representation=content for a fixed step budget (the
    run_benchmark schedule); skipped when `run_dir` holds a finished run. Returns `run_dir`."""
    from benchmarks.run_benchmark import schedule_overrides

    if (run_dir / "metrics.json").exists():
        return run_dir
    command = [sys.executable, "-m", "recipes.train", str(SOURCE_CONFIG), f"output_dir={run_dir}", f"seed={seed}",
               "disable_tqdm=true", *schedule_overrides(steps, source_eval_every(steps)), *SOURCE_OVERRIDES, *extra]
    print(f"[new-domain] source: {' '.join(command[2:])}  (log {log})", flush=True)
    with log.open("a") as handle:
        result = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"the source training failed (exit {result.returncode}); see {log}")
    return run_dir


def finetune_overrides(steps: int, eval_every: int) -> list[str]:
    """`recipes.train`-style overrides of the fine-tune: constant LR after the config's warmup, validation and a
    checkpoint every `eval_every` steps (and at the last), every validation user, no wall-clock cap."""
    if steps < 1 or eval_every < 1 or steps % eval_every:
        raise ValueError(f"fine-tune steps ({steps}) must be a positive multiple of eval_every ({eval_every}), so "
                         "that the last step is validated")
    return [f"max_steps={steps}", "max_train_seconds=null", "time_decay_fraction=0",
            "lr_scheduler_type=constant_with_warmup", f"eval_steps={eval_every}", f"save_steps={eval_every}",
            "save_total_limit=2", "max_eval_users=null", "disable_tqdm=true"]


def finetune(zero_shot_dir: Path, dataset_dict, out_dir: Path, *, steps: int, eval_every: int, seed: int,
             extra: list[str], data_dir: str | None = None) -> dict:
    """Fine-tune the zero-shot checkpoint on the target training split, select on target validation NDCG@10 over
    the target catalogue, rank validation and test with the selected weights. Resumes from `<out_dir>/ranks.json`.

    Returns: {"validation": rank_split(...), "test": rank_split(...), "best_step", "global_step", "train_seconds",
    "valid_curve"}.
    """
    from transformers import set_seed

    from modeling_unimp import UniMPForConditionalGeneration, UniMPImageCache, UniMPProcessor
    from modeling_unimp.trainer_unimp import UniMPTrainer, set_trainable
    from processing import UniMPDataCollator
    from recipes.common import (
        ImageCache,
        apply_history_layout,
        last_complete_checkpoint,
        record_training_data_licence,
        render_examples,
        set_torch_threads,
    )
    from recipes.train import parse_args as parse_train_args

    done = out_dir / "ranks.json"
    if done.exists():
        return json.loads(done.read_text())
    argv = [str(SOURCE_CONFIG), f"dataset={TARGET_BUILDER}", f"model_name_or_path={zero_shot_dir}",
            f"output_dir={out_dir}", f"seed={seed}", *finetune_overrides(steps, eval_every), *extra]
    if data_dir:
        argv.append(f"data_dir={data_dir}")
    recipe, training = parse_train_args(argv)
    set_torch_threads()
    set_seed(training.seed)
    model = UniMPForConditionalGeneration.from_pretrained(zero_shot_dir)
    processor = apply_history_layout(UniMPProcessor.from_pretrained(zero_shot_dir), recipe)
    if training.max_history_items is not None:
        processor.max_history_items = training.max_history_items
    record_training_data_licence(processor, dataset_dict, TARGET_BUILDER)
    candidates = target_candidates(processor, dataset_dict)
    set_trainable(model, training.trainable_stage)
    images = ImageCache(processor.image_processor.size["height"])
    image_cache = UniMPImageCache(processor)
    train_examples = render_examples(
        dataset_dict, processor, tasks=recipe.tasks, split="train", task_weights=training.task_weights,
        num_windows_per_user=recipe.num_windows_per_user, seed=training.seed, images=images)
    valid_examples = render_examples(dataset_dict, processor, tasks=["rec"], split="validation", task_weights=None,
                                     images=images)

    def validation_ranking(current) -> dict:  # selection: target validation, target catalogue, nothing masked
        ranked = rank_split(current, processor, dataset_dict, "validation", candidates, examples=valid_examples,
                            batch_size=training.per_device_eval_batch_size, image_cache=image_cache)
        return contract.metrics_from_ranks(ranked["none"])

    trainer = UniMPTrainer(
        model=model, args=training, train_dataset=train_examples, eval_dataset=valid_examples,
        data_collator=UniMPDataCollator(processor, context_weight=training.context_weight, image_cache=image_cache),
        processing_class=processor, evaluation_fn=validation_ranking)
    started = time.time()
    trainer.train(resume_from_checkpoint=last_complete_checkpoint(out_dir))  # an interrupted fine-tune resumes
    train_seconds = time.time() - started
    best = trainer.state.best_model_checkpoint
    trainer.model.save_pretrained(out_dir)  # the selected weights (load_best_model_at_end)
    processor.save_pretrained(out_dir)
    ranked = {split: rank_split(trainer.model, processor, dataset_dict, split, candidates,
                                batch_size=training.per_device_eval_batch_size, image_cache=image_cache)
              for split in ("validation", "test")}
    result = {**ranked, "best_step": int(Path(best).name.split("-")[1]) if best else trainer.state.global_step,
              "global_step": trainer.state.global_step, "train_seconds": round(train_seconds, 1),
              "train_examples": len(train_examples),
              "valid_curve": {entry["step"]: entry["eval_ndcg@10"] for entry in trainer.state.log_history
                              if "eval_ndcg@10" in entry}}
    done.write_text(json.dumps(result))
    return result


# ---------------------------------------------------------------------------------------------- contract lines
def read_split_order(atomic_dir: Path, data_dir: str | None = None) -> list[tuple[str, str, str]]:
    """(user, valid item, test item) in the order of the target export's split file (written when missing)."""
    from benchmarks.run_benchmark import read_split_order as read_order

    if not (atomic_dir / TARGET / f"{TARGET}.split.tsv").exists():
        from benchmarks.recbole_export import export_recbole_atomic

        export_recbole_atomic(TARGET_BUILDER, atomic_dir, data_dir=data_dir)
    return read_order(atomic_dir, TARGET)


def contract_lines(*, model: str, variant: str, seed: int, budget: dict, train_seconds: float,
                   valid: dict, test: dict, order, n_items: int, extra: dict | None = None) -> list[dict]:
    """One contract line per masking from `rank_split`/`popularity_ranks` outputs of validation and test; the ranks
    are put in the split file's user order (each user once, with the same targets: `ranks_in_split_order`)."""
    from benchmarks.run_benchmark import ranks_in_split_order

    test_ranks = ranks_in_split_order({"ranks": test}, order, "test")
    valid_ranks = ranks_in_split_order({"ranks": valid}, order, "validation")
    common = {
        "dataset": TARGET, "task": "rec", "model": model, "variant": variant, "seed": seed, "split": "test",
        "budget": budget, "train_seconds": float(train_seconds),
        "eval_users_per_s": float(test["eval_users_per_second"]), "peak_rss_mib": float(contract.peak_rss_mib()),
        "commit": contract.git_commit(REPO), "date": contract.utc_now(), "cpu": contract.cpu_info(),
        "n_users": len(order), "n_items": n_items,
        "users_sha256": contract.users_digest(row[0] for row in order), "valid_users": len(order),
        "rank_ties": RANK_TIES, "runner": "benchmarks/new_domain.py",
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        **(extra or {}),
    }
    return [dict(common, masking=masking, metrics=contract.metrics_from_ranks(test_ranks[masking]),
                 valid_metrics=contract.metrics_from_ranks(valid_ranks[masking]), ranks=test_ranks[masking],
                 masking_note=MASKING_NOTES[masking])
            for masking in contract.MASKINGS]


def existing_keys(results_dir: Path | None) -> set:
    if results_dir is None or not contract.results_path(TARGET, results_dir).exists():
        return set()
    return {contract.row_key(line) for line in contract.read_results(contract.results_path(TARGET, results_dir))}


def keys_of(model: str, variant: str, seed: int) -> set:
    return {(TARGET, "rec", model, variant, seed, masking) for masking in contract.MASKINGS}


def land(lines: list[dict], results_dir: Path | None, label: str) -> None:
    """Validate (always) and append (unless --no-results) the lines; print test NDCG@10 per masking."""
    for line in lines:
        contract.validate_line(line)
    if results_dir is not None:
        contract.append_results(lines, results_dir)
    summary = {line["masking"]: round(line["metrics"]["ndcg@10"], 4) for line in lines}
    where = contract.results_path(TARGET, results_dir) if results_dir is not None else "not written (--no-results)"
    print(f"[new-domain] {label}: test NDCG@10 {summary} -> {where}", flush=True)


def format_table(lines: list[dict]) -> str:
    """Markdown table of the target's result lines (BENCHMARKS.md "New-domain transfer"): one row per (model,
    variant, masking), mean ± sample sd over seeds of the test metrics, validation NDCG@10, budget."""
    import statistics

    rows: dict[tuple, list[dict]] = {}
    for line in lines:  # the last line of a row key wins (report.latest_lines' rule)
        rows.setdefault((line["model"], line["variant"], line["masking"]), {})[line["seed"]] = line
    out = ["| model | variant | masking | seeds | valid NDCG@10 | HR@10 | NDCG@10 | MRR@10 | HR@20 | NDCG@20 | "
           "budget |", "|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(values: list[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.4f}"
        return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"

    for (model, variant, masking), by_seed in sorted(rows.items(), key=lambda kv: (kv[0][0].startswith("UniMP"),
                                                                                 kv[0])):
        seeds = [by_seed[s] for s in sorted(by_seed)]
        budgets = [line["budget"] for line in seeds]
        budget = (", ".join(sorted({f"{b['steps']} steps" for b in budgets})) if all("steps" in b for b in budgets)
                  else ", ".join(sorted({f"{b['epochs']} ep (best {b['best_epoch']})" for b in budgets})))
        metrics = " | ".join(cell([line["metrics"][key] for line in seeds])
                             for key in ("hr@10", "ndcg@10", "mrr@10", "hr@20", "ndcg@20"))
        out.append(f"| {model} | {variant} | {masking} | {len(seeds)} | "
                   f"{cell([line['valid_metrics']['ndcg@10'] for line in seeds])} | {metrics} | {budget} |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--source-checkpoint", type=Path, default=None,
                        help="a trained amazon-mi content checkpoint (default: train one here per seed)")
    parser.add_argument("--source-steps", type=int, default=None,
                        help=f"source budget (default: the {SOURCE} budget of step_budgets.json, else "
                             f"{DEFAULT_SOURCE_STEPS})")
    parser.add_argument("--source-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra recipes.train overrides of the source run (e.g. max_test_users=20 for a smoke)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="source training and fine-tune seeds (one seed with --source-checkpoint)")
    parser.add_argument("--finetune-steps", type=int, default=FINETUNE_STEPS, help="the fine-tune's step cap")
    parser.add_argument("--finetune-eval-every", type=int, default=FINETUNE_EVAL_EVERY)
    parser.add_argument("--finetune-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra recipes.train overrides of the fine-tune (e.g. learning_rate=3e-4)")
    parser.add_argument("--batch-size", type=int, default=64, help="evaluation prompts per forward pass")
    parser.add_argument("--data-dir", default=None, help="raw-data folder (default: $UNIMP_DATA_DIR)")
    parser.add_argument("--atomic-dir", type=Path, default=REPO / "outputs/recbole_atomic",
                        help="the RecBole export whose amazon-2018.split.tsv orders the ranks (written when missing)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs/new_domain")
    parser.add_argument("--results-dir", type=Path, default=contract.RESULTS_DIR)
    parser.add_argument("--no-results", action="store_true", help="validate the lines but write none (smoke runs)")
    parser.add_argument("--force", action="store_true", help="rerun rows already in the results file")
    parser.add_argument("--table", action="store_true",
                        help="only print the Markdown table of the results file's amazon-2018 lines")
    args = parser.parse_args(argv)
    if args.source_checkpoint is not None and len(args.seeds) != 1:
        parser.error("--source-checkpoint is one source model: give one --seeds value")
    try:
        finetune_overrides(args.finetune_steps, args.finetune_eval_every)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> dict:
    from processing.datasets_unimp import load_unimp_dataset

    args = parse_args(argv)
    if args.table:
        print(format_table(contract.read_results(contract.results_path(TARGET, args.results_dir))))
        return {}
    args.out = args.out.resolve()  # the source run is a child process started in the repository root
    args.out.mkdir(parents=True, exist_ok=True)
    results_dir = None if args.no_results else args.results_dir
    done = set() if args.force else existing_keys(results_dir)
    dataset_dict = load_unimp_dataset(TARGET_BUILDER, args.data_dir)
    order = read_split_order(args.atomic_dir, args.data_dir)
    n_items = len(dataset_dict["items"])  # the target catalogue: every candidate of every line here
    summary = {}
    if "pop" in args.stages and not keys_of("Pop", "training counts", 0) <= done:
        valid, test = popularity_ranks(dataset_dict, "validation"), popularity_ranks(dataset_dict, "test")
        lines = contract_lines(model="Pop", variant="training counts", seed=0, budget={"steps": 0},
                               train_seconds=0.0, valid=valid, test=test, order=order,
                               n_items=n_items, extra={"candidates_note": "the target catalogue (the dataset's items)",
                                      "pop_note": "interaction counts of the training split (every user's "
                                                  "i_1..i_{n-2}); computed in benchmarks/new_domain.py"})
        land(lines, results_dir, "Pop (training counts)")
        summary["pop"] = {line["masking"]: line["metrics"] for line in lines}
    if not {"zero-shot", "fine-tune"} & set(args.stages):
        return summary
    steps, steps_from = source_budget(args.results_dir / "step_budgets.json", args.source_steps)
    for seed in args.seeds:
        want_zero = "zero-shot" in args.stages and not keys_of(MODEL_NAME, zero_shot_variant(), seed) <= done
        want_fine = "fine-tune" in args.stages and not keys_of(
            MODEL_NAME, finetune_variant(args.finetune_steps), seed) <= done
        if not (want_zero or want_fine):
            print(f"[new-domain] seed {seed}: zero-shot and fine-tune rows in the results already (--force reruns)")
            continue
        source = args.source_checkpoint or train_source(args.out / f"source-{SOURCE}-content-s{seed}", steps, seed,
                                                        args.source_overrides, args.out / f"source-s{seed}.log")
        recorded = json.loads((source / "metrics.json").read_text()) if (source / "metrics.json").exists() else {}
        transfer = {"source": SOURCE, "source_checkpoint": str(source),
                    "source_steps": recorded.get("global_step", steps if args.source_checkpoint is None else None),
                    "source_steps_from": steps_from if args.source_checkpoint is None else "--source-checkpoint",
                    "source_train_seconds": recorded.get("trainer_seconds"),
                    "candidates": CANDIDATES_NOTE}
        zero_dir = args.out / f"zero-shot-s{seed}"
        zero = build_zero_shot(source, dataset_dict, zero_dir, batch_size=args.batch_size)
        transfer.update(item_representation=zero["item_representation"], source_items=zero["source_items"],
                        target_items=len(zero["candidates"]))
        if want_zero:
            lines = contract_lines(
                model=MODEL_NAME, variant=zero_shot_variant(), seed=seed,
                budget={"steps": 0, "note": "no target-domain training"}, train_seconds=0.0,
                valid=zero["validation"], test=zero["test"], order=order, n_items=n_items,
                extra={"transfer": dict(transfer, setting="zero-shot"), "candidates_note": CANDIDATES_NOTE})
            land(lines, results_dir, f"UniMP-tiny zero-shot, seed {seed}")
            summary[f"zero-shot s{seed}"] = {line["masking"]: line["metrics"] for line in lines}
        if want_fine:
            tuned = finetune(zero_dir, dataset_dict, args.out / f"fine-tune-s{seed}", steps=args.finetune_steps,
                             eval_every=args.finetune_eval_every, seed=seed, extra=args.finetune_overrides,
                             data_dir=args.data_dir)
            lines = contract_lines(
                model=MODEL_NAME, variant=finetune_variant(args.finetune_steps), seed=seed,
                budget={"steps": tuned["best_step"], "cap": args.finetune_steps,
                        "eval_every": args.finetune_eval_every, "global_step": tuned["global_step"],
                        "rule": "the fine-tune checkpoint with the highest target validation NDCG@10 (first on ties)",
                        "schedule": "constant_with_warmup (the source config's lr and warmup)"},
                train_seconds=tuned["train_seconds"], valid=tuned["validation"], test=tuned["test"], order=order,
                n_items=n_items,
                extra={"transfer": dict(transfer, setting="fine-tuned", finetune_overrides=args.finetune_overrides,
                                        valid_curve=tuned["valid_curve"]),
                       "candidates_note": CANDIDATES_NOTE})
            land(lines, results_dir, f"UniMP-tiny fine-tuned ({tuned['best_step']} steps), seed {seed}")
            summary[f"fine-tuned s{seed}"] = {line["masking"]: line["metrics"] for line in lines}
    return summary


def build_zero_shot(source: Path, dataset_dict, zero_dir: Path, *, batch_size: int) -> dict:
    """Load the source checkpoint, add the target catalogue, save it to `zero_dir`, rank target validation and test
    over the target items. Resumes from `<zero_dir>/ranks.json`."""
    from modeling_unimp import UniMPForConditionalGeneration, UniMPProcessor
    from recipes.common import set_torch_threads

    done = zero_dir / "ranks.json"
    if done.exists() and (zero_dir / "config.json").exists():
        return json.loads(done.read_text())
    set_torch_threads()
    model = UniMPForConditionalGeneration.from_pretrained(source).eval()
    processor = UniMPProcessor.from_pretrained(source)
    source_items = processor.num_items
    candidates = add_target_catalogue(model, processor, dataset_dict)
    model.save_pretrained(zero_dir)
    processor.save_pretrained(zero_dir)
    ranked = {split: rank_split(model, processor, dataset_dict, split, candidates, batch_size=batch_size)
              for split in ("validation", "test")}
    result = {**ranked, "candidates": candidates, "source_items": source_items,
              "item_representation": model.config.item_representation}
    done.write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
