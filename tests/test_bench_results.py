"""benchmarks/results.py (the result-file contract), benchmarks/report.py (paired bootstrap, generated tables) and
the pure-numpy ranking helpers of benchmarks/run_peers.py (issue 11)."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import report  # noqa: E402
import results  # noqa: E402
import run_peers  # noqa: E402  (stdlib at import time: RecBole is only imported inside the child)


def make_line(ranks, /, **changes) -> dict:
    """A valid 'rec' line whose metrics are those of `ranks`."""
    line = {
        "dataset": "ml100k", "task": "rec", "model": "SASRec", "variant": "default", "seed": 2020,
        "masking": "none", "split": "test", "metrics": results.metrics_from_ranks(ranks),
        "valid_metrics": results.metrics_from_ranks(ranks), "budget": {"epochs": 12, "best_epoch": 2},
        "train_seconds": 10.0, "eval_users_per_s": 100.0, "peak_rss_mib": 500.0, "commit": "abc123",
        "date": "2026-11-30T00:00:00+00:00", "cpu": {"model": "test cpu", "cores": 2}, "ranks": list(ranks),
    }
    line.update(changes)
    return line


# ---------------------------------------------------------------------------------------------------------------
# contract
# ---------------------------------------------------------------------------------------------------------------


def test_metrics_from_ranks_match_hand_computed_values():
    metrics = results.metrics_from_ranks([1, 3, 12])
    assert metrics["hr@5"] == pytest.approx(2 / 3)
    assert metrics["hr@10"] == pytest.approx(2 / 3)
    assert metrics["hr@20"] == pytest.approx(1.0)
    assert metrics["ndcg@10"] == pytest.approx((1.0 + 0.5) / 3)           # 1/log2(2) + 1/log2(4)
    assert metrics["ndcg@20"] == pytest.approx((1.0 + 0.5 + 1 / math.log2(13)) / 3)
    assert metrics["mrr@5"] == pytest.approx((1.0 + 1 / 3) / 3)
    assert metrics["mrr@20"] == pytest.approx((1.0 + 1 / 3 + 1 / 12) / 3)


@pytest.mark.parametrize("field", list(results.REQUIRED_FIELDS))
def test_writer_rejects_a_line_missing_a_field_and_names_it(tmp_path, field):
    line = make_line([1, 2, 30])
    del line[field]
    with pytest.raises(results.ResultLineError, match=repr(field)):
        results.append_results([line], tmp_path)
    assert not (tmp_path / "ml100k.jsonl").exists()


@pytest.mark.parametrize("changes, field", [
    ({"dataset": "movielens"}, "dataset"),
    ({"masking": "train"}, "masking"),
    ({"task": "ranking"}, "task"),
    ({"seed": "2020"}, "seed"),
    ({"budget": {"epochs": 3}}, "budget"),
    ({"cpu": {"model": "x"}}, "cpu"),
    ({"eval_users_per_s": 0}, "eval_users_per_s"),
    ({"ranks": [1, 0, 3]}, "ranks"),
    ({"ranks": [1, 2.5, 3]}, "ranks"),
    ({"ranks": None}, "ranks"),
    ({"metrics": {"hr@10": 0.5}}, "metrics"),
    ({"n_users": 4}, "ranks"),
])
def test_writer_rejects_bad_values_naming_the_field(tmp_path, changes, field):
    with pytest.raises(results.ResultLineError, match=repr(field)):
        results.append_results([make_line([1, 2, 30], **changes)], tmp_path)


def test_writer_rejects_metrics_that_disagree_with_the_ranks(tmp_path):
    line = make_line([1, 2, 30])
    line["metrics"] = dict(line["metrics"], **{"ndcg@10": 0.9})
    with pytest.raises(results.ResultLineError, match="disagrees with field 'ranks'"):
        results.append_results([line], tmp_path)


def test_a_bad_line_in_a_batch_writes_nothing(tmp_path):
    good, bad = make_line([1, 2]), make_line([1, 2], masking="both")
    with pytest.raises(results.ResultLineError):
        results.append_results([good, bad], tmp_path)
    assert not (tmp_path / "ml100k.jsonl").exists()


def test_lines_round_trip_and_append_per_dataset(tmp_path):
    first = make_line([1, 2, 3])
    second = make_line([4, 5, 6], dataset="hm", masking="history", extra_field={"kept": True})
    third = make_line([7, 8, 9], seed=2021)
    assert results.append_results([first, second], tmp_path) == [tmp_path / "ml100k.jsonl", tmp_path / "hm.jsonl"]
    results.append_results([third], tmp_path)
    assert results.read_results(tmp_path / "ml100k.jsonl") == [first, third]
    assert results.read_results(tmp_path) == [second, first, third]     # directory: files in name order
    assert results.read_results(tmp_path / "hm.jsonl")[0]["extra_field"] == {"kept": True}


def test_reader_names_the_file_and_line_of_a_bad_line(tmp_path):
    path = tmp_path / "hm.jsonl"
    good = make_line([1], dataset="hm")
    path.write_text(json.dumps(good) + "\n" + json.dumps({k: v for k, v in good.items() if k != "split"}) + "\n")
    with pytest.raises(results.ResultLineError, match=r"hm.jsonl:2: missing field 'split'"):
        results.read_results(path)


def test_other_tasks_need_no_ranks_and_may_leave_an_unmeasured_speed_null():
    results.validate_line(make_line([1], task="exp", metrics={"bleu": 3.2}, valid_metrics={"bleu": 3.0},
                                    ranks=None, eval_users_per_s=None))
    with pytest.raises(results.ResultLineError, match="eval_users_per_s"):
        results.validate_line(make_line([1], eval_users_per_s=None))   # a 'rec' line always has its speed


# ---------------------------------------------------------------------------------------------------------------
# paired bootstrap
# ---------------------------------------------------------------------------------------------------------------


def test_per_user_ndcg_is_zero_past_k():
    assert report.per_user_ndcg([1, 3, 10, 11]).tolist() == pytest.approx([1.0, 0.5, 1 / math.log2(11), 0.0])


def test_paired_bootstrap_hand_computed_two_users():
    # Users' NDCG@10: A = [1, 1/log2(4)] (ranks 1, 3); B = [1/log2(3), 0] (ranks 2, 20).
    a, b = report.per_user_ndcg([1, 3]), report.per_user_ndcg([2, 20])
    d = [1 - 1 / math.log2(3), 0.5]
    ci = report.paired_bootstrap(a, b, resamples=10_000, seed=7)
    assert ci["mean"] == pytest.approx(sum(d) / 2)
    # Two users: a resample's mean is d0 (p 1/4), (d0+d1)/2 (p 1/2) or d1 (p 1/4), so the 2.5th and 97.5th
    # percentiles of 10,000 resamples are the smaller and the larger user difference.
    assert ci["low"] == pytest.approx(min(d))
    assert ci["high"] == pytest.approx(max(d))
    assert ci["n_users"] == 2 and ci["resamples"] == 10_000


def test_paired_bootstrap_is_seeded_and_contains_the_mean():
    rng = np.random.default_rng(1)
    a, b = rng.random(300), rng.random(300) * 0.9
    first, again = report.paired_bootstrap(a, b, seed=3), report.paired_bootstrap(a, b, seed=3)
    assert first == again
    assert first["low"] < first["mean"] < first["high"]
    other = report.paired_bootstrap(a, b, seed=4)
    assert other["low"] != first["low"]
    # The CI is about the mean, not a user: about 1.96 standard errors each side.
    se = np.std(a - b, ddof=1) / np.sqrt(300)
    assert first["high"] - first["low"] == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_paired_bootstrap_of_identical_models_is_zero():
    a = report.per_user_ndcg([1, 4, 30, 7])
    assert report.paired_bootstrap(a, a) == {"mean": 0.0, "low": 0.0, "high": 0.0, "n_users": 4,
                                             "resamples": 10_000, "seed": 0}


def test_seed_averaging_happens_per_user_first():
    lines = [make_line([1, 20]), make_line([3, 1], seed=2021)]
    assert report.seed_averaged_ndcg(lines).tolist() == pytest.approx([(1 + 0.5) / 2, (0 + 1) / 2])
    with pytest.raises(ValueError, match="different user lists"):
        report.seed_averaged_ndcg([make_line([1, 2]), make_line([1, 2, 3], seed=2021)])


# ---------------------------------------------------------------------------------------------------------------
# generated tables
# ---------------------------------------------------------------------------------------------------------------


def write_synthetic(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    n_users = 200
    lines = []
    for seed, shift in ((2020, 0), (2021, 1), (2022, 2)):
        sasrec = rng.integers(1, 40, n_users).tolist()
        lines.append(make_line(sasrec, seed=seed, valid_metrics=results.metrics_from_ranks([2 + shift] * 5)))
        lines.append(make_line(rng.integers(5, 80, n_users).tolist(), model="GRU4Rec", seed=seed,
                               valid_metrics=results.metrics_from_ranks([30] * 5)))
        unimp = [max(1, r - 3) for r in sasrec]          # better than SASRec for most users
        lines.append(make_line(unimp, model="UniMP-tiny", seed=seed, budget={"steps": 500 + seed - 2020}))
    results.append_results(lines, tmp_path)
    return tmp_path


def test_report_gives_mean_and_sd_over_seeds(tmp_path):
    write_synthetic(tmp_path)
    lines = results.read_results(tmp_path)
    sasrec = [line for line in lines if line["model"] == "SASRec"]
    values = [line["metrics"]["ndcg@10"] for line in sasrec]
    summary = report.summarize(sasrec)
    assert summary["n"] == 3
    assert summary["ndcg@10"] == pytest.approx((np.mean(values), np.std(values, ddof=1)))
    text = report.render_report(lines)
    row = next(r for r in text.splitlines() if r.startswith("| SASRec | none |"))
    assert f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" in row
    assert "| 3 |" in row and "12 ep (best 2)" in row
    unimp_row = next(r for r in text.splitlines() if r.startswith("| UniMP-tiny | none |"))
    assert "500–502 steps" in unimp_row


def test_report_pairs_unimp_with_the_best_peer_on_validation(tmp_path):
    write_synthetic(tmp_path)
    lines = results.read_results(tmp_path)
    text = report.render_report(lines)
    row = next(r for r in text.splitlines() if r.startswith("| ML-100K | none |"))
    assert "SASRec" in row and "GRU4Rec" not in row       # SASRec's validation NDCG@10 is higher
    unimp = report.seed_averaged_ndcg([line for line in lines if line["model"] == "UniMP-tiny"])
    sasrec = report.seed_averaged_ndcg([line for line in lines if line["model"] == "SASRec"])
    ci = report.paired_bootstrap(unimp, sasrec)
    assert f"{ci['mean']:+.4f} | [{ci['low']:+.4f}, {ci['high']:+.4f}]" in row
    assert ci["low"] > 0 and "UniMP-tiny ahead of SASRec" in row


def test_report_says_on_par_when_the_interval_spans_zero(tmp_path):
    ranks = list(range(1, 41))
    results.append_results([make_line(ranks), make_line(ranks[::-1], model="UniMP-tiny")], tmp_path)
    text = report.render_report(results.read_results(tmp_path))
    assert "on par with SASRec (the CI spans 0)" in text


def test_report_without_unimp_lines_says_so(tmp_path):
    results.append_results([make_line([1, 2, 3])], tmp_path)
    text = report.render_report(results.read_results(tmp_path))
    assert "no UniMP-tiny lines yet" in text


def test_report_with_unimp_but_no_peer_under_a_masking_says_so(tmp_path):
    results.append_results([make_line([1, 2, 3], model="UniMP-tiny")], tmp_path)
    text = report.render_report(results.read_results(tmp_path))
    row = next(r for r in text.splitlines() if r.startswith("| ML-100K | none |"))
    assert "| 1 | 0 |" in row and "no peer run under this masking yet" in row and "no UniMP-tiny" not in row


def test_report_keeps_the_last_line_of_a_rerun(tmp_path):
    results.append_results([make_line([50, 50]), make_line([1, 1])], tmp_path)
    text = report.render_report(results.read_results(tmp_path))
    assert "| SASRec | none | 1 |" in text and "| 1.0000 |" in text


def test_report_is_written_between_the_markers_only(tmp_path):
    write_synthetic(tmp_path / "results")
    markdown = tmp_path / "BENCH.md"
    markdown.write_text(f"# head\n{report.BEGIN_MARKER}\nold table\n{report.END_MARKER}\ntail\n")
    args = ["--results-dir", str(tmp_path / "results"), "--markdown", str(markdown), "--readme", ""]
    assert report.main(args) == 0
    text = markdown.read_text()
    assert text.startswith("# head\n") and text.endswith(f"{report.END_MARKER}\ntail\n")
    assert "old table" not in text and "| SASRec | none | 3 |" in text
    assert report.main([*args, "--check"]) == 0
    markdown.write_text(text.replace("| SASRec | none | 3 |", "| SASRec | none | 4 |"))
    assert report.main([*args, "--check"]) == 1


def test_readme_summary_agrees_with_the_tables(tmp_path):
    """The README's summary is generated from the same lines: its numbers are the tables' and its reading the CI's."""
    write_synthetic(tmp_path / "results")
    markdown, readme = tmp_path / "BENCH.md", tmp_path / "README.md"
    markdown.write_text(f"{report.BEGIN_MARKER}\n{report.END_MARKER}\n")
    readme.write_text(f"# r\n{report.SUMMARY_BEGIN}\nold claim\n{report.SUMMARY_END}\n")
    args = ["--results-dir", str(tmp_path / "results"), "--markdown", str(markdown), "--readme", str(readme)]
    assert report.main(args) == 0
    tables, summary = markdown.read_text(), readme.read_text()
    bullet = next(r for r in summary.splitlines() if r.startswith("- **ML-100K**, none"))
    unimp_row = next(r for r in tables.splitlines() if r.startswith("| UniMP-tiny | none |"))
    pair_row = next(r for r in tables.splitlines() if r.startswith("| ML-100K | none |"))
    assert unimp_row.split(" | ")[5] in bullet                    # the same mean ± sd NDCG@10
    assert pair_row.split(" | ")[6] in bullet and "UniMP-tiny ahead of SASRec" in bullet
    assert "old claim" not in summary and report.main([*args, "--check"]) == 0
    readme.write_text(summary.replace("ahead of", "behind"))
    assert report.main([*args, "--check"]) == 1


def test_task_tables_average_seeds_per_model_and_stay_out_of_section_1(tmp_path):
    """Non-rec lines get their own generated tables (§9): mean ± sd over seeds per (model, variant), the task's
    validation metric; §1's tables and header count ignore them."""
    def select_line(model, seed, accuracy, valid):
        metrics = {"precision": accuracy, "recall": accuracy, "f1": accuracy, "accuracy": accuracy}
        return make_line([1], task="select", model=model, variant="v", seed=seed, metrics=metrics, ranks=None,
                         valid_metrics=dict(metrics, accuracy=valid), budget={"steps": 600})
    write_synthetic(tmp_path / "results")
    results.append_results([select_line("UniMP-tiny (rec scores)", 0, 0.2, 0.3),
                            select_line("UniMP-tiny (rec scores)", 1, 0.4, 0.5), select_line("Pop", 0, 0.1, 0.1)],
                           tmp_path / "results")
    markdown = tmp_path / "BENCH.md"
    markdown.write_text(f"{report.BEGIN_MARKER}\n{report.END_MARKER}\n§9\n{report.TASKS_BEGIN}\n{report.TASKS_END}\n")
    args = ["--results-dir", str(tmp_path / "results"), "--markdown", str(markdown), "--readme", ""]
    assert report.main(args) == 0
    section_1, section_9 = markdown.read_text().split("§9")
    assert "select" not in section_1 and "Pop | v" not in section_1
    row = next(r for r in section_9.splitlines() if r.startswith("| UniMP-tiny (rec scores) |"))
    # n = 2; valid accuracy 0.4 ± 0.1414 (sample sd of 0.3, 0.5); test accuracy 0.3 ± 0.1414
    assert row.split(" | ")[2:5] == ["2", "0.4000 ± 0.1414", "0.3000 ± 0.1414"]
    assert "| Pop | v | 1 | 0.1000 |" in section_9 and "#### select: ML-100K" in section_9
    assert report.main([*args, "--check"]) == 0


def test_readme_task_summary_compares_with_the_baseline_best_on_validation(tmp_path):
    """One bullet per task, dataset and UniMP row; the baseline is chosen on validation (an upper bound never is),
    lower-is-better metrics read the other way, and the seeds are read one by one."""
    def task_line(task, model, seed, metric, test, valid):
        return make_line([1], dataset="hm", task=task, model=model, seed=seed, ranks=None, metrics={metric: test},
                         valid_metrics={metric: valid}, budget={"steps": 0})
    lines = [task_line("select", "UniMP-tiny", 0, "accuracy", 0.2, 0.3),
             task_line("select", "UniMP-tiny", 1, "accuracy", 0.4, 0.3),
             task_line("select", "Pop", 0, "accuracy", 0.3, 0.1),       # best on validation
             task_line("select", "Random", 0, "accuracy", 0.35, 0.05),  # better on test: not the one shown
             task_line("imggen", "UniMP-tiny", 0, "frechet_distance", 10.0, 11.0),
             task_line("imggen", "UniMP-tiny", 1, "frechet_distance", 12.0, 13.0),
             task_line("imggen", "Most recent image", 0, "frechet_distance", 1.9, 2.0),
             task_line("imggen", "Random image", 0, "frechet_distance", 4.0, 5.0),
             task_line("imggen", "Tokenizer reconstruction (bound)", 0, "frechet_distance", 0.4, 0.5)]
    results.append_results(lines, tmp_path / "results")
    text = report.render_task_summary(results.read_results(tmp_path / "results"))
    select = next(row for row in text.splitlines() if row.startswith("- **Item selection, H&M**"))
    assert "accuracy 0.3000 ± 0.1414 vs Pop 0.3000: ahead on 1 of 2 seeds" in select   # 0.4 > 0.3, 0.2 < 0.3
    imggen = next(row for row in text.splitlines() if row.startswith("- **User-guided image generation, H&M**"))
    assert "frechet_distance 11.0000 ± 1.4142 vs Most recent image 1.9000: behind on every seed" in imggen
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.SUMMARY_BEGIN}\n{report.SUMMARY_END}\n{report.TASK_SUMMARY_BEGIN}\n"
                      f"{report.TASK_SUMMARY_END}\n")
    markdown = tmp_path / "BENCH.md"
    markdown.write_text(f"{report.BEGIN_MARKER}\n{report.END_MARKER}\n")
    args = ["--results-dir", str(tmp_path / "results"), "--markdown", str(markdown), "--readme", str(readme)]
    assert report.main(args) == 0 and select in readme.read_text() and report.main([*args, "--check"]) == 0


def test_report_refuses_a_file_without_markers(tmp_path):
    markdown = tmp_path / "BENCH.md"
    markdown.write_text("no markers\n")
    with pytest.raises(ValueError, match="bench-report:begin"):
        report.write_between_markers(markdown, "x")


# ---------------------------------------------------------------------------------------------------------------
# run_peers: ranking helpers and contract lines (no RecBole needed)
# ---------------------------------------------------------------------------------------------------------------


def test_target_ranks_count_ties_against_the_target():
    scores = np.array([[-np.inf, 0.5, 0.9, 0.5, 0.1],
                       [-np.inf, 1.0, 1.0, 1.0, 1.0]])
    assert run_peers.target_ranks(scores, [1, 4]).tolist() == [3, 4]   # row 1: all tie, target last


def test_target_ranks_with_history_masked():
    scores = np.array([[-np.inf, 0.5, 0.9, 0.7, 0.1]])
    history = run_peers.history_exclusion({"u": [2, 3]}, ["u"], 5)
    assert history.tolist() == [[False, False, True, True, False]]
    assert run_peers.target_ranks(scores, [1]).tolist() == [3]
    assert run_peers.target_ranks(scores, [1], history).tolist() == [1]
    assert scores[0, 2] == 0.9                         # the caller's scores are untouched
    with pytest.raises(ValueError, match="cannot be excluded"):
        run_peers.target_ranks(scores, [2], history)
    with pytest.raises(ValueError, match="-inf"):
        run_peers.target_ranks(scores, [0])


def test_overrides_per_dataset_name_the_variant():
    overrides = run_peers.parse_overrides(["SASRec:attn_dropout_prob=0.5", "SASRec@ml100k:hidden_dropout_prob=0.2",
                                           "SASRec@ml100k:attn_dropout_prob=0.2"])
    assert run_peers.overrides_for(overrides, "SASRec", "hm") == {"attn_dropout_prob": 0.5}
    ml = run_peers.overrides_for(overrides, "SASRec", "ml100k")
    assert ml == {"attn_dropout_prob": 0.2, "hidden_dropout_prob": 0.2}
    assert run_peers.variant_name(ml) == "attn_dropout_prob=0.2,hidden_dropout_prob=0.2"
    assert run_peers.variant_name({}) == "default"


@pytest.mark.parametrize("model, maskings", [("SASRec", ["none", "history"]), ("BPR", ["history"])])
def test_run_peers_writes_valid_contract_lines(tmp_path, model, maskings):
    spec = {"dataset": "hm", "model": model, "seed": 2020, "overrides": {}, "epoch_cap": 50, "patience": 10,
            "threads": 1}
    native, masked = [1, 5, 40], [1, 2, 30]
    res = {"ranking": {"test": {"native": native, "history": masked}, "valid": {"native": native, "history": masked},
                       "n_users": 3, "n_items": 100, "users_sha256": results.users_digest(["a", "b", "c"])},
           "epochs_run": 20, "best_epoch": 10, "stopped_early": True, "train_seconds": 5.0,
           "eval_users_per_s": 1000.0, "peak_rss_mb": 600.0, "test": {"ndcg@10": 0.1}}
    lines = run_peers.contract_lines(spec, res, "abc", {"model": "cpu", "cores": 2})
    assert [line["masking"] for line in lines] == maskings
    results.append_results(lines, tmp_path)
    by_masking = {line["masking"]: line for line in results.read_results(tmp_path)}
    if model == "SASRec":
        assert by_masking["none"]["ranks"] == native and by_masking["history"]["ranks"] == masked
    else:   # a general model's only line is RecBole's own (history-masked) ranking
        assert by_masking["history"]["ranks"] == native
    assert run_peers.have_lines(spec, tmp_path)
    assert not run_peers.have_lines(dict(spec, seed=2021), tmp_path)


def test_child_prologue_switches_off_recbole_s_import_time_anomaly_mode(tmp_path, monkeypatch):
    """RecBole 1.2.1's sine.py calls set_detect_anomaly(True) when the model zoo is imported: ~2x slower epochs."""
    torch = pytest.importorskip("torch")
    pkg = tmp_path / "site" / "recbole" / "model" / "sequential_recommender"
    pkg.mkdir(parents=True)
    for d in (pkg.parent.parent, pkg.parent):
        (d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("import torch\ntorch.autograd.set_detect_anomaly(True)\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [m for m in sys.modules if m == "recbole" or m.startswith("recbole.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.chdir(tmp_path)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({"workdir": str(tmp_path)}))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    try:
        assert run_peers.child_prologue(str(spec_path)) == {"workdir": str(tmp_path)}
        assert "recbole.model.sequential_recommender" in sys.modules   # the switch was flipped ...
        assert not torch.is_anomaly_enabled()                           # ... and flipped back
    finally:
        torch.autograd.set_detect_anomaly(False)
