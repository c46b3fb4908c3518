"""recipes/evaluate.py: rating + explanation prediction, the exp evaluation on real data (issue 5)."""

import copy
import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, make_tiny_config, make_tiny_model
from datasets import Dataset, DatasetDict
from PIL import Image

from modeling_unimp import UniMPForConditionalGeneration, UniMPProcessor
from processing.datasets_unimp import ITEM_FEATURES, USER_ROW_FEATURES
from recipes import evaluate, train
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


def spy_on_render_examples(monkeypatch) -> list:
    """Patch `recipes.evaluate.render_examples` to record every example it renders; returns that (growing) list."""
    rendered, render_examples = [], evaluate.render_examples

    def spy(*args, **kwargs):
        examples = render_examples(*args, **kwargs)
        rendered.extend(examples)
        return examples

    monkeypatch.setattr(evaluate, "render_examples", spy)
    return rendered


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
    rendered = spy_on_render_examples(monkeypatch)
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


RATED_ITEMS = {"i0": "Toy Story", "i1": "Heat", "i2": "Up", "i3": "Heat Action", "i4": "Story Comedy"}
RATED_SEQUENCES = {"u0": ["i0", "i1", "i2", "i3", "i4"], "u1": ["i4", "i2", "i0", "i1", "i3"],
                   "u2": ["i1", "i3", "i4", "i0", "i2"]}


def _rated_dataset(explained: bool = False):
    """Three users with five rated interactions each (leave-one-out: test history = the first four); with
    `explained`, interaction k of user u has the explanation "review k of u"."""
    items = {"item_id": list(RATED_ITEMS), "title": list(RATED_ITEMS.values()), "category": [None] * 5,
             "attributes": [[{"key": "Title", "value": title}] for title in RATED_ITEMS.values()],
             "image": [None] * 5}
    splits = {}
    for split, cut in (("train", 2), ("validation", 3), ("test", 4)):
        rows = {name: [] for name in USER_ROW_FEATURES}
        for n, (user, sequence) in enumerate(RATED_SEQUENCES.items()):
            ratings = [1 + (n + k) % 5 for k in range(len(sequence))]
            rows["user_id"].append(user)
            rows["history_item_ids"].append(sequence[:cut])
            rows["history_timestamps"].append(list(range(cut)))
            rows["history_ratings"].append(ratings[:cut])
            rows["history_explanations"].append([f"review {k} of {user}" if explained else None for k in range(cut)])
            rows["history_source_rows"].append([10 * n + k for k in range(cut)])
            rows["target_item_id"].append(sequence[cut])
            rows["target_timestamp"].append(cut)
            rows["target_rating"].append(ratings[cut])
            rows["target_explanation"].append(f"review {cut} of {user}" if explained else None)
            rows["target_source_row"].append(10 * n + cut)
        splits[split] = Dataset.from_dict(rows, features=USER_ROW_FEATURES)
    splits["items"] = Dataset.from_dict(items, features=ITEM_FEATURES)
    return DatasetDict(splits)


def test_exp_evaluation_honours_content_history_items_and_heads_with_the_expected_rating(tiny_tokenizer, monkeypatch):
    """recipes.evaluate's exp prompts use the processor's `content_history_items` (older items: token + rating, no
    image), and the expected rating is the headline: first rating key, the printed line, the pipeline's `rating`."""
    dataset_dict = _rated_dataset()
    processor = UniMPProcessor.from_catalogue(copy.deepcopy(tiny_tokenizer), list(RATED_ITEMS),
                                              list(RATED_ITEMS.values()), image_size=32, content_history_items=1)
    model = make_tiny_model(processor, gate=0.5)
    rendered = spy_on_render_examples(monkeypatch)
    metrics = evaluate.evaluate_explanation(model, processor, dataset_dict, split="test", max_new_tokens=0)
    monkeypatch.undo()
    assert len(rendered) == 3
    token_only = r"<item_\d> <answer> rate_\d <\|endofchunk\|> "
    for example in rendered:  # 4 history items: 3 token + rating alone, the latest with content, then the target
        assert re.match(f"^{token_only * 3}<image> Title ", example["text"]), example["text"]
        assert len(example["images"]) == example["text"].count("<image>") == 2
    assert [key for key in metrics if key.startswith("unimp_rating")] == ["unimp_rating_expected", "unimp_rating"]
    probabilities = predict_ratings_and_explanations(model, processor, rendered)["probabilities"]
    true = torch.tensor([float(example["target_rating"]) for example in rendered])
    expected_mae = (probabilities @ torch.arange(1.0, 6.0) - true).abs().mean().item()
    assert metrics["unimp_rating_expected"]["mae"] == pytest.approx(expected_mae, rel=1e-5)
    expected = metrics["unimp_rating_expected"]
    assert evaluate.rating_headline(metrics).startswith("rating (expected under the rating-token distribution): "
                                                        f"MAE {expected['mae']:.4f} RMSE {expected['rmse']:.4f};")


def test_repeat_latest_explanation_baseline_needs_no_generation(tiny_tokenizer):
    """Ratings only (max_new_tokens=0) on data with explanations: no UniMP text metrics, but the repeat-latest
    baseline is scored (it needs no model), so a cheap validation pass still has it."""
    processor = UniMPProcessor.from_catalogue(copy.deepcopy(tiny_tokenizer), list(RATED_ITEMS),
                                              list(RATED_ITEMS.values()), image_size=32)
    metrics = evaluate.evaluate_explanation(make_tiny_model(processor), processor, _rated_dataset(explained=True),
                                            split="test", max_new_tokens=0)
    assert "unimp_explanation" not in metrics and "num_explanations" not in metrics
    # "review 3 of u" vs "review 4 of u": 3 of 4 words in order, ROUGE-L F = 0.75 for every user
    assert metrics["last_explanation_baseline"]["rougeL"] == pytest.approx(0.75)
    assert "last_explanation_baseline" not in evaluate.evaluate_explanation(
        make_tiny_model(processor), processor, _rated_dataset(), split="test", max_new_tokens=0)
