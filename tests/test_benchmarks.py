"""benchmarks/run_benchmark.py: the side-by-side tables (issue 5), from synthetic results."""

import importlib.util
import json

from conftest import REPO_ROOT


def _load_run_benchmark():
    spec = importlib.util.spec_from_file_location("run_benchmark", REPO_ROOT / "benchmarks" / "run_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ranking(value: float) -> dict:
    return {f"{m}@{k}": value for m in ("hr", "ndcg", "mrr") for k in (5, 10, 20)}


def _unimp_metrics(ndcg: float, exp: dict | None = None) -> dict:
    metrics = {"unimp": _ranking(ndcg), "unimp_masked": _ranking(ndcg * 2), "global_step": 700,
               "trainer_seconds": 420.0, "eval_users_per_second": 130.0, "peak_rss_mib": 1500.0}
    if exp is not None:
        metrics["exp"] = exp
    return metrics


def test_ranking_table_lists_peers_then_unimp_in_both_conventions(tmp_path):
    bench = _load_run_benchmark()
    peer = {"dataset": "ml100k", "model": "SASRec", "status": "ok", "test": {f"{'hit' if m == 'hr' else m}@{k}": 0.05
            for m in ("hr", "ndcg", "mrr") for k in (5, 10, 20)}, "epochs_run": 3, "best_epoch": 2, "epoch_cap": 3,
            "train_seconds": 500.0, "eval_users_per_s": 2000.0, "peak_rss_mb": 1100.0}
    rating_run = {"dataset": "ml100k", "model": "FM", "status": "ok", "task": "rating"}
    path = tmp_path / "peers.json"
    path.write_text(json.dumps({"runs": [peer, rating_run]}))
    peers = bench.load_peers([path])
    assert [run["model"] for run in peers["ml100k"]] == ["SASRec"]  # rating runs have their own table
    table = bench.format_tables("ml100k", {"unimp": _unimp_metrics(0.0123), "no_text": _unimp_metrics(0.02)},
                                peers["ml100k"])
    lines = table.splitlines()
    assert lines[0] == "### ml100k"
    assert lines[4].startswith("| SASRec | none | 0.0500")
    assert lines[5].startswith("| UniMP-tiny | none | 0.0123") and "| 700 steps | 420 | 130 | 1500 |" in lines[5]
    assert lines[6].startswith("| UniMP-tiny | history masked | 0.0246")
    assert lines[7].startswith("| UniMP-tiny no_text | none | 0.0200")


def test_rating_and_explanation_tables(tmp_path):
    bench = _load_run_benchmark()
    error = {"mae": 0.8, "rmse": 1.0}
    text = {n: 0.1 for n in ("rouge1", "rouge2", "rougeL", "bleu4", "unigram_precision")}
    exp = {"unimp_rating": {"mae": 0.85, "rmse": 1.2}, "unimp_rating_expected": {"mae": 0.83, "rmse": 1.03},
           "global_mean": error, "user_mean": error, "item_mean": error, "user_item_bias": {"mae": 0.82, "rmse": 1.04},
           "num_explanations": 9, "unimp_explanation": text, "last_explanation_baseline": {**text, "rougeL": 0.2}}
    ratings = tmp_path / "rating.json"
    ratings.write_text(json.dumps({"runs": [
        {"dataset": "amazon-mi", "model": "FM", "status": "ok", "selected_by_valid_rmse": True, "valid": {"rmse": 0.9},
         "test": {"mae": 0.7, "rmse": 0.96}, "epochs_run": 30, "best_epoch": 20, "train_seconds": 5.0,
         "overrides": {"learning_rate": 0.01, "weight_decay": 0.0}},
        {"dataset": "amazon-mi", "model": "FM", "status": "ok", "selected_by_valid_rmse": False}]}))
    peers = bench.load_rating_peers(ratings)
    assert len(peers["amazon-mi"]) == 1
    assert bench.format_rating_tables("amazon-mi", {"unimp": _unimp_metrics(0.01)}, peers["amazon-mi"]) == ""
    table = bench.format_rating_tables("amazon-mi", {"unimp": _unimp_metrics(0.01, exp)}, peers["amazon-mi"])
    assert "| bias baseline mu + b_u + b_i | 0.8200 | 1.0400 |" in table
    assert "| RecBole FM (lr 0.01, wd 0.0) | 0.7000 | 0.9600 | 30 ep (best 20) | 5 |" in table
    assert "| UniMP-tiny, expected rating | 0.8300 | 1.0300 | 700 steps | 420 |" in table
    assert "### amazon-mi: explanation generation" in table
    assert "| repeat the user's latest explanation | 9 | 0.1000 | 0.1000 | 0.2000 |" in table
