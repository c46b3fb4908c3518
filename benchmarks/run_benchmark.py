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
    "multi_task": ["tasks=[rec,search]"],
}
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
            if run.get("status") == "ok":
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--variants", nargs="+", default=["unimp"], choices=list(VARIANTS))
    parser.add_argument("--max-train-seconds", type=float, default=420)
    parser.add_argument("--peers", nargs="*", type=Path, default=sorted((REPO / "benchmarks/peer_results").glob("*.json")))
    parser.add_argument("--out", type=Path, default=REPO / "outputs/bench")
    parser.add_argument("--reuse", action="store_true", help="reuse finished variants' metrics.json")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every UniMP run")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    peers = load_peers(args.peers)
    report, results = [], {}
    for dataset in args.datasets:
        results[dataset] = {}
        for variant in args.variants:
            existing = args.out / f"{dataset}-{variant}" / "metrics.json"
            if args.reuse and existing.exists():
                results[dataset][variant] = json.loads(existing.read_text())
            else:
                results[dataset][variant] = run_variant(dataset, variant, args.out, args.max_train_seconds,
                                                        args.overrides)
        report.append(format_tables(dataset, results[dataset], peers.get(dataset, [])))
    text = "\n".join(report)
    (args.out / "tables.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(text)
    return results


if __name__ == "__main__":
    main()
