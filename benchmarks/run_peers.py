#!/usr/bin/env python
"""Train and evaluate the RecBole 1.2.1 peers on the project's leave-one-out split.

Runs inside ``.venv-recbole`` (see ``benchmarks/setup_recbole.sh``); it imports only
recbole / torch / numpy / pandas and the standard library, never the ``unimp`` package.

Protocol: /work/shared/reference/peer_protocol.md (§3 evaluation, §4 configs). For every
(dataset, model, seed) the runner

1. builds RecBole's Config (§4: full ranking, leave-one-out ``valid_and_test``, time order,
   early stopping with patience 10 on valid NDCG@10, ``train_batch_size`` 256 for sequential
   models, epoch caps),
2. VERIFIES that RecBole's internal split equals ``<ds>.split.tsv`` user by user — valid target,
   test target, train items in order, and (sequential models) every 50-item input history, or
   (general models) the masked history at validation and test — and aborts on any mismatch,
3. trains to early stopping, evaluates the best-on-validation checkpoint on test, and times
   full-ranking evaluation,
4. ranks the test (and validation) target of every user exactly over the whole catalogue, with the model's native
   masking and, for sequential models, also with the user's history masked (the SAME trained model, two lines),
5. appends one line per masking to ``benchmarks/results/<dataset>.jsonl`` (the contract of
   ``benchmarks/results.py``) right away, so partial progress survives and ``--skip-existing`` resumes.

Every run executes in its own child process, so that peak memory is per run and RecBole's global
state (seeds, loggers) never leaks from one run to the next.

Example::

    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 nice -n 15 .venv-recbole/bin/python benchmarks/run_peers.py \
        --data-dir outputs/recbole_atomic --datasets ml100k amazon-mi hm --models BPR SASRec \
        --seeds 2020 2021 2022 --set SASRec@ml100k:hidden_dropout_prob=0.2 --skip-existing
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as contract  # noqa: E402  (stdlib-only result-file contract, shared with the UniMP runner)

SEQUENTIAL = {"GRU4Rec", "SASRec", "BERT4Rec", "SASRecF", "NARM", "STAMP", "Caser", "FPMC", "GRU4RecF"}
DEFAULT_MODELS = ["Pop", "BPR", "LightGCN", "GRU4Rec", "SASRec", "BERT4Rec"]
DEFAULT_DATASETS = ["amazon-mi", "hm", "ml100k"]
# peer_protocol §4 had 300 for general models, 30 for sequential ones and 3 for sequential ones on ml100k; issue 11
# raises the sequential cap to 50 on every dataset (early stopping with patience 10 ends most runs before it).
DEFAULT_CAPS = ["general=300", "sequential=50"]
TOPK = [3, 5, 10, 20]
METRICS = ["hit", "ndcg", "mrr"]
EXIT_SPLIT_MISMATCH = 3


class SplitMismatch(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# helpers shared by parent and child (stdlib only)
# --------------------------------------------------------------------------------------------


def family(model: str) -> str:
    return "sequential" if model in SEQUENTIAL else "general"


def parse_caps(specs: list[str]) -> dict[str, int]:
    caps = {}
    for spec in specs:
        key, _, val = spec.partition("=")
        if not val:
            raise SystemExit(f"--epoch-cap expects KEY=N, got {spec!r}")
        caps[key.strip()] = int(val)
    return caps


def epoch_cap(caps: dict[str, int], model: str, ds: str) -> int:
    """Most specific wins: MODEL@ds > family@ds > MODEL > family."""
    for key in (f"{model}@{ds}", f"{family(model)}@{ds}", model, family(model)):
        if key in caps:
            return caps[key]
    raise SystemExit(f"no epoch cap for {model} on {ds}")


def parse_overrides(specs: list[str]) -> dict[str, dict]:
    """``MODEL:key=value`` (value parsed as JSON when it parses, else kept as a string)."""
    out: dict[str, dict] = {}
    for spec in specs:
        model, _, kv = spec.partition(":")
        key, _, val = kv.partition("=")
        if not (model and key and val):
            raise SystemExit(f"--set expects MODEL:key=value, got {spec!r}")
        try:
            parsed = json.loads(val)
        except json.JSONDecodeError:
            parsed = val
        out.setdefault(model, {})[key] = parsed
    return out


def overrides_for(overrides: dict[str, dict], model: str, ds: str) -> dict:
    """`--set` entries for `model` on `ds`: ``MODEL:k=v`` applies everywhere, ``MODEL@ds:k=v`` on `ds` (wins)."""
    return {**overrides.get(model, {}), **overrides.get(f"{model}@{ds}", {})}


def variant_name(overrides: dict) -> str:
    """The contract's `variant`: 'default', or the overridden RecBole settings as sorted ``key=value``."""
    return ",".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "default"


def target_ranks(scores, targets, exclude=None):
    """Exact 1-based rank of each target over all items, ties counted against the target (pessimistic).

    r = #{j not excluded : s_j >= s_t}: the convention of UniMP's `rank_of_targets` (processing/metrics_unimp.py),
    so a constant-score model ranks every target last. RecBole's own metrics break ties arbitrarily
    (`torch.topk`); with continuous scores the two agree (ties only matter for Pop).

    Args:
        scores (`np.ndarray` of shape (B, N)): higher is better; -inf for items already removed (padding id 0, and
            RecBole's history mask for general models).
        targets (`Sequence[int]` of shape (B,)): column of each row's target.
        exclude (`np.ndarray` of bool, shape (B, N), *optional*): True where an item is masked (scored -inf before
            ranking). A mask that covers a row's own target raises `ValueError`.
    Returns:
        `np.ndarray` of int64, shape (B,).
    """
    import numpy as np

    scores = np.array(scores, dtype=np.float64)            # a copy: the caller's scores stay as they are
    targets = np.asarray(targets, dtype=np.int64)
    if scores.ndim != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(f"scores must be (B, N) and targets (B,), got {scores.shape} and {targets.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; a NaN score has no rank")
    rows = np.arange(len(targets))
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=bool)
        if exclude.shape != scores.shape:
            raise ValueError(f"exclude must have the shape of scores {scores.shape}, got {exclude.shape}")
        if exclude[rows, targets].any():
            raise ValueError("exclude masks the target of at least one row; a target cannot be excluded")
        scores[exclude] = -np.inf
    target_scores = scores[rows, targets]
    if not np.isfinite(target_scores).all():
        raise ValueError("a target is scored -inf (masked by the model's own history mask?)")
    return (scores >= target_scores[:, None]).sum(axis=1).astype(np.int64)


def history_exclusion(histories: dict, row_keys, num_items: int):
    """(B, num_items) bool mask, True on the items of ``histories[key]`` for each row's key."""
    import numpy as np

    mask = np.zeros((len(row_keys), num_items), dtype=bool)
    for row, key in enumerate(row_keys):
        mask[row, np.asarray(histories[key], dtype=np.int64)] = True
    return mask


def run_key(r: dict) -> tuple:
    return (r["dataset"], r["model"], r["seed"], json.dumps(r.get("overrides", {}), sort_keys=True),
            r["epoch_cap"])


def load_results(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"runs": []}


def save_results(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def run_spec_in_child(script: str, spec: dict, env: dict, prefix: str) -> tuple[dict, int]:
    """Run one spec in a child process of `script` (``--_child spec.json``) in a fresh work dir (set on `spec`).

    Returns the child's result dict ({"status": "crashed (exit N)"} when it wrote none) and its exit code.
    """
    workdir = tempfile.mkdtemp(prefix=prefix)
    spec.update(workdir=workdir, result_path=workdir + "/result.json")
    Path(workdir, "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, os.path.abspath(script), "--_child", workdir + "/spec.json"], env=env)
    try:
        return json.loads(Path(spec["result_path"]).read_text()), proc.returncode
    except (OSError, json.JSONDecodeError):
        return {"status": f"crashed (exit {proc.returncode})"}, proc.returncode


def merge_run(out: Path, entry: dict, meta: dict, finalize=None) -> None:
    """Replace `entry`'s run (same run_key) in the results file `out`, under a file lock (parallel invocations may
    share `out`); `finalize(data)` may update the merged data before it is written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = Path(tempfile.gettempdir()) / (
        "run_peers-" + hashlib.md5(str(out.resolve()).encode()).hexdigest()[:12] + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = load_results(out)   # re-read: another invocation may have written
        data["runs"] = [r for r in data["runs"] if run_key(r) != run_key(entry)] + [entry]
        data["meta"] = meta
        if finalize is not None:
            finalize(data)
        save_results(out, data)


# --------------------------------------------------------------------------------------------
# child: one (dataset, model, seed) run
# --------------------------------------------------------------------------------------------


def _rss_mb(field: str) -> float | None:
    """VmRSS / VmHWM of this process from /proc (Linux), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def common_config(spec: dict, data_path: str) -> dict:
    """RecBole config shared by the ranking and rating runners: CPU, seed, the atomic files' fields, the
    time-ordered leave-one-out split (eval_args' mode is set by each runner), early stopping, the epoch cap."""
    return {
        "data_path": data_path,
        "checkpoint_dir": spec["workdir"] + "/saved",
        "use_gpu": False,
        "device": "cpu",
        "seed": spec["seed"],
        "reproducibility": True,
        "show_progress": False,
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "stopping_step": spec["patience"],
        "eval_step": 1,
        "epochs": spec["epoch_cap"],
    }


def build_config_dict(spec: dict) -> dict:
    seq = family(spec["model"]) == "sequential"
    cfg = {
        **common_config(spec, spec["data_dir"]),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": 50,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user",
                      "mode": "full"},
        "metrics": ["Hit", "NDCG", "MRR"],
        "topk": TOPK,
        "valid_metric": "NDCG@10",
    }
    if spec["model"] == "SASRecF":
        cfg["load_col"]["item"] = ["item_id", "release_year", "class"]
    if seq:
        cfg["train_neg_sample_args"] = None   # full-softmax CE over all items
        cfg["train_batch_size"] = 256         # DEVIATION from RecBole's 2048, peer_protocol §4
    cfg.update(spec.get("overrides", {}))
    return cfg


def check_timestamps(inter_path: Path) -> None:
    """RecBole keeps ``float`` fields as float32: the timestamps must survive that exactly."""
    import numpy as np
    import pandas as pd

    ts = pd.read_csv(inter_path, sep="\t", usecols=["timestamp:float"])["timestamp:float"].to_numpy(
        dtype=np.float64)
    bad = int((ts.astype(np.float32).astype(np.float64) != ts).sum())
    if bad:
        raise SplitMismatch(
            f"{inter_path}: {bad} timestamps are not exactly representable in float32; RecBole would "
            "merge/reorder them. Export the dense rank of the time (peer_protocol §2.1).")


def verify_split(spec: dict, train_data, valid_data, test_data) -> dict:
    """Compare RecBole's internal split with ``<ds>.split.tsv`` user by user. Raise on mismatch."""
    import numpy as np
    import pandas as pd

    ds_name = spec["dataset"]
    split = pd.read_csv(Path(spec["data_dir"]) / ds_name / f"{ds_name}.split.tsv", sep="\t", dtype=str,
                        keep_default_na=False)
    expected = {
        r.user_id: (r.train_items.split(" ") if r.train_items else [], r.valid_item, r.test_item)
        for r in split.itertuples(index=False)
    }
    dataset = train_data._dataset
    uid_f, iid_f = dataset.uid_field, dataset.iid_field
    u_tok = np.asarray(dataset.field2id_token[uid_f])
    i_tok = np.asarray(dataset.field2id_token[iid_f])
    max_len = spec.get("max_len", 50)
    problems: list[str] = []
    counts = {"users": len(expected), "valid_target": 0, "test_target": 0, "train_items": 0,
              "history": 0}

    def note(kind: str, user: str, got, want) -> None:
        counts[kind] += 1
        if len(problems) < 10:
            problems.append(f"{kind} user={user}: recbole={got!r} split.tsv={want!r}")

    def one_per_user(ds, what: str) -> dict:
        users = u_tok[ds.inter_feat[uid_f].numpy()]
        if len(set(users)) != len(users):
            raise SplitMismatch(f"{ds_name}: {what} has more than one row for some user")
        if set(users) != set(expected):
            raise SplitMismatch(
                f"{ds_name}: {what} users differ from split.tsv: {len(set(users) - set(expected))} "
                f"extra, {len(set(expected) - set(users))} missing")
        return {u: i for u, i in zip(users, ds.inter_feat[iid_f].numpy())}

    v_rows = one_per_user(valid_data._dataset, "valid")
    t_rows = one_per_user(test_data._dataset, "test")
    for u, (_, v, t) in expected.items():
        if i_tok[v_rows[u]] != v:
            note("valid_target", u, i_tok[v_rows[u]], v)
        if i_tok[t_rows[u]] != t:
            note("test_target", u, i_tok[t_rows[u]], t)

    tr = train_data._dataset.inter_feat
    tr_users = u_tok[tr[uid_f].numpy()]
    tr_items = i_tok[tr[iid_f].numpy()]
    if family(spec["model"]) == "general":
        # Train rows in RecBole's (time-sorted) order must equal the chronological train list.
        got: dict[str, list] = {u: [] for u in expected}
        for u, i in zip(tr_users, tr_items):
            got.setdefault(u, []).append(i)
        for u, (train, _, _) in expected.items():
            if got.get(u, []) != train:
                note("train_items", u, got.get(u, [])[:5], train[:5])
        # The masks applied in full ranking: train items at validation, train + valid at test.
        for loader, phase in ((valid_data, "valid"), (test_data, "test")):
            uid_ids = dataset.field2token_id[uid_f]
            for u, (train, v, _) in expected.items():
                hist = set(i_tok[loader.uid2history_item[uid_ids[u]].numpy()])
                want = set(train) | ({v} if phase == "test" else set())
                if hist != want:
                    note("history", u, f"{phase} mask of {len(hist)} items", f"{len(want)} items")
        counts["checked"] = "valid/test targets, train items in order, valid/test history masks"
    else:
        # One training row per prefix: (i_1..i_{k-1}) -> i_k, k = 2..n-2, history = last max_len.
        list_f, len_f = dataset.item_id_list_field, dataset.item_list_length_field

        def hist_of(inter) -> list[list[str]]:
            lists, lens = inter[list_f].numpy(), inter[len_f].numpy()
            return [list(i_tok[row[:n]]) for row, n in zip(lists, lens)]

        got: dict[str, list] = {u: [] for u in expected}
        for u, h, i in zip(tr_users, hist_of(tr), tr_items):
            got.setdefault(u, []).append((h, i))
        for u, (train, v, t) in expected.items():
            want_rows = [(train[max(0, k - max_len):k], train[k]) for k in range(1, len(train))]
            if [i for _, i in got[u]] != train[1:]:
                note("train_items", u, [i for _, i in got[u]][:5], train[1:6])
            elif [h for h, _ in got[u]] != [h for h, _ in want_rows]:
                note("history", u, "train-row history", "prefix of split.tsv train_items")
        for loader, phase in ((valid_data, "valid"), (test_data, "test")):
            inter = loader._dataset.inter_feat
            users = u_tok[inter[uid_f].numpy()]
            for u, h in zip(users, hist_of(inter)):
                train, v, _ = expected[u]
                full = train + ([v] if phase == "test" else [])
                want = full[-max_len:]
                if h != want:
                    at = next((j for j, (a, b) in enumerate(zip(h, want)) if a != b),
                              min(len(h), len(want)))
                    note("history", u, f"{phase} input (len {len(h)}) at position {at}: "
                         f"{h[at:at + 2]}", f"(len {len(want)}) {want[at:at + 2]}")
        counts["checked"] = ("valid/test targets, train targets in order, every train/valid/test "
                             f"input history (last {max_len})")
    mismatches = sum(counts[k] for k in ("valid_target", "test_target", "train_items", "history"))
    counts["mismatches"] = mismatches
    if mismatches:
        raise SplitMismatch(f"{ds_name}/{spec['model']}: RecBole's split differs from split.tsv: "
                            f"{counts}\n  " + "\n  ".join(problems))
    return counts


def fix_pop_counting(model, config) -> None:
    """Make RecBole 1.2.1's Pop count training interactions (``--set Pop:pop_count_fix=true``).

    Its ``calculate_loss`` does ``item_cnt[item, :] = item_cnt[item, :] + 1``: an indexed assignment does not add up
    repeated indices, so an item counts once per batch it appears in (capped at the number of batches of its one
    epoch), and the sampled negatives of the pointwise loader count too (RecBole issues #1844/#2198, PR #2199).
    Measured here: max count 6 / 8 / 96 instead of 30 / 118 / 575 on H&M / Amazon MI / ML-100K. The method is
    replaced on this model object at run time; nothing in site-packages is edited.
    """
    import types

    import torch

    label = config["LABEL_FIELD"]

    def count_positives(self, interaction):
        item = interaction[self.ITEM_ID]
        if label in interaction.interaction:  # pointwise loader: keep the positives only
            item = item[interaction[label] > 0]
        self.item_cnt.index_add_(0, item, torch.ones(len(item), 1, dtype=self.item_cnt.dtype, device=item.device))
        self.max_cnt = self.item_cnt.max(dim=0)[0]
        return torch.nn.Parameter(torch.zeros(1, device=self.device))

    model.calculate_loss = types.MethodType(count_positives, model)


def store_run(out: Path, entry: dict, returncode: int, workdir: str, meta: dict, *, keep_workdir: bool, tag: str,
              finalize=None) -> int:
    """Merge a finished child run into `out` and clean its work dir; 0 when it is ok, 1 when it failed,
    EXIT_SPLIT_MISMATCH when RecBole's split differed (the caller then aborts). `tag` prefixes messages."""
    merge_run(out, entry, meta, finalize=finalize)
    if not keep_workdir:
        subprocess.run(["rm", "-rf", workdir])
    if returncode == EXIT_SPLIT_MISMATCH:
        print(f"[{tag}: ABORT, RecBole's split of {entry['dataset']} differs from {entry['dataset']}.split.tsv "
              f"(see above). Results so far in {out}.", file=sys.stderr)
        return EXIT_SPLIT_MISMATCH
    if entry.get("status") != "ok":
        print(f"[{tag} FAILED: {entry.get('status')} {entry.get('error', '')}", file=sys.stderr)
        return 1
    return 0


def child_or_tables(args, child_main, print_tables) -> int | None:
    """`--_child` and `--table-only`, shared by the runners: their exit code, or None when neither was asked."""
    if args._child:
        return child_main(args._child)
    if args.table_only is not None:
        for f in args.table_only or [args.out]:
            print_tables(load_results(Path(f)))
        return 0
    return None


def prepare_recbole(spec: dict, build_config) -> tuple:
    """RecBole's config, dataset and (train, valid, test) loaders for a child run, seeded and logged as RecBole does;
    also the RSS after the imports (MiB)."""
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_logger, init_seed

    config = Config(model=spec["model"], dataset=spec["dataset"], config_dict=build_config(spec))
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    torch.set_num_threads(spec["threads"])
    rss_imported = _rss_mb("VmRSS")
    dataset = create_dataset(config)
    return config, dataset, data_preparation(config, dataset), rss_imported


def child_prologue(spec_path: str) -> dict:
    """A child run's spec, with the process set up for RecBole (shared by the rating runner)."""
    spec = json.loads(Path(spec_path).read_text())
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    sys.argv = sys.argv[:1]     # RecBole's Config parses sys.argv; keep our flags away from it
    import warnings

    # pandas 2.3 fillna(inplace=True) and torch.load/GradScaler deprecations: harmless (protocol §1)
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.chdir(spec["workdir"])   # RecBole writes ./log, ./log_tensorboard and checkpoints here
    disable_recbole_anomaly_mode()
    return spec


def disable_recbole_anomaly_mode() -> None:
    """Undo RecBole 1.2.1's import-time ``torch.autograd.set_detect_anomaly(True)``.

    ``recbole/model/sequential_recommender/sine.py`` switches anomaly detection on for the whole process when
    ``recbole.utils.get_model`` imports the model zoo. Every backward node then runs ``isnan(...).any()`` on its
    outputs and every forward op records a stack trace: SASRec on ML-100K spent ~40 % of its epoch there (py-spy,
    BENCHMARKS §8). Anomaly mode only checks, it never changes a value, so the results are the same.
    """
    import recbole.model.sequential_recommender  # noqa: F401  (the import that flips the switch)
    import torch

    torch.autograd.set_detect_anomaly(False)


def fit_timed(trainer, train_data, valid_data) -> tuple[dict | None, list[float], list[float], float]:
    """`trainer.fit` (best checkpoint saved), timing each training epoch apart from validation.

    Returns RecBole's best valid result, the valid-metric curve (one value per epoch), the training-epoch seconds
    and the wall seconds of the whole fit.
    """
    epoch_times: list[float] = []
    orig_train_epoch = trainer._train_epoch

    def timed_train_epoch(*a, **kw):
        t0 = time.perf_counter()
        out = orig_train_epoch(*a, **kw)
        epoch_times.append(time.perf_counter() - t0)
        return out

    trainer._train_epoch = timed_train_epoch
    valid_curve: list[float] = []
    t0 = time.perf_counter()
    _, best_valid_result = trainer.fit(train_data, valid_data, saved=True, show_progress=False,
                                       callback_fn=lambda epoch, score: valid_curve.append(float(score)))
    return best_valid_result, valid_curve, epoch_times, time.perf_counter() - t0


def rank_all_users(trainer, spec: dict, dataset, valid_data, test_data) -> dict:
    """Exact full-catalogue ranks of every user's valid and test target, in the order of ``<ds>.split.tsv``.

    `native` uses RecBole's own full-sort scores (padding id 0 at -inf; general models: RecBole's history mask, the
    train items at validation and train + valid item at test, peer_protocol §3). Sequential models also get
    `history`: the same scores with the user's train items (+ the valid item at test) set to -inf, as UniMP's masked
    column. The best checkpoint must be loaded on `trainer.model`.
    """
    import pandas as pd
    import torch

    ds_name = spec["dataset"]
    split = pd.read_csv(Path(spec["data_dir"]) / ds_name / f"{ds_name}.split.tsv", sep="\t", dtype=str,
                        keep_default_na=False)
    uid_f, iid_f = dataset.uid_field, dataset.iid_field
    user_ids = [dataset.field2token_id[uid_f][u] for u in split["user_id"]]
    item_id = dataset.field2token_id[iid_f]
    sequential = family(spec["model"]) == "sequential"
    train_ids = {u: [item_id[i] for i in items.split(" ") if i]
                 for u, items in zip(user_ids, split["train_items"])}
    histories = {"valid": train_ids,
                 "test": {u: train_ids[u] + [item_id[v]] for u, v in zip(user_ids, split["valid_item"])}}
    out: dict = {"users_sha256": contract.users_digest(split["user_id"]), "n_users": len(user_ids)}
    trainer.model.eval()
    for phase, loader in (("valid", valid_data), ("test", test_data)):
        got: dict[str, dict] = {"native": {}, "history": {}}
        with torch.no_grad():
            for batch in loader:
                interaction, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batch)
                rows = positive_u.cpu().numpy()
                scores = scores.detach().cpu().numpy()[rows]          # (B, item_num), one row per user
                users = interaction[uid_f].cpu().numpy()[rows]
                targets = positive_i.cpu().numpy()
                for u, r in zip(users, target_ranks(scores, targets)):
                    got["native"][int(u)] = int(r)
                if sequential:
                    mask = history_exclusion(histories[phase], users.tolist(), scores.shape[1])
                    for u, r in zip(users, target_ranks(scores, targets, mask)):
                        got["history"][int(u)] = int(r)
        for kind, ranks in got.items():
            if kind == "history" and not sequential:
                continue
            missing = [u for u in user_ids if u not in ranks]
            if missing or len(ranks) != len(user_ids):
                raise SplitMismatch(f"{ds_name}: {phase} ranking covers {len(ranks)} users, split.tsv has "
                                    f"{len(user_ids)} ({len(missing)} missing)")
            out.setdefault(phase, {})[kind] = [ranks[u] for u in user_ids]
    out["n_items"] = int(dataset.item_num - 1)   # candidates: every item but the padding id
    return out


def child_main(spec_path: str) -> int:
    spec = child_prologue(spec_path)
    rss_start = _rss_mb("VmRSS")

    import numpy as np
    import torch
    from recbole.utils import get_model, get_trainer, init_seed

    torch.set_num_threads(spec["threads"])
    result: dict = {"status": "running"}
    rss_imported = None
    try:
        check_timestamps(Path(spec["data_dir"]) / spec["dataset"] / f"{spec['dataset']}.inter")
        config, dataset, (train_data, valid_data, test_data), rss_imported = prepare_recbole(spec, build_config_dict)
        spec["max_len"] = config["MAX_ITEM_LIST_LENGTH"]
        result["split_check"] = verify_split(spec, train_data, valid_data, test_data)
        print(f"[run_peers] split check OK: {result['split_check']}", flush=True)
        if spec.get("verify_only"):
            result["status"] = "verified"
            Path(spec["result_path"]).write_text(json.dumps(result))
            return 0

        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
        if spec["model"] == "Pop" and spec.get("overrides", {}).get("pop_count_fix"):
            fix_pop_counting(model, config)
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        best_valid_result, valid_curve, epoch_times, fit_seconds = fit_timed(trainer, train_data, valid_data)

        test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
        # Throughput: the best weights are loaded now; time full-ranking test evaluation alone.
        n_eval_users = int(test_data.sample_size)
        reps = []
        for _ in range(spec["eval_repeats"]):
            t1 = time.perf_counter()
            again = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
            reps.append(time.perf_counter() - t1)
        if spec["model"] != "Pop" and any(abs(float(again[k]) - float(test_result[k])) > 1e-9
                                          for k in test_result):
            print(f"[run_peers] WARNING: re-evaluation differs: {dict(again)} vs {dict(test_result)}")
        eval_seconds = statistics.median(reps)
        ranking = rank_all_users(trainer, spec, dataset, valid_data, test_data)

        best_epoch = int(np.argmax(valid_curve)) + 1 if valid_curve else None
        result.update({
            "status": "ok",
            "ranking": ranking,
            "epochs_run": len(epoch_times),
            "best_epoch": best_epoch,
            "stopped_early": len(epoch_times) < spec["epoch_cap"],
            "valid_ndcg10_curve": valid_curve,
            "best_valid": {k: float(v) for k, v in (best_valid_result or {}).items()},
            "test": {k: float(v) for k, v in test_result.items()},
            "train_seconds": fit_seconds,
            "train_epoch_seconds": sum(epoch_times),
            "eval_users": n_eval_users,
            "eval_seconds": eval_seconds,
            "eval_users_per_s": n_eval_users / eval_seconds if eval_seconds > 0 else math.inf,
            "n_params": int(sum(p.numel() for p in model.parameters())),
            "n_items": int(dataset.item_num - 1),
            "n_users": int(dataset.user_num - 1),
            "config": {k: build_config_dict(spec)[k] for k in build_config_dict(spec)
                       if k not in ("data_path", "checkpoint_dir")},
            "resolved": {k: config[k] for k in ("train_batch_size", "eval_batch_size", "learning_rate",
                                                "embedding_size", "hidden_size", "n_layers",
                                                "hidden_dropout_prob", "attn_dropout_prob",
                                                "dropout_prob", "loss_type", "train_neg_sample_args")
                         if config[k] is not None},
        })
    except Exception as exc:  # record, let the parent go on with the next run
        return record_child_failure(spec, result, exc, "run_peers")
    result["rss_start_mb"] = rss_start
    result["rss_after_import_mb"] = rss_imported
    return record_child_success(spec, result, torch.get_num_threads())


def record_child_failure(spec: dict, result: dict, exc: Exception, tag: str) -> int:
    """Write a failed child run's result; the exit code tells the parent whether the split differed."""
    if isinstance(exc, SplitMismatch):
        print(f"[{tag}] SPLIT MISMATCH: {exc}", file=sys.stderr, flush=True)
        result.update({"status": "split_mismatch", "error": str(exc)})
        code = EXIT_SPLIT_MISMATCH
    else:
        import traceback

        traceback.print_exc()
        result.update({"status": "error", "error": f"{type(exc).__name__}: {exc}"})
        code = 1
    Path(spec["result_path"]).write_text(json.dumps(result))
    return code


def record_child_success(spec: dict, result: dict, torch_threads: int) -> int:
    """Write a finished child run's result with its peak memory."""
    import resource

    result["peak_rss_mb"] = _rss_mb("VmHWM")
    result["peak_rss_source"] = "VmHWM (/proc/self/status) of the run's own process"
    if result["peak_rss_mb"] is None:
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        result["peak_rss_source"] = "resource.getrusage(RUSAGE_SELF).ru_maxrss"
    result["torch_threads"] = torch_threads
    Path(spec["result_path"]).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------------
# parent: loop over runs, one child process each; print tables
# --------------------------------------------------------------------------------------------


def fmt_table(runs: list[dict], ds: str) -> str:
    cols = [f"{m}@{k}" for m in ("HR", "NDCG", "MRR") for k in (5, 10, 20)]
    head = (["model", "seed", "epochs (cap)", "best"] + cols
            + ["train s", "eval users/s", "peak RSS MiB"])
    rows = []
    for r in runs:
        if r["dataset"] != ds:
            continue
        short = lambda k: "".join(w[0] for w in k.split("_")) if "_" in k else k  # noqa: E731
        name = r["model"] + ("" if not r.get("overrides") else
                             "[" + ",".join(f"{short(k)}={v}" for k, v in r["overrides"].items()) + "]")
        if r.get("status") != "ok":
            rows.append([name, str(r["seed"]), f"FAILED: {r.get('status')}"] + [""] * (len(head) - 3))
            continue
        t = r["test"]
        vals = [t[f"{'hit' if m == 'HR' else m.lower()}@{k}"] for m in ("HR", "NDCG", "MRR")
                for k in (5, 10, 20)]
        rows.append([name, str(r["seed"]), f"{r['epochs_run']} ({r['epoch_cap']})",
                     str(r["best_epoch"])] + [f"{v:.4f}" for v in vals]
                    + [f"{r['train_seconds']:.0f}", f"{r['eval_users_per_s']:.0f}",
                       f"{r['peak_rss_mb']:.0f}"])
    if not rows:
        return ""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [f"### {ds} (test, full ranking over all items, leave-one-out)", line(head),
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def print_tables(data: dict, datasets: list[str] | None = None) -> None:
    runs = data.get("runs", [])
    for ds in datasets or sorted({r["dataset"] for r in runs}):
        table = fmt_table(runs, ds)
        if table:
            print("\n" + table)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=False, help="atomic-data dir holding <ds>/<ds>.inter and "
                   "<ds>/<ds>.split.tsv (export_recbole_atomic output)")
    p.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS)
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--seeds", nargs="+", type=int, default=[2020])
    p.add_argument("--epoch-cap", nargs="+", default=None, metavar="KEY=N",
                   help="KEY is general|sequential|MODEL, optionally @dataset; most specific wins. "
                   f"Defaults (peer_protocol §4): {' '.join(DEFAULT_CAPS)}; given keys add to/override "
                   "them.")
    p.add_argument("--patience", type=int, default=10, help="early-stopping patience on valid NDCG@10")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="MODEL[@ds]:key=value",
                   help="extra RecBole config for one model, e.g. SASRec:hidden_dropout_prob=0.2; "
                   "SASRec@ml100k:... applies on ml100k only. The overrides name the contract's `variant`.")
    p.add_argument("--results-dir", default=str(contract.RESULTS_DIR),
                   help="where the contract lines go: <dir>/<dataset>.jsonl (benchmarks/results.py)")
    p.add_argument("--out", help="also merge each run, without its ranks, into this legacy results JSON")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip runs whose lines are already in --results-dir (resume)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--eval-repeats", type=int, default=3,
                   help="timed test evaluations per run; eval throughput uses the median")
    p.add_argument("--keep-workdir", action="store_true", help="keep RecBole logs/checkpoints")
    p.add_argument("--table-only", nargs="*", metavar="JSON",
                   help="only print the tables of these result files (default: --out)")
    p.add_argument("--verify-only", action="store_true",
                   help="only check RecBole's split against <ds>.split.tsv for each dataset/model "
                   "(no training, nothing written)")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    handled = child_or_tables(args, child_main, print_tables)
    if handled is not None:
        return handled
    if not args.data_dir:
        p.error("--data-dir is required")

    caps = parse_caps(DEFAULT_CAPS + (args.epoch_cap or []))
    commit, cpu = contract.git_commit(), contract.cpu_info()
    overrides = parse_overrides(args.overrides)
    out = Path(args.out) if args.out else None
    data_dir = str(Path(args.data_dir).resolve())
    for ds in args.datasets:
        for f in (f"{ds}.inter", f"{ds}.split.tsv"):
            if not (Path(data_dir) / ds / f).exists():
                p.error(f"missing {Path(data_dir) / ds / f}")
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads), PYTHONHASHSEED="0")
    failures = 0
    for ds in args.datasets:
        for model in args.models:
            for seed in args.seeds:
                spec = {"dataset": ds, "model": model, "seed": seed, "data_dir": data_dir,
                        "epoch_cap": epoch_cap(caps, model, ds), "patience": args.patience,
                        "overrides": overrides_for(overrides, model, ds), "threads": args.threads,
                        "eval_repeats": args.eval_repeats, "verify_only": args.verify_only}
                if args.skip_existing and not args.verify_only and have_lines(spec, args.results_dir):
                    print(f"[run_peers] skip {ds}/{model}[{variant_name(spec['overrides'])}]/seed {seed}: "
                          f"already in {contract.results_path(ds, args.results_dir)}", flush=True)
                    continue
                print(f"[run_peers] {ds}/{model}/seed {seed} (epoch cap {spec['epoch_cap']}) ...",
                      flush=True)
                t0 = time.time()
                res, returncode = run_spec_in_child(__file__, spec, env, prefix=f"peer-{ds}-{model}-")
                workdir = spec["workdir"]
                if args.verify_only:
                    subprocess.run(["rm", "-rf", workdir])
                    ok = res.get("status") == "verified"
                    print(f"[run_peers] verify {ds}/{model}: "
                          f"{'OK' if ok else 'FAILED'} {res.get('split_check', res.get('error', ''))}")
                    if not ok:
                        return EXIT_SPLIT_MISMATCH if returncode == EXIT_SPLIT_MISMATCH else 1
                    continue
                entry = {k: spec[k] for k in ("dataset", "model", "seed", "epoch_cap", "patience",
                                              "overrides")}
                entry.update(res, wall_seconds=time.time() - t0, data_dir=data_dir,
                             finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
                if res.get("status") == "ok":
                    try:
                        paths = contract.append_results(contract_lines(spec, res, commit, cpu), args.results_dir)
                        print(f"[run_peers] {ds}/{model}/seed {seed}: lines appended to "
                              f"{', '.join(map(str, paths))}", flush=True)
                    except (contract.ResultLineError, KeyError, TypeError) as exc:
                        res["status"] = entry["status"] = "error"
                        entry["error"] = f"contract line refused: {exc}"
                entry.pop("ranking", None)   # the legacy JSON stays small; ranks live in the contract lines
                if out:
                    outcome = store_run(out, entry, returncode, workdir, peer_meta(),
                                        keep_workdir=args.keep_workdir, tag=f"run_peers] {ds}/{model}/seed {seed}")
                else:
                    outcome = finish_run(entry, returncode, workdir, keep_workdir=args.keep_workdir,
                                         tag=f"run_peers] {ds}/{model}/seed {seed}")
                if outcome == EXIT_SPLIT_MISMATCH:
                    return EXIT_SPLIT_MISMATCH
                if outcome:
                    failures += 1
                else:
                    t = res["test"]
                    print(f"[run_peers] {ds}/{model}/seed {seed}: test NDCG@10 {t['ndcg@10']:.4f} "
                          f"HR@10 {t['hit@10']:.4f}, {res['epochs_run']} epochs "
                          f"(best {res['best_epoch']}), {res['train_seconds']:.0f} s", flush=True)
    if out:
        print_tables(load_results(out), args.datasets)
    return 1 if failures else 0


def have_lines(spec: dict, results_dir) -> bool:
    """Whether every line this (dataset, model, variant, seed) run writes is already in the results file."""
    path = contract.results_path(spec["dataset"], results_dir)
    if not path.exists():
        return False
    keys = {contract.row_key(line) for line in contract.read_results(path, validate=False)}
    variant = variant_name(spec["overrides"])
    return all((spec["dataset"], "rec", spec["model"], variant, spec["seed"], masking) in keys
               for masking in maskings_of(spec["model"]))


def maskings_of(model: str) -> list[str]:
    """The contract lines one run writes: general models only RecBole's own history mask; sequential ones both."""
    return ["none", "history"] if family(model) == "sequential" else ["history"]


MASKING_NOTES = {
    ("general", "history"): "RecBole's full ranking for general models: the user's train items (+ the valid item at "
                            "test) scored -inf (peer_protocol §3)",
    ("sequential", "none"): "RecBole's full ranking for sequential models: nothing masked but the padding id",
    ("sequential", "history"): "run_peers.py: the same model's scores with the user's train items (+ the valid item "
                               "at test) set to -inf before ranking, as UniMP's masked column",
}


def contract_lines(spec: dict, res: dict, commit: str, cpu: dict) -> list[dict]:
    """One contract line (benchmarks/results.py) per masking of a finished run; metrics come from its exact ranks."""
    fam = family(spec["model"])
    ranking = res["ranking"]
    lines = []
    for masking in maskings_of(spec["model"]):
        kind = "native" if (fam, masking) != ("sequential", "history") else "history"
        lines.append({
            "dataset": spec["dataset"], "task": "rec", "model": spec["model"],
            "variant": variant_name(spec["overrides"]), "seed": spec["seed"], "masking": masking, "split": "test",
            "metrics": contract.metrics_from_ranks(ranking["test"][kind]),
            "valid_metrics": contract.metrics_from_ranks(ranking["valid"][kind]),
            "budget": {"epochs": res["epochs_run"], "best_epoch": res["best_epoch"], "epoch_cap": spec["epoch_cap"],
                       "patience": spec["patience"], "stopped_early": res["stopped_early"]},
            "train_seconds": round(res["train_seconds"], 3),
            "eval_users_per_s": round(res["eval_users_per_s"], 3),
            "peak_rss_mib": round(res["peak_rss_mb"], 1),
            "commit": commit, "date": contract.utc_now(), "cpu": cpu,
            "ranks": ranking["test"][kind],
            "n_users": ranking["n_users"], "n_items": ranking["n_items"], "users_sha256": ranking["users_sha256"],
            "rank_ties": "pessimistic: r = #{items j not masked : s_j >= s_target}",
            "masking_note": MASKING_NOTES[(fam, masking)],
            "runner": "benchmarks/run_peers.py (RecBole 1.2.1)",
            "overrides": spec["overrides"],
            "recbole_test": res["test"] if kind == "native" else None,   # RecBole's own metrics (topk ties)
            "threads": spec["threads"],
            "versions": environment_versions()["versions"],
        })
    return lines


def finish_run(entry: dict, returncode: int, workdir: str, *, keep_workdir: bool, tag: str) -> int:
    """`store_run` without a legacy JSON: clean the work dir, report the outcome (same exit codes)."""
    if not keep_workdir:
        subprocess.run(["rm", "-rf", workdir])
    if returncode == EXIT_SPLIT_MISMATCH:
        print(f"[{tag}: ABORT, RecBole's split differs from {entry['dataset']}.split.tsv (see above).",
              file=sys.stderr)
        return EXIT_SPLIT_MISMATCH
    if entry.get("status") != "ok":
        print(f"[{tag} FAILED: {entry.get('status')} {entry.get('error', '')}", file=sys.stderr)
        return 1
    return 0


def environment_versions() -> dict:
    """Versions of the peer environment (read from package metadata, no heavy imports)."""
    from importlib.metadata import PackageNotFoundError, version

    vers = {}
    for pkg in ("recbole", "torch", "numpy", "pandas", "scipy"):
        try:
            vers[pkg] = version(pkg)
        except PackageNotFoundError:
            vers[pkg] = None
    return {"versions": vers, "python": sys.version.split()[0]}


def peer_meta() -> dict:
    return {**environment_versions(),
            "protocol": "peer_protocol.md: leave-one-out, full ranking, valid NDCG@10 early stopping",
            "metrics_note": "hit = HR; averaged over all test users; sequential models mask nothing, "
                            "general models mask the user's train (+valid at test) items",
            "train_seconds_note": "wall time of trainer.fit incl. per-epoch validation; "
                                  "train_epoch_seconds = training epochs only",
            "eval_note": "eval_users_per_s = test users / median wall time of a full-ranking test pass",
            "memory_note": "peak_rss_mb = VmHWM of the run's own child process (includes Python, "
                           "torch and RecBole imports: see rss_after_import_mb)"}


if __name__ == "__main__":
    sys.exit(main())
