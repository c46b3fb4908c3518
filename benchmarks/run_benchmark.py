"""UniMP-tiny next to the RecBole peers on the identical leave-one-out splits, plus ablations (issue 5).

Each UniMP variant trains in its own process (`python -m recipes.train CONFIG key=value ...`) under the same wall-time
budget, selects its checkpoint on validation NDCG@10 and is evaluated once on test (full ranking, nothing masked:
RecBole's sequential convention; a masked column for the general models' convention). The peers' numbers come from
`benchmarks/run_peers.py` result files (run in their own venv, `make bench-peers`), trained on the files that
`export_recbole_atomic` writes from the same builders.

Usage: python -m benchmarks.run_benchmark --datasets ml100k hm amazon-mi --variants unimp no_images \
           --max-train-seconds 420 --out outputs/bench
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "ml100k": REPO / "recipes/configs/ml100k_tiny.yaml",
    "hm": REPO / "recipes/configs/hm_tiny.yaml",
    "amazon-mi": REPO / "recipes/configs/amazon_mi_tiny.yaml",
}
# Ablations of issue 5: each is a set of overrides of the dataset's config.
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
    "user_disjoint": ["protocol=user_disjoint"],  # the paper's protocol (reference §5.1): unseen test users
}
# Variants that only mean something on some datasets: the configs of ml100k and hm train rec alone (so
# single_task is their default), amazon-mi trains rec + exp (its multi_task), H&M has no ratings for the exp task,
# and only ml100k's config shows 50 history items.
APPLIES_TO = {"single_task": {"amazon-mi"}, "multi_task": {"ml100k"}, "short_history": {"ml100k"},
              "long_history": {"hm", "amazon-mi"}}
PEER_ORDER = ["Pop", "BPR", "LightGCN", "GRU4Rec", "SASRec", "BERT4Rec"]
KS = (5, 10, 20)


def run_variant(dataset: str, variant: str, out_dir: Path, max_train_seconds: float, extra: list[str]) -> dict:
    """Train and test one UniMP variant in a subprocess; returns its metrics.json."""
    output_dir = out_dir / f"{dataset}-{variant}"
    command = [sys.executable, "-m", "recipes.train", str(CONFIGS[dataset]), f"output_dir={output_dir}",
               f"max_train_seconds={max_train_seconds}", "disable_tqdm=true", *VARIANTS[variant], *extra]
    print(f"[bench] {' '.join(command[2:])}", flush=True)
    started = time.time()
    log = out_dir / f"{dataset}-{variant}.log"
    with log.open("w") as handle:
        result = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{dataset}/{variant} failed (exit {result.returncode}); see {log}")
    metrics = json.loads((output_dir / "metrics.json").read_text())
    metrics["wall_seconds"] = round(time.time() - started, 1)
    return metrics


def load_peers(paths: list[Path]) -> dict[str, list[dict]]:
    """Peer runs by dataset, from run_peers.py result files."""
    runs: dict[str, list[dict]] = {}
    for path in paths:
        for run in json.loads(path.read_text())["runs"]:
            if run.get("status") == "ok" and run.get("task", "ranking") == "ranking":  # rating.json: its own table
                runs.setdefault(run["dataset"], []).append(run)
    return runs


def _peer_label(run: dict) -> str:
    overrides = ", ".join(f"{key}={value}" for key, value in (run.get("overrides") or {}).items())
    return f"{run['model']} ({overrides})" if overrides else run["model"]


def format_tables(dataset: str, unimp: dict[str, dict], peers: list[dict]) -> str:
    """One markdown table per dataset: HR/NDCG/MRR @5/@10/@20, train time, eval throughput, peak memory."""
    header = ["model", "masking"] + [f"{m}@{k}" for m in ("HR", "NDCG", "MRR") for k in KS]
    header += ["epochs / steps", "train s", "eval users/s", "peak MiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in sorted(peers, key=lambda r: (PEER_ORDER.index(r["model"]) if r["model"] in PEER_ORDER else 99)):
        test = run["test"]
        masking = "history masked" if run["model"] in ("Pop", "BPR", "LightGCN") else "none"
        values = [test[f"{'hit' if m == 'HR' else m.lower()}@{k}"] for m in ("HR", "NDCG", "MRR") for k in KS]
        epochs = f"{run['epochs_run']} ep (best {run['best_epoch']}, cap {run['epoch_cap']})"
        lines.append("| " + " | ".join([_peer_label(run), masking, *[f"{v:.4f}" for v in values], epochs,
                                        f"{run['train_seconds']:.0f}", f"{run['eval_users_per_s']:.0f}",
                                        f"{run['peak_rss_mb']:.0f}"]) + " |")
    for variant, metrics in unimp.items():
        for key, masking in (("unimp", "none"), ("unimp_masked", "history masked")):
            values = [metrics[key][f"{m.lower()}@{k}"] for m in ("HR", "NDCG", "MRR") for k in KS]
            label = "UniMP-tiny" if variant == "unimp" else f"UniMP-tiny {variant}"
            lines.append("| " + " | ".join([label, masking, *[f"{v:.4f}" for v in values],
                                            f"{metrics['global_step']} steps", f"{metrics['trainer_seconds']:.0f}",
                                            f"{metrics['eval_users_per_second']:.0f}",
                                            f"{metrics['peak_rss_mib']:.0f}"]) + " |")
    return f"### {dataset}\n\n" + "\n".join(lines) + "\n"


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
    parser.add_argument("--max-train-seconds", type=float, default=420)
    parser.add_argument("--peers", nargs="*", type=Path,
                        default=sorted((REPO / "benchmarks/peer_results").glob("*.json")))
    parser.add_argument("--rating-peers", type=Path, default=REPO / "benchmarks/peer_results/rating.json")
    parser.add_argument("--out", type=Path, default=REPO / "outputs/bench")
    parser.add_argument("--reuse", action="store_true", help="reuse finished variants' metrics.json")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every UniMP run")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    peers = load_peers(args.peers)
    rating_peers = load_rating_peers(args.rating_peers)
    report, results = [], {}
    for dataset in args.datasets:
        results[dataset] = {}
        for variant in args.variants:
            if dataset not in APPLIES_TO.get(variant, {dataset}):
                print(f"[bench] {dataset}/{variant}: skipped (the variant applies to {sorted(APPLIES_TO[variant])})")
                continue
            existing = args.out / f"{dataset}-{variant}" / "metrics.json"
            if args.reuse and existing.exists():
                results[dataset][variant] = json.loads(existing.read_text())
            else:
                results[dataset][variant] = run_variant(dataset, variant, args.out, args.max_train_seconds,
                                                        args.overrides)
        report.append(format_tables(dataset, results[dataset], peers.get(dataset, [])))
        report.append(format_rating_tables(dataset, results[dataset], rating_peers.get(dataset, [])))
    text = "\n".join(part for part in report if part)
    (args.out / "tables.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(text)
    return results


if __name__ == "__main__":
    main()
