"""recipes.preference_tune (issue 14): the two-command path from a trained checkpoint to a preference-tuned one."""

import json

import pytest
from conftest import REPO_ROOT

from modeling_unimp import UniMPForConditionalGeneration
from recipes import preference_tune, train

PREFERENCE_CONFIGS = sorted((REPO_ROOT / "recipes" / "configs").glob("preference_*.yaml"))
SMALL_RUN = ["--max_train_users", "8", "--max_eval_users", "4", "--max_test_users", "4",
             "--per_device_train_batch_size", "2", "--max_history_items", "3", "--num_windows_per_user", "1",
             "--disable_tqdm", "true", "--max_steps", "2", "--eval_steps", "1", "--save_steps", "1"]


@pytest.mark.parametrize("config", PREFERENCE_CONFIGS, ids=[c.stem for c in PREFERENCE_CONFIGS])
def test_shipped_preference_configs_parse_and_start_from_a_train_checkpoint(config):
    recipe, training = preference_tune.parse_args(["--config", str(config)])
    assert recipe.model_name_or_path.startswith("outputs/") and recipe.tasks == ["rec"]
    assert training.metric_for_best_model == "ndcg@10" and not training.push_to_hub
    assert (REPO_ROOT / "recipes" / "configs" / f"{recipe.model_name_or_path.split('/')[-1]}.yaml").is_file()


def test_train_then_lora_preference_tune_on_real_data_saves_and_reloads(data_dir, tmp_path):
    # command 1: recipes.train with --config plus flag overrides
    train.main(*train.parse_args(["--config", str(REPO_ROOT / "recipes/configs/ml100k_tiny.yaml"),
                                  "--output_dir", str(tmp_path / "sft"), "--data_dir", str(data_dir), *SMALL_RUN]))
    # command 2: preference tuning from that checkpoint (LoRA: the reference is the adapter-disabled model)
    recipe, training = preference_tune.parse_args([
        "--config", str(REPO_ROOT / "recipes/configs/preference_ml100k.yaml"), "--data_dir", str(data_dir),
        "--model_name_or_path", str(tmp_path / "sft"), "--output_dir", str(tmp_path / "sdpo"),
        "--trainable_stage", "lora", "--num_negatives", "3", *SMALL_RUN,
    ])
    metrics = preference_tune.main(recipe, training)
    written = json.loads((tmp_path / "sdpo" / "metrics.json").read_text())
    assert written["preference"]["num_negatives"] == 3 and written["preference"]["seconds_per_step"] > 0
    assert set(written["validation_before"]) >= {"ndcg@10", "hr@10"} and metrics["num_users"] == 4
    assert metrics["best_checkpoint"] is not None  # selected on validation NDCG@10
    assert (tmp_path / "sdpo" / "adapter" / "adapter_config.json").exists()
    merged = UniMPForConditionalGeneration.from_pretrained(tmp_path / "sdpo")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert merged.config.num_items == 1682


def test_preference_tune_refuses_to_start_without_a_checkpoint_with_other_tasks_or_train_negatives():
    recipe, training = preference_tune.parse_args(["--config", str(PREFERENCE_CONFIGS[0]), "--model_name_or_path",
                                                   "null"])
    recipe.model_name_or_path = None
    with pytest.raises(ValueError, match="model_name_or_path"):
        preference_tune.main(recipe, training)
    recipe.model_name_or_path, recipe.tasks = "outputs/x", ["rec", "exp"]
    with pytest.raises(ValueError, match="tasks"):
        preference_tune.main(recipe, training)
    recipe.tasks, recipe.train_negatives = ["rec"], "seen"  # a recipes.train key: refused, not ignored
    with pytest.raises(ValueError, match="train_negatives='seen' is a recipes.train key; preference_tune"):
        preference_tune.main(recipe, training)
