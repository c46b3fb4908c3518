"""The benchmark result-file contract (issue 11): one JSON line per run in ``benchmarks/results/<dataset>.jsonl``.

Standard library only, so that both the RecBole venv (``run_peers.py``) and the project venv (``run_benchmark.py``,
``report.py``) import it. Write with `append_results`, read with `read_results`; both validate every line.

A 'rec' line is on the peers' leave-one-out split unless its ``protocol`` is one of `OTHER_SPLIT_PROTOCOLS`
(``cold_items``, issue 12: ``benchmarks/cold_items.py``); such a line also names the users it ranks in ``subset``
and has a ``variant`` starting with the protocol, so that its row key never equals a leave-one-out row's (resume
and `report.latest_lines` key on it), and ``report.py`` keeps it out of the §1.1 tables (`on_peer_split`).
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import math
import os
import subprocess
from pathlib import Path

__all__ = [
    "DATASETS", "KS", "MASKINGS", "METRIC_KEYS", "OTHER_SPLIT_PROTOCOLS", "REQUIRED_FIELDS", "RESULTS_DIR", "TASKS",
    "ResultLineError",
    "append_results", "cpu_info", "git_commit", "metrics_from_ranks", "ndcg_at", "peak_rss_mib", "read_results",
    "on_peer_split", "results_path", "row_key", "users_digest", "utc_now", "validate_line",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# amazon-2018: the new-domain transfer target (issue 12, benchmarks/new_domain.py); not a §1.1 dataset (report.py).
DATASETS = ("ml100k", "hm", "amazon-mi", "amazon-2018")
TASKS = ("rec", "exp", "select", "search", "imggen")
MASKINGS = ("none", "history")
KS = (5, 10, 20)
METRIC_KEYS = tuple(f"{name}@{k}" for name in ("hr", "ndcg", "mrr") for k in KS)
# `protocol` of a 'rec' line on another split than the peers' leave-one-out one (optional field; see the docstring).
OTHER_SPLIT_PROTOCOLS = ("cold_items",)
# field -> what it holds; every line must have all of them (extra fields are kept as they are).
REQUIRED_FIELDS = {
    "dataset": f"one of {DATASETS}",
    "task": f"one of {TASKS}",
    "model": "model name, e.g. 'SASRec' or 'UniMP-tiny'",
    "variant": "'default' or the settings that differ from the model's defaults, e.g. 'hidden_dropout_prob=0.2'",
    "seed": "int",
    "masking": "'none' (nothing removed from the ranking) or 'history' (the user's past items scored -inf)",
    "split": "the split the metrics are on, e.g. 'test'",
    "metrics": f"dict of finite floats; task 'rec': exactly {METRIC_KEYS}, each in [0, 1]",
    "valid_metrics": "the same keys on validation, for the selected checkpoint/epoch",
    "budget": "{'steps': N} or {'epochs': N, 'best_epoch': M}",
    "train_seconds": "float >= 0",
    "eval_users_per_s": "float > 0; other tasks than 'rec' may give null (a baseline whose speed was not measured)",
    "peak_rss_mib": "float > 0",
    "commit": "git commit the run was made from",
    "date": "ISO 8601 time the run finished",
    "cpu": "{'model': str, 'cores': int}",
    "ranks": "task 'rec': 1-based rank of each test user's target, in the split's user order; else null",
}
# Metrics recomputed from `ranks` must agree with `metrics` to this tolerance (the formulas are exact).
RANK_METRIC_TOLERANCE = 1e-6


class ResultLineError(ValueError):
    """A result line violates the contract; the message names the field."""


def results_path(dataset: str, results_dir: str | Path | None = None) -> Path:
    """`<results_dir>/<dataset>.jsonl` (default `benchmarks/results/`)."""
    if dataset not in DATASETS:
        raise ResultLineError(f"field 'dataset': {dataset!r} is not one of {DATASETS}")
    return Path(results_dir or RESULTS_DIR) / f"{dataset}.jsonl"


def row_key(line: dict) -> tuple:
    """What identifies a row (resume skips a run whose key is already in the file)."""
    return (line["dataset"], line["task"], line["model"], line["variant"], line["seed"], line["masking"])


def ndcg_at(rank: float, k: int) -> float:
    """NDCG@k of one relevant item at 1-based `rank`: 1/log2(rank+1) if rank <= k, else 0."""
    return 1.0 / math.log2(rank + 1.0) if rank <= k else 0.0


def metrics_from_ranks(ranks, ks=KS) -> dict[str, float]:
    """HR@k = 1[r<=k], NDCG@k = 1/log2(r+1)·1[r<=k], MRR@k = 1/r·1[r<=k], each averaged over users.

    Args:
        ranks (`Sequence[int]` of length U): 1-based rank of each user's single target.
    Returns:
        `dict[str, float]` with keys `hr@k`, `ndcg@k`, `mrr@k` for k in `ks`.
    """
    ranks = list(ranks)
    if not ranks:
        raise ResultLineError("field 'ranks': empty, no user to average over")
    n = len(ranks)
    out = {f"hr@{k}": sum(1 for r in ranks if r <= k) / n for k in ks}
    out |= {f"ndcg@{k}": math.fsum(ndcg_at(r, k) for r in ranks) / n for k in ks}
    out |= {f"mrr@{k}": math.fsum(1.0 / r for r in ranks if r <= k) / n for k in ks}
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_metrics(line: dict, field: str) -> None:
    metrics = line[field]
    if not isinstance(metrics, dict) or not metrics:
        raise ResultLineError(f"field {field!r}: expected a non-empty dict of metrics, got {metrics!r}")
    if line["task"] == "rec":
        missing = [k for k in METRIC_KEYS if k not in metrics]
        if missing:
            raise ResultLineError(f"field {field!r}: missing {missing} (task 'rec' needs {list(METRIC_KEYS)})")
    for key, value in metrics.items():
        if not _is_number(value):
            raise ResultLineError(f"field {field!r}: {key} = {value!r} is not a finite number")
    if line["task"] == "rec":
        for key in METRIC_KEYS:
            if not 0.0 <= metrics[key] <= 1.0:
                raise ResultLineError(f"field {field!r}: {key} = {metrics[key]!r} is outside [0, 1]")


def validate_line(line: dict) -> dict:
    """Check `line` against the contract; return it unchanged, or raise `ResultLineError` naming the field."""
    if not isinstance(line, dict):
        raise ResultLineError(f"a result line must be a dict, got {type(line).__name__}")
    for field, meaning in REQUIRED_FIELDS.items():
        if field not in line:
            raise ResultLineError(f"missing field {field!r} ({meaning})")
    if line["dataset"] not in DATASETS:
        raise ResultLineError(f"field 'dataset': {line['dataset']!r} is not one of {DATASETS}")
    if line["task"] not in TASKS:
        raise ResultLineError(f"field 'task': {line['task']!r} is not one of {TASKS}")
    if line["masking"] not in MASKINGS:
        raise ResultLineError(f"field 'masking': {line['masking']!r} is not one of {MASKINGS}")
    for field in ("model", "variant", "split", "commit", "date"):
        if not isinstance(line[field], str) or not line[field]:
            raise ResultLineError(f"field {field!r}: expected a non-empty string, got {line[field]!r}")
    if not isinstance(line["seed"], int) or isinstance(line["seed"], bool):
        raise ResultLineError(f"field 'seed': expected an int, got {line['seed']!r}")
    _check_metrics(line, "metrics")
    _check_metrics(line, "valid_metrics")
    budget = line["budget"]
    if not isinstance(budget, dict) or not (
        ("steps" in budget and isinstance(budget["steps"], int))
        or (isinstance(budget.get("epochs"), int) and isinstance(budget.get("best_epoch"), int))
    ):
        raise ResultLineError(f"field 'budget': expected {{'steps': N}} or {{'epochs': N, 'best_epoch': M}}, "
                              f"got {budget!r}")
    if not _is_number(line["train_seconds"]) or line["train_seconds"] < 0:
        raise ResultLineError(f"field 'train_seconds': expected a number >= 0, got {line['train_seconds']!r}")
    for field in ("eval_users_per_s", "peak_rss_mib"):
        if field == "eval_users_per_s" and line[field] is None and line["task"] != "rec":
            continue
        if not _is_number(line[field]) or line[field] <= 0:
            raise ResultLineError(f"field {field!r}: expected a number > 0, got {line[field]!r}")
    cpu = line["cpu"]
    if not (isinstance(cpu, dict) and isinstance(cpu.get("model"), str) and isinstance(cpu.get("cores"), int)):
        raise ResultLineError(f"field 'cpu': expected {{'model': str, 'cores': int}}, got {cpu!r}")
    ranks = line["ranks"]
    if line["task"] == "rec":
        if not isinstance(ranks, list) or not ranks:
            raise ResultLineError("field 'ranks': task 'rec' needs the test target's rank for every test user")
        bad = next((r for r in ranks if not (isinstance(r, int) and not isinstance(r, bool) and r >= 1)), None)
        if bad is not None:
            raise ResultLineError(f"field 'ranks': {bad!r} is not a 1-based int rank")
        if "n_users" in line and line["n_users"] != len(ranks):
            raise ResultLineError(f"field 'ranks': {len(ranks)} ranks but n_users = {line['n_users']}")
        if line["split"] == "test":
            recomputed = metrics_from_ranks(ranks)
            off = {k: (line["metrics"][k], recomputed[k]) for k in METRIC_KEYS
                   if abs(line["metrics"][k] - recomputed[k]) > RANK_METRIC_TOLERANCE}
            if off:
                raise ResultLineError(f"field 'metrics' disagrees with field 'ranks' (given, from ranks): {off}")
    elif ranks is not None and not isinstance(ranks, list):
        raise ResultLineError(f"field 'ranks': expected a list or null, got {type(ranks).__name__}")
    if not on_peer_split(line):
        _check_other_split(line)
    return line


def on_peer_split(line: dict) -> bool:
    """False for a 'rec' line whose `protocol` is one of OTHER_SPLIT_PROTOCOLS (other users, other training data)."""
    return not (line["task"] == "rec" and line.get("protocol") in OTHER_SPLIT_PROTOCOLS)


def _check_other_split(line: dict) -> None:
    protocol = line["protocol"]
    if not line["variant"].startswith(protocol):
        raise ResultLineError(f"field 'variant': {line['variant']!r} must start with {protocol!r} on a "
                              f"{protocol} line, so that its row key differs from the leave-one-out rows'")
    if not isinstance(line.get("subset"), str) or not line["subset"]:
        raise ResultLineError(f"field 'subset': a {protocol} line names the test users it ranks (a non-empty "
                              f"string), got {line.get('subset')!r}")


def append_results(lines: list[dict], results_dir: str | Path | None = None) -> list[Path]:
    """Validate every line, then append them to `<results_dir>/<dataset>.jsonl` under an exclusive file lock.

    All lines are validated before anything is written, so a bad line leaves the files untouched; the lines of
    one call land together (a run's two maskings are never split by a crash or by another writer).
    """
    if isinstance(lines, dict):
        lines = [lines]
    for line in lines:
        validate_line(line)
    by_path: dict[Path, list[str]] = {}
    for line in lines:
        by_path.setdefault(results_path(line["dataset"], results_dir), []).append(
            json.dumps(line, sort_keys=False, separators=(",", ":"), allow_nan=False))
    for path, texts in by_path.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)   # released on close; serialises writers of this file
            handle.write("".join(t + "\n" for t in texts))
            handle.flush()
            os.fsync(handle.fileno())
    return list(by_path)


def read_results(source: str | Path, *, validate: bool = True) -> list[dict]:
    """All lines of one results file, or of every `*.jsonl` in a directory; each validated unless told not to."""
    source = Path(source)
    paths = sorted(source.glob("*.jsonl")) if source.is_dir() else [source]
    lines = []
    for path in paths:
        if not path.exists():
            continue
        with open(path, encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            text = handle.read()
        for number, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                if validate:
                    validate_line(line)
            except (json.JSONDecodeError, ResultLineError) as exc:
                raise ResultLineError(f"{path}:{number}: {exc}") from exc
            lines.append(line)
    return lines


def users_digest(user_ids) -> str:
    """sha256 of the test users in order (one id per line): two lines pair user by user only if these agree."""
    return hashlib.sha256("\n".join(str(u) for u in user_ids).encode()).hexdigest()


def git_commit(repo: str | Path | None = None) -> str:
    """HEAD of the repository holding this file ('unknown' outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo or Path(__file__).resolve().parent,
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_info() -> dict:
    """{'model': CPU model name from /proc/cpuinfo, 'cores': logical CPUs available to this process}."""
    model = "unknown"
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"model": model, "cores": cores}


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (VmHWM, falling back to getrusage)."""
    try:
        for text in Path("/proc/self/status").read_text().splitlines():
            if text.startswith("VmHWM:"):
                return int(text.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def utc_now() -> str:
    """Now, ISO 8601 in UTC, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
