"""Recipes: resume, 2-process training, the train recipe on real data, YAML configs (issue 4)."""

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT, assert_updates_match, make_tiny_config
from PIL import Image
from transformers import HfArgumentParser, TrainerCallback

from modeling_unimp import UniMPForConditionalGeneration
from modeling_unimp.trainer_unimp import UniMPTrainer, UniMPTrainingArguments
from processing import UniMPDataCollator
from recipes import train
from recipes.common import RecipeArguments, training_curve_series, unseen_item_token_ids, write_training_curve

EXAMPLES = [
    {"text": f"<image> Title Heat <answer> <item_{i % 3}> <|endofchunk|> What next? <answer> <item_{(i + 2) % 3}>",
     "images": [Image.new("RGB", (32, 32), (30 * i, 80, 160))], "task_weight": 2.0}
    for i in range(8)
]
# train.py / finetune_lora.py configs (the other recipes have their own dataclasses and tests)
CONFIGS = [REPO_ROOT / "recipes" / "configs" / f"{name}.yaml"
           for name in ("ml100k_tiny", "hm_tiny", "amazon_mi_tiny", "lora_ml100k", "paper")]


def _trainer(model, processor, output_dir, max_steps):
    args = UniMPTrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=2, max_steps=max_steps, learning_rate=1e-2,
        report_to=[], use_cpu=True, save_strategy="steps", save_steps=2, seed=0, data_seed=0, logging_steps=1,
        disable_tqdm=True,
    )
    return UniMPTrainer(model=model, args=args, train_dataset=EXAMPLES, data_collator=UniMPDataCollator(processor))


class _StopAfter(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
            control.should_save = True


def test_interrupted_training_resumes_to_the_same_result(tiny_processor, tiny_config, tmp_path):
    initial = UniMPForConditionalGeneration(tiny_config)
    tiny_processor.prepare_model(initial)
    straight = _trainer(copy.deepcopy(initial), tiny_processor, tmp_path / "straight", 4)
    straight.train()
    interrupted = _trainer(copy.deepcopy(initial), tiny_processor, tmp_path / "interrupted", 4)
    interrupted.add_callback(_StopAfter(2))  # the process "dies" after step 2's checkpoint
    interrupted.train()
    assert interrupted.state.global_step == 2
    resumed = _trainer(copy.deepcopy(initial), tiny_processor, tmp_path / "interrupted", 4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "interrupted" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    losses = [[e["loss"] for e in t.state.log_history if "loss" in e] for t in (straight, resumed)]
    assert losses[0][-2:] == pytest.approx(losses[1][-2:], rel=1e-5)
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def _free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    script = REPO_ROOT / "tests" / "scripts" / "distributed_train_check.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = {
        "one": [sys.executable, str(script), str(tmp_path / "one" / "out.pt"), "4"],
        "two": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _free_port(),
                str(script), str(tmp_path / "two" / "out.pt"), "2"],
    }
    for name, command in commands.items():
        (tmp_path / name).mkdir()
        try:
            result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired as timeout:  # seen once at load 5 on 2 cores: keep what each rank said
            pytest.fail(f"{name}: no exit after 300 s\nstdout: {(timeout.stdout or b'')[-1500:]!r}\n"
                        f"stderr: {(timeout.stderr or b'')[-3000:]!r}")
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = (torch.load(tmp_path / name / "out.pt") for name in ("one", "two"))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert_updates_match(two["params"], one["params"])


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_shipped_yaml_configs_parse_into_the_dataclasses(config):
    values = yaml.safe_load(config.read_text())
    if values.get("bf16") and not torch.cuda.is_available():
        values["use_cpu"] = True  # the paper config targets GPUs; on this CPU machine bf16 needs use_cpu to parse
    recipe, training = HfArgumentParser((RecipeArguments, UniMPTrainingArguments)).parse_dict(values)
    assert not training.push_to_hub  # recipes are quiet by default (STYLE.md §8.9)
    assert recipe.dataset and training.output_dir


def test_train_recipe_runs_on_real_data_and_writes_its_artifacts(data_dir, tmp_path):
    recipe, training = train.parse_args([
        str(REPO_ROOT / "recipes" / "configs" / "ml100k_tiny.yaml"),
        f"output_dir={tmp_path}", "max_steps=2", "eval_steps=1", "save_steps=1", "max_train_users=12",
        "max_eval_users=6", "max_test_users=6", "per_device_train_batch_size=2", "max_history_items=3",
        "num_windows_per_user=1", "disable_tqdm=true", f"data_dir={data_dir}", "train_negatives=seen",
    ])
    metrics = train.main(recipe, training)
    assert metrics["global_step"] == 2 and metrics["num_users"] == 6
    assert metrics["variant"]["train_negatives"] == "seen"  # 12 training users leave most items out of the loss
    assert set(metrics["unimp"]) >= {"hr@10", "ndcg@10", "mrr@10"} and set(metrics["pop"]) == set(metrics["unimp"])
    for artifact in ("metrics.json", "training_curve.png", "model.safetensors", "processor_config.json"):
        assert (Path(tmp_path) / artifact).exists(), artifact
    assert metrics["best_checkpoint"] is not None  # selected on validation NDCG@10
    reloaded = UniMPForConditionalGeneration.from_pretrained(tmp_path)
    assert reloaded.config.num_items == 1682


def test_unknown_train_negatives_is_refused_before_any_data_is_read(tmp_path):
    recipe, training = train.parse_args([str(REPO_ROOT / "recipes/configs/ml100k_tiny.yaml"), f"output_dir={tmp_path}",
                                         "train_negatives=warm", "data_dir=/nonexistent"])
    with pytest.raises(ValueError, match=r"train_negatives must be one of \('catalogue', 'seen'\), got 'warm'"):
        train.main(recipe, training)


def test_unseen_item_token_ids_are_the_items_in_no_training_row(tiny_processor):
    rows = [{"history_item_ids": ["m1"], "target_item_id": "m1"}, {"history_item_ids": [], "target_item_id": "m3"}]
    start = tiny_processor.item_token_start_id
    assert unseen_item_token_ids(tiny_processor, rows) == [start + 1]  # m2 is the 2nd item
    assert tiny_processor.tokenizer.convert_ids_to_tokens(start + 1) == "<item_1>"


def test_training_curve_plots_the_logged_loss_and_metric_per_step(tmp_path):
    # Trainer's log_history: loss entries, eval entries, and a final summary without either key
    history = [{"step": 2, "loss": 4.0, "learning_rate": 1e-3}, {"step": 2, "eval_ndcg@10": 0.1, "eval_loss": 3.0},
               {"step": 4, "loss": 3.5}, {"step": 4, "eval_ndcg@10": 0.25}, {"step": 4, "train_runtime": 9.0}]
    assert training_curve_series(history) == {"train loss": ([2, 4], [4.0, 3.5]), "eval_ndcg@10": ([2, 4], [0.1, 0.25])}
    assert training_curve_series(history, metric="eval_loss") == {"train loss": ([2, 4], [4.0, 3.5]),
                                                                  "eval_loss": ([2], [3.0])}
    assert training_curve_series([{"step": 1, "train_runtime": 1.0}]) == {"train loss": ([], []),
                                                                          "eval_ndcg@10": ([], [])}
    path = write_training_curve(history, tmp_path / "curve.png")
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_masked_head_trainer_loss_equals_the_full_logits_loss(tiny_processor):
    from modeling_unimp.trainer_unimp import focal_token_loss

    model = UniMPForConditionalGeneration(make_tiny_config()).eval()
    tiny_processor.prepare_model(model)
    batch = UniMPDataCollator(tiny_processor, context_weight=0.5)(EXAMPLES[:3])
    trainer = UniMPTrainer.__new__(UniMPTrainer)  # compute_loss only reads self.args
    trainer.args = UniMPTrainingArguments(output_dir="unused", focal_gamma=2.0, report_to=[])
    with torch.no_grad():
        routed = trainer.compute_loss(model, batch)
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "token_weights")}
        full = focal_token_loss(model(**inputs).logits, batch["labels"], batch["token_weights"], gamma=2.0)
    torch.testing.assert_close(routed, full)


ACCELERATE_CONFIGS = sorted((REPO_ROOT / "recipes" / "configs" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=[c.stem for c in ACCELERATE_CONFIGS])
def test_accelerate_configs_load_with_accelerate(config):
    from accelerate.commands.config.config_args import ClusterConfig

    cluster = ClusterConfig.from_yaml_file(str(config))
    assert cluster.num_processes >= 2
    assert str(cluster.distributed_type).split(".")[-1] in {"MULTI_CPU", "MULTI_GPU", "FSDP", "DEEPSPEED"}


def test_lora_finetune_recipe_writes_adapter_and_merged_model(data_dir, tmp_path):
    from recipes import finetune_lora

    base_args = [f"data_dir={data_dir}", "max_train_users=8", "max_eval_users=4", "max_test_users=4",
                 "per_device_train_batch_size=2", "max_history_items=3", "num_windows_per_user=1",
                 "disable_tqdm=true", "max_steps=1", "eval_steps=1", "save_steps=1"]
    train.main(*train.parse_args([str(REPO_ROOT / "recipes/configs/ml100k_tiny.yaml"),
                                  f"output_dir={tmp_path / 'base'}", *base_args]))
    recipe, training = train.parse_args([str(REPO_ROOT / "recipes/configs/lora_ml100k.yaml"),
                                         f"model_name_or_path={tmp_path / 'base'}",
                                         f"output_dir={tmp_path / 'lora'}", *base_args])
    metrics = finetune_lora.main(recipe, training)
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").exists()
    merged = UniMPForConditionalGeneration.from_pretrained(tmp_path / "lora")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert metrics["num_users"] == 4


def test_readme_quick_start_runs(capsys):
    readme = (REPO_ROOT / "README.md").read_text()
    code = readme.split("## Quick start", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 12
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("[") and sum(item in printed for item in ("'m1'", "'m2'", "'m3'")) == 2


def test_time_budget_decays_the_learning_rate_linearly_to_zero(monkeypatch):
    from recipes import common

    clock = {"now": 100.0}
    monkeypatch.setattr(common.time, "monotonic", lambda: clock["now"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.8)  # the schedule's own factor
    callback = common.TimeBudgetCallback(max_seconds=10.0, decay_fraction=0.4)
    callback.on_train_begin(None, None, None, lr_scheduler=scheduler)
    rates = []
    for elapsed in (1.0, 6.0, 8.0, 9.0, 12.0):  # decay window = the last 4 s of the 10 s budget
        clock["now"] = 100.0 + elapsed
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([0.4, 0.4, 0.2, 0.1, 0.0])
    with pytest.raises(ValueError, match="decay_fraction"):
        common.TimeBudgetCallback(max_seconds=10.0, decay_fraction=1.5)
