"""recipes/evaluate.py: rating + explanation prediction, the exp evaluation on real data (issue 5)."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, make_tiny_config
from PIL import Image

from modeling_unimp import UniMPForConditionalGeneration
from recipes import train
from recipes.evaluate import predict_ratings_and_explanations


def _exp_examples(n: int) -> list[dict]:
    examples = []
    for i in range(n):
        text = (f"<image> Title Heat <answer> rate_{1 + i % 5} Great film <|endofchunk|> "
                "<image> Title Up What is the rating and explanation for the item? <answer>")
        images = [Image.new("RGB", (32, 32), (40 * i, 90, 20)), Image.new("RGB", (32, 32), (10, 40 * i, 200))]
        examples.append({"text": text, "images": images, "task": "exp", "task_weight": 1.0})
    return examples


def test_generated_rating_is_the_argmax_of_the_scored_distribution(tiny_processor):
    torch.manual_seed(0)
    model = UniMPForConditionalGeneration(make_tiny_config())
    tiny_processor.prepare_model(model)
    with torch.no_grad():  # open the gates so the images matter
        for name, parameter in model.named_parameters():
            if name.endswith("gate"):
                parameter.fill_(1.0)
    examples = _exp_examples(5)
    scored = predict_ratings_and_explanations(model, tiny_processor, examples, batch_size=2)
    generated = predict_ratings_and_explanations(model, tiny_processor, examples, batch_size=3, max_new_tokens=4)
    probabilities = scored["probabilities"]
    assert probabilities.shape == (5, 5) and torch.allclose(probabilities.sum(-1), torch.ones(5))
    # batch composition (left padding) and the generation path do not change the distribution
    torch.testing.assert_close(generated["probabilities"], probabilities, atol=1e-5, rtol=1e-4)
    assert scored["explanations"] == [] and len(generated["explanations"]) == 5
    assert not torch.allclose(probabilities[0], probabilities[1])  # each row is its own user's prediction


def test_train_recipe_reports_rating_and_explanation_metrics_on_amazon(data_dir, tmp_path):
    recipe, training = train.parse_args([
        str(REPO_ROOT / "recipes" / "configs" / "amazon_mi_tiny.yaml"),
        f"output_dir={tmp_path}", "max_steps=2", "eval_steps=2", "save_steps=2", "max_train_users=10",
        "max_eval_users=4", "max_test_users=6", "per_device_train_batch_size=2", "max_history_items=2",
        "num_windows_per_user=1", "disable_tqdm=true", f"data_dir={data_dir}", "tasks=[rec,exp]",
    ])
    metrics = train.main(recipe, training)
    exp = metrics["exp"]
    assert exp["num_users"] == 6 and exp["num_explanations"] == 6
    for name in ("unimp_rating", "unimp_rating_expected", "global_mean", "user_mean", "item_mean", "user_item_bias"):
        assert 0.0 <= exp[name]["mae"] <= exp[name]["rmse"] <= 4.0, name
    assert sum(exp["rating_distribution"]["true"].values()) == 6
    assert set(exp["unimp_explanation"]) == {"rouge1", "rouge2", "rougeL", "bleu4", "unigram_precision"}
    assert set(exp["last_explanation_baseline"]) == set(exp["unimp_explanation"])
    assert all(isinstance(s["generated"], str) and s["reference"] for s in exp["explanation_samples"])
    assert math.isfinite(exp["unimp_explanation"]["rougeL"])
    assert (Path(tmp_path) / "metrics.json").exists()


def test_evaluate_uses_the_checkpoint_window_and_ablation_and_keeps_training_metrics(data_dir, tmp_path, monkeypatch):
    from recipes import evaluate

    recipe, training = train.parse_args([
        str(REPO_ROOT / "recipes" / "configs" / "ml100k_tiny.yaml"),
        f"output_dir={tmp_path}", "max_steps=1", "eval_steps=1", "save_steps=1", "max_train_users=8",
        "max_eval_users=4", "max_test_users=4", "per_device_train_batch_size=2", "max_history_items=3",
        "num_windows_per_user=1", "disable_tqdm=true", f"data_dir={data_dir}", "use_images=false",
    ])
    train.main(recipe, training)
    training_metrics = (tmp_path / "metrics.json").read_bytes()
    rendered, render_examples = [], evaluate.render_examples

    def spy(*args, **kwargs):
        examples = render_examples(*args, **kwargs)
        rendered.extend(examples)
        return examples

    monkeypatch.setattr(evaluate, "render_examples", spy)
    # no --dataset, no window, no ablation flags: all come from what the checkpoint recorded
    results = evaluate.main([str(tmp_path), "--split", "validation", "test", "--max-users", "5",
                             "--data-dir", str(data_dir)])
    monkeypatch.undo()
    assert (tmp_path / "metrics.json").read_bytes() == training_metrics  # the training metrics are untouched
    test = results["test"]
    assert test["max_history_items"] == 3 and test["dataset"] == "ml-100k-posters" and test["use_images"] is False
    assert len(rendered) == 10  # 5 validation + 5 test users, each prompt with the 3-item window (not 10)
    assert all(example["text"].count("<|endofchunk|>") == 3 for example in rendered)
    # trained with use_images=false: every `<image>` slot is image-less (None), as in training
    assert all(example["images"] and all(image is None for image in example["images"]) for example in rendered)
    written = json.loads((tmp_path / "metrics_test.json").read_text())
    assert written["ranks"]["user_ids"] == test["ranks"]["user_ids"] and len(written["ranks"]["history"]) == 5
    assert all(h <= n for h, n in zip(written["ranks"]["history"], written["ranks"]["none"]))  # masking only lifts
    assert (tmp_path / "metrics_validation.json").exists()
    with pytest.raises(ValueError, match="training metrics file"):
        evaluate.main([str(tmp_path), "--out", str(tmp_path / "metrics.json"), "--data-dir", str(data_dir)])
