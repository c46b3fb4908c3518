"""Train UniMP on a dataset's tasks (reference §3, §7); YAML keys are RecipeArguments + UniMPTrainingArguments.

Usage: python -m recipes.train recipes/configs/ml100k_tiny.yaml
"""

import logging
import resource
import sys
import time
from pathlib import Path

from transformers import ProgressCallback, set_seed

from modeling_unimp import UniMPConfig, UniMPForConditionalGeneration, UniMPImageCache, UniMPProcessor
from modeling_unimp.item_content_unimp import attach_item_content
from modeling_unimp.trainer_unimp import UniMPTrainer, UniMPTrainingArguments, lora_config_for, set_trainable
from processing import UniMPDataCollator

from .checkpoint_files import PipelineCodeCallback, declare_custom_pipeline, write_pipeline_code
from .common import (
    TRAIN_NEGATIVES,
    ImageCache,
    RecipeArguments,
    TimeBudgetCallback,
    TimeBudgetProgressCallback,
    apply_history_layout,
    build_processor,
    last_complete_checkpoint,
    load_dataset_dict,
    parse_recipe_args,
    record_repeat_interactions,
    record_training_data_licence,
    render_examples,
    set_torch_threads,
    unseen_item_token_ids,
    write_json,
    write_training_curve,
)
from .evaluate import evaluate_explanation, evaluate_recommendation

logger = logging.getLogger("unimp.recipes.train")


def build_model(recipe: RecipeArguments, dataset_dict):
    """The model and its processor: from a UniMP checkpoint, from pretrained towers, or a fresh preset."""
    if recipe.model_name_or_path:
        if recipe.gate_init is not None:
            raise ValueError(f"gate_init={recipe.gate_init} sets a fresh model's gates; model_name_or_path="
                             f"{recipe.model_name_or_path!r} brings trained ones (leave gate_init unset)")
        model = UniMPForConditionalGeneration.from_pretrained(recipe.model_name_or_path)
        return model, apply_history_layout(UniMPProcessor.from_pretrained(recipe.model_name_or_path), recipe)
    if recipe.model_preset not in ("tiny", "paper"):
        raise ValueError(f"model_preset must be 'tiny' or 'paper', got {recipe.model_preset!r}")
    overrides = {} if recipe.gate_init is None else {"gate_init": recipe.gate_init}
    config = getattr(UniMPConfig, recipe.model_preset)(item_representation=recipe.item_representation, **overrides)
    tokenizer = None
    if recipe.text_model_name_or_path:
        text_kwargs = {"gguf_file": recipe.text_gguf_file} if recipe.text_gguf_file else {}
        model = UniMPForConditionalGeneration.from_vision_text_pretrained(
            recipe.vision_model_name_or_path, recipe.text_model_name_or_path, config=config, text_kwargs=text_kwargs
        )
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(recipe.text_model_name_or_path, **text_kwargs)
    else:
        model = UniMPForConditionalGeneration(config)
        if recipe.vision_model_name_or_path:  # a tower pretrained by recipes.pretrain_vision
            from transformers import AutoModel

            tower = AutoModel.from_pretrained(recipe.vision_model_name_or_path)
            model.model.vision_model.load_state_dict(tower.state_dict())
    processor = build_processor(dataset_dict, recipe, model.config.vision_config.image_size, tokenizer=tokenizer)
    processor.prepare_model(model)
    if model.config.uses_item_content:  # issue 12: every item's content encoded once, kept as checkpoint buffers
        counts = attach_item_content(model, processor, text_encoder=recipe.item_text_encoder,
                                     use_text=recipe.use_text_attributes, use_images=recipe.use_images)
        logger.info("item content (%s): %d items, %d with text, %d with an image", model.config.item_representation,
                    counts["items"], counts["with_text"], counts["with_image"])
    return model, processor


def main(recipe: RecipeArguments, training: UniMPTrainingArguments) -> dict:
    """Train, select the best checkpoint on validation NDCG@10, evaluate on test; returns the test metrics."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if recipe.train_negatives not in TRAIN_NEGATIVES:
        raise ValueError(f"train_negatives must be one of {TRAIN_NEGATIVES}, got {recipe.train_negatives!r}")
    set_torch_threads()
    set_seed(training.seed)
    started = time.time()
    dataset_dict = load_dataset_dict(recipe)
    model, processor = build_model(recipe, dataset_dict)
    record_training_data_licence(processor, dataset_dict, recipe.dataset)  # push_to_hub reads it (issue 16)
    record_repeat_interactions(processor, dataset_dict)  # the pipeline's exclude_history default (issue 15)
    if training.max_history_items is not None:  # saved with the processor: the window every inference path reads
        processor.max_history_items = training.max_history_items
    declare_custom_pipeline(model)  # every checkpoint-N/ declares the pipeline, as a pushed repo does (issue 15)
    trainable = set_trainable(model, training.trainable_stage)
    if training.trainable_stage == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config_for(model))
    logger.info("%d trainable tensors, %.2fM trainable parameters", len(trainable),
                sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6)
    images = ImageCache(processor.image_processor.size["height"])
    image_cache = UniMPImageCache(processor)  # pixels once per run, latents once per validation (issue 13)
    train_examples = render_examples(
        dataset_dict, processor, tasks=recipe.tasks, split="train", task_weights=training.task_weights,
        num_windows_per_user=recipe.num_windows_per_user,
        seed=training.seed, images=images, use_images=recipe.use_images,
        use_text_attributes=recipe.use_text_attributes,
    )
    logger.info("%d training examples (%s)", len(train_examples), ", ".join(recipe.tasks))

    validation_examples = render_examples(
        dataset_dict, processor, tasks=["rec"], split="validation", task_weights=None,
        images=images, max_users=recipe.max_eval_users,
        use_images=recipe.use_images, use_text_attributes=recipe.use_text_attributes,
    )

    def validation_ranking(current_model) -> dict:  # model selection on validation only (issue 5)
        metrics = evaluate_recommendation(
            current_model, processor, dataset_dict, split="validation",
            ks=recipe.eval_ks, batch_size=training.per_device_eval_batch_size, examples=validation_examples,
            image_cache=image_cache,
        )
        return metrics["unimp"]

    excluded = unseen_item_token_ids(processor, dataset_dict["train"]) if recipe.train_negatives == "seen" else None
    if excluded:
        logger.warning("train_negatives=seen: %d of %d items have no training interaction and are left out of the "
                       "training softmax (ranked at evaluation only)", len(excluded), processor.num_items)
    trainer = UniMPTrainer(
        model=model,
        args=training,
        train_dataset=train_examples,
        excluded_label_ids=excluded,
        eval_dataset=validation_examples,
        data_collator=UniMPDataCollator(processor, context_weight=training.context_weight, image_cache=image_cache),
        processing_class=processor,  # saved into every checkpoint-N/: AutoProcessor loads any of them (issue 15)
        evaluation_fn=validation_ranking if training.eval_strategy != "no" else None,
        callbacks=[PipelineCodeCallback()],
    )
    if recipe.max_train_seconds:
        budget = TimeBudgetCallback(recipe.max_train_seconds, recipe.time_decay_fraction)
        trainer.add_callback(budget)
        if not training.disable_tqdm:  # the bar shows the budget spent and left, not a max_steps ETA (issue 13)
            trainer.remove_callback(ProgressCallback)
            trainer.add_callback(TimeBudgetProgressCallback(budget))
    last_checkpoint = last_complete_checkpoint(training.output_dir)  # an incomplete newest one is skipped
    if last_checkpoint:
        logger.info("resuming from %s", last_checkpoint)
    trainer.train(resume_from_checkpoint=last_checkpoint)
    return save_and_test(trainer, processor, dataset_dict, recipe, training, images=images, started=started)


def save_and_test(trainer, processor, dataset_dict, recipe: RecipeArguments, training, *, images: ImageCache,
                  started: float, extra: dict | None = None) -> dict:
    """Save the trained model (LoRA: the adapter under `adapter/`, then the merged model) and its processor, evaluate
    the test split once, write `metrics.json` (plus `extra`) and the training curve; returns the metrics."""
    final = trainer.model
    if training.trainable_stage == "lora":  # keep the adapter on its own, then ship the merged model
        trainer.model.save_pretrained(Path(training.output_dir) / "adapter")
        final = trainer.model.merge_and_unload()
    declare_custom_pipeline(final)
    final.save_pretrained(training.output_dir)
    write_pipeline_code(training.output_dir)  # pipeline(..., trust_remote_code=True) without the package (issue 15)
    processor.save_pretrained(training.output_dir)
    test = evaluate_recommendation(
        final, processor, dataset_dict, split="test",
        ks=recipe.eval_ks, batch_size=training.per_device_eval_batch_size, images=images, progress=True,
        max_users=recipe.max_test_users, use_images=recipe.use_images, use_text_attributes=recipe.use_text_attributes,
    )
    if "exp" in recipe.tasks:  # rating MAE/RMSE (+ explanations where the data has text) next to mean baselines
        test["exp"] = evaluate_explanation(
            final, processor, dataset_dict, split="test",
            batch_size=training.per_device_eval_batch_size, images=images, progress=True,
            max_users=recipe.max_test_users, use_images=recipe.use_images,
            use_text_attributes=recipe.use_text_attributes,
        )
    metrics = {
        "dataset": recipe.dataset, "protocol": recipe.protocol, "rating_scale": recipe.rating_scale,
        "tasks": recipe.tasks, "split": "test",
        "global_step": trainer.state.global_step, "best_checkpoint": trainer.state.best_model_checkpoint,
        "train_seconds": round(time.time() - started, 1), "train_loss": _last(trainer.state.log_history, "loss"),
        "trainer_seconds": round(trainer.state.log_history[-1].get("train_runtime", 0.0), 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # Linux: KiB
        "variant": {"use_images": recipe.use_images, "use_text_attributes": recipe.use_text_attributes,
                    "focal_gamma": training.focal_gamma, "context_weight": training.context_weight,
                    "context_order": processor.context_order,
                    "content_history_items": processor.content_history_items,
                    "train_negatives": recipe.train_negatives},
        "best_validation": {training.metric_for_best_model or "none": trainer.state.best_metric},
        **(extra or {}),
        **test,
    }
    write_json(metrics, Path(training.output_dir) / "metrics.json")
    write_training_curve(trainer.state.log_history, Path(training.output_dir) / "training_curve.png")
    return metrics


def _last(log_history: list[dict], key: str):
    values = [entry[key] for entry in log_history if key in entry]
    return values[-1] if values else None


def parse_args(argv: list[str]) -> tuple[RecipeArguments, UniMPTrainingArguments]:
    """`train.py CONFIG.yaml [key=value ...]` (see `recipes.common.parse_recipe_args`)."""
    return parse_recipe_args(argv, (RecipeArguments, UniMPTrainingArguments), "recipes.train")


if __name__ == "__main__":
    print(main(*parse_args(sys.argv[1:])))
