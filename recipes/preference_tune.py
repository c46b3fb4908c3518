"""Preference-tune a `recipes.train` checkpoint on the rec answer: S-DPO or DPO against sampled negatives (issue 14).

The reference is the starting checkpoint, frozen (LoRA: the same model with its adapters disabled). Checkpoints are
selected on validation NDCG@10; test is evaluated once and `metrics.json` is written as by `recipes.train`.

Usage: python -m recipes.preference_tune --config recipes/configs/preference_ml100k.yaml \
           --model_name_or_path outputs/ml100k_tiny --output_dir outputs/ml100k_sdpo
"""

import logging
import sys
import time
from pathlib import Path

from transformers import TrainerCallback, set_seed
from transformers.trainer_utils import get_last_checkpoint

from modeling_unimp import UniMPForConditionalGeneration
from modeling_unimp.preference_trainer_unimp import UniMPPreferenceArguments, UniMPPreferenceTrainer
from modeling_unimp.trainer_unimp import lora_config_for, set_trainable
from processing import UniMPDataCollator

from .common import (
    ImageCache,
    RecipeArguments,
    TimeBudgetCallback,
    load_dataset_dict,
    parse_recipe_args,
    refuse_train_negatives,
    render_examples,
    set_torch_threads,
)
from .evaluate import evaluate_recommendation, popularity_scores
from .train import build_model, save_and_test

logger = logging.getLogger("unimp.recipes.preference_tune")


class StepTimer(TrainerCallback):
    """Wall time of the optimizer steps alone (forward, reference forward, backward, update; no validation)."""

    def __init__(self):
        self.seconds, self.steps, self._started = 0.0, 0, None

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self._started
        self.steps += 1

    def seconds_per_step(self) -> float | None:
        return round(self.seconds / self.steps, 3) if self.steps else None


def main(recipe: RecipeArguments, training: UniMPPreferenceArguments) -> dict:
    """Preference-tune, select on validation NDCG@10, evaluate test once; returns the test metrics."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not recipe.model_name_or_path:
        raise ValueError("preference_tune needs model_name_or_path: a recipes.train checkpoint (the reference)")
    if recipe.tasks != ["rec"]:
        raise ValueError(f"preference tuning trains the rec answer (one item token); set tasks: [rec], got "
                         f"{recipe.tasks}")
    refuse_train_negatives(recipe, "preference_tune")
    set_torch_threads()
    set_seed(training.seed)
    started = time.time()
    dataset_dict = load_dataset_dict(recipe)
    model, processor = build_model(recipe, dataset_dict)
    if training.max_history_items is not None:
        processor.max_history_items = training.max_history_items
    set_trainable(model, training.trainable_stage)
    reference = None
    if training.trainable_stage == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config_for(model))  # reference: adapters disabled
    else:
        reference = UniMPForConditionalGeneration.from_pretrained(recipe.model_name_or_path)
    images = ImageCache(processor.image_processor.size["height"])
    train_examples = render_examples(
        dataset_dict, processor, tasks=["rec"], split="train", task_weights=training.task_weights,
        num_windows_per_user=recipe.num_windows_per_user, seed=training.seed, images=images,
        use_images=recipe.use_images, use_text_attributes=recipe.use_text_attributes,
    )
    validation_examples = render_examples(
        dataset_dict, processor, tasks=["rec"], split="validation", task_weights=None, images=images,
        max_users=recipe.max_eval_users, use_images=recipe.use_images, use_text_attributes=recipe.use_text_attributes,
    )
    logger.info("%d training examples; %d validation users", len(train_examples), len(validation_examples))

    def validation_ranking(current_model) -> dict:
        return evaluate_recommendation(
            current_model, processor, dataset_dict, split="validation", ks=recipe.eval_ks,
            batch_size=training.per_device_eval_batch_size, examples=validation_examples,
        )["unimp"]

    trainer = UniMPPreferenceTrainer(
        model=model, ref_model=reference, args=training, train_dataset=train_examples,
        eval_dataset=validation_examples,
        data_collator=UniMPDataCollator(processor, context_weight=training.context_weight),
        evaluation_fn=validation_ranking if training.eval_strategy != "no" else None,
        item_popularity=popularity_scores(dataset_dict, processor),
    )
    if recipe.max_train_seconds:
        trainer.add_callback(TimeBudgetCallback(recipe.max_train_seconds, recipe.time_decay_fraction))
    last_checkpoint = get_last_checkpoint(training.output_dir) if Path(training.output_dir).is_dir() else None
    # The starting checkpoint on validation: what the preference step has to beat (a resumed run skips it).
    before = None if last_checkpoint else validation_ranking(trainer.model.eval())
    step_timer = StepTimer()
    trainer.add_callback(step_timer)
    trainer.train(resume_from_checkpoint=last_checkpoint)
    preference = {
        "start_checkpoint": recipe.model_name_or_path, "loss_type": training.loss_type, "beta": training.beta,
        "num_negatives": training.num_negatives, "hard_negative_fraction": training.hard_negative_fraction,
        "hard_negative_top_k": training.hard_negative_top_k, "sft_weight": training.sft_weight,
        "trainable_stage": training.trainable_stage,
        "seconds_per_step": step_timer.seconds_per_step(),
    }
    return save_and_test(trainer, processor, dataset_dict, recipe, training, images=images, started=started,
                         extra={"preference": preference, "validation_before": before})


def parse_args(argv: list[str]) -> tuple[RecipeArguments, UniMPPreferenceArguments]:
    """`--config CONFIG.yaml [--FIELD VALUE ...]` (see `recipes.common.parse_recipe_args`)."""
    return parse_recipe_args(argv, (RecipeArguments, UniMPPreferenceArguments), "recipes.preference_tune",
                             description=__doc__)


if __name__ == "__main__":
    print(main(*parse_args(sys.argv[1:])))
