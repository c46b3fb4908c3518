"""`Trainer` pieces the image-side recipes share (`pretrain_vision`, `train_image_tokenizer`): a dataset of named
tensors, a seeded collator for training-time pixel transforms, their `TrainingArguments`, a per-step record of
the training scalars; the wall-time budget is `recipes.common.TimeBudgetCallback`."""

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from .common import TimeBudgetCallback


@dataclass
class ImageTrainingArguments:
    """The training keys of the image-side recipes (what `train_image_model` reads); each recipe's dataclass
    extends it, restating only the defaults it changes."""

    output_dir: str = field(default="outputs/image_training", metadata={"help": "outputs go here"})
    max_steps: int = field(default=500, metadata={"help": "optimizer steps"})
    max_train_seconds: float | None = field(
        default=None, metadata={"help": "stop training after this wall time even if max_steps is not reached"}
    )
    batch_size: int = field(default=32, metadata={"help": "training examples per step (at most the training set)"})
    learning_rate: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    warmup_steps: int = field(default=20, metadata={"help": "linear warm-up steps, then cosine decay to 0"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    logging_steps: int = field(default=25, metadata={"help": "log the training loss every this many steps"})
    num_threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    seed: int = field(default=0, metadata={"help": "seeds the subset, the held-out split, the init and training"})


class NamedTensorDataset(Dataset):
    """Rows of equally long tensors: `dataset[i] = {name: tensor[i]}`.

    Args:
        **tensors: name -> (N, ...) tensor; every tensor has the same first dimension N.
    """

    def __init__(self, **tensors: torch.Tensor):
        lengths = {name: len(tensor) for name, tensor in tensors.items()}
        if not lengths or len(set(lengths.values())) != 1:
            raise ValueError(f"NamedTensorDataset needs tensors of one common length, got lengths {lengths}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: tensor[index] for name, tensor in self.tensors.items()}


@dataclass
class PixelBatchCollator:
    """Stacks `NamedTensorDataset` rows; a "pixels" column ((B, 3, R, R) uint8) becomes "pixel_values" through
    `transform(pixels, generator)`, which draws its training-time augmentation from this collator's seeded generator."""

    transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    seed: int = 0
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self):
        self.generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = {name: torch.stack([row[name] for row in rows]) for name in rows[0]}
        if "pixels" in batch:
            batch["pixel_values"] = self.transform(batch.pop("pixels"), self.generator)
        return batch


def make_training_arguments(*, output_dir: str, max_steps: int, batch_size: int, learning_rate: float,
                            warmup_steps: int, weight_decay: float, logging_steps: int, seed: int,
                            **overrides) -> TrainingArguments:
    """The `TrainingArguments` of an image-side recipe: AdamW at `learning_rate` with linear warm-up over
    `warmup_steps`, then cosine decay to 0 at `max_steps`; random batches, reshuffled each epoch with the last
    partial batch dropped; no gradient clipping and no checkpoints (the recipe saves its own artefacts)."""
    return TrainingArguments(
        output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=batch_size,
        learning_rate=learning_rate, lr_scheduler_type="cosine", warmup_steps=warmup_steps,
        weight_decay=weight_decay, max_grad_norm=0.0, logging_steps=logging_steps, save_strategy="no",
        report_to=[], dataloader_drop_last=True, dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False, seed=seed, data_seed=seed,
        **overrides,
    )


class RecordingTrainer(Trainer):
    """A `Trainer` whose subclasses' `compute_loss` calls `record(model, name=scalar, ...)` on each training step,
    so `history[name]` holds one value per step (the recipes report the first and a smoothed last value)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.history: dict[str, list[float]] = defaultdict(list)

    def record(self, model: torch.nn.Module, **values: torch.Tensor) -> None:
        if model.training:
            for name, value in values.items():
                self.history[name].append(float(value.detach()) if torch.is_tensor(value) else float(value))

    def train_timed(self) -> dict:
        """`train()`; returns {"steps", "train_seconds", "train_cpu_seconds"}."""
        start_time, start_cpu = time.perf_counter(), time.process_time()
        self.train()
        return {"steps": self.state.global_step, "train_seconds": round(time.perf_counter() - start_time, 1),
                "train_cpu_seconds": round(time.process_time() - start_cpu, 1)}


def train_image_model(trainer_class: type[RecordingTrainer], model: torch.nn.Module, columns: dict[str, torch.Tensor],
                      transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
                      recipe_args: ImageTrainingArguments, *,
                      callbacks: list[TrainerCallback] = (), optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Train `model` with `trainer_class` on the rows of `columns` (see `PixelBatchCollator` for "pixels").

    Args:
        trainer_class: a `RecordingTrainer` subclass whose `compute_loss` routes a batch to the recipe's loss.
        model: the module to train.
        columns: name -> (N, ...) tensor, one row per example.
        transform: the training-time pixel transform (`PixelBatchCollator.transform`).
        recipe_args: the recipe's arguments (`batch_size` is capped at N).
        callbacks: more `TrainerCallback`s.
        optimizer: optional optimizer (default: `Trainer`'s AdamW); the schedule is `make_training_arguments`'.
    Returns:
        {"steps", "train_seconds", "train_cpu_seconds", "history" (name -> per-step values)}.
    """
    dataset = NamedTensorDataset(**columns)
    training_args = make_training_arguments(
        output_dir=recipe_args.output_dir, max_steps=recipe_args.max_steps,
        batch_size=min(recipe_args.batch_size, len(dataset)), learning_rate=recipe_args.learning_rate,
        warmup_steps=recipe_args.warmup_steps, weight_decay=recipe_args.weight_decay,
        logging_steps=recipe_args.logging_steps, seed=recipe_args.seed,
    )
    if recipe_args.max_train_seconds is not None:
        callbacks = [TimeBudgetCallback(recipe_args.max_train_seconds), *callbacks]
    trainer = trainer_class(
        model=model, args=training_args, train_dataset=dataset,
        data_collator=PixelBatchCollator(transform, seed=recipe_args.seed), callbacks=list(callbacks),
        optimizers=(optimizer, None),
    )
    return {**trainer.train_timed(), "history": dict(trainer.history)}


def smooth(values: list[float], decay: float) -> float | None:
    """Exponential moving average `s ← decay · s + (1 - decay) · v`, started at the first value (None if empty)."""
    smoothed = None
    for value in values:
        smoothed = value if smoothed is None else decay * smoothed + (1 - decay) * value
    return smoothed


__all__ = [
    "ImageTrainingArguments",
    "NamedTensorDataset",
    "PixelBatchCollator",
    "RecordingTrainer",
    "make_training_arguments",
    "smooth",
    "train_image_model",
]
