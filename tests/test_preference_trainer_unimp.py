"""Preference tuning (issue 14): S-DPO / DPO losses, negative sampling, the frozen reference, LoRA save and reload."""

import copy

import pytest
import torch
from PIL import Image

from modeling_unimp import UniMPForConditionalGeneration, UniMPProcessor
from modeling_unimp.preference_trainer_unimp import (
    UniMPPreferenceArguments,
    UniMPPreferenceTrainer,
    pairwise_dpo_loss,
    sample_negatives,
    softmax_dpo_loss,
    target_answer_positions,
)
from modeling_unimp.trainer_unimp import lora_config_for
from processing import UniMPDataCollator

NUM_ITEMS = 6
EXAMPLES = [
    {"text": f"<image> Title Heat <answer> <item_{i % NUM_ITEMS}> <|endofchunk|> What next? "
             f"<answer> <item_{(i + 2) % NUM_ITEMS}>",
     "images": [Image.new("RGB", (32, 32), (30 * i, 80, 160))], "task_weight": 2.0}
    for i in range(8)
]
FLOAT32_EPS = torch.finfo(torch.float32).eps


@pytest.fixture
def processor(tiny_tokenizer):
    item_ids = [f"m{i}" for i in range(NUM_ITEMS)]
    return UniMPProcessor.from_catalogue(copy.deepcopy(tiny_tokenizer), item_ids=item_ids, image_size=32)


@pytest.fixture
def model(processor, tiny_config):
    model = UniMPForConditionalGeneration(tiny_config)
    processor.prepare_model(model)
    return model


def _arguments(tmp_path, **overrides):
    values = {"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 4, "max_steps": 2,
              "learning_rate": 5e-2, "report_to": [], "use_cpu": True, "save_strategy": "no", "logging_steps": 1,
              "num_negatives": 3, "hard_negative_fraction": 0.5, "hard_negative_top_k": 3, "beta": 0.5,
              "disable_tqdm": True}
    return UniMPPreferenceArguments(**{**values, **overrides})


def test_softmax_dpo_loss_equals_the_hand_computed_value():
    # row 0: Δc = -1 - (-1.5) = 0.5, Δr = (0.5, -1.0); β(Δr - Δc) = (0, -3)  ->  ℓ = log(1 + e^0 + e^-3) = log(2 + e^-3)
    # row 1: Δc = -2 - (-1) = -1,  Δr = (1.0, 0.0);  β(Δr - Δc) = (4, 2)   ->  ℓ = log(1 + e^4 + e^2)
    loss = softmax_dpo_loss(
        chosen_logps=torch.tensor([-1.0, -2.0]), rejected_logps=torch.tensor([[-2.0, -3.0], [-1.0, -4.0]]),
        ref_chosen_logps=torch.tensor([-1.5, -1.0]), ref_rejected_logps=torch.tensor([[-2.5, -2.0], [-2.0, -4.0]]),
        beta=2.0,
    )
    torch.testing.assert_close(loss, torch.tensor([0.7177359, 4.1429316]))


def test_with_one_negative_both_losses_equal_trl_dpo_trainer_sigmoid_loss(tiny_tokenizer, tmp_path):
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    tokenizer = copy.deepcopy(tiny_tokenizer)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    reference = LlamaForCausalLM(config).eval()
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    beta = 0.7
    trainer = DPOTrainer(
        model=policy, ref_model=reference, processing_class=tokenizer,
        args=DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, beta=beta,
                       loss_type=["sigmoid"], disable_tqdm=True),
        train_dataset=Dataset.from_dict({"prompt": ["Toy"], "chosen": [" Heat"], "rejected": [" Story"]}),
    )
    # one-token completions: a sequence log-probability is one token's, as for an item
    examples = [{"prompt_ids": [5, 9, 12], "chosen_ids": [20], "rejected_ids": [21]},
                {"prompt_ids": [7, 8, 30], "chosen_ids": [22], "rejected_ids": [40]}]
    trainer.model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, DataCollatorForPreference(tokenizer.pad_token_id)(examples))

        def log_probs(model, key):  # (B,) log π(completion token | prompt)
            return torch.stack([model(input_ids=torch.tensor([e["prompt_ids"]])).logits[0, -1].log_softmax(-1)[
                e[key][0]] for e in examples])

        terms = (log_probs(policy, "chosen_ids"), log_probs(policy, "rejected_ids").unsqueeze(-1),
                 log_probs(reference, "chosen_ids"), log_probs(reference, "rejected_ids").unsqueeze(-1))
    assert trl_loss.item() != pytest.approx(0.6931, abs=1e-3)  # policy != reference: not the trivial log 2
    # TRL's fused head sums in another order: float32 rounding of log-probs of magnitude ~log V, scaled by β
    atol = 64 * FLOAT32_EPS * max(t.abs().max().item() for t in terms) * beta
    torch.testing.assert_close(softmax_dpo_loss(*terms, beta).mean(), trl_loss, rtol=0, atol=atol)
    torch.testing.assert_close(pairwise_dpo_loss(*terms, beta).mean(), trl_loss, rtol=0, atol=atol)


def test_pairwise_loss_averages_the_pairs_and_differs_from_softmax_dpo_beyond_one_negative():
    chosen, ref_chosen = torch.tensor([-1.0]), torch.tensor([-1.0])
    rejected, ref_rejected = torch.tensor([[-1.0, -3.0]]), torch.tensor([[-2.0, -2.0]])  # Δr = (1, -1), Δc = 0
    pairwise = pairwise_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, 1.0)
    expected = (torch.nn.functional.softplus(torch.tensor(1.0)) + torch.nn.functional.softplus(torch.tensor(-1.0))) / 2
    torch.testing.assert_close(pairwise, expected.reshape(1))
    assert not torch.allclose(pairwise, softmax_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, 1.0))


def test_negatives_are_distinct_never_the_target_and_hard_ones_come_from_the_reference_top_k():
    scores = torch.tensor([[9.0, 8.0, 7.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                           [0.0, 0.0, 0.0, 0.0, 9.0, 8.0, 7.0, 6.0]])
    targets = torch.tensor([0, 5])
    popularity = torch.tensor([5.0, 5.0, 5.0, 5.0, 0.0, 0.0, 3.0, 3.0])  # items 4 and 5 are never popularity draws
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        hard = sample_negatives(scores, targets, popularity, 2, hard_negative_fraction=1.0, hard_negative_top_k=2,
                                generator=generator)
        assert set(hard[0].tolist()) == {1, 2} and set(hard[1].tolist()) == {4, 6}  # top-2 with the target removed
        mixed = sample_negatives(scores, targets, popularity, 4, hard_negative_fraction=0.5, hard_negative_top_k=3,
                                 generator=generator)
        for row, target in enumerate(targets.tolist()):
            drawn = mixed[row].tolist()
            assert len(set(drawn)) == 4 and target not in drawn
            assert all(popularity[item] > 0 for item in drawn[2:])  # popularity draws: only weighted items
    with pytest.raises(ValueError, match="popularity > 0"):
        sample_negatives(scores, targets, torch.tensor([0.0] * 7 + [1.0]), 3, hard_negative_fraction=0.0,
                         hard_negative_top_k=3)


def test_target_answer_position_is_the_last_answer_token(processor):
    batch = UniMPDataCollator(processor)(EXAMPLES[:2])
    positions = target_answer_positions(batch["labels"])
    answer_id = processor.tokenizer.convert_tokens_to_ids("<answer>")
    for row, position in enumerate(positions.tolist()):
        answers = (batch["input_ids"][row] == answer_id).nonzero().flatten().tolist()
        assert position == answers[-1]
        assert batch["labels"][row, position + 1] == processor.tokenizer.convert_tokens_to_ids(f"<item_{(row + 2)}>")


@pytest.mark.parametrize(("field", "value"), [("loss_type", "ipo"), ("beta", 0.0), ("num_negatives", 0),
                                              ("hard_negative_fraction", 1.5), ("sft_weight", -1.0)])
def test_arguments_reject_bad_values_naming_the_field(field, value, tmp_path):
    with pytest.raises(ValueError, match=field):
        _arguments(tmp_path, **{field: value})


def test_full_stage_without_a_reference_model_is_rejected(model, processor, tmp_path):
    with pytest.raises(ValueError, match="ref_model"):
        UniMPPreferenceTrainer(model=model, args=_arguments(tmp_path), train_dataset=EXAMPLES,
                               data_collator=UniMPDataCollator(processor), item_popularity=torch.ones(NUM_ITEMS))


@pytest.mark.parametrize("loss_type", ["sdpo", "sigmoid"])
def test_preference_steps_move_the_policy_and_leave_the_reference_unchanged(model, processor, tmp_path, loss_type):
    reference = copy.deepcopy(model)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    reference_before = {name: parameter.detach().clone() for name, parameter in reference.named_parameters()}
    trainer = UniMPPreferenceTrainer(
        model=model, ref_model=reference, args=_arguments(tmp_path, loss_type=loss_type, sft_weight=0.5),
        train_dataset=EXAMPLES, data_collator=UniMPDataCollator(processor), item_popularity=torch.ones(NUM_ITEMS),
    )
    trainer.train()
    assert all(torch.equal(parameter, reference_before[name]) for name, parameter in reference.named_parameters())
    assert not all(torch.equal(parameter, before[name]) for name, parameter in model.named_parameters())
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2 and all("rewards/accuracies" in entry for entry in logged)


def test_first_step_loss_is_log_one_plus_n_when_policy_equals_reference(model, processor, tmp_path):
    # π = π_ref at step 0, so every log-ratio is 0 and S-DPO gives log(1 + N) whatever the negatives
    trainer = UniMPPreferenceTrainer(model=model, ref_model=copy.deepcopy(model), args=_arguments(tmp_path),
                                     train_dataset=EXAMPLES, data_collator=UniMPDataCollator(processor),
                                     item_popularity=torch.ones(NUM_ITEMS))
    with torch.no_grad():
        loss = trainer.compute_loss(model, UniMPDataCollator(processor)(EXAMPLES[:4]))
    torch.testing.assert_close(loss, torch.log(torch.tensor(4.0)), rtol=0, atol=1e3 * FLOAT32_EPS)


def test_lora_preference_run_keeps_the_reference_saves_and_reloads(model, processor, tmp_path):
    from peft import PeftModel, get_peft_model

    model.save_pretrained(tmp_path / "base")
    generation_batch = UniMPDataCollator(processor, for_generation=True)(
        [{**example, "text": example["text"].rsplit(" ", 1)[0]} for example in EXAMPLES[:2]]
    )
    model.eval()
    with torch.no_grad():
        base_logits = model(**generation_batch).logits
    peft_model = get_peft_model(model, lora_config_for(model, rank=4))
    trainer = UniMPPreferenceTrainer(model=peft_model, args=_arguments(tmp_path), train_dataset=EXAMPLES,
                                     data_collator=UniMPDataCollator(processor), item_popularity=torch.ones(NUM_ITEMS))
    trainer.train()
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(**generation_batch).logits
        with peft_model.disable_adapter():  # the reference the trainer used: adapters off = the start checkpoint
            torch.testing.assert_close(peft_model(**generation_batch).logits, base_logits)
    assert not torch.allclose(adapted, base_logits)
    peft_model.save_pretrained(tmp_path / "adapter")
    base = UniMPForConditionalGeneration.from_pretrained(tmp_path / "base").eval()
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    merged = reloaded.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    with torch.no_grad():
        again = UniMPForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()(**generation_batch).logits
    torch.testing.assert_close(again, adapted, rtol=1e-4, atol=1e-4)
