"""Search and selection next to untrained baselines (issue 18, reference §4.2-4.3): `make bench-tasks`.

Search: the query is the target item's category text (`task_records.item_query`, the search records' query); every
model scores the whole catalogue and the target's exact rank (ties against it, `rank_of_targets`) gives
HR/NDCG/MRR@5/10/20. Baselines: BM25 over item text, popularity, popularity filtered by the query, BM25 re-ranked by
TF-IDF similarity to the user's history (λ chosen on validation by NDCG@10). With `--checkpoint`, UniMP's item-token
scores at the search prompt's answer (the scoring path of `recipes.evaluate`) on the checkpoint's dataset; with
`--search-variant V --search-seeds 0 1 2`, the same for the seeded runs of a `benchmarks.run_benchmark` variant that
trains search (e.g. `mt_rec_select_search`), one line per seed.

Selection: the target plus 9 negatives (items with an image the user never touched), shuffled with the seed; one slot
chosen by random, popularity, or the candidate whose image is closest to the latest history image (16x16 RGB pixels,
mean-centred, cosine). P/R/F1 (reference §4.3) and accuracy. UniMP's select prompt has 5 slot tokens (reference §1.5),
too few for 10 candidates; with `--rec-seeds`, the seeded recommendation runs of `benchmarks.run_benchmark`
(`<bench-dir>/<dataset>-unimp-s<seed>`) choose instead: the candidate whose item token scores highest at the answer of
the user's rec prompt (`selection_choices_from_scores`), one result line per training seed.

Rating + explanation (reference §4.4), with `--exp-seeds`: seeded runs that trained exp (Amazon MI's default config;
ML-100K's `mt_rec_exp` variant, `--exp-datasets ml100k --exp-variant mt_rec_exp`): the expected rating's MAE/RMSE
(and the most likely rating token's), ROUGE/BLEU-4/unigram precision of the greedy explanation, next to the mean and
bias rating baselines and "repeat the user's latest explanation", all from the same evaluation (`evaluate_exp_runs`),
and the nearest-neighbour review (another user's training review of the target item, the closest to the user's own;
`review_baselines`, computed from the data on the same users).

Image generation (reference §4.5), with `--imggen-seeds`: H&M (and/or ML-100K) runs of
`recipes.train_image_generation` at a step budget (`IMGGEN_STEPS`, not the config's time cap), trained here unless
`<bench-dir>/<dataset>-imggen-s<seed>` holds one, each generating its validation and test users' target images;
`benchmarks/image_generation.py` scores both splits in the project's pretrained vision features (Fréchet distance,
nearest-catalogue retrieval item@1/@10 and category@1, PSNR, SSIM) next to the user's most recent image, a random
catalogue image and the image tokenizer's reconstruction of the target (the upper bound of any generator over its
codes). The image tokenizer and the vision tower are trained once per dataset when missing (their configs, at their
step budgets).

Writes one result line per (dataset, task, model, seed) through `benchmarks/results.py` and
`outputs/bench/tasks.json`; `make bench-report` tables them (BENCHMARKS.md §9.1).
"""

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import results as contract
from processing.datasets_unimp import RECBOLE_NAMES, load_unimp_dataset
from processing.metrics_unimp import compute_ranking_metrics_from_ranks, compute_selection_metrics, rank_of_targets
from processing.task_baselines import (
    BM25Index,
    choose_best_slot,
    compute_selection_accuracy,
    count_training_popularity,
    history_reranked_scores,
    image_pixel_features,
    item_search_text,
    nearest_review_explanations,
    query_filtered_popularity_scores,
    sample_selection_candidates,
    tfidf_similarity_matrix,
    tokenize_text,
)
from processing.task_records import build_task_records, collect_touched_item_ids, items_by_id

KS = contract.KS
LAMBDAS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
NUM_NEGATIVES = 9
DATASETS = {"ml100k": "ml-100k-posters", "hm": "hm-sample"}
MODEL_NAME = "UniMP-tiny"   # the seeded runs of benchmarks.run_benchmark
REC_SELECT_MODEL = "UniMP-tiny (rec scores)"
# Rating + explanation (reference §4.4): datasets with ratings (Amazon MI also has review text); Amazon MI's default
# config trains rec + exp, ML-100K's trains rec alone (its exp runs: run_benchmark's mt_rec_exp variant)
EXP_DATASETS = ("amazon-mi", "ml100k")
DATA_NAMES = {short: name for name, short in RECBOLE_NAMES.items()}   # "amazon-mi" -> "amazon-mi-2014-5core"
EXP_BASELINES = {"user_item_bias": "Bias (mu + b_u + b_i)", "user_mean": "User mean", "item_mean": "Item mean",
                 "global_mean": "Global mean", "last_explanation_baseline": "Repeat latest explanation"}
PROTOCOLS = {
    "search": "search: category query, full catalogue, pessimistic ties",
    "select": f"select: target + {NUM_NEGATIVES} negatives with images, seeded shuffle",
    "imggen": "imggen: each user's next item's image from the history images and the title + category query, greedy "
              "over one 8x8 code grid; scored in the pretrained vision tower's features",
    "exp": "exp: rating of each user's test interaction (UniMP: expected under the rating-token distribution) and "
           "greedy explanation (<= 40 tokens) vs the unmodified review sentence; baselines fit on train",
}


REPO_ROOT = Path(__file__).resolve().parents[1]
IMGGEN_DATASETS = {"hm": ("hm-sample", "imggen_hm.yaml", "pretrain_vision_hm.yaml"),
                   "ml100k": ("ml-100k-posters", "imggen_ml100k.yaml", "pretrain_vision_ml100k.yaml")}
# About the ~570 steps the configs' 300-s cap reached in BENCHMARKS §5, now as a budget that does not move with load.
IMGGEN_STEPS = 600
IMGGEN_METHODS = {"generated": MODEL_NAME, "most_recent_baseline": "Most recent image",
                  "random_baseline": "Random image", "tokenizer_reconstruction": "Tokenizer reconstruction (bound)"}
IMGGEN_METRICS = ("frechet_distance", "item_hit@1", "item_hit@10", "category_hit@1", "psnr", "ssim")


class _Catalogue:
    """The item table as what the baselines need: ids, index, BM25 index, term sets, similarity, popularity."""

    def __init__(self, dataset_dict):
        self.items = items_by_id(dataset_dict["items"])
        self.item_ids = list(self.items)
        self.index = {item_id: n for n, item_id in enumerate(self.item_ids)}
        documents = [tokenize_text(item_search_text(self.items[item_id])) for item_id in self.item_ids]
        self.bm25 = BM25Index(documents)
        self.terms = [set(document) for document in documents]
        self.similarity = tfidf_similarity_matrix(documents)
        counts = count_training_popularity(dataset_dict["train"])
        self.popularity = np.array([float(counts.get(item_id, 0)) for item_id in self.item_ids])


def search_scores(catalogue: _Catalogue, records: list[dict]) -> dict[str, np.ndarray]:
    """{model: (n, num_items) scores} of the search baselines; "bm25+history@λ" for every λ in LAMBDAS."""
    scores = {name: [] for name in ("BM25", "Pop", "Pop-query", *(f"BM25+history@{w}" for w in LAMBDAS))}
    for record in records:
        query = tokenize_text(record["query"])
        bm25 = catalogue.bm25.scores(query)
        scores["BM25"].append(bm25)
        scores["Pop"].append(catalogue.popularity)
        scores["Pop-query"].append(query_filtered_popularity_scores(query, catalogue.terms, catalogue.popularity))
        history = [catalogue.index[item["item_id"]] for item in record["history"]]
        for weight in LAMBDAS:
            scores[f"BM25+history@{weight}"].append(
                history_reranked_scores(bm25, history, catalogue.similarity, weight))
    return {name: np.stack(rows) for name, rows in scores.items()}


def ranks_of(scores, catalogue: _Catalogue, records: list[dict]) -> list[int]:
    targets = torch.tensor([catalogue.index[record["target"]["item_id"]] for record in records])
    return [int(rank) for rank in rank_of_targets(torch.as_tensor(scores), targets).tolist()]


def evaluate_search(dataset_dict, catalogue: _Catalogue) -> dict:
    """{model: {"variant", "test", "validation", "ranks", "users_per_s"}} of the search baselines."""
    out, timings = {}, {}
    per_split = {}
    for split in ("validation", "test"):
        records = build_task_records(dataset_dict, "search", split)
        started = time.perf_counter()
        scores = search_scores(catalogue, records)
        timings[split] = len(records) / max(time.perf_counter() - started, 1e-9)
        per_split[split] = {name: ranks_of(matrix, catalogue, records) for name, matrix in scores.items()}
    metrics = {split: {name: compute_ranking_metrics_from_ranks(ranks, KS) for name, ranks in by_model.items()}
               for split, by_model in per_split.items()}
    best = max(LAMBDAS, key=lambda w: (metrics["validation"][f"BM25+history@{w}"]["ndcg@10"], -w))
    chosen = {"BM25": "default", "Pop": "training counts", "Pop-query": "all query terms in the item text",
              f"BM25+history@{best}": f"lambda={best} (validation NDCG@10 over {list(LAMBDAS)})"}
    for name, variant in chosen.items():
        model = name.split("@")[0]
        out[model] = {"variant": variant, "test": metrics["test"][name], "validation": metrics["validation"][name],
                      "ranks": per_split["test"][name], "users_per_s": timings["test"]}
    out["_lambda_validation_ndcg@10"] = {str(w): metrics["validation"][f"BM25+history@{w}"]["ndcg@10"]
                                         for w in LAMBDAS}
    return out


def load_run(checkpoint: str | Path, catalogue: _Catalogue):
    """(model, processor, image cache) of a UniMP checkpoint whose catalogue is this dataset's item table."""
    from modeling_unimp import UniMPForConditionalGeneration, UniMPProcessor
    from recipes.common import ImageCache

    model = UniMPForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = UniMPProcessor.from_pretrained(checkpoint)
    if list(processor.item_ids) != catalogue.item_ids:
        raise ValueError(f"{checkpoint}: its catalogue is not this dataset's item table")
    return model, processor, ImageCache(processor.image_processor.size["height"])


def run_record(checkpoint: str | Path) -> dict:
    """recipes.train's record of a run (`metrics.json`, {} where there is none) and its steps and training time."""
    from recipes.evaluate import TRAINING_METRICS

    path = Path(checkpoint) / TRAINING_METRICS
    recorded = json.loads(path.read_text()) if path.exists() else {}
    return {"recorded": recorded, "steps": int(recorded.get("global_step") or 0),
            "train_seconds": recorded.get("train_seconds") or 0.0}


def evaluate_search_unimp(checkpoint: str, dataset_dict, catalogue: _Catalogue, batch_size: int = 32,
                          variant: str | None = None) -> dict:
    """UniMP's search ranks: item-token scores at the answer of each search prompt (`recipes.evaluate` scoring);
    the entry's variant is `variant`, else `checkpoint=<checkpoint>`."""
    from recipes.common import render_examples
    from recipes.evaluate import score_examples

    model, processor, images = load_run(checkpoint, catalogue)
    result = {}
    for split in ("validation", "test"):
        examples = render_examples(dataset_dict, processor, tasks=["search"], split=split, task_weights=None,
                                   images=images)
        started = time.perf_counter()
        with torch.no_grad():
            scores = score_examples(model, processor, examples, batch_size=batch_size)
        users_per_s = len(examples) / max(time.perf_counter() - started, 1e-9)
        ranks = rank_of_targets(scores, torch.tensor([example["target_index"] for example in examples])).tolist()
        result[split] = compute_ranking_metrics_from_ranks(ranks, KS)
        if split == "test":
            result.update(ranks=[int(rank) for rank in ranks], users_per_s=users_per_s)
    record = run_record(checkpoint)
    return {"UniMP": {"variant": variant or f"checkpoint={checkpoint}", "test": result["test"],
                      "validation": result["validation"], "ranks": result["ranks"],
                      "users_per_s": result["users_per_s"], "steps": record["steps"],
                      "train_seconds": record["train_seconds"]}}


def selection_records(dataset_dict, catalogue: _Catalogue, split: str, seed: int) -> list[dict]:
    """Per user of `split`: history ids, 1 + NUM_NEGATIVES candidate ids (negatives with images), the target slot."""
    touched = collect_touched_item_ids(dataset_dict)
    pool = [item_id for item_id in catalogue.item_ids if catalogue.items[item_id]["image"] is not None]
    records = []
    for row in dataset_dict[split]:
        rng = random.Random(f"{seed}:select-eval:{split}:{row['user_id']}")
        candidates, slot = sample_selection_candidates(row["target_item_id"], pool, touched[row["user_id"]],
                                                       num_negatives=NUM_NEGATIVES, rng=rng)
        records.append({"user_id": row["user_id"], "history": list(row["history_item_ids"]),
                        "candidates": candidates, "answer_slot": slot})
    return records


def selection_choices(catalogue: _Catalogue, records: list[dict], seed: int, features: dict,
                      split: str = "test") -> dict[str, list]:
    """{model: chosen slot per record} of the random, popularity and most-similar-image baselines."""
    def feature(item_id):
        if item_id not in features:
            features[item_id] = image_pixel_features(catalogue.items[item_id]["image"])
        return features[item_id]

    choices = {"Random": [], "Pop": [], "Image-nearest-last": []}
    for record in records:
        candidates = record["candidates"]
        choices["Random"].append(random.Random(f"{seed}:random:{split}:{record['user_id']}").randrange(len(candidates)))
        choices["Pop"].append(choose_best_slot([catalogue.popularity[catalogue.index[c]] for c in candidates]))
        # the latest history item that has an image (ML-100K: 264 of 1682 films have no poster)
        last = next((h for h in reversed(record["history"]) if catalogue.items[h]["image"] is not None), None)
        if last is None:
            choices["Image-nearest-last"].append(0)
            continue
        anchor = feature(last)
        choices["Image-nearest-last"].append(choose_best_slot([float(feature(c) @ anchor) for c in candidates]))
    return choices


def selection_choices_from_scores(scores: torch.Tensor, user_rows: dict[str, int], catalogue: _Catalogue,
                                  records: list[dict]) -> list[int]:
    """Per selection record, the candidate slot with the highest score in its user's row of `scores` (n, items)."""
    return [choose_best_slot([float(scores[user_rows[record["user_id"]], catalogue.index[c]])
                              for c in record["candidates"]]) for record in records]


def evaluate_selection_by_rec(run_dirs: dict[int, Path], dataset_dict, catalogue: _Catalogue, seed: int,
                              batch_size: int = 32) -> dict[int, dict]:
    """Selection by seeded rec checkpoints: {training seed: entry}, the same candidates as the baselines (`seed`)."""
    from recipes.common import render_examples
    from recipes.evaluate import score_examples

    records = {split: selection_records(dataset_dict, catalogue, split, seed) for split in ("validation", "test")}
    entries = {}
    for train_seed, run_dir in run_dirs.items():
        model, processor, images = load_run(run_dir, catalogue)
        metrics, users_per_s = {}, 0.0
        for split, split_records in records.items():
            examples = render_examples(dataset_dict, processor, tasks=["rec"], split=split, task_weights=None,
                                       images=images)
            started = time.perf_counter()
            with torch.no_grad():
                scores = score_examples(model, processor, examples, batch_size=batch_size)
            user_rows = {example["user_id"]: row for row, example in enumerate(examples)}
            chosen = selection_choices_from_scores(scores, user_rows, catalogue, split_records)
            users_per_s = len(examples) / max(time.perf_counter() - started, 1e-9)
            metrics[split] = selection_metrics(chosen, split_records)
        record = run_record(run_dir)
        entries[train_seed] = {"variant": "rec item-token scores at the rec prompt's answer, best candidate",
                               "test": metrics["test"], "validation": metrics["validation"], "ranks": None,
                               "users_per_s": users_per_s, "steps": record["steps"],
                               "train_seconds": record["train_seconds"]}
    return entries


def selection_metrics(chosen: list[int], records: list[dict]) -> dict:
    answers = [record["answer_slot"] for record in records]
    metrics = compute_selection_metrics([{f"s_{c}"} for c in chosen], [{f"s_{a}"} for a in answers])
    return metrics | {"accuracy": compute_selection_accuracy(chosen, answers)}


def evaluate_selection(dataset_dict, catalogue: _Catalogue, seed: int) -> dict:
    features: dict = {}
    by_split, timings = {}, {}
    for split in ("validation", "test"):
        records = selection_records(dataset_dict, catalogue, split, seed)
        started = time.perf_counter()
        choices = selection_choices(catalogue, records, seed, features, split)
        timings[split] = len(records) / max(time.perf_counter() - started, 1e-9)
        by_split[split] = {name: selection_metrics(chosen, records) for name, chosen in choices.items()}
    variants = {"Random": "uniform slot", "Pop": "training counts",
                "Image-nearest-last": "16x16 RGB pixels, centred, cosine to the latest history image"}
    return {name: {"variant": variant, "test": by_split["test"][name], "validation": by_split["validation"][name],
                   "ranks": None, "users_per_s": timings["test"]} for name, variant in variants.items()}


def exp_metrics(metrics: dict, key: str) -> dict:
    """The flat metrics of one model in a `recipes.evaluate --task exp` result: UniMP (`key` "unimp") gives the
    expected rating's mae/rmse, the most likely rating token's as mae_token/rmse_token, and the explanation metrics."""
    if key != "unimp":
        return dict(metrics[key])
    return {**metrics["unimp_rating_expected"],
            **{f"{name}_token": value for name, value in metrics["unimp_rating"].items()},
            **metrics.get("unimp_explanation", {})}


def evaluate_exp_runs(run_dirs: dict[int, Path], variant: str = "default") -> tuple[dict[int, dict], dict[str, dict]]:
    """Rating + explanation of seeded runs trained with exp: ({training seed: UniMP entry with `variant`},
    {baseline: entry}).

    Test: the run's own test evaluation (`recipes.train` runs `evaluate_explanation` on every test user and stores
    it as `exp` in `metrics.json`), else `recipes.evaluate --task exp --split test`. Validation: `recipes.evaluate
    --task exp --split validation --max-new-tokens 0` (ratings and the explanation baseline; nothing is chosen on
    validation here, so no generation is spent on it). Either is skipped where its file exists. The baselines
    depend on the data only: read from the first run, and checked against every other run's.
    """
    from recipes.evaluate import main as evaluate_main

    entries, baselines = {}, {}
    for train_seed, run_dir in run_dirs.items():
        record = run_record(run_dir)
        recorded = record["recorded"]
        validation_file, test_file = (Path(run_dir) / f"metrics_exp_{split}.json" for split in ("validation", "test"))
        if not validation_file.exists():
            evaluate_main([str(run_dir), "--task", "exp", "--split", "validation", "--max-new-tokens", "0"])
        if "exp" not in recorded and not test_file.exists():
            evaluate_main([str(run_dir), "--task", "exp", "--split", "test"])
        metrics = {"validation": json.loads(validation_file.read_text()),
                   "test": recorded["exp"] if "exp" in recorded else json.loads(test_file.read_text())}
        entries[train_seed] = {"variant": variant, "test": exp_metrics(metrics["test"], "unimp"),
                               "validation": exp_metrics(metrics["validation"], "unimp"), "ranks": None,
                               "users_per_s": metrics["test"]["eval_users_per_second"], "steps": record["steps"],
                               "train_seconds": record["train_seconds"], "num_users": metrics["test"]["num_users"]}
        for key, name in EXP_BASELINES.items():
            if key not in metrics["test"] or key not in metrics["validation"]:
                continue
            entry = {"variant": "fit on train" if key != "last_explanation_baseline" else
                     "the user's newest earlier review sentence", "test": exp_metrics(metrics["test"], key),
                     "validation": exp_metrics(metrics["validation"], key), "ranks": None, "users_per_s": None,
                     "num_users": metrics["test"]["num_users"]}
            if name in baselines and baselines[name]["test"] != entry["test"]:
                raise ValueError(f"{run_dir}: baseline {name!r} differs from the first run's; same data expected")
            baselines.setdefault(name, entry)
    return entries, baselines


def review_baselines(dataset_dict) -> dict[str, dict]:
    """Explanation baselines computed from the data alone, on the validation and test rows whose target has a rating
    and a review (the rows `recipes.evaluate` scores explanations on): the nearest-neighbour review
    (`task_baselines.nearest_review_explanations`) and repeat-latest, which `evaluate_exp_runs` also reads from the
    runs (`main` checks that the two agree, so both score the same users). {} for data without review text."""
    from processing.metrics_unimp import compute_text_metrics
    from recipes.evaluate import EMPTY_EXPLANATION, _latest_text

    by_split, shares = {}, {}
    for split in ("validation", "test"):
        rows = [row for row in dataset_dict[split] if row.get("target_rating") is not None
                and row.get("target_explanation")]
        if not rows:
            return {}
        references = [row["target_explanation"] for row in rows]
        nearest, fallbacks = nearest_review_explanations(dataset_dict["train"], rows)
        latest = [_latest_text(row.get("history_explanations")) for row in rows]
        by_split[split] = {"nearest": compute_text_metrics([t or EMPTY_EXPLANATION for t in nearest], references),
                           "latest": compute_text_metrics(latest, references), "num_users": len(rows)}
        shares[split] = fallbacks / len(rows)
    variants = {"nearest": ("Nearest review", "another user's training review of the target item, the nearest to "
                            f"the user's own by TF-IDF (test: {shares['test']:.1%} fall back to repeat-latest)"),
                "latest": (EXP_BASELINES["last_explanation_baseline"], "the user's newest earlier review sentence")}
    return {name: {"variant": variant, "test": by_split["test"][key], "validation": by_split["validation"][key],
                   "ranks": None, "users_per_s": None, "num_users": by_split["test"]["num_users"]}
            for key, (name, variant) in variants.items()}


def _run_module(module: str, args: list[str], log: Path) -> None:
    """`python -m module args` from the repository root, its output into `log`; a failure names the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[tasks] {module} {' '.join(args)}  (log {log})", flush=True)
    with open(log, "a") as handle:
        done = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, stdout=handle,
                              stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{module} failed (exit {done.returncode}); see {log}")


def imggen_prerequisites(dataset: str, tokenizer_root: Path, tower_root: Path, data_dir: str | None
                         ) -> tuple[Path, Path]:
    """The dataset's image tokenizer and pretrained vision tower (the feature space of the metrics), each trained
    from its config at its step budget when its folder has none."""
    name, _, tower_config = IMGGEN_DATASETS[dataset]
    data = [f"data_dir={data_dir}"] if data_dir else []
    tokenizer, tower = tokenizer_root / name, tower_root / name
    if not (tokenizer / "config.json").is_file():
        _run_module("recipes.train_image_tokenizer", [
            str(REPO_ROOT / "recipes" / "configs" / "image_tokenizer_tiny.yaml"), f"dataset={name}",
            f"output_dir={tokenizer}", "max_train_seconds=null", *data], tokenizer.with_suffix(".log"))
    if not (tower / "config.json").is_file():
        _run_module("recipes.pretrain_vision", [
            str(REPO_ROOT / "recipes" / "configs" / tower_config), f"output_dir={tower}", "max_train_seconds=null",
            *data], tower.with_suffix(".log"))
    return tokenizer, tower


def train_imggen_run(run_dir: Path, dataset: str, seed: int, tokenizer: Path, data_dir: str | None,
                     steps: int = IMGGEN_STEPS) -> None:
    """One seeded image-generation run at `steps`, generating its validation and test users' images."""
    _, config, _ = IMGGEN_DATASETS[dataset]
    _run_module("recipes.train_image_generation", [
        str(REPO_ROOT / "recipes" / "configs" / config), f"output_dir={run_dir}", f"seed={seed}",
        f"max_steps={steps}", "max_train_seconds=null", "generation_splits=[validation,test]",
        f"image_tokenizer_name_or_path={tokenizer}", *([f"data_dir={data_dir}"] if data_dir else [])],
        run_dir.with_suffix(".log"))


def score_imggen_run(run_dir: Path, tower: Path, seed: int) -> dict[str, dict]:
    """split -> `benchmarks/image_generation.py`'s metrics of the run's generations (cached in
    `<run>/benchmark/<split>/metrics.json`)."""
    from benchmarks import image_generation

    scored = {}
    for split in ("validation", "test"):
        out = run_dir / "benchmark" / split
        if not (out / "metrics.json").is_file():
            image_generation.main(image_generation.parse_args([
                "--checkpoint", str(run_dir), "--vision-tower", str(tower), "--output-dir", str(out),
                "--generations", str(run_dir / f"{split}_generations.jsonl"), "--seed", str(seed)]))
        scored[split] = json.loads((out / "metrics.json").read_text())
    return scored


def imggen_entries(scored: dict[str, dict], record: dict) -> dict[str, dict]:
    """model name -> a result entry, from one run's scored splits (`score_imggen_run`) and its `metrics.json`."""
    entries = {}
    for method, model in IMGGEN_METHODS.items():
        by_split = {split: {key: float(scored[split]["methods"][method][key]) for key in IMGGEN_METRICS}
                    for split in ("validation", "test")}
        trained = method == "generated"
        entries[model] = {"variant": "default", "test": by_split["test"], "validation": by_split["validation"],
                          "ranks": None, "users_per_s": None, "num_users": scored["test"]["num_test_users"],
                          "steps": record["steps"] if trained else 0,
                          "train_seconds": record["train_seconds"] if trained else 0.0}
    return entries


def evaluate_imggen_runs(run_dirs: dict[int, Path], tower: Path, baseline_seed: int
                         ) -> tuple[dict[int, dict], dict[str, dict]]:
    """The generated images of each seeded run, and the baselines once: they do not depend on the training seed
    (the same users, targets and histories), which is checked rather than assumed."""
    unimp, baselines = {}, None
    for seed, run_dir in run_dirs.items():
        entries = imggen_entries(score_imggen_run(run_dir, tower, baseline_seed), run_record(run_dir))
        unimp[seed] = entries.pop(MODEL_NAME)
        if baselines is None:
            baselines = entries
        elif any(entries[name]["test"] != entry["test"] for name, entry in baselines.items()):
            raise ValueError(f"{run_dir}: the baselines differ from the first run's; the runs did not generate for "
                             "the same users")
    return unimp, baselines or {}


def _without_ranks(entry: dict) -> dict:
    """An entry for the summary file: everything but the per-user ranks."""
    return {key: value for key, value in entry.items() if key != "ranks"}


def result_line(dataset: str, task: str, model: str, entry: dict, seed: int, num_users: int) -> dict:
    return {"dataset": dataset, "task": task, "model": model, "variant": entry["variant"], "seed": seed,
            "masking": "none", "split": "test", "metrics": entry["test"], "valid_metrics": entry["validation"],
            "budget": {"steps": entry.get("steps", 0)}, "train_seconds": float(entry.get("train_seconds", 0.0)),
            "eval_users_per_s": None if entry["users_per_s"] is None else round(entry["users_per_s"], 1),
            "peak_rss_mib": contract.peak_rss_mib(),
            "commit": contract.git_commit(), "date": contract.utc_now(), "cpu": contract.cpu_info(),
            "ranks": entry["ranks"], "n_users": num_users, "protocol": PROTOCOLS[task]}


def per_dataset_variants(values: list[str], datasets: list[str]) -> dict[str, str]:
    """`--search-variant` values -> {dataset: variant}: one plain VARIANT for every dataset, or DATASET=VARIANT pairs
    (a dataset of `datasets` without a pair is left out; a pair naming another dataset is an error)."""
    if not values:
        return {}
    if len(values) == 1 and "=" not in values[0]:
        return dict.fromkeys(datasets, values[0])
    pairs = {}
    for value in values:
        dataset, sep, variant = value.partition("=")
        if not sep or not variant or dataset not in DATASETS:
            raise ValueError(f"{value!r} is not DATASET=VARIANT with DATASET one of {list(DATASETS)}")
        pairs[dataset] = variant
    return {dataset: variant for dataset, variant in pairs.items() if dataset in datasets}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS),
                        help="search + select on these (none: skip them)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--checkpoint", default=None, help="a UniMP checkpoint trained with the search task")
    parser.add_argument("--unimp-only", action="store_true",
                        help="with --checkpoint: write only UniMP's result line (the baselines' are already there)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rec-seeds", nargs="*", type=int, default=[],
                        help="score selection with the seeded rec runs <bench-dir>/<dataset>-unimp-s<seed> "
                             "(benchmarks.run_benchmark's default variant); one line per seed")
    parser.add_argument("--exp-seeds", nargs="*", type=int, default=[],
                        help="rating + explanation of the seeded runs <bench-dir>/<dataset>-<exp-variant>-s<seed> "
                             "of --exp-datasets (runs that trained exp); one line per seed")
    parser.add_argument("--exp-datasets", nargs="+", default=["amazon-mi"], choices=list(EXP_DATASETS))
    parser.add_argument("--exp-variant", default="unimp",
                        help="the benchmarks.run_benchmark variant of the exp runs (unimp = the default config, "
                             "which trains exp on amazon-mi; mt_rec_exp on ml100k)")
    parser.add_argument("--search-variant", nargs="+", default=None,
                        help="with --search-seeds: the benchmarks.run_benchmark variant whose seeded runs "
                             "<bench-dir>/<dataset>-<variant>-s<seed> trained search (e.g. mt_rec_search), or one "
                             "DATASET=VARIANT per dataset (ml100k=mt_rec_search hm=mt_rec_select_search)")
    parser.add_argument("--search-seeds", nargs="*", type=int, default=[])
    parser.add_argument("--imggen-seeds", nargs="*", type=int, default=[],
                        help="image generation: seeded runs <bench-dir>/<dataset>-imggen-s<seed> of "
                             "--imggen-datasets, trained here (--imggen-steps) where missing; one line per seed")
    parser.add_argument("--imggen-datasets", nargs="+", default=["hm"], choices=list(IMGGEN_DATASETS))
    parser.add_argument("--imggen-steps", type=int, default=IMGGEN_STEPS)
    parser.add_argument("--image-tokenizer-dir", default="outputs/image_tokenizer",
                        help="holds <dataset name>/, the image tokenizer (trained there when missing)")
    parser.add_argument("--vision-tower-dir", default="outputs/pretrain_vision",
                        help="holds <dataset name>/, the pretrained vision tower of the image metrics (trained "
                             "there when missing)")
    parser.add_argument("--bench-dir", default="outputs/bench")
    parser.add_argument("--results-dir", default=None, help="default benchmarks/results/")
    parser.add_argument("--no-results", dest="write_results", action="store_false")
    parser.add_argument("--out", default="outputs/bench/tasks.json")
    args = parser.parse_args(argv)
    checkpoint_dataset = None
    if args.checkpoint:
        from recipes.evaluate import recorded_settings

        checkpoint_dataset = RECBOLE_NAMES.get(recorded_settings(args.checkpoint).get("dataset"))
        if checkpoint_dataset not in args.datasets:
            parser.error(f"{args.checkpoint} was trained on {checkpoint_dataset!r}, not one of --datasets "
                         f"{args.datasets}")
    if bool(args.search_variant) != bool(args.search_seeds):
        parser.error("--search-variant and --search-seeds go together")
    try:
        search_variants = per_dataset_variants(args.search_variant or [], args.datasets)
    except ValueError as error:
        parser.error(f"--search-variant: {error}")

    def seeded_runs(datasets, variant, seeds) -> dict[str, dict[int, Path]]:
        return {dataset: {seed: Path(args.bench_dir) / f"{dataset}-{variant}-s{seed}" for seed in seeds}
                for dataset in datasets}

    rec_runs = seeded_runs(args.datasets, "unimp", args.rec_seeds)
    search_runs = {dataset: seeded_runs([dataset], variant, args.search_seeds)[dataset]
                   for dataset, variant in search_variants.items()}
    exp_runs = seeded_runs(args.exp_datasets if args.exp_seeds else [], args.exp_variant, args.exp_seeds)
    every_run = [run for group in (rec_runs, search_runs, exp_runs) for by_seed in group.values()
                 for run in by_seed.values()]
    missing = [str(run) for run in every_run if not (run / "metrics.json").exists()]
    if missing:
        parser.error(f"--rec-seeds / --exp-seeds / --search-seeds: no finished run in {missing} "
                     "(python -m benchmarks.run_benchmark)")
    no_exp = [str(run) for by_seed in exp_runs.values() for run in by_seed.values()
              if "exp" not in json.loads((run / "metrics.json").read_text()).get("tasks", [])]
    if no_exp:
        parser.error(f"--exp-seeds: {no_exp} did not train the exp task (ml100k: --exp-variant mt_rec_exp)")
    summary, lines = {}, []
    for dataset, by_seed in exp_runs.items():
        unimp, baselines = evaluate_exp_runs(by_seed, "default" if args.exp_variant == "unimp" else args.exp_variant)
        from_data = review_baselines(load_unimp_dataset(DATA_NAMES[dataset], args.data_dir))
        latest = EXP_BASELINES["last_explanation_baseline"]
        if from_data and latest in baselines and any(
                abs(from_data[latest]["test"][key] - value) > 1e-9 for key, value in baselines[latest]["test"].items()):
            raise ValueError(f"{dataset}: repeat-latest recomputed from the data differs from the runs' "
                             f"({from_data[latest]['test']} vs {baselines[latest]['test']}): not the same test users")
        baselines |= {name: entry for name, entry in from_data.items() if name not in baselines}
        entries = [(MODEL_NAME, seed, entry) for seed, entry in unimp.items()]
        entries += [(name, args.seed, entry) for name, entry in baselines.items()]
        summary.setdefault(dataset, {})["exp"] = {f"{model} seed {seed}": _without_ranks(entry)
                                                  for model, seed, entry in entries}
        for model, seed, entry in entries:
            lines.append(result_line(dataset, "exp", model, entry, seed, entry["num_users"]))
            print(dataset, "exp", model, seed, {k: round(v, 4) for k, v in entry["test"].items()})
    for dataset in args.imggen_datasets if args.imggen_seeds else []:
        tokenizer, tower = imggen_prerequisites(dataset, Path(args.image_tokenizer_dir), Path(args.vision_tower_dir),
                                                args.data_dir)
        runs = seeded_runs([dataset], "imggen", args.imggen_seeds)[dataset]
        for seed, run_dir in runs.items():
            if not (run_dir / "test_generations.jsonl").is_file() or not (run_dir / "metrics.json").is_file():
                train_imggen_run(run_dir, dataset, seed, tokenizer, args.data_dir, args.imggen_steps)
        unimp, baselines = evaluate_imggen_runs(runs, tower, args.seed)
        entries = [(MODEL_NAME, seed, entry) for seed, entry in unimp.items()]
        entries += [(name, args.seed, entry) for name, entry in baselines.items()]
        summary.setdefault(dataset, {})["imggen"] = {f"{model} seed {seed}": entry for model, seed, entry in entries}
        for model, seed, entry in entries:
            lines.append(result_line(dataset, "imggen", model, entry, seed, entry["num_users"]))
            print(dataset, "imggen", model, seed, {k: round(v, 4) for k, v in entry["test"].items()})
    for dataset in args.datasets:
        dataset_dict = load_unimp_dataset(DATASETS[dataset], args.data_dir)
        catalogue = _Catalogue(dataset_dict)
        num_users = len(dataset_dict["test"])
        search = evaluate_search(dataset_dict, catalogue)
        if args.checkpoint and checkpoint_dataset == dataset:
            search |= evaluate_search_unimp(args.checkpoint, dataset_dict, catalogue)
        seeded_search = {seed: evaluate_search_unimp(str(run), dataset_dict, catalogue,
                                                     variant=search_variants[dataset])["UniMP"]
                         for seed, run in search_runs.get(dataset, {}).items()}
        select = evaluate_selection(dataset_dict, catalogue, args.seed)
        rec_select = evaluate_selection_by_rec(rec_runs[dataset], dataset_dict, catalogue, args.seed)
        summary.setdefault(dataset, {}).update(
            search={name: _without_ranks(entry)
                    if isinstance(entry, dict) and "test" in entry else entry for name, entry in search.items()},
            select={name: _without_ranks(entry) for name, entry in select.items()})
        for task, entries in (("search", search), ("select", select)):
            for model, entry in entries.items():
                if not model.startswith("_"):
                    lines.append(result_line(dataset, task, model, entry, args.seed, num_users))
        for name, entry in search.items():
            if not name.startswith("_"):
                print(dataset, "search", name, {k: round(entry["test"][k], 4) for k in ("hr@10", "ndcg@10")})
        for train_seed, entry in seeded_search.items():
            lines.append(result_line(dataset, "search", MODEL_NAME, entry, train_seed, num_users))
            summary[dataset]["search"][f"{MODEL_NAME} seed {train_seed}"] = _without_ranks(entry)
            print(dataset, "search", MODEL_NAME, train_seed, round(entry["test"]["ndcg@10"], 4))
        for train_seed, entry in rec_select.items():
            lines.append(result_line(dataset, "select", REC_SELECT_MODEL, entry, train_seed, num_users))
            summary[dataset]["select"][f"{REC_SELECT_MODEL} seed {train_seed}"] = _without_ranks(entry)
        for name, entry in summary[dataset]["select"].items():
            print(dataset, "select", name, {k: round(v, 4) for k, v in entry["test"].items()})
    if args.unimp_only:   # search + select baselines already written; exp lines are all computed from the runs
        lines = [line for line in lines
                 if line["model"] in ("UniMP", MODEL_NAME, REC_SELECT_MODEL) or line["task"] in ("exp", "imggen")]
    if args.write_results:
        for path in contract.append_results(lines, args.results_dir):
            print("appended to", path)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print("->", args.out)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
