"""benchmarks/run_benchmark.py: step budgets, contract lines (issue 11) and the rating tables (issue 5)."""

import importlib.util
import json

import pytest
from conftest import REPO_ROOT, fake_evaluation


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


def test_step_budget_schedule_warms_up_then_decays_linearly_over_the_last_30_percent():
    import torch
    from transformers import get_scheduler

    from recipes import train

    bench = _load_run_benchmark()
    overrides = bench.schedule_overrides(600, 150)
    recipe, training = train.parse_args([str(bench.CONFIGS["ml100k"]), *overrides])
    assert recipe.max_train_seconds is None and training.max_steps == 600 and training.eval_steps == 150
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=training.learning_rate)
    scheduler = get_scheduler(training.lr_scheduler_type, optimizer, num_warmup_steps=training.warmup_steps,
                              num_training_steps=training.max_steps,
                              scheduler_specific_kwargs=training.lr_scheduler_kwargs)
    factors = []
    for _ in range(600):
        factors.append(scheduler.get_last_lr()[0] / training.learning_rate)
        optimizer.step()
        scheduler.step()
    assert factors[0] == 0.0 and factors[training.warmup_steps] == 1.0 and factors[419] == 1.0  # stable to 420
    assert abs(factors[510] - 0.5) < 1e-9 and factors[599] < 0.01  # linear to 0 over the last 180 steps
    try:
        bench.schedule_overrides(500, 150)
    except ValueError as error:
        assert "multiple of eval_every=150" in str(error)
    else:
        raise AssertionError("a budget off the evaluation grid must be refused")


def test_budget_is_the_first_step_with_the_best_validation_ndcg(tmp_path):
    bench = _load_run_benchmark()
    for step, curve in ((150, [0.03]), (300, [0.03, 0.05]), (900, [0.03, 0.05, 0.06, 0.07])):
        history = [{"step": 150 * (n + 1), "eval_ndcg@10": v} for n, v in enumerate(curve)] + [{"step": 5, "loss": 1}]
        folder = tmp_path / f"run{step}" / f"checkpoint-{150 * len(curve)}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))
        (folder.parent / "checkpoint-150").mkdir(exist_ok=True)  # an older checkpoint without a state is ignored
        assert bench.choose_budget(bench.validation_curve(folder.parent)) == min(step, 150 * len(curve))
    assert bench.choose_budget({150: 0.03, 300: 0.05, 450: 0.05, 600: 0.04}) == 300  # ties: the earlier step


def test_contract_lines_carry_every_user_in_split_order_for_both_maskings(tmp_path):
    import sys

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import results as contract

    bench = _load_run_benchmark()
    order = [("u1", "i1", "i2"), ("u2", "i3", "i4"), ("u3", "i5", "i6")]
    run = tmp_path / "ml100k-unimp-s1"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"global_step": 300, "best_checkpoint": f"{run}/checkpoint-300",
                                                  "trainer_seconds": 99.5, "peak_rss_mib": 1234.0}))
    (run / "metrics_test.json").write_text(json.dumps(fake_evaluation(
        order, "test", {"u1": 1, "u2": 12, "u3": 4}, {"u1": 1, "u2": 7, "u3": 2})))
    (run / "metrics_validation.json").write_text(json.dumps(fake_evaluation(
        order, "validation", {"u1": 30, "u2": 2, "u3": 5}, {"u1": 25, "u2": 1, "u3": 5})))
    lines = bench.contract_lines("ml100k", "unimp", 1, 300, run, order)
    contract.append_results(lines, tmp_path / "results")  # validates every field, metrics against ranks
    by_masking = {line["masking"]: line for line in contract.read_results(tmp_path / "results")}
    assert by_masking["none"]["ranks"] == [1, 12, 4] and by_masking["history"]["ranks"] == [1, 7, 2]
    assert by_masking["none"]["variant"] == "default" and by_masking["none"]["budget"]["steps"] == 300
    assert by_masking["none"]["budget"]["best_step"] == 300
    assert by_masking["history"]["valid_metrics"]["hr@5"] == 2 / 3  # ranks 1 and 5 of 25, 1, 5
    assert by_masking["none"]["users_sha256"] == contract.users_digest(["u1", "u2", "u3"])
    # a user missing from UniMP's ranking, or a different target, is refused before anything is written
    (run / "metrics_test.json").write_text(json.dumps(fake_evaluation(order[:2], "test", {"u1": 1, "u2": 2},
                                                                 {"u1": 1, "u2": 2})))
    with pytest.raises(ValueError, match="UniMP ranked 2 users, the split file has 3"):
        bench.contract_lines("ml100k", "unimp", 1, 300, run, order)
    (run / "metrics_test.json").write_text(json.dumps(fake_evaluation(
        [("u1", "i1", "i2"), ("u2", "i3", "i9"), ("u3", "i5", "i6")], "test", {"u1": 1, "u2": 2, "u3": 3},
        {"u1": 1, "u2": 2, "u3": 3})))
    with pytest.raises(ValueError, match="user 'u2' has target 'i9'"):
        bench.contract_lines("ml100k", "unimp", 1, 300, run, order)


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


def test_pretrained_vision_variant_starts_from_the_dataset_tower_and_pretrains_it_when_missing(tmp_path, monkeypatch):
    bench = _load_run_benchmark()
    assert bench.variant_overrides("pretrained_vision", "hm") == [
        "vision_model_name_or_path=outputs/pretrain_vision/hm-sample"]
    assert bench.variant_overrides("content", "hm") == ["item_representation=content"]
    assert "amazon-mi" not in bench.APPLIES_TO["pretrained_vision"]  # no images to pretrain on
    calls = []
    monkeypatch.setattr(bench, "REPO", tmp_path)
    monkeypatch.setattr(bench, "run_logged", lambda command, log: calls.append(command[2:]))
    bench.ensure_prerequisites("pretrained_vision", "ml100k", tmp_path / "log")
    assert calls == [["recipes.pretrain_vision", str(tmp_path / "recipes/configs/pretrain_vision_ml100k.yaml"),
                      f"output_dir={tmp_path / 'outputs/pretrain_vision/ml-100k-posters'}"]]
    (tmp_path / "outputs/pretrain_vision/ml-100k-posters").mkdir(parents=True)
    bench.ensure_prerequisites("pretrained_vision", "ml100k", tmp_path / "log")  # there already: nothing runs
    bench.ensure_prerequisites("content", "ml100k", tmp_path / "log")
    assert len(calls) == 1


def test_multi_task_variants_hold_the_rec_examples_of_the_rec_only_budget():
    """issue 18 item 5: a pool of rec 8,380 + exp 8,380 examples needs twice the steps for the same rec examples;
    the budget is rounded up to the validation interval; without rec examples there is nothing to hold equal."""
    bench = _load_run_benchmark()
    assert bench.equal_rec_steps(600, {"rec": 8380, "exp": 8380}, 150) == 1200
    # 100 x (1485 + 496 + 1485) / 1485 = 233.4 -> 300 (multiples of 100)
    assert bench.equal_rec_steps(100, {"rec": 1485, "select": 496, "search": 1485}, 100) == 300
    assert bench.equal_rec_steps(600, {"rec": 10}, 150) == 600   # rec alone: the budget itself
    with pytest.raises(ValueError, match="no rec"):
        bench.equal_rec_steps(600, {"exp": 10}, 150)
    for variant in bench.EQUAL_REC_EXAMPLES:   # each trains rec plus other tasks, on the datasets that have them
        tasks = bench.VARIANTS[variant][0]
        assert tasks.startswith("tasks=[rec,") and bench.APPLIES_TO[variant] <= set(bench.CONFIGS)


def test_padding_share_counts_the_tokens_added_to_each_batch():
    from benchmarks.padding import length_grouped, padding_share

    lengths = [1, 3, 3, 1]
    # batches (1, 3) and (3, 1): 8 real of 12 padded tokens -> a third is padding
    assert padding_share(lengths, [0, 1, 2, 3], 2) == (pytest.approx(1 / 3), 12)
    grouped = length_grouped([0, 1, 2, 3], lengths, 2)   # one megabatch sorted by length: (3, 3), (1, 1)
    assert grouped == [1, 2, 0, 3] and padding_share(lengths, grouped, 2) == (0.0, 8)
    with pytest.raises(ValueError, match="fewer than one batch"):
        padding_share(lengths, [0], 2)


def test_select_prompts_keep_the_reference_history_of_four_items_whatever_the_rec_window():
    """reference §2.2 iv: a select prompt shows a few history items, each with its image; the rec window (ML-100K: 50
    items) made it ~720 tokens with 48 images, twice a rec step's cost."""
    from recipes.common import SELECT_MAX_HISTORY_ITEMS, task_record_kwargs

    assert SELECT_MAX_HISTORY_ITEMS == 4
    select = task_record_kwargs("select", "train", max_history_items=50, seed=3, num_windows_per_user=16)
    assert select == {"max_history_items": 4, "seed": 3}   # one window per user, as before
    assert task_record_kwargs("select", "test", max_history_items=2, seed=0)["max_history_items"] == 2
    for task in ("rec", "search", "exp"):
        assert task_record_kwargs(task, "train", max_history_items=50, seed=0,
                                  num_windows_per_user=16) == {"max_history_items": 50, "seed": 0,
                                                               "num_windows_per_user": 16}


def test_training_step_profile_groups_operators_by_name_prefix():
    from benchmarks.train_step import operator_group

    assert operator_group("aten::mm") == "matmul" and operator_group("aten::addmm") == "matmul"
    assert operator_group("aten::_scaled_dot_product_flash_attention_for_cpu_backward") == "attention (sdpa)"
    assert operator_group("aten::_log_softmax_backward_data") == "log-softmax (loss)"
    assert operator_group("aten::mul_") == "elementwise"
    assert operator_group("aten::convolution_backward") == "other"


def test_batch_counts_separate_item_labels_from_other_supervised_tokens(tiny_processor, tiny_config):
    import torch

    from benchmarks.train_step import batch_counts
    from modeling_unimp import UniMPForConditionalGeneration

    model = UniMPForConditionalGeneration(tiny_config)
    tiny_processor.prepare_model(model)
    start = tiny_processor.item_token_start_id
    labels = torch.tensor([[-100, start, 5, -100], [-100, -100, start + 2, -100]])
    batch = {"labels": labels, "attention_mask": torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])}
    counts = batch_counts({"batch": batch, "processor": tiny_processor, "model": model})
    assert counts == {"rows": 2, "padded_tokens": 8, "attended_tokens": 7, "supervised_positions": 3,
                      "item_labels": 2, "images": 0, "vocabulary": model.lm_head.weight.shape[0]}
