"""Write the tables of BENCHMARKS.md §1 from ``benchmarks/results/*.jsonl``, with paired bootstrap CIs (issue 11).

Every number between the ``bench-report`` markers of BENCHMARKS.md comes from here (``make bench-report``):
mean ± sd over seeds, and UniMP-tiny vs. the best peer (chosen on validation) as a paired bootstrap 95 % CI of the
per-user NDCG@10 difference. Needs numpy (project venv).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as contract  # noqa: E402

__all__ = ["BEGIN_MARKER", "END_MARKER", "SUMMARY_BEGIN", "SUMMARY_END", "TASKS_BEGIN", "TASKS_END", "best_peer",
           "latest_lines", "leave_one_out_lines", "paired_bootstrap", "per_user_ndcg", "render_report",
           "render_summary", "render_tasks", "seed_averaged_ndcg", "summarize", "write_between_markers"]

BEGIN_MARKER = "<!-- bench-report:begin -->"
END_MARKER = "<!-- bench-report:end -->"
# README.md's results summary: generated from the same lines, so that it cannot disagree with BENCHMARKS.md §1.1
SUMMARY_BEGIN = "<!-- bench-summary:begin -->"
SUMMARY_END = "<!-- bench-summary:end -->"
# BENCHMARKS.md §9: the tables of the other tasks (search, select, ...; `benchmarks/tasks.py` writes their lines)
TASKS_BEGIN = "<!-- bench-tasks:begin -->"
TASKS_END = "<!-- bench-tasks:end -->"
# per task: (metric columns, the validation metric shown); a task not listed shows every metric of its lines
TASK_SUMMARY_BEGIN = "<!-- bench-tasks-summary:begin -->"
TASK_SUMMARY_END = "<!-- bench-tasks-summary:end -->"
TASK_COLUMNS = {"search": (("hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr@10"), "ndcg@10"),
                "select": (("precision", "recall", "f1", "accuracy"), "accuracy"),
                "exp": (("mae", "rmse", "mae_token", "rmse_token", "rouge1", "rougeL", "bleu4", "unigram_precision"),
                        "rmse"),
                "imggen": (("frechet_distance", "item_hit@1", "item_hit@10", "category_hit@1", "psnr", "ssim"),
                           "frechet_distance")}
# README's per-task summary: the headline metrics of each task, +1 higher is better, -1 lower is better.
TASK_HEADLINES = {"search": (("ndcg@10", +1),), "select": (("accuracy", +1),),
                  "exp": (("rmse", -1), ("rougeL", +1), ("bleu4", +1)),
                  "imggen": (("frechet_distance", -1), ("item_hit@1", +1))}
TASK_TITLES = {"search": "Personalized search", "select": "Item selection", "exp": "Rating + explanation",
               "imggen": "User-guided image generation"}
BOUND_MARK = "(bound)"   # a model named so is an upper bound (e.g. the image tokenizer's reconstruction), no baseline
UNIMP_MODEL = "UniMP-tiny"
UNIMP_VARIANT = "default"
TITLES = {"ml100k": "ML-100K", "hm": "H&M", "amazon-mi": "Amazon MI"}
# The datasets of §1.1; other result files (amazon-2018: the new-domain transfer of benchmarks/new_domain.py, its own
# BENCHMARKS.md section) are left out of these tables and of their header counts.
REPORT_DATASETS = tuple(TITLES)
MASKING_LABELS = {"none": "none", "history": "history masked"}
TABLE_METRICS = ("hr@10", "ndcg@10", "mrr@10", "hr@20", "ndcg@20")
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
SELECTION_METRIC = "ndcg@10"


def per_user_ndcg(ranks, k: int = 10) -> np.ndarray:
    """NDCG@k of each user: 1/log2(r+1) if r <= k, else 0.

    Args:
        ranks (`Sequence[int]` of shape (U,)): 1-based rank of each user's target.
    Returns:
        `np.ndarray` of shape (U,).
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


def seed_averaged_ndcg(lines: list[dict], k: int = 10) -> np.ndarray:
    """Per-user NDCG@k averaged over the seeds (lines) of one model first: (U,).

    Averaging per user before pairing makes each model's score per user its expected score over training seeds; the
    bootstrap then resamples users only, so the CI is about which users were drawn, given these seeds.
    """
    if not lines:
        raise ValueError("no lines to average")
    lengths = {len(line["ranks"]) for line in lines}
    digests = {line.get("users_sha256") for line in lines} - {None}
    if len(lengths) != 1 or len(digests) > 1:
        raise ValueError(f"the seeds of {lines[0]['model']} rank different user lists ({lengths}, {digests})")
    return np.mean([per_user_ndcg(line["ranks"], k) for line in lines], axis=0)


def paired_bootstrap(a, b, *, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> dict:
    """Mean of a − b over users with a paired (percentile) bootstrap CI: users resampled with replacement.

    Args:
        a, b (`np.ndarray` of shape (U,)): per-user scores of two models on the same users, in the same order.
        resamples (`int`): bootstrap resamples of the U users.
        seed (`int`): seed of `np.random.default_rng` (the CI is reproducible).
        level (`float`): coverage of the interval, e.g. 0.95 for the 2.5th and 97.5th percentiles.
    Returns:
        `{"mean": float, "low": float, "high": float, "n_users": U, "resamples": int, "seed": int}`.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"a and b must be non-empty 1-D arrays of one shape, got {a.shape} and {b.shape}")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // diff.size)     # bounded memory: chunk × U indices at a time
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = diff[rng.integers(0, diff.size, size=(stop - start, diff.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return {"mean": float(diff.mean()), "low": float(low), "high": float(high), "n_users": int(diff.size),
            "resamples": resamples, "seed": seed}


def latest_lines(lines: list[dict]) -> list[dict]:
    """One line per row key (dataset, task, model, variant, seed, masking): the last one written wins."""
    by_key = {}
    for line in lines:
        by_key[contract.row_key(line)] = line
    return list(by_key.values())


def leave_one_out_lines(lines: list[dict]) -> list[dict]:
    """The lines on the peers' leave-one-out split: 'rec' lines of another protocol (`cold_items`, issue 12:
    other users, other training data) are left out of §1 and its header counts; they have their own section."""
    return [line for line in lines if contract.on_peer_split(line)]


def group(lines: list[dict]) -> dict:
    """{(dataset, masking): {(model, variant): [lines over seeds]}} of the leave-one-out 'rec' lines on test."""
    groups: dict = {}
    for line in leave_one_out_lines(lines):
        if line["task"] != "rec" or line["split"] != "test":
            continue
        groups.setdefault((line["dataset"], line["masking"]), {}).setdefault(
            (line["model"], line["variant"]), []).append(line)
    for rows in groups.values():
        for seeds in rows.values():
            seeds.sort(key=lambda line: line["seed"])
    return groups


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(seed_lines: list[dict]) -> dict:
    """Mean and sample sd over seeds of each metric, and the run-cost columns, for one (model, variant)."""
    out = {"n": len(seed_lines), "seeds": [line["seed"] for line in seed_lines]}
    for key in contract.METRIC_KEYS:
        out[key] = _mean_sd([line["metrics"][key] for line in seed_lines])
    out["valid_" + SELECTION_METRIC] = _mean_sd([line["valid_metrics"][SELECTION_METRIC] for line in seed_lines])
    out["train_seconds"] = statistics.fmean(line["train_seconds"] for line in seed_lines)
    out["eval_users_per_s"] = statistics.median(line["eval_users_per_s"] for line in seed_lines)
    out["peak_rss_mib"] = max(line["peak_rss_mib"] for line in seed_lines)
    out["budget"] = _budget_text([line["budget"] for line in seed_lines])
    return out


def _span(values: list[int]) -> str:
    return str(min(values)) if min(values) == max(values) else f"{min(values)}–{max(values)}"


def _budget_text(budgets: list[dict]) -> str:
    if all("steps" in b for b in budgets):
        return f"{_span([b['steps'] for b in budgets])} steps"
    epochs = [b["epochs"] for b in budgets if "epochs" in b]
    best = [b["best_epoch"] for b in budgets if "best_epoch" in b]
    caps = sorted({b["epoch_cap"] for b in budgets if "epoch_cap" in b})
    cap = f", cap {'/'.join(map(str, caps))}" if caps else ""
    return f"{_span(epochs)} ep (best {_span(best)}{cap})"


def _fmt(mean_sd: tuple[float, float | None]) -> str:
    mean, sd = mean_sd
    return f"{mean:.4f}" if sd is None else f"{mean:.4f} ± {sd:.4f}"


def best_peer(rows: dict) -> tuple | None:
    """The (model, variant) of the peer (not UniMP) with the highest mean validation NDCG@10; None if there is none.

    Chosen on validation, never on test, so that the comparison cannot pick the peer that happened to do worst on
    the test users.
    """
    peers = {key: seeds for key, seeds in rows.items() if key[0] != UNIMP_MODEL}
    if not peers:
        return None
    return max(peers, key=lambda key: (statistics.fmean(line["valid_metrics"][SELECTION_METRIC]
                                                        for line in peers[key]), key))


def _name(model: str, variant: str) -> str:
    return model if variant == "default" else f"{model} [{variant}]"


def _comparison(groups: dict, dataset: str, masking: str) -> dict | None:
    rows = groups.get((dataset, masking), {})
    unimp = rows.get((UNIMP_MODEL, UNIMP_VARIANT))
    peer_key = best_peer(rows)
    if not unimp or peer_key is None:
        return None
    peer = rows[peer_key]
    digests = {line.get("users_sha256") for line in unimp + peer} - {None}
    if len(digests) > 1 or len({len(line["ranks"]) for line in unimp + peer}) != 1:
        raise ValueError(f"{dataset}/{masking}: UniMP-tiny and {peer_key[0]} rank different user lists; "
                         "pairing needs the split's user order in both")
    return {"peer": peer_key, "unimp_n": len(unimp), "peer_n": len(peer),
            **paired_bootstrap(seed_averaged_ndcg(unimp), seed_averaged_ndcg(peer))}


def _reading(ci: dict, peer_name: str) -> str:
    if ci["low"] > 0:
        return f"UniMP-tiny ahead of {peer_name}"
    if ci["high"] < 0:
        return f"{peer_name} ahead of UniMP-tiny"
    return f"on par with {peer_name} (the CI spans 0)"


def render_report(lines: list[dict]) -> str:
    """Markdown for BENCHMARKS.md §1 (between the markers) from result lines of the REPORT_DATASETS (others are
    ignored)."""
    lines = [line for line in latest_lines(leave_one_out_lines(lines)) if line["dataset"] in REPORT_DATASETS]
    groups = group(lines)
    datasets = [d for d in contract.DATASETS if any(key[0] == d for key in groups)]
    commits = sorted({line["commit"][:10] for line in lines})
    dates = sorted(line["date"][:10] for line in lines)
    cpus = sorted({f"{line['cpu']['model']} ({line['cpu']['cores']} cores)" for line in lines})
    out = [
        "_Generated by `make bench-report` (`benchmarks/report.py`) from `benchmarks/results/*.jsonl`; do not edit "
        "by hand._",
        "",
    ]
    if not lines:
        return "\n".join(out + ["No result lines yet."])
    out += [
        f"{len(lines)} result line{'s' if len(lines) != 1 else ''}; runs from {dates[0]} to {dates[-1]}, "
        f"commits {', '.join(commits)}; CPU: {'; '.join(cpus)}.",
        "Metrics on test over all users, full ranking, mean ± sample sd over seeds (n = number of seeds); valid "
        "NDCG@10 is the same model on validation. Ranks count ties against the target. `none`: nothing removed "
        "from the ranking; `history masked`: the user's past items scored −inf (general peers: RecBole's own "
        "mask; sequential peers and UniMP: the same trained model ranked both ways).",
        "",
        "#### Paired comparison: UniMP-tiny vs. the best peer",
        "",
        "Best peer = highest mean **validation** NDCG@10 among the peers with that masking. Δ = mean over users "
        "of UniMP-tiny's minus the peer's NDCG@10, each user's value first averaged over that model's seeds; "
        f"95 % CI: percentile bootstrap over users ({RESAMPLES:,} resamples, seed {BOOTSTRAP_SEED}).",
        "",
        "| dataset | masking | best peer (valid NDCG@10) | UniMP-tiny seeds | peer seeds | Δ NDCG@10 | 95 % CI | "
        "reading |",
        "|---|---|---|---|---|---|---|---|",
    ]
    any_pair = False
    for dataset in datasets:
        for masking in contract.MASKINGS:
            rows = groups.get((dataset, masking))
            if not rows:
                continue
            peer_key = best_peer(rows)
            comparison = _comparison(groups, dataset, masking)
            peer_text = "—" if peer_key is None else (
                f"{_name(*peer_key)} ({_fmt(summarize(rows[peer_key])['valid_' + SELECTION_METRIC])})")
            if comparison is None:
                unimp_n = len(rows.get((UNIMP_MODEL, UNIMP_VARIANT), []))
                reason = "no peer run under this masking yet" if unimp_n else "no UniMP-tiny lines yet"
                out.append(f"| {TITLES[dataset]} | {MASKING_LABELS[masking]} | {peer_text} | {unimp_n} | "
                           f"{len(rows[peer_key]) if peer_key else 0} | — | — | {reason} |")
                continue
            any_pair = True
            out.append(
                f"| {TITLES[dataset]} | {MASKING_LABELS[masking]} | {peer_text} | {comparison['unimp_n']} | "
                f"{comparison['peer_n']} | {comparison['mean']:+.4f} | [{comparison['low']:+.4f}, "
                f"{comparison['high']:+.4f}] | {_reading(comparison, _name(*comparison['peer']))} |")
    if not any_pair:
        out += ["", "No UniMP-tiny (variant `default`) lines yet: the paired comparisons appear once they land."]
    for dataset in datasets:
        out += ["", f"#### {TITLES[dataset]}", "",
                "| model | masking | n | valid NDCG@10 | HR@10 | NDCG@10 | MRR@10 | HR@20 | NDCG@20 | budget | "
                "train s | eval users/s | peak MiB |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for masking in contract.MASKINGS:
            rows = groups.get((dataset, masking), {})
            order = sorted(rows, key=lambda key: (key[0] == UNIMP_MODEL, key))
            for key in order:
                s = summarize(rows[key])
                out.append(
                    f"| {_name(*key)} | {MASKING_LABELS[masking]} | {s['n']} | "
                    f"{_fmt(s['valid_' + SELECTION_METRIC])} | " + " | ".join(_fmt(s[m]) for m in TABLE_METRICS)
                    + f" | {s['budget']} | {s['train_seconds']:.0f} | {s['eval_users_per_s']:.0f} | "
                    f"{s['peak_rss_mib']:.0f} |")
    return "\n".join(out)


def render_summary(lines: list[dict]) -> str:
    """README.md's results summary: one bullet per dataset and masking with UniMP-tiny's and the best peer's mean test
    NDCG@10 and the paired CI's reading, from the same lines and rules as `render_report` (REPORT_DATASETS only)."""
    lines = [line for line in latest_lines(leave_one_out_lines(lines)) if line["dataset"] in REPORT_DATASETS]
    groups = group(lines)
    out = ["_Generated by `make bench-report` from `benchmarks/results/*.jsonl` (details: BENCHMARKS.md §1.1)._", ""]
    for dataset in contract.DATASETS:
        for masking in contract.MASKINGS:
            rows = groups.get((dataset, masking))
            if not rows:
                continue
            where = f"**{TITLES[dataset]}**, {MASKING_LABELS[masking]}"
            comparison = _comparison(groups, dataset, masking)
            unimp = rows.get((UNIMP_MODEL, UNIMP_VARIANT))
            if comparison is None:
                reason = ("no UniMP-tiny run yet" if not unimp else "no peer run under this masking yet")
                out.append(f"- {where}: {reason}.")
                continue
            peer = comparison["peer"]
            u, p = summarize(unimp), summarize(rows[peer])
            out.append(
                f"- {where}: UniMP-tiny NDCG@10 {_fmt(u['ndcg@10'])} ({u['n']} seed{'s' * (u['n'] != 1)}) vs "
                f"{_name(*peer)} {_fmt(p['ndcg@10'])} ({p['n']} seed{'s' * (p['n'] != 1)}); Δ "
                f"{comparison['mean']:+.4f}, 95 % CI [{comparison['low']:+.4f}, {comparison['high']:+.4f}]: "
                f"{_reading(comparison, _name(*peer))}.")
    if len(out) == 2:
        out.append("No result lines yet.")
    return "\n".join(out)


def render_tasks(lines: list[dict]) -> str:
    """Markdown for BENCHMARKS.md §9: per task other than 'rec' and per dataset, every (model, variant) with its
    mean ± sample sd over seeds (test, nothing masked) and the validation metric the task selects on."""
    lines = [line for line in latest_lines(lines) if line["task"] != "rec" and line["split"] == "test"]
    out = ["_Generated by `make bench-report` from the non-`rec` lines of `benchmarks/results/*.jsonl` "
           "(`make bench-tasks` writes them); do not edit by hand._"]
    order = [*TASK_COLUMNS, *(task for task in contract.TASKS if task not in TASK_COLUMNS)]
    tasks = [task for task in order if any(line["task"] == task for line in lines)]
    for task in tasks:
        task_lines = [line for line in lines if line["task"] == task]
        columns, valid_metric = TASK_COLUMNS.get(task) or (
            tuple(sorted({k for line in task_lines for k in line["metrics"]})), None)
        for dataset in sorted({line["dataset"] for line in task_lines}, key=_dataset_order):
            rows: dict = {}
            for line in task_lines:
                if line["dataset"] == dataset:
                    rows.setdefault((line["model"], line["variant"]), []).append(line)
            out += ["", f"#### {task}: {TITLES.get(dataset, dataset)}", "",
                    "| model | variant | n | " + (f"valid {valid_metric} | " if valid_metric else "")
                    + " | ".join(columns) + " | budget |",
                    "|---|---|---|" + ("---|" if valid_metric else "") + "---|" * len(columns) + "---|"]
            for (model, variant), seed_lines in rows.items():
                cells = [_seed_cell(seed_lines, "metrics", c) for c in columns]
                valid = [_seed_cell(seed_lines, "valid_metrics", valid_metric)] if valid_metric else []
                out.append(f"| {model} | {variant} | {len(seed_lines)} | " + " | ".join(valid + cells)
                           + f" | {_budget_text([line['budget'] for line in seed_lines])} |")
    if not tasks:
        out += ["", "No result lines of other tasks yet."]
    return "\n".join(out)


def render_task_summary(lines: list[dict]) -> str:
    """README.md's per-task summary: for every task other than 'rec', dataset and UniMP (model, variant), each headline
    metric's mean ± sd over seeds next to the baseline that is best on that metric on **validation** (upper bounds
    excluded), and whether UniMP is ahead of it on every seed, behind on every seed, or mixed."""
    lines = [line for line in latest_lines(lines) if line["task"] in TASK_HEADLINES and line["split"] == "test"]
    out = ["_Generated by `make bench-report` from the lines `make bench-tasks` writes (tables: BENCHMARKS.md "
           "§9.1)._", ""]
    for task in TASK_HEADLINES:
        for dataset in sorted({line["dataset"] for line in lines if line["task"] == task}, key=_dataset_order):
            rows: dict = {}
            for line in lines:
                if line["task"] == task and line["dataset"] == dataset:
                    rows.setdefault((line["model"], line["variant"]), []).append(line)
            baselines = {key: seed_lines for key, seed_lines in rows.items()
                         if not key[0].startswith("UniMP") and BOUND_MARK not in key[0]}
            for (model, variant), seed_lines in rows.items():
                if not model.startswith("UniMP"):
                    continue
                parts = []
                for metric, direction in TASK_HEADLINES[task]:
                    if not all(metric in line["metrics"] for line in seed_lines):
                        continue
                    scored = {key: group for key, group in baselines.items()
                              if all(metric in line["metrics"] and metric in line["valid_metrics"] for line in group)}
                    if not scored:
                        parts.append(f"{metric} {_fmt(_mean_sd([line['metrics'][metric] for line in seed_lines]))}"
                                     " (no baseline)")
                        continue
                    best = max(scored, key=lambda key: direction * statistics.fmean(
                        line["valid_metrics"][metric] for line in scored[key]))
                    reference = statistics.fmean(line["metrics"][metric] for line in scored[best])
                    ahead = [direction * (line["metrics"][metric] - reference) > 0 for line in seed_lines]
                    reading = ("ahead on every seed" if all(ahead) else "behind on every seed" if not any(ahead)
                               else f"ahead on {sum(ahead)} of {len(ahead)} seeds")
                    parts.append(f"{metric} {_fmt(_mean_sd([line['metrics'][metric] for line in seed_lines]))} vs "
                                 f"{best[0]} {reference:.4f}: {reading}")
                n = len(seed_lines)
                out.append(f"- **{TASK_TITLES[task]}, {TITLES.get(dataset, dataset)}**: {_name(model, variant)} "
                           f"({n} seed{'s' * (n != 1)}): " + "; ".join(parts) + ".")
    if len(out) == 2:
        out.append("No result lines of other tasks yet.")
    return "\n".join(out)


def _seed_cell(seed_lines: list[dict], field: str, metric: str) -> str:
    """Mean ± sd of `metric` over the lines' `field`, or "—" where a line lacks it (e.g. text metrics of a rating
    baseline)."""
    if not all(metric in line[field] for line in seed_lines):
        return "—"
    return _fmt(_mean_sd([line[field][metric] for line in seed_lines]))


def _dataset_order(dataset: str) -> tuple:
    return (contract.DATASETS.index(dataset) if dataset in contract.DATASETS else len(contract.DATASETS), dataset)


def write_between_markers(path: str | Path, body: str, begin: str = BEGIN_MARKER, end: str = END_MARKER) -> bool:
    """Replace the text between the `begin`/`end` markers of `path` with `body`; True if the file changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"{path} needs exactly one {begin} followed by one {end}")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    new = f"{head}{begin}\n{body}\n{end}{tail}"
    if new == text:
        return False
    path.write_text(new, encoding="utf-8")
    return True


def _between(path: str | Path, begin: str, end: str) -> str | None:
    text = Path(path).read_text(encoding="utf-8")
    return text.split(begin)[1].split(end)[0].strip("\n") if begin in text and end in text else None


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", default=str(contract.RESULTS_DIR))
    parser.add_argument("--markdown", default=str(repo / "BENCHMARKS.md"),
                        help="file holding the bench-report markers (default: BENCHMARKS.md)")
    parser.add_argument("--readme", default=str(repo / "README.md"),
                        help="file holding the bench-summary markers (default: README.md); '' skips it")
    parser.add_argument("--print", action="store_true", help="print the report instead of writing it")
    parser.add_argument("--check", action="store_true", help="exit 1 if the markdown is not up to date")
    args = parser.parse_args(argv)
    lines = contract.read_results(args.results_dir)
    targets = [(args.markdown, render_report(lines), BEGIN_MARKER, END_MARKER)]
    if TASKS_BEGIN in Path(args.markdown).read_text(encoding="utf-8"):
        targets.append((args.markdown, render_tasks(lines), TASKS_BEGIN, TASKS_END))
    if args.readme:
        targets.append((args.readme, render_summary(lines), SUMMARY_BEGIN, SUMMARY_END))
        if TASK_SUMMARY_BEGIN in Path(args.readme).read_text(encoding="utf-8"):
            targets.append((args.readme, render_task_summary(lines), TASK_SUMMARY_BEGIN, TASK_SUMMARY_END))
    if args.print:
        print("\n\n".join(body for _, body, _, _ in targets))
        return 0
    if args.check:
        stale = [path for path, body, begin, end in targets if _between(path, begin, end) != body]
        for path in stale:
            print(f"{path} is out of date: run `make bench-report`", file=sys.stderr)
        return 1 if stale else 0
    for path, body, begin, end in targets:
        changed = write_between_markers(path, body, begin, end)
        print(f"{path}: {'updated' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
