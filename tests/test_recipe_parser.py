"""TRL's parser for every recipe (issue 14): `--config` + flags, the `CONFIG.yaml key=value` shorthand, `--help`."""

import dataclasses
import runpy
import sys

import pytest
from conftest import REPO_ROOT
from transformers import TrainingArguments

from modeling_unimp.preference_trainer_unimp import UniMPPreferenceArguments
from modeling_unimp.trainer_unimp import UniMPTrainingArguments
from recipes import train
from recipes.common import RecipeArguments

TRANSFORMERS_FIELDS = {field.name for field in dataclasses.fields(TrainingArguments)}
CONFIG = str(REPO_ROOT / "recipes" / "configs" / "ml100k_tiny.yaml")


def _dataclass_recipes():
    from recipes.pretrain_vision import VisionPretrainingArguments
    from recipes.train_image_generation import ImageGenerationArguments
    from recipes.train_image_tokenizer import ImageTokenizerRecipeArguments

    return {  # recipe module -> the dataclasses whose fields its --help must list
        "train": (RecipeArguments, UniMPTrainingArguments),
        "finetune_lora": (RecipeArguments, UniMPTrainingArguments),
        "demo": (RecipeArguments, UniMPTrainingArguments),  # the train recipe's fields, on the demo config
        "preference_tune": (RecipeArguments, UniMPPreferenceArguments),
        "pretrain_vision": (VisionPretrainingArguments,),
        "train_image_tokenizer": (ImageTokenizerRecipeArguments,),
        "train_image_generation": (RecipeArguments, ImageGenerationArguments, UniMPTrainingArguments),
    }


OWN_FIELDS = {"evaluate": ("--split", "--task", "--max-new-tokens"), "push_to_hub": ("--dry-run", "--revision")}


def _help_of(module: str, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", [f"recipes.{module}", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(f"recipes.{module}", run_name="__main__")
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:'recipes.*' found in sys.modules:RuntimeWarning")  # runpy re-runs the module
@pytest.mark.parametrize("module", ["train", "finetune_lora", "demo", "preference_tune", "pretrain_vision",
                                    "train_image_tokenizer", "train_image_generation", "evaluate", "push_to_hub"])
def test_help_of_every_recipe_lists_its_fields_with_their_help(module, monkeypatch, capsys):
    text = _help_of(module, monkeypatch, capsys)
    squeezed = "".join(text.split())  # argparse wraps help text; compare without whitespace
    if module in OWN_FIELDS:
        assert all(option in text for option in OWN_FIELDS[module])
        return
    for cls in _dataclass_recipes()[module]:
        for field in dataclasses.fields(cls):
            if not field.init or field.name.startswith("_"):
                continue
            assert f"--{field.name}" in text, f"{module}: --{field.name} missing from --help"
            if field.name not in TRANSFORMERS_FIELDS and field.metadata.get("help"):  # our fields' help text
                assert "".join(field.metadata["help"].split()).replace("%%", "%") in squeezed, field.name


def test_config_flag_and_cli_flags_override_the_yaml():
    recipe, training = train.parse_args(["--config", CONFIG, "--learning_rate", "1e-4", "--tasks", "rec", "exp",
                                         "--task_weights", '{"rec": 3.0, "exp": 1.0}', "--use_images", "false"])
    assert training.learning_rate == 1e-4 and recipe.tasks == ["rec", "exp"]
    assert training.task_weights == {"rec": 3.0, "exp": 1.0} and recipe.use_images is False
    assert training.max_steps == 3000 and recipe.content_history_items == 10  # untouched YAML values stay


def test_positional_config_with_key_value_overrides_still_parses():
    recipe, training = train.parse_args([CONFIG, "learning_rate=3e-4", "eval_strategy=no", "load_best_model_at_end=no",
                                         "tasks=rec", "max_train_users=null", "--max_steps", "7"])
    assert training.learning_rate == 3e-4 and isinstance(training.learning_rate, float)
    assert training.eval_strategy == "no" and recipe.tasks == ["rec"] and recipe.max_train_users is None
    assert training.max_steps == 7


def test_a_key_that_is_no_field_is_rejected_naming_it():
    with pytest.raises(ValueError, match="not_a_field"):
        train.parse_args([CONFIG, "not_a_field=1"])
    with pytest.raises(ValueError, match="not_a_field"):  # an unknown flag: HfArgumentParser's own error
        train.parse_args(["--config", CONFIG, "--not_a_field", "1"])


def test_set_torch_threads_honours_omp_num_threads(monkeypatch):
    """A benchmark run beside another busy process asks for 1 thread (BENCHMARKS.md "Speed"); a bad value is an
    error naming the variable, and no variable means every core."""
    import os

    import torch

    from recipes.common import set_torch_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        set_torch_threads()
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "two")
        with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
            set_torch_threads()
        monkeypatch.delenv("OMP_NUM_THREADS")
        set_torch_threads()
        assert torch.get_num_threads() == max(1, os.cpu_count() or 1)
    finally:
        torch.set_num_threads(before)


def test_gate_init_sets_a_fresh_models_gates_and_is_refused_with_a_checkpoint(tmp_path):
    """`gate_init` (issue 12, BENCHMARKS §7.3) reaches every tanh gate of a fresh model; unset keeps the config's 0;
    with `model_name_or_path` it is an error (the checkpoint's gates are trained)."""
    from test_evaluate import _rated_dataset

    def gates(*overrides):
        recipe, _ = train.parse_args(["--config", CONFIG, "--output_dir", str(tmp_path), *overrides])
        model, _ = train.build_model(recipe, _rated_dataset())
        values = [p.detach() for name, p in model.named_parameters() if name.endswith(("attn_gate", "ff_gate"))]
        assert len(values) == 2 * model.config.text_config.num_hidden_layers   # one block per layer in tiny
        return values

    assert all(float(g) == 0.5 for g in gates("--gate_init", "0.5"))
    assert all(float(g) == 0.0 for g in gates())
    recipe, _ = train.parse_args(["--config", CONFIG, "--output_dir", str(tmp_path), "--gate_init", "0.5",
                                  "--model_name_or_path", str(tmp_path)])
    with pytest.raises(ValueError, match="gate_init"):
        train.build_model(recipe, _rated_dataset())
