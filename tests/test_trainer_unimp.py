"""The objective (focal re-weighting, task and context weights), trainable stages, LoRA (reference §1.6, §3)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_updates_match
from PIL import Image

from modeling_unimp import UniMPForConditionalGeneration
from modeling_unimp.trainer_unimp import (
    UniMPTrainer,
    UniMPTrainingArguments,
    focal_token_loss,
    lora_config_for,
    set_trainable,
)
from processing import UniMPDataCollator

EXAMPLES = [
    {"text": "<image> Title Toy Story <answer> <item_0> <|endofchunk|> What next? <answer> <item_1>",
     "images": [Image.new("RGB", (32, 32), "red")], "task_weight": 2.0},
    {"text": "<image> Title Heat <answer> rate_4 Great <|endofchunk|> <image> Up <answer> rate_5 Fun",
     "images": [Image.new("RGB", (32, 32), "blue"), None], "task_weight": 1.0},
] * 4


def _logits_and_labels(batch=2, length=7, vocab=11):
    logits = torch.randn(batch, length, vocab)
    labels = torch.randint(0, vocab, (batch, length))
    labels[:, :3] = -100
    return logits, labels


def test_gamma_zero_with_unit_weights_equals_cross_entropy():
    logits, labels = _logits_and_labels()
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(focal_token_loss(logits, labels, None, gamma=0.0), expected)


def test_weights_and_gamma_change_the_loss_as_the_formula_says():
    logits, labels = _logits_and_labels(batch=1, length=3, vocab=4)
    labels = torch.tensor([[-100, 2, 1]])
    weights = torch.tensor([[0.0, 2.0, 0.5]])
    log_p = torch.log_softmax(logits[0, :2], dim=-1)[[0, 1], [2, 1]]  # positions 0,1 predict labels 2,1
    p = log_p.exp()
    # ℓ = Σ w·(1−p)^γ·(−log p) / n with n = 2 supervised tokens
    expected = (2.0 * (1 - p[0]) ** 2 * -log_p[0] + 0.5 * (1 - p[1]) ** 2 * -log_p[1]) / 2
    torch.testing.assert_close(focal_token_loss(logits, labels, weights, gamma=2.0), expected)
    # the focal factor only ever shrinks a token's loss
    assert focal_token_loss(logits, labels, None, gamma=2.0) < focal_token_loss(logits, labels, None, gamma=0.0)


def test_num_items_in_batch_normalises_across_gradient_accumulation():
    logits, labels = _logits_and_labels(batch=4)
    whole = focal_token_loss(logits, labels, None, gamma=2.0)
    total = (labels[:, 1:] != -100).sum()
    halves = sum(
        focal_token_loss(logits[i : i + 2], labels[i : i + 2], None, gamma=2.0, num_items_in_batch=total)
        for i in (0, 2)
    )
    torch.testing.assert_close(halves, whole)


def test_excluded_label_ids_leave_a_token_out_of_the_softmax_and_untouched_by_training(
    tiny_processor, tiny_config, tmp_path
):
    model = UniMPForConditionalGeneration(tiny_config)
    tiny_processor.prepare_model(model)
    batch = UniMPDataCollator(tiny_processor)(EXAMPLES[:2])
    unseen = tiny_processor.item_token_start_id + 2  # <item_2>: in no example, neither input nor label
    args = UniMPTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, focal_gamma=0.0)
    with torch.no_grad():
        plain = UniMPTrainer(model=model, args=args).compute_loss(model, batch)
        inputs = {key: value for key, value in batch.items() if key not in ("labels", "token_weights")}
        logits = model(**inputs).logits[:, :-1]
    loss = UniMPTrainer(model=model, args=args, excluded_label_ids=[unseen]).compute_loss(model, batch)
    # gamma 0: the weighted cross-entropy of a softmax without the excluded column
    labels, weights = batch["labels"][:, 1:], batch["token_weights"][:, 1:]
    supervised = labels != -100
    keep = [column for column in range(logits.shape[-1]) if column != unseen]
    remap = torch.tensor([keep.index(int(label)) for label in labels[supervised]])
    log_p = torch.log_softmax(logits[supervised][:, keep], dim=-1)[torch.arange(len(remap)), remap]
    torch.testing.assert_close(loss.detach(), (weights[supervised] * -log_p).sum() / supervised.sum())
    assert loss < plain  # one competitor fewer: every target's probability rises
    loss.backward()
    assert model.lm_head.weight.grad[unseen].abs().max() == 0  # neither raised nor lowered
    assert model.lm_head.weight.grad[unseen - 1].abs().max() > 0  # <item_1>, a target, is trained


def test_an_excluded_label_id_that_is_a_training_target_is_an_error(tiny_processor, tiny_config, tmp_path):
    model = UniMPForConditionalGeneration(tiny_config)
    tiny_processor.prepare_model(model)
    batch = UniMPDataCollator(tiny_processor)(EXAMPLES[:2])
    target = tiny_processor.item_token_start_id  # <item_0> is an answer of EXAMPLES[0]
    args = UniMPTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match=f"label token id {target} is in excluded_label_ids"):
        UniMPTrainer(model=model, args=args, excluded_label_ids=[target]).compute_loss(model, batch)


def test_gradient_accumulation_gives_the_same_update_as_one_big_batch(tiny_processor, tiny_config, tmp_path):
    # Plain SGD at lr 1 without clipping makes the update equal to the gradient, so the comparison checks what the
    # test means (accumulated gradients == one big batch's) with float32 summation tolerances. Adam would turn
    # rounding-level gradient differences into full-size updates, which differ between CPU kernels (AVX2/AVX-512).
    initial = UniMPForConditionalGeneration(tiny_config)
    tiny_processor.prepare_model(initial)
    start = {name: p.detach().clone() for name, p in initial.named_parameters()}

    def train(batch_size, accumulation):
        model = copy.deepcopy(initial)
        args = UniMPTrainingArguments(
            output_dir=str(tmp_path / f"ga{accumulation}"), per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=1.0, optim="sgd",
            lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0, report_to=[],
            use_cpu=True, save_strategy="no", logging_steps=1, seed=0, data_seed=0, dataloader_drop_last=True,
        )
        trainer = UniMPTrainer(model=model, args=args, train_dataset=EXAMPLES[:4],
                               data_collator=UniMPDataCollator(tiny_processor))
        trainer.train()
        updates = {name: start[name] - p.detach() for name, p in model.named_parameters()}
        return updates, trainer.state.log_history[0]["loss"]

    one_batch, loss_one = train(4, 1)
    accumulated, loss_accumulated = train(2, 2)
    assert math.isclose(loss_one, loss_accumulated, rel_tol=64 * torch.finfo(torch.float32).eps)
    assert_updates_match(accumulated, one_batch)


@pytest.mark.parametrize("stage", ["paper", "full"])
def test_after_three_steps_trainable_parameters_changed_and_frozen_ones_did_not(
    stage, tiny_processor, tiny_config, tmp_path
):
    model = UniMPForConditionalGeneration(tiny_config)
    tiny_processor.prepare_model(model)
    trainable = set(set_trainable(model, stage))
    if stage == "paper":
        assert "lm_head.weight" in trainable  # the official code left the head frozen (§1.6): we do not
        assert not any(name.startswith("model.vision_model") for name in trainable)
        assert not any(".layers." in name and "language_model" in name for name in trainable)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = UniMPTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=3,
                                  learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no")
    UniMPTrainer(model=model, args=args, train_dataset=EXAMPLES,
                 data_collator=UniMPDataCollator(tiny_processor)).train()
    must_train = ["model.perceiver.latents", "model.gated_cross_attn.0.attn_gate", "model.gated_cross_attn.1.ff_gate",
                  "model.gated_cross_attn.0.kv_proj.weight", "model.perceiver.layers.0.attention.q_proj.weight"]
    if stage == "full":
        must_train += ["model.vision_model.vision_model.embeddings.patch_embedding.weight",
                       "model.language_model.layers.0.self_attn.q_proj.weight"]
    for name, parameter in model.named_parameters():
        changed = not torch.equal(before[name], parameter)
        if name in must_train:
            assert changed, f"{name} should have trained"
        if name not in trainable:
            assert not changed, f"{name} is frozen in stage {stage!r} but changed"
    item_rows = slice(model.config.item_token_start_id, model.config.item_token_start_id + 2)
    assert not torch.equal(before["lm_head.weight"][item_rows], model.lm_head.weight[item_rows])


def test_unknown_stage_is_rejected_naming_the_choices(tiny_config):
    with pytest.raises(ValueError, match="paper"):
        set_trainable(UniMPForConditionalGeneration(tiny_config), "everything")


def test_lora_adapters_train_save_load_and_merge(tiny_processor, tiny_config, tmp_path):
    from peft import PeftModel, get_peft_model

    model = UniMPForConditionalGeneration(tiny_config)
    tiny_processor.prepare_model(model)
    model.save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(model, lora_config_for(model, rank=4))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n and "gated_cross_attn" in n for n in trainable)
    assert any("trainable_tokens" in n for n in trainable)
    args = UniMPTrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=3,
                                  learning_rate=5e-2, report_to=[], use_cpu=True, save_strategy="no")
    UniMPTrainer(model=peft_model, args=args, train_dataset=EXAMPLES,
                 data_collator=UniMPDataCollator(tiny_processor)).train()
    batch = UniMPDataCollator(tiny_processor, for_generation=True)(EXAMPLES[:2])
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(**batch).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    base = UniMPForConditionalGeneration.from_pretrained(tmp_path / "base").eval()
    with torch.no_grad():
        plain = base(**batch).logits
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, adapted, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain, adapted)
    merged = reloaded.merge_and_unload()
    assert isinstance(merged, UniMPForConditionalGeneration)
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, adapted, rtol=1e-4, atol=1e-4)


def test_trainer_rejects_plain_training_arguments_naming_the_fix(tiny_config, tmp_path):
    from transformers import TrainingArguments

    with pytest.raises(TypeError, match="UniMPTrainingArguments"):  # they have no focal_gamma to apply
        UniMPTrainer(model=UniMPForConditionalGeneration(tiny_config),
                     args=TrainingArguments(output_dir=str(tmp_path), report_to=[]))
