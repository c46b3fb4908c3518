"""benchmarks/run_preference.py (issue 14): the grid's choice, contract lines, resume and arguments; no training."""

import importlib.util
import json
import sys

import pytest
from conftest import REPO_ROOT, fake_evaluation

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import results as contract  # noqa: E402


def _load():
    spec = importlib.util.spec_from_file_location("run_preference", REPO_ROOT / "benchmarks" / "run_preference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _grid_run(loss, n, beta, ndcg, dataset="ml100k"):
    return {"dataset": dataset, "seed": 0, "loss_type": loss, "num_negatives": n, "beta": beta, "steps": 100,
            "eval_every": 25, "best_valid_ndcg@10": ndcg}


def test_choice_is_the_best_validation_ndcg_per_loss_ties_to_the_smaller_beta_then_n():
    pref = _load()
    runs = [_grid_run("sdpo", 8, 1.0, 0.07), _grid_run("sdpo", 8, 0.1, 0.07), _grid_run("sdpo", 4, 0.1, 0.07),
            _grid_run("sdpo", 4, 1.0, 0.06), _grid_run("sigmoid", 1, 1.0, 0.065), _grid_run("sigmoid", 1, 0.1, 0.05)]
    chosen = pref.choose_settings(runs)
    assert (chosen["sdpo"]["num_negatives"], chosen["sdpo"]["beta"]) == (4, 0.1)  # tie at 0.07: β, then N
    assert chosen["sigmoid"]["beta"] == 1.0  # the higher validation NDCG@10 wins over the smaller β
    assert pref.choose_settings(list(reversed(runs))) == chosen  # order does not matter
    # a dataset without its own grid takes the first fallback dataset's; with its own, its own
    grid = {"runs": runs + [_grid_run("sdpo", 8, 1.0, 0.02, dataset="hm")]}
    assert pref.settings_for("amazon-mi", grid)[0] == "ml100k"
    source, own = pref.settings_for("hm", grid)
    assert source == "hm" and own["sdpo"]["num_negatives"] == 8 and "sigmoid" not in own
    with pytest.raises(ValueError, match="--grid"):
        pref.settings_for("hm", {"runs": []})


def test_arguments_defaults_and_a_budget_off_the_validation_grid(tmp_path):
    pref = _load()
    grid = pref.parse_args(["--grid"])
    assert grid.grid and grid.datasets == ["ml100k"] and grid.grid_seed == 0 and grid.steps == 80
    assert grid.grid_settings == pref.GRID and grid.eval_every == 20
    assert grid.grid_file == contract.RESULTS_DIR / "preference_grid.json"
    seeds = pref.parse_args(["--results-dir", str(tmp_path), "max_eval_users=20", "--seeds", "1"])
    assert seeds.datasets == ["ml100k", "hm", "amazon-mi"] and seeds.seeds == [1]
    assert seeds.grid_file == tmp_path / "preference_grid.json" and seeds.overrides == ["max_eval_users=20"]
    assert set(seeds.variants) == {"sft+sdpo", "sft+dpo", "sft+sft"}
    assert pref.parse_args(["--grid", "--grid-settings", "sdpo:8:1", "sigmoid:1:0.1"]).grid_settings == [
        ("sdpo", 8, 1.0), ("sigmoid", 1, 0.1)]
    with pytest.raises(ValueError, match="multiple of eval_every=20"):
        pref.parse_args(["--steps", "90"])
    for bad in (["--datasets", "amazon-2018"], ["--grid-settings", "ipo:1:0.1"], ["--grid-settings", "sdpo:8"]):
        with pytest.raises(SystemExit):
            pref.parse_args(bad)


def test_overrides_parse_as_the_recipes_read_them():
    from recipes import preference_tune, train

    pref = _load()
    recipe, training = preference_tune.parse_args(
        [str(pref.PREFERENCE_CONFIGS["hm"]), *pref.preference_overrides("sigmoid", 1, 0.1, 100, 25)])
    assert (training.loss_type, training.num_negatives, training.beta) == ("sigmoid", 1, 0.1)
    assert training.hard_negative_fraction == 0.0 and training.max_steps == 100 and training.eval_steps == 25
    assert recipe.max_test_users == 1 and recipe.max_train_seconds is None
    _, sdpo = preference_tune.parse_args(
        [str(pref.PREFERENCE_CONFIGS["hm"]), *pref.preference_overrides("sdpo", 8, 1.0, 100, 25)])
    assert sdpo.hard_negative_fraction == 0.5  # the config's: half hard, half popular
    # the control: the SFT config, but the preference run's data, batch, LR and validation users, constant LR
    recipe, training = train.parse_args([str(pref.bench.CONFIGS["amazon-mi"]),
                                         *pref.control_overrides("amazon-mi", 100, 25)])
    config = pref.read_config("amazon-mi")
    assert recipe.tasks == ["rec"] and recipe.num_windows_per_user == config["num_windows_per_user"]
    assert training.learning_rate == config["learning_rate"] and training.lr_scheduler_type == "constant"
    assert training.warmup_steps == 0 and training.max_steps == 100 and recipe.max_train_seconds is None
    assert recipe.max_eval_users == config["max_eval_users"]


def _fake_runs(tmp_path, order):
    start = tmp_path / "bench" / "ml100k-unimp-s0"
    start.mkdir(parents=True)
    (start / "metrics.json").write_text(json.dumps({"global_step": 600, "best_checkpoint": f"{start}/checkpoint-300",
                                                    "trainer_seconds": 1900.0, "peak_rss_mib": 1900.0}))
    (start / "model.safetensors").write_text("")
    run = tmp_path / "pref" / "ml100k-sft+sdpo-s0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({
        "global_step": 100, "best_checkpoint": f"{run}/checkpoint-75", "trainer_seconds": 500.0,
        "peak_rss_mib": 1400.0, "validation_before": {"ndcg@10": 0.07},
        "preference": {"loss_type": "sdpo", "beta": 0.1, "num_negatives": 4, "seconds_per_step": 5.0}}))
    (run / "metrics_test.json").write_text(json.dumps(fake_evaluation(order, "test", {"u1": 1, "u2": 12, "u3": 4},
                                                                 {"u1": 1, "u2": 7, "u3": 2})))
    (run / "metrics_validation.json").write_text(json.dumps(fake_evaluation(order, "validation",
                                                                       {"u1": 30, "u2": 2, "u3": 5},
                                                                       {"u1": 25, "u2": 1, "u3": 5})))
    return start, run


def test_contract_lines_validate_carry_the_setting_and_resume_skips_them(tmp_path, monkeypatch):
    pref = _load()
    order = [("u1", "i1", "i2"), ("u2", "i3", "i4"), ("u3", "i5", "i6")]
    start, run = _fake_runs(tmp_path, order)
    setting = dict(_grid_run("sdpo", 4, 0.1, 0.071), grid_dataset="ml100k")
    lines = pref.contract_lines("ml100k", "sft+sdpo", 0, run_dir=run, start=start, order=order, steps=100,
                                eval_every=25, command={"config": "recipes/configs/preference_ml100k.yaml",
                                                        "overrides": ["beta=0.1"]}, setting=setting)
    results = tmp_path / "results"
    contract.append_results(lines, results)  # validates every field, metrics against ranks
    by_masking = {line["masking"]: line for line in contract.read_results(results)}
    assert set(by_masking) == {"none", "history"} and by_masking["none"]["ranks"] == [1, 12, 4]
    budget = by_masking["history"]["budget"]
    assert budget["steps"] == 700 and budget["sft_steps"] == 600 and budget["extra_steps"] == 100
    assert (budget["loss_type"], budget["beta"], budget["num_negatives"], budget["best_step"]) == ("sdpo", 0.1, 4, 75)
    line = by_masking["none"]
    assert line["model"] == "UniMP-tiny" and line["variant"] == "sft+sdpo" and line["train_seconds"] == 2400.0
    assert line["preference"]["grid_dataset"] == "ml100k" and line["preference"]["seconds_per_step"] == 5.0
    # resume: both maskings there -> done; another variant or seed, --force, or no results dir -> not done
    assert pref.already_done("ml100k", "sft+sdpo", 0, results, force=False)
    assert not pref.already_done("ml100k", "sft+dpo", 0, results, force=False)
    assert not pref.already_done("ml100k", "sft+sdpo", 1, results, force=False)
    assert not pref.already_done("ml100k", "sft+sdpo", 0, results, force=True)
    assert not pref.already_done("ml100k", "sft+sdpo", 0, None, force=False)
    # main: rows present are skipped, seeds without a start are skipped, the rest are run
    ran = []
    monkeypatch.setattr(pref, "run_seed", lambda dataset, seed, variant, **_: ran.append((dataset, variant, seed)))
    pref.main(["--datasets", "ml100k", "--seeds", "0", "1", "--sft-dir", str(tmp_path / "bench"), "--results-dir",
               str(results), "--out", str(tmp_path / "pref")])
    assert ran == [("ml100k", "sft+dpo", 0), ("ml100k", "sft+sft", 0)]


def test_grid_records_each_run_once_and_the_choice(tmp_path, monkeypatch):
    pref = _load()
    start, _ = _fake_runs(tmp_path, [("u1", "i1", "i2")])
    scores = {("sdpo", 4, 0.1): 0.072, ("sdpo", 4, 1.0): 0.072, ("sigmoid", 1, 1.0): 0.069}
    trained = []

    def fake_run(dataset, seed, setting, steps, eval_every, start, run_dir, extra):
        trained.append(setting)
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(json.dumps({
            "best_checkpoint": f"{run_dir}/checkpoint-50", "best_validation": {"ndcg@10": scores[setting]},
            "validation_before": {"ndcg@10": 0.070}, "trainer_seconds": 600.0,
            "preference": {"seconds_per_step": 5.5, "hard_negative_fraction": 0.0 if setting[1] == 1 else 0.5}}))

    monkeypatch.setattr(pref, "run_preference", fake_run)
    grid_file = tmp_path / "grid.json"
    kwargs = {"sft_dir": tmp_path / "bench", "out_dir": tmp_path / "pref", "grid_path": grid_file, "steps": 100,
              "eval_every": 25, "extra": [], "settings": list(scores)}
    grid = pref.run_grid("ml100k", 0, **kwargs)
    assert trained == list(scores)
    assert grid["chosen"] == {"ml100k": {"sdpo": "sdpo-n4-b0.1", "sigmoid": "sigmoid-n1-b1"}}
    run = next(r for r in grid["runs"] if r["loss_type"] == "sigmoid")
    assert run["best_step"] == 50 and run["start_valid_ndcg@10"] == 0.070 and run["seconds_per_step"] == 5.5
    assert run["valid_users"] == 300 and not any("test" in key for key in run)  # validation numbers only
    pref.run_grid("ml100k", 0, **kwargs)  # a rerun finds every setting in the file and trains nothing
    assert len(trained) == 3 and len(json.loads(grid_file.read_text())["runs"]) == 3
    with pytest.raises(FileNotFoundError, match="run_benchmark"):
        pref.run_grid("ml100k", 1, **kwargs)
