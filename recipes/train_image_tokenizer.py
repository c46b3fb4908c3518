"""Train the UniMP image tokenizer (VQ autoencoder, spec §2.2 (vi)) on a dataset's item images and report
held-out PSNR / SSIM and codebook usage.

    python -m recipes.train_image_tokenizer recipes/configs/image_tokenizer_tiny.yaml [key=value ...]

Writes the tokenizer (`save_pretrained`, with this package's code as remote code), `metrics.json`,
`recipe_args.json` and `contact_sheet.png` into `output_dir`; the resized images are cached there too.
"""

import json
import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from modeling_unimp.image_tokenizer_unimp import (
    UniMPImageTokenizer,
    UniMPImageTokenizerConfig,
    convert_pixel_values_to_image,
)
from processing.datasets_unimp import default_data_dir
from processing.image_metrics import compute_psnr, compute_ssim

from .common import load_pixel_array, parse_recipe_args
from .image_training import ImageTrainingArguments, RecordingTrainer, smooth, train_image_model

DATASETS = ("ml-100k-posters", "hm-sample")
# training-step values of the tokenizer's output that the recipe records and smooths
TRACKED_TRAINING_VALUES = ("loss", "reconstruction_loss", "perplexity", "codebook_usage")


@dataclass
class ImageTokenizerRecipeArguments(ImageTrainingArguments):
    """YAML keys of the image tokenizer recipe. Model fields left at None take the
    `UniMPImageTokenizerConfig` default, so each default lives in one place."""

    # Data
    dataset: str = field(default="ml-100k-posters", metadata={"help": f"one of {DATASETS}"})
    data_dir: str | None = field(
        default=None, metadata={"help": "raw-data folder; default default_data_dir()"}
    )
    max_images: int | None = field(
        default=None, metadata={"help": "use a seeded random subset of this many images (None: all)"}
    )
    holdout_fraction: float = field(default=0.1, metadata={"help": "fraction of images held out for metrics"})
    # Model (None: the UniMPImageTokenizerConfig default)
    resolution: int | None = field(default=None, metadata={"help": "image side in pixels"})
    base_channels: int | None = field(default=None, metadata={"help": "channels of the first level"})
    channel_multipliers: list[int] | None = field(default=None, metadata={"help": "per-level multipliers"})
    num_res_blocks: int | None = field(default=None, metadata={"help": "residual blocks per level"})
    norm_num_groups: int | None = field(default=None, metadata={"help": "GroupNorm groups"})
    codebook_size: int | None = field(default=None, metadata={"help": "number of codes K"})
    code_dim: int | None = field(default=None, metadata={"help": "code vector dimension"})
    commitment_beta: float | None = field(default=None, metadata={"help": "commitment loss weight"})
    use_ema_codebook: bool | None = field(default=None, metadata={"help": "EMA (True) or gradient codebook"})
    codebook_restart_threshold: float | None = field(default=None, metadata={"help": "dead-code threshold"})
    reconstruction_l1_weight: float | None = field(default=None, metadata={"help": "L1 pixel loss weight"})
    reconstruction_l2_weight: float | None = field(default=None, metadata={"help": "L2 pixel loss weight"})
    # Training (the other keys: ImageTrainingArguments)
    output_dir: str = field(
        default="outputs/image_tokenizer", metadata={"help": "where the tokenizer, metrics and cache go"}
    )
    use_horizontal_flip: bool = field(default=True, metadata={"help": "random left-right flips in training"})
    eval_batch_size: int = field(default=64, metadata={"help": "held-out images per evaluation batch"})
    num_contact_sheet_images: int = field(default=16, metadata={"help": "held-out pairs in contact_sheet.png"})


def parse_args(argv: list[str]) -> ImageTokenizerRecipeArguments:
    """`config.yaml [key=value ...]` (see `recipes.common.parse_recipe_args`)."""
    (args,) = parse_recipe_args(argv, (ImageTokenizerRecipeArguments,), "recipes.train_image_tokenizer")
    return args


def build_config(args: ImageTokenizerRecipeArguments) -> UniMPImageTokenizerConfig:
    """The tokenizer config from the recipe's non-None model fields."""
    config_fields = {config_field.name for config_field in fields(UniMPImageTokenizerConfig)}
    overrides = {
        recipe_field.name: getattr(args, recipe_field.name)
        for recipe_field in fields(args)
        if recipe_field.name in config_fields and getattr(args, recipe_field.name) is not None
    }
    return UniMPImageTokenizerConfig(**overrides)


def list_item_images(dataset: str, data_dir: Path) -> list[tuple[str, Path]]:
    """(image id, path) of every distinct item image of a dataset, sorted by id.

    ml-100k-posters: the poster files named in `ml100k_to_ml1m_posters.csv` (duplicate ML-100K movies
    share one poster, kept once; id = the poster's ML-1M item id). hm-sample: `image_manifest.csv` rows
    with `has_image == 1` (id = the 10-digit article id, path `images/<prefix>/<article_id>.jpg`).
    """
    import csv

    if dataset == "ml-100k-posters":
        root = data_dir / "ml-100k-posters"
        with open(root / "ml100k_to_ml1m_posters.csv", newline="", encoding="utf-8") as handle:
            files = {row["poster_file"] for row in csv.DictReader(handle) if row["poster_file"]}
        items = [(Path(name).stem, root / name) for name in files]
        return sorted(items, key=lambda item: int(item[0]))
    if dataset == "hm-sample":
        root = data_dir / "hm-sample"
        with open(root / "image_manifest.csv", newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.DictReader(handle) if row["has_image"] == "1"]
        return sorted((row["article_id"], root / row["image_path"]) for row in rows)
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")


def load_dataset_images(args: ImageTokenizerRecipeArguments, resolution: int) -> tuple[list[str], torch.Tensor]:
    """Ids and (N, 3, R, R) uint8 pixels of the (optionally subsampled) item images, cached in output_dir."""
    items = list_item_images(args.dataset, Path(args.data_dir) if args.data_dir else default_data_dir())
    if not items:
        raise ValueError(f"no item images found for {args.dataset!r}")
    if args.max_images is not None and args.max_images < len(items):
        keep = np.random.default_rng(args.seed).choice(len(items), size=args.max_images, replace=False)
        items = [items[i] for i in sorted(keep)]
    ids = [item_id for item_id, _ in items]
    cache_path = Path(args.output_dir) / "cache" / f"images_{args.dataset}_{resolution}px.pt"
    if cache_path.is_file():
        cached = torch.load(cache_path, weights_only=True)  # a cache holds tensors, str and lists only
        if cached["ids"] == ids:
            return ids, cached["pixels"]
    # JPEG draft decode (DCT-domain downscale): much faster on large photos, and the pixels the tokenizer trains on
    arrays = [load_pixel_array(path, resolution, draft=True) for _, path in tqdm(items, desc=f"resize {args.dataset}")]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, R, R) uint8
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"ids": ids, "pixels": pixels}, cache_path)
    return ids, pixels


def split_holdout(num_images: int, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train indices, held-out indices); at least one image on each side."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"`holdout_fraction` must be in (0, 1), got {holdout_fraction}")
    if num_images < 2:
        raise ValueError(f"need at least 2 images to hold some out, got {num_images}")
    order = np.random.default_rng(seed).permutation(num_images)
    num_holdout = min(max(1, round(holdout_fraction * num_images)), num_images - 1)
    return np.sort(order[num_holdout:]), np.sort(order[:num_holdout])


def convert_uint8_to_pixel_values(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, R, R) uint8 -> float in [-1, 1]."""
    return pixels.float() / 127.5 - 1.0


def rescale_to_unit_range(pixel_values: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], the scale on which PSNR / SSIM are conventionally reported (data_range 1)."""
    return (pixel_values + 1) / 2


@torch.no_grad()
def evaluate_tokenizer(model: UniMPImageTokenizer, pixels: torch.Tensor, batch_size: int) -> dict:
    """Held-out metrics: mean per-image PSNR / SSIM of clamped reconstructions, codebook usage and
    perplexity over the pooled code histogram, and the same PSNR / SSIM for a bicubic down-up
    resampling through the code grid resolution (a continuous-colour reference with as many cells)."""
    model.eval()
    grid = model.config.grid_size
    psnr, ssim, reference_psnr, reference_ssim, reconstructions = [], [], [], [], []
    counts = torch.zeros(model.config.codebook_size)
    for start in range(0, len(pixels), batch_size):
        originals = convert_uint8_to_pixel_values(pixels[start : start + batch_size])
        output = model(originals)
        reconstruction = output.reconstruction.clamp(-1, 1)
        psnr.append(compute_psnr(rescale_to_unit_range(reconstruction), rescale_to_unit_range(originals)))
        ssim.append(compute_ssim(rescale_to_unit_range(reconstruction), rescale_to_unit_range(originals)))
        counts += torch.bincount(output.codes.flatten(), minlength=model.config.codebook_size).float()
        reconstructions.append(reconstruction)
        size = originals.shape[-1]
        small = torch.nn.functional.interpolate(originals, size=(grid, grid), mode="bicubic", antialias=True)
        reference = torch.nn.functional.interpolate(small, size=(size, size), mode="bicubic").clamp(-1, 1)
        reference_psnr.append(compute_psnr(rescale_to_unit_range(reference), rescale_to_unit_range(originals)))
        reference_ssim.append(compute_ssim(rescale_to_unit_range(reference), rescale_to_unit_range(originals)))
    probabilities = counts / counts.sum()
    entropy = -(probabilities[probabilities > 0] * probabilities[probabilities > 0].log()).sum()
    return {
        "heldout_psnr": torch.cat(psnr).mean().item(),
        "heldout_ssim": torch.cat(ssim).mean().item(),
        "heldout_codebook_usage": (counts > 0).float().mean().item(),
        "heldout_perplexity": entropy.exp().item(),
        f"heldout_bicubic_{grid}px_psnr": torch.cat(reference_psnr).mean().item(),
        f"heldout_bicubic_{grid}px_ssim": torch.cat(reference_ssim).mean().item(),
        "reconstructions": torch.cat(reconstructions),
    }


class ImageTokenizerTrainer(RecordingTrainer):
    """Routes a batch of "pixel_values" (B, 3, R, R) in [-1, 1] to the tokenizer, whose forward returns the VQ loss
    (reconstruction + commitment (+ codebook)); in `train()` mode that forward also moves the EMA codebook and
    restarts dead codes (once per step: no gradient accumulation here)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        output = model(inputs["pixel_values"])
        self.record(model, **{key: output[key] for key in TRACKED_TRAINING_VALUES})
        return (output.loss, output) if return_outputs else output.loss


def train_tokenizer(model: UniMPImageTokenizer, pixels: torch.Tensor, args: ImageTokenizerRecipeArguments) -> dict:
    """Train on random batches of (N, 3, R, R) uint8 `pixels` (left-right flips if `use_horizontal_flip`).

    Returns:
        {"steps", "train_seconds", "train_cpu_seconds"} and, per key of `TRACKED_TRAINING_VALUES`, its per-step
        values under `history` and their moving average (decay 0.9) under `<key>_smoothed`.
    """

    def transform(batch_pixels, generator):  # (B, 3, R, R) uint8 -> [-1, 1], randomly flipped
        batch = convert_uint8_to_pixel_values(batch_pixels)
        if args.use_horizontal_flip:
            flip = torch.rand(len(batch), generator=generator) < 0.5
            batch[flip] = batch[flip].flip(-1)
        return batch

    result = train_image_model(ImageTokenizerTrainer, model, {"pixels": pixels}, transform, args)
    return {**result, **{f"{key}_smoothed": smooth(result["history"][key], 0.9) for key in TRACKED_TRAINING_VALUES}}


def save_contact_sheet(originals: torch.Tensor, reconstructions: torch.Tensor, path: Path, per_row: int = 8):
    """PNG grid: row pairs of originals (top) over their reconstructions (bottom), upscaled 2x (nearest)."""
    count = len(originals)
    rows = math.ceil(count / per_row)
    size = originals.shape[-1] * 2
    sheet = Image.new("RGB", (per_row * size, 2 * rows * size), "white")
    for index in range(count):
        row, column = divmod(index, per_row)
        for offset, image in enumerate((originals[index], reconstructions[index])):
            tile = convert_pixel_values_to_image(image).resize((size, size), Image.Resampling.NEAREST)
            sheet.paste(tile, (column * size, (2 * row + offset) * size))
    sheet.save(path)


def main(args: ImageTokenizerRecipeArguments) -> dict:
    """Train, evaluate on the held-out images and save; returns the metrics written to `metrics.json`."""
    torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    config = build_config(args)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    ids, pixels = load_dataset_images(args, config.resolution)
    train_indices, holdout_indices = split_holdout(len(ids), args.holdout_fraction, args.seed)
    train_pixels, holdout_pixels = pixels[train_indices], pixels[holdout_indices]

    model = UniMPImageTokenizer(config)
    training = train_tokenizer(model, train_pixels, args)

    evaluation = evaluate_tokenizer(model, holdout_pixels, args.eval_batch_size)
    reconstructions = evaluation.pop("reconstructions")
    metrics = {
        "dataset": args.dataset,
        "num_train_images": len(train_indices),
        "num_heldout_images": len(holdout_indices),
        "resolution": config.resolution,
        "grid_size": config.grid_size,
        "codebook_size": config.codebook_size,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "steps": training["steps"],
        "train_seconds": training["train_seconds"],
        "train_loss_smoothed": training["loss_smoothed"],
        "train_codebook_usage_smoothed": training["codebook_usage_smoothed"],
        **evaluation,
    }
    # Remote code: the checkpoint carries image_tokenizer_unimp.py and loads with trust_remote_code=True.
    UniMPImageTokenizerConfig.register_for_auto_class()
    UniMPImageTokenizer.register_for_auto_class("AutoModel")
    model.save_pretrained(output_dir)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (output_dir / "recipe_args.json").write_text(json.dumps(asdict(args), indent=2) + "\n")
    count = min(args.num_contact_sheet_images, len(holdout_pixels))
    if count > 0:
        save_contact_sheet(
            convert_uint8_to_pixel_values(holdout_pixels[:count]),
            reconstructions[:count],
            output_dir / "contact_sheet.png",
        )
    return metrics


if __name__ == "__main__":
    print(json.dumps(main(parse_args(sys.argv[1:])), indent=2))


__all__ = ["ImageTokenizerRecipeArguments", "ImageTokenizerTrainer", "build_config", "list_item_images", "main",
           "split_holdout", "train_tokenizer"]
