"""The `Trainer` pieces shared by the image-side recipes (recipes/image_training.py)."""

import math

import pytest
import torch
from transformers import TrainerControl, TrainerState

from modeling_unimp import UniMPConfig
from recipes.common import TimeBudgetCallback
from recipes.image_training import (
    NamedTensorDataset,
    PixelBatchCollator,
    RecordingTrainer,
    make_training_arguments,
    smooth,
)
from recipes.pretrain_vision import (
    CLIP_MAX_LOGIT_SCALE,
    ClampLogitScaleCallback,
    VisionPretrainingArguments,
    VisionTextAligner,
    train_aligner,
)


def test_named_tensor_dataset_rows_and_length_check():
    dataset = NamedTensorDataset(pixels=torch.arange(6).view(3, 2), text_ids=torch.tensor([7, 8, 9]))
    assert len(dataset) == 3
    row = dataset[1]
    assert row["pixels"].tolist() == [2, 3] and row["text_ids"].item() == 8
    with pytest.raises(ValueError, match="one common length.*'text_ids': 2"):
        NamedTensorDataset(pixels=torch.zeros(3, 2), text_ids=torch.zeros(2))


def test_collator_transforms_pixels_with_its_seeded_generator():
    def transform(pixels, generator):
        return pixels.float() + torch.rand(len(pixels), 1, 1, 1, generator=generator)

    rows = [{"pixels": torch.zeros(3, 2, 2, dtype=torch.uint8), "text_ids": torch.tensor(index)} for index in range(4)]
    first, again = PixelBatchCollator(transform, seed=3)(rows), PixelBatchCollator(transform, seed=3)(rows)
    assert set(first) == {"pixel_values", "text_ids"} and first["text_ids"].tolist() == [0, 1, 2, 3]
    assert first["pixel_values"].shape == (4, 3, 2, 2)
    torch.testing.assert_close(first["pixel_values"], again["pixel_values"], atol=0, rtol=0)
    other = PixelBatchCollator(transform, seed=4)(rows)["pixel_values"]
    assert not torch.equal(first["pixel_values"], other)


def test_smooth_is_an_exponential_moving_average_from_the_first_value():
    assert smooth([], 0.9) is None
    assert smooth([2.0], 0.9) == 2.0
    assert smooth([2.0, 4.0, 0.0], 0.5) == pytest.approx((0.5 * 2 + 0.5 * 4) * 0.5)


def test_time_budget_stops_an_image_run_without_writing_a_checkpoint(tmp_path):
    args = make_training_arguments(output_dir=str(tmp_path), max_steps=10, batch_size=2, learning_rate=0.1,
                                   warmup_steps=0, weight_decay=0.0, logging_steps=1, seed=0)
    control, state = TrainerControl(), TrainerState()
    budget = TimeBudgetCallback(60.0)
    budget.on_train_begin(args, state, control)
    budget.on_step_end(args, state, control)
    assert not control.should_training_stop
    budget.spent_seconds = 61.0
    budget.on_step_end(args, state, control)
    assert control.should_training_stop and not control.should_save  # save_strategy "no": no checkpoint-N folder


class _LinearRegressionTrainer(RecordingTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = (model(inputs["x"]).squeeze(-1) - inputs["y"]).square().mean()
        self.record(model, loss=loss, learning_rate=self.optimizer.param_groups[0]["lr"])
        return loss


def test_trainer_records_each_step_on_the_warmup_cosine_schedule(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(8, 2)
    args = make_training_arguments(output_dir=str(tmp_path), max_steps=6, batch_size=8, learning_rate=0.1,
                                   warmup_steps=2, weight_decay=0.0, logging_steps=100, seed=0, disable_tqdm=True)
    trainer = _LinearRegressionTrainer(model=torch.nn.Linear(2, 1), args=args,
                                       train_dataset=NamedTensorDataset(x=x, y=x.sum(-1)),
                                       data_collator=PixelBatchCollator(lambda pixels, generator: pixels))
    result = trainer.train_timed()
    assert result["steps"] == 6 and result["train_seconds"] >= 0
    # the rate of step s: 0.1 · s / 2 while s < 2, then 0.1 · ½ (1 + cos(π (s - 2) / 4))
    expected = [0.0, 0.05] + [0.05 * (1 + math.cos(math.pi * (step - 2) / 4)) for step in range(2, 6)]
    assert trainer.history["learning_rate"] == pytest.approx(expected, abs=1e-12)
    assert len(trainer.history["loss"]) == 6 and trainer.history["loss"][-1] < trainer.history["loss"][0]


def test_linear_probe_trains_the_head_and_keeps_the_tower(tmp_path):
    torch.manual_seed(0)
    aligner = VisionTextAligner(UniMPConfig.tiny().vision_config, text_dim=8)
    aligner.vision_model.requires_grad_(False)
    tower, head = (
        {name: tensor.clone() for name, tensor in module.state_dict().items()}
        for module in (aligner.vision_model, aligner.projection)
    )
    features = torch.randn(6, aligner.projection.in_features)
    args = VisionPretrainingArguments(output_dir=str(tmp_path), max_steps=3, batch_size=6, warmup_steps=0)
    history = train_aligner(aligner, torch.zeros(6, 3, 1, 1, dtype=torch.uint8), torch.randn(6, 8), torch.arange(6),
                            args, image_features=features)
    assert history["steps"] == 3 and len(history["losses"]) == 3
    for name, tensor in aligner.vision_model.state_dict().items():
        assert torch.equal(tensor, tower[name]), name
    assert not torch.equal(aligner.projection.weight, head["weight"])


def test_logit_scale_is_clamped_to_clips_maximum():
    aligner = VisionTextAligner(UniMPConfig.tiny().vision_config, text_dim=8)
    with torch.no_grad():
        aligner.logit_scale.fill_(CLIP_MAX_LOGIT_SCALE + 1.0)
    ClampLogitScaleCallback().on_optimizer_step(None, None, None, model=aligner)
    assert aligner.logit_scale.item() == pytest.approx(CLIP_MAX_LOGIT_SCALE)
