#!/usr/bin/env python
"""Rating prediction (MAE / RMSE on the 1-5 scale) with RecBole 1.2.1 peers and trivial baselines (issue 5).

Runs inside ``.venv-recbole`` (see ``benchmarks/setup_recbole.sh``); it imports only recbole / torch / numpy /
pandas and the standard library, never the ``unimp`` package.

Data: ``export_recbole_atomic(..., with_ratings=True)`` output (``make bench-rating-peers`` writes it to
``outputs/recbole_atomic_rating``): ``<ds>/<ds>.inter`` with a ``rating:float`` column and ``<ds>/<ds>.split.tsv``
with ``valid_rating`` / ``test_rating``. The split is peer_protocol.md §2's leave-one-out: per user in
(time, source row) order, test = last interaction, validation = second-to-last, train = the rest.

Baselines (numpy, from the split file and the training ratings only; every prediction clipped to [1, 5]):
global mean mu, per-user mean, per-item mean (both fall back to mu), and Koren's decoupled bias baseline
mu + b_u + b_i with b_i = sum_{u in R(i)} (r_ui - mu) / (25 + |R(i)|), then
b_u = sum_{i in R(u)} (r_ui - mu - b_i) / (10 + |R(u)|) (Koren, TKDD 2010, §2.1; lambda_item 25, lambda_user 10).

RecBole models: RecBole has no regression loss; its context-aware models (FM, DeepFM, NFM, WideDeep, AFM, LR,
...) and NeuMF train ``BCEWithLogitsLoss`` (DCNV2: ``BCELoss``) on the ``label`` field and ``predict`` returns
``sigmoid(score)``. Both losses accept soft targets in [0, 1] and are minimised at sigmoid(score) = label, so
each run trains on the soft label ``(rating - 1) / 4`` and maps predictions back as ``1 + 4 * sigmoid``. Model
hyper-parameters are RecBole's defaults except for a small sweep, learning rate {1e-3 (RecBole's default), 1e-2}
x weight decay {0 (default), 1e-4} (without it FM-like models overfit amazon-mi within a few epochs); each model's
run with the best valid RMSE is its result (``selected_by_valid_rmse``). For every (dataset, model, learning rate,
weight decay) the runner, in a child process of its own,

1. writes ``<workdir>/atomic/<ds>/<ds>.inter`` = user_id, item_id, timestamp (the dense time rank), label;
   ``rating`` is not loaded, so it can never become an input feature (the features are user_id and item_id;
   ``timestamp`` is a float field outside ``numerical_features``, so the context models ignore it),
2. builds RecBole's Config: ``eval_args {split: {LS: valid_and_test}, order: TO, group_by: user, mode: labeled}``,
   no negative sampling, metrics RMSE / MAE, ``valid_metric: RMSE`` (smaller is better), early stopping with
   patience 10, ``train_batch_size`` 2048, an epoch cap (100; 300 on amazon-mi), ``metric_decimal_place`` 10,
3. VERIFIES user by user that RecBole's validation and test rows are exactly the split file's valid / test item
   with its label, and that the train rows are the split file's train items in order with their labels; aborts
   on any mismatch,
4. trains, loads the best-on-validation checkpoint and computes MAE / RMSE itself from ``model.predict`` on
   RecBole's validation and test rows, on the 1-5 scale and clipped to [1, 5] (a no-op for 1 + 4 * sigmoid),
   cross-checked against RecBole's own RMSE / MAE on the label scale (x 4),
5. appends the result to the output JSON right away.

Example::

    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 OMP_WAIT_POLICY=PASSIVE nice -n 15 .venv-recbole/bin/python \\
        benchmarks/run_rating_peers.py --data-dir outputs/recbole_atomic_rating --datasets ml100k amazon-mi \\
        --out benchmarks/peer_results/rating.json
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from pathlib import Path

# A script (the Makefile and run_spec_in_child run it by path): its own folder is first on sys.path.
from run_peers import (  # the ranking runner's stdlib-only helpers, shared
    EXIT_SPLIT_MISMATCH,
    SplitMismatch,
    child_or_tables,
    child_prologue,
    common_config,
    environment_versions,
    fit_timed,
    load_results,
    parse_caps,
    parse_overrides,
    prepare_recbole,
    record_child_failure,
    record_child_success,
    run_key,
    run_spec_in_child,
    save_results,
    store_run,
)

DEFAULT_DATASETS = ["ml100k", "amazon-mi"]
DEFAULT_MODELS = ["LR", "FM", "AFM", "NFM", "WideDeep", "DeepFM", "PNN", "AutoInt", "NeuMF"]
# amazon-mi has 7,403 training rows = 4 steps of 2048 per epoch (0.02-0.1 s): 100 epochs leave FM-like models
# (sigmoid(0) = rating 3 at init, mean rating 4.4) far from converged, so it gets RecBole's default cap of 300.
DEFAULT_CAPS = ["all=100", "amazon-mi=300"]
RATING_MIN, RATING_MAX = 1.0, 5.0
SCALE = RATING_MAX - RATING_MIN
KOREN_LAMBDA_ITEM, KOREN_LAMBDA_USER = 25.0, 10.0
# Own vs RecBole metric agreement, absolute on the label scale (x 4 on the rating scale); RecBole sums in float32.
CROSS_CHECK_TOL = 1e-4


# --------------------------------------------------------------------------------------------
# helpers shared by parent and child (stdlib / numpy / pandas only)
# --------------------------------------------------------------------------------------------


def read_split(data_dir: Path, ds: str) -> dict[str, tuple[list[str], str, str, float, float]]:
    """user -> (train items in order, valid item, test item, valid rating, test rating) from ``<ds>.split.tsv``."""
    import pandas as pd

    path = data_dir / ds / f"{ds}.split.tsv"
    split = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    missing = {"valid_rating", "test_rating"} - set(split.columns)
    if missing:
        raise SystemExit(f"{path} lacks {sorted(missing)}: export with export_recbole_atomic(..., with_ratings=True)")
    return {r.user_id: (r.train_items.split(" ") if r.train_items else [], r.valid_item, r.test_item,
                        float(r.valid_rating), float(r.test_rating)) for r in split.itertuples(index=False)}


def read_ratings(data_dir: Path, ds: str) -> dict[tuple[str, str], float]:
    """(user, item) -> rating from ``<ds>.inter``; the pairs must be unique and the ratings in [1, 5]."""
    import pandas as pd

    path = data_dir / ds / f"{ds}.inter"
    inter = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if "rating:float" not in inter.columns:
        raise SystemExit(f"{path} has no rating:float column: export with export_recbole_atomic(..., "
                         "with_ratings=True)")
    ratings = inter["rating:float"].astype(float)
    if not ratings.between(RATING_MIN, RATING_MAX).all():
        raise SystemExit(f"{path}: ratings outside [{RATING_MIN:g}, {RATING_MAX:g}]")
    out = dict(zip(zip(inter["user_id:token"], inter["item_id:token"]), ratings))
    if len(out) != len(inter):
        raise SystemExit(f"{path}: repeated (user, item) pairs; a rating per pair is ambiguous")
    return out


def mae_rmse(pred, true) -> dict[str, float]:
    """MAE and RMSE of predictions clipped to [1, 5] (float64)."""
    import numpy as np

    err = np.clip(np.asarray(pred, dtype=np.float64), RATING_MIN, RATING_MAX) - np.asarray(true, dtype=np.float64)
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())), "n": int(err.size)}


def _load_rating_baselines():
    """`processing/rating_baselines.py`, loaded by path: it is stdlib-only, and this venv has no unimp package."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "processing" / "rating_baselines.py"
    spec = importlib.util.spec_from_file_location("rating_baselines", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compute_baselines(data_dir: Path, ds: str) -> list[dict]:
    """The four trivial baselines on the split file's valid / test targets (see the module docstring), from
    `processing/rating_baselines.py`, the implementation `recipes.evaluate` reports next to UniMP."""
    baselines = _load_rating_baselines()
    split, rating = read_split(data_dir, ds), read_ratings(data_dir, ds)
    train = [(u, i, rating[(u, i)]) for u, (items, *_) in split.items() for i in items]
    users = list(split)
    for u, (_, v, t, vr, tr) in split.items():   # the split file's ratings must be the .inter's
        if rating[(u, v)] != vr or rating[(u, t)] != tr:
            raise SystemExit(f"{ds}: split.tsv ratings of user {u} differ from {ds}.inter")
    mu = sum(r for *_, r in train) / len(train)
    rules = {
        "global_mean": ("global_mean", "mu = mean of all training ratings"),
        "user_mean": ("user_mean", "user's mean training rating, else mu"),
        "item_mean": ("item_mean", "item's mean training rating, else mu"),
        "bias_koren": ("user_item_bias", f"mu + b_u + b_i, lambda_item {KOREN_LAMBDA_ITEM:g}, "
                                         f"lambda_user {KOREN_LAMBDA_USER:g}"),
    }
    targets = {"valid": [(u, s[1], s[3]) for u, s in split.items()],
               "test": [(u, s[2], s[4]) for u, s in split.items()]}
    predictions = {phase: baselines.predict_rating_baselines(
        train, [(u, i) for u, i, _ in rows], item_shrinkage=KOREN_LAMBDA_ITEM, user_shrinkage=KOREN_LAMBDA_USER)
        for phase, rows in targets.items()}
    trained_items = {i for _, i, _ in train}
    cold = {phase: sum(i not in trained_items for _, i, _ in rows) for phase, rows in targets.items()}
    out = []
    for name, (key, rule) in rules.items():
        entry = {"task": "rating", "dataset": ds, "model": name, "status": "ok", "rule": rule + "; clipped to [1, 5]"}
        for phase, rows in targets.items():
            entry[phase] = mae_rmse(predictions[phase][key], [r for *_, r in rows])
        entry.update(mu=mu, n_train_ratings=len(train), n_users=len(users), cold_items=cold)
        out.append(entry)
    return out


def epoch_cap(caps: dict[str, int], model: str, ds: str) -> int:
    """Most specific wins: MODEL@ds > ds > MODEL > all."""
    for key in (f"{model}@{ds}", ds, model, "all"):
        if key in caps:
            return caps[key]
    raise SystemExit(f"no epoch cap for {model} on {ds}")










# --------------------------------------------------------------------------------------------
# child: one (dataset, model) run
# --------------------------------------------------------------------------------------------




def to_label(rating: float) -> float:
    return (rating - RATING_MIN) / SCALE


def write_label_atomic(src_dir: Path, ds: str, dst_dir: Path) -> None:
    """``<dst>/<ds>/<ds>.inter``: the source rows in source order, ``rating`` replaced by the soft label."""
    import numpy as np
    import pandas as pd

    inter = pd.read_csv(src_dir / ds / f"{ds}.inter", sep="\t", dtype=str, keep_default_na=False)
    ts = inter["timestamp:float"].astype(np.float64).to_numpy()
    bad = int((ts.astype(np.float32).astype(np.float64) != ts).sum())
    if bad:   # peer_protocol §1: RecBole keeps float fields as float32
        raise SplitMismatch(f"{ds}.inter: {bad} timestamps are not exactly representable in float32; export "
                            "the dense rank of the time (peer_protocol.md §2.1)")
    out = inter[["user_id:token", "item_id:token", "timestamp:float"]].copy()
    out["label:float"] = [repr(to_label(float(r))) for r in inter["rating:float"]]   # exact in float32
    (dst_dir / ds).mkdir(parents=True, exist_ok=True)
    out.to_csv(dst_dir / ds / f"{ds}.inter", sep="\t", index=False)


def build_config_dict(spec: dict) -> dict:
    cfg = {
        **common_config(spec, spec["workdir"] + "/atomic"),
        "LABEL_FIELD": "label",
        "threshold": None,
        "load_col": {"inter": ["user_id", "item_id", "timestamp", "label"]},
        "numerical_features": [],
        "normalize_all": None,
        "normalize_field": None,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "labeled"},
        "train_neg_sample_args": None,   # every training row is a rated interaction; no sampled negatives
        "metrics": ["RMSE", "MAE"],
        "valid_metric": "RMSE",
        "metric_decimal_place": 10,      # RecBole rounds metrics (default 4 places) BEFORE early stopping
        "train_batch_size": spec["train_batch_size"],
        "eval_batch_size": 4096,
    }
    cfg.update(spec.get("overrides", {}))
    return cfg


def verify_split(spec: dict, train_data, valid_data, test_data) -> dict:
    """Compare RecBole's rows with ``<ds>.split.tsv`` (items, order and labels) user by user. Raise on mismatch."""
    import numpy as np

    ds_name = spec["dataset"]
    expected = read_split(Path(spec["data_dir"]), ds_name)
    rating = read_ratings(Path(spec["data_dir"]), ds_name)
    dataset = train_data._dataset
    uid_f, iid_f, label_f = dataset.uid_field, dataset.iid_field, dataset.label_field
    u_tok = np.asarray(dataset.field2id_token[uid_f])
    i_tok = np.asarray(dataset.field2id_token[iid_f])
    problems: list[str] = []
    counts = {"users": len(expected), "valid_target": 0, "test_target": 0, "train_items": 0, "labels": 0}

    def note(kind: str, user: str, got, want) -> None:
        counts[kind] += 1
        if len(problems) < 10:
            problems.append(f"{kind} user={user}: recbole={got!r} split.tsv={want!r}")

    def one_per_user(ds, what: str) -> dict:
        inter = ds.inter_feat
        users = u_tok[inter[uid_f].numpy()]
        if len(set(users)) != len(users):
            raise SplitMismatch(f"{ds_name}: RecBole's {what} has more than one row for some user")
        if set(users) != set(expected):
            raise SplitMismatch(f"{ds_name}: RecBole's {what} users differ from split.tsv: "
                                f"{len(set(users) - set(expected))} extra, {len(set(expected) - set(users))} missing")
        return {u: (i, float(lab)) for u, i, lab in zip(users, i_tok[inter[iid_f].numpy()], inter[label_f].numpy())}

    for phase, loader, col in (("valid", valid_data, 1), ("test", test_data, 2)):
        rows = one_per_user(loader._dataset, phase)
        for u, want in expected.items():
            item, label = rows[u]
            if item != want[col]:
                note(f"{phase}_target", u, item, want[col])
            elif label != to_label(want[col + 2]):
                note("labels", u, f"{phase} label {label}", f"{phase}_rating {want[col + 2]}")

    tr = dataset.inter_feat
    got: dict[str, list[tuple[str, float]]] = {u: [] for u in expected}
    for u, i, lab in zip(u_tok[tr[uid_f].numpy()], i_tok[tr[iid_f].numpy()], tr[label_f].numpy()):
        got.setdefault(u, []).append((i, float(lab)))
    for u, (train, *_) in expected.items():
        items = [i for i, _ in got.get(u, [])]
        if items != train:
            note("train_items", u, items[:5], train[:5])
        elif any(lab != to_label(rating[(u, i)]) for i, lab in got[u]):
            note("labels", u, "train labels", "(rating - 1) / 4 of the .inter ratings")
    counts["train_rows"] = int(len(tr))
    counts["checked"] = ("valid/test item and label per user, train items in time order and their labels")
    counts["mismatches"] = sum(counts[k] for k in ("valid_target", "test_target", "train_items", "labels"))
    if counts["mismatches"]:
        raise SplitMismatch(f"{ds_name}/{spec['model']}: RecBole's split differs from split.tsv: {counts}\n  "
                            + "\n  ".join(problems))
    return counts


def predict_ratings(model, dataset, expected: dict, col: int, batch_size: int = 4096) -> dict:
    """1 + 4 * model.predict on RecBole's rows of one phase, scored against the split file (clipped to [1, 5])."""
    import numpy as np
    import torch

    inter = dataset.inter_feat
    u_tok = np.asarray(dataset.field2id_token[dataset.uid_field])
    i_tok = np.asarray(dataset.field2id_token[dataset.iid_field])
    model.eval()
    scores = []
    with torch.no_grad():
        for start in range(0, len(inter), batch_size):
            part = inter[start:start + batch_size]
            scores.append(model.predict(part).double().cpu().numpy())
    prob = np.concatenate(scores)
    if prob.min() < 0.0 or prob.max() > 1.0:
        raise RuntimeError(f"{type(model).__name__}.predict left [0, 1] ({prob.min()}, {prob.max()}); the "
                           "1 + 4 * p mapping assumes a sigmoid output")
    pred = RATING_MIN + SCALE * prob
    users, items = u_tok[inter[dataset.uid_field].numpy()], i_tok[inter[dataset.iid_field].numpy()]
    true = []
    for u, i in zip(users, items):
        want = expected[u]
        if want[col] != i:   # verify_split already checked this; keep the scoring self-contained
            raise SplitMismatch(f"user {u}: scored item {i} is not the split file's {want[col]}")
        true.append(want[col + 2])
    out = mae_rmse(pred, true)
    out.update(pred_min=float(pred.min()), pred_max=float(pred.max()), pred_mean=float(pred.mean()),
               clipped=int(((pred < RATING_MIN) | (pred > RATING_MAX)).sum()))
    return out


def child_main(spec_path: str) -> int:
    spec = child_prologue(spec_path)

    import torch
    from recbole.utils import get_model, get_trainer, init_seed

    torch.set_num_threads(spec["threads"])
    result: dict = {"status": "running"}
    try:
        write_label_atomic(Path(spec["data_dir"]), spec["dataset"], Path(spec["workdir"]) / "atomic")
        config, dataset, (train_data, valid_data, test_data), rss_imported = prepare_recbole(spec, build_config_dict)
        result["split_check"] = verify_split(spec, train_data, valid_data, test_data)
        print(f"[run_rating_peers] split check OK: {result['split_check']}", flush=True)

        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        # valid_curve: RecBole's valid RMSE on the label scale, one per epoch
        best_valid_result, valid_curve, epoch_times, fit_seconds = fit_timed(trainer, train_data, valid_data)
        test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)  # loads the best

        expected = read_split(Path(spec["data_dir"]), spec["dataset"])
        valid = predict_ratings(model, valid_data._dataset, expected, col=1)
        test = predict_ratings(model, test_data._dataset, expected, col=2)
        recbole = {"valid": {k: float(v) * SCALE for k, v in (best_valid_result or {}).items()},
                   "test": {k: float(v) * SCALE for k, v in test_result.items()}}
        for phase, ours in (("valid", valid), ("test", test)):
            for k in ("mae", "rmse"):
                if abs(recbole[phase][k] - ours[k]) > CROSS_CHECK_TOL * SCALE:
                    raise RuntimeError(f"{phase} {k}: own {ours[k]:.6f} vs RecBole x{SCALE:g} {recbole[phase][k]:.6f}")
        best = math.inf
        best_epoch = None
        for epoch, score in enumerate(valid_curve, start=1):   # RecBole's rule: ties move the best later
            if score <= best:
                best, best_epoch = score, epoch
        resolved_keys = ("train_batch_size", "eval_batch_size", "learning_rate", "weight_decay", "embedding_size",
                         "mlp_hidden_size", "dropout_prob", "reg_weight", "attention_size", "cin_layer_size",
                         "mf_embedding_size", "mlp_embedding_size", "train_neg_sample_args")
        result.update({
            "status": "ok",
            "valid": valid,
            "test": test,
            "recbole_metrics_x4": recbole,
            "epochs_run": len(epoch_times),
            "best_epoch": best_epoch,
            "stopped_early": len(epoch_times) < spec["epoch_cap"],
            "valid_rmse_curve": [round(s * SCALE, 6) for s in valid_curve],
            "train_seconds": fit_seconds,
            "train_epoch_seconds": sum(epoch_times),
            "n_params": int(sum(p.numel() for p in model.parameters())),
            "n_users": int(dataset.user_num - 1),
            "n_items": int(dataset.item_num - 1),
            "features": list(getattr(model, "token_field_names", [])) or ["user_id", "item_id"],
            "config": {k: v for k, v in build_config_dict(spec).items() if k not in ("data_path", "checkpoint_dir")},
            "resolved": {k: config[k] for k in resolved_keys if config[k] is not None},
            "rss_after_import_mb": rss_imported,
        })
    except Exception as exc:  # record, let the parent go on with the next run
        return record_child_failure(spec, result, exc, "run_rating_peers")
    return record_child_success(spec, result, torch.get_num_threads())


# --------------------------------------------------------------------------------------------
# parent: baselines, then one child process per run; print tables
# --------------------------------------------------------------------------------------------


def mark_selected(data: dict) -> None:
    """Flag, per (dataset, model), the ok run with the lowest valid RMSE; record each dataset's best model."""
    ok = [r for r in data.get("runs", []) if r.get("status") == "ok"]
    best: dict[tuple[str, str], dict] = {}
    for r in ok:
        key = (r["dataset"], r["model"])
        if key not in best or r["valid"]["rmse"] < best[key]["valid"]["rmse"]:
            best[key] = r
    for r in data.get("runs", []):
        r["selected_by_valid_rmse"] = best.get((r["dataset"], r["model"])) is r
    data["best_by_valid_rmse"] = {}
    for (ds, _), r in sorted(best.items(), key=lambda kv: kv[1]["valid"]["rmse"]):
        data["best_by_valid_rmse"].setdefault(ds, {k: r[k] for k in ("model", "overrides", "valid", "test")})


def fmt_table(data: dict, ds: str) -> str:
    head = ["model", "test MAE", "test RMSE", "valid MAE", "valid RMSE", "epochs (cap)", "best", "train s",
            "peak RSS MiB"]
    rows = []
    for b in data.get("baselines", []):
        if b["dataset"] == ds:
            rows.append([f"baseline: {b['model']}", f"{b['test']['mae']:.4f}", f"{b['test']['rmse']:.4f}",
                         f"{b['valid']['mae']:.4f}", f"{b['valid']['rmse']:.4f}", "", "", "", ""])
    for r in data.get("runs", []):
        if r["dataset"] != ds:
            continue
        short = {"learning_rate": "lr", "weight_decay": "wd"}
        name = (("* " if r.get("selected_by_valid_rmse") else "  ") + r["model"]
                + ("" if not r.get("overrides") else
                   "[" + ",".join(f"{short.get(k, k)}={v}" for k, v in r["overrides"].items()) + "]"))
        if r.get("status") != "ok":
            rows.append([name, f"FAILED: {r.get('status')}"] + [""] * (len(head) - 2))
            continue
        rows.append([name, f"{r['test']['mae']:.4f}", f"{r['test']['rmse']:.4f}", f"{r['valid']['mae']:.4f}",
                     f"{r['valid']['rmse']:.4f}", f"{r['epochs_run']} ({r['epoch_cap']})", str(r["best_epoch"]),
                     f"{r['train_seconds']:.0f}", f"{r['peak_rss_mb']:.0f}"])
    if not rows:
        return ""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [f"### {ds} (rating prediction, leave-one-out, 1-5 scale, predictions clipped to [1, 5]; "
           "* = the model's run with the best valid RMSE)", line(head),
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(out + [line(r) for r in rows])


def print_tables(data: dict, datasets: list[str] | None = None) -> None:
    names = {r["dataset"] for r in data.get("runs", [])} | {b["dataset"] for b in data.get("baselines", [])}
    for ds in datasets or sorted(names):
        table = fmt_table(data, ds)
        if table:
            print("\n" + table)


def peer_meta() -> dict:
    return {"task": "rating", **environment_versions(),
            "protocol": "peer_protocol.md §2 leave-one-out (test = last, valid = second-to-last per user); "
                        "RecBole eval mode labeled; valid RMSE early stopping",
            "target": "soft label (rating - 1) / 4 under the models' BCE loss; prediction 1 + 4 * sigmoid",
            "metrics_note": "mae / rmse on the 1-5 scale over all users' valid / test targets, predictions "
                            "clipped to [1, 5], computed by this script from model.predict; recbole_metrics_x4 = "
                            "RecBole's own label-scale metrics times 4 (cross-check)",
            "train_seconds_note": "wall time of trainer.fit incl. per-epoch validation; "
                                  "train_epoch_seconds = training epochs only",
            "memory_note": "peak_rss_mb = VmHWM of the run's own child process (includes Python, torch and "
                           "RecBole imports: see rss_after_import_mb)"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="export_recbole_atomic(..., with_ratings=True) output holding "
                   "<ds>/<ds>.inter and <ds>/<ds>.split.tsv")
    p.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS)
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--epoch-cap", nargs="+", default=None, metavar="KEY=N",
                   help="KEY is all|<dataset>|<model>|<model>@<dataset>; most specific wins. Defaults: "
                   f"{' '.join(DEFAULT_CAPS)}; given keys add to/override them.")
    p.add_argument("--patience", type=int, default=10, help="early-stopping patience on valid RMSE")
    p.add_argument("--train-batch-size", type=int, default=2048)
    p.add_argument("--learning-rates", nargs="+", type=float, default=[1e-3, 1e-2],
                   help="swept (RecBole's default is 1e-3); the table marks each model's run with the best valid RMSE")
    p.add_argument("--weight-decays", nargs="+", type=float, default=[0.0, 1e-4],
                   help="swept with the learning rates (RecBole's default is 0: Adam's L2 on all parameters)")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="MODEL:key=value",
                   help="extra RecBole config for one model, e.g. NFM:dropout_prob=0.2")
    p.add_argument("--out", help="results JSON (rewritten after every run)")
    p.add_argument("--skip-existing", action="store_true", help="skip runs already in --out with status ok")
    p.add_argument("--baselines-only", action="store_true", help="only compute the baselines")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--keep-workdir", action="store_true", help="keep RecBole logs/checkpoints")
    p.add_argument("--table-only", nargs="*", metavar="JSON",
                   help="only print the tables of these result files (default: --out)")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    handled = child_or_tables(args, child_main, print_tables)
    if handled is not None:
        return handled
    if not (args.data_dir and args.out):
        p.error("--data-dir and --out are required")

    out = Path(args.out)
    data_dir = Path(args.data_dir).resolve()
    for ds in args.datasets:
        for f in (f"{ds}.inter", f"{ds}.split.tsv"):
            if not (data_dir / ds / f).exists():
                p.error(f"missing {data_dir / ds / f}")

    data = load_results(out)
    baselines = [b for b in data.get("baselines", []) if b["dataset"] not in args.datasets]
    for ds in args.datasets:
        baselines += compute_baselines(data_dir, ds)
    data["baselines"], data["meta"] = baselines, peer_meta()
    save_results(out, data)
    print_tables({"baselines": baselines}, args.datasets)
    if args.baselines_only:
        return 0

    overrides = parse_overrides(args.overrides)
    caps = parse_caps(DEFAULT_CAPS + (args.epoch_cap or []))
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads), PYTHONHASHSEED="0")
    failures = 0
    for ds, model, lr, wd in itertools.product(args.datasets, args.models, args.learning_rates, args.weight_decays):
        spec = {"dataset": ds, "model": model, "seed": args.seed, "data_dir": str(data_dir),
                "epoch_cap": epoch_cap(caps, model, ds), "patience": args.patience,
                "train_batch_size": args.train_batch_size, "threads": args.threads,
                "overrides": {"learning_rate": lr, "weight_decay": wd, **overrides.get(model, {})}}
        tag = f"{ds}/{model}/lr {lr:g}/wd {wd:g}"
        data = load_results(out)
        if args.skip_existing and any(run_key(r) == run_key(spec) and r.get("status") == "ok"
                                      for r in data["runs"]):
            print(f"[run_rating_peers] skip {tag}: already in {out}")
            continue
        print(f"[run_rating_peers] {tag} (epoch cap {spec['epoch_cap']}) ...", flush=True)
        t0 = time.time()
        res, returncode = run_spec_in_child(__file__, spec, env, prefix=f"rating-peer-{ds}-{model}-")
        entry = {"task": "rating", **{k: spec[k] for k in ("dataset", "model", "seed", "epoch_cap", "patience",
                                                          "train_batch_size", "overrides")}}
        entry.update(res, wall_seconds=time.time() - t0, data_dir=str(data_dir),
                     finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        outcome = store_run(out, entry, returncode, spec["workdir"], peer_meta(), keep_workdir=args.keep_workdir,
                            tag=f"run_rating_peers] {tag}", finalize=mark_selected)
        if outcome == EXIT_SPLIT_MISMATCH:
            return EXIT_SPLIT_MISMATCH
        if outcome:
            failures += 1
        else:
            t = res["test"]
            print(f"[run_rating_peers] {tag}: test MAE {t['mae']:.4f} RMSE {t['rmse']:.4f}, "
                  f"{res['epochs_run']} epochs (best {res['best_epoch']}), {res['train_seconds']:.0f} s",
                  flush=True)
    print_tables(load_results(out), args.datasets)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
