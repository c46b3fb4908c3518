"""Train UniMP on user-guided image generation (issue 7, reference §2.2 (vi), §4.5), alone or mixed with other tasks,
and generate the held-out test targets' images. YAML keys: RecipeArguments + ImageGenerationArguments +
UniMPTrainingArguments.

    python -m recipes.train_image_generation recipes/configs/imggen_ml100k.yaml [key=value ...]

Writes into `output_dir`: the model, its processor (with the `<img_c>` tokens) and the image tokenizer it was trained
with (`image_tokenizer/`, recorded in `processor.vq_model_name_or_path`), so `pipeline("unimp-generate-image",
model=output_dir)` works from the folder alone; `image_codes.json` (item -> code string), `test_generations.jsonl`
(one line per test user), `metrics.json` and `training_curve.png`. `benchmarks/image_generation.py` computes the
feature-space metrics from these files.
"""

import json
import logging
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import set_seed

from modeling_unimp import (
    UniMPConfig,
    UniMPForConditionalGeneration,
    UniMPImageTokenizer,
    UniMPProcessor,
    train_catalogue_tokenizer,
)
from modeling_unimp.pipeline_image_generation_unimp import UniMPImageGenerationPipeline
from modeling_unimp.prompt_templates import (
    IMGGEN_INSTRUCTION,
    TRAIN_SPLIT,
    render_item_text,
    render_record,
)
from modeling_unimp.trainer_unimp import UniMPTrainer, UniMPTrainingArguments, set_trainable
from processing import UniMPDataCollator
from processing.image_metrics import compute_psnr, compute_ssim
from processing.task_records import build_image_generation_records, item_query, items_by_id

from .common import (
    TEMPLATE_TEXT,
    RecipeArguments,
    TimeBudgetCallback,
    load_dataset_dict,
    load_pixel_array,
    parse_recipe_args,
    refuse_train_negatives,
    render_examples,
    write_json,
    write_training_curve,
)

logger = logging.getLogger("unimp.recipes.train_image_generation")

QUERY_SOURCES = ("title", "category", "title_and_category")
GENERATION_SPLITS = ("validation", "test")
IMAGE_TOKENIZER_SUBFOLDER = "image_tokenizer"  # relative to the checkpoint; the pipeline resolves it there
# Template words of every task, image generation's included, so the tiny tokenizer learns them as whole tokens.
_TEMPLATE_TEXT = f"{TEMPLATE_TEXT} Title ID {IMGGEN_INSTRUCTION}"


@dataclass
class ImageGenerationArguments:
    """The image-generation side of the recipe (STYLE.md §5: values in one place)."""

    # Model
    image_tokenizer_name_or_path: str = field(
        default="outputs/image_tokenizer/ml-100k-posters",
        metadata={"help": "A trained UniMPImageTokenizer (recipes/train_image_tokenizer.py); copied into output_dir."},
    )
    # Data
    query_source: str = field(
        default="title",
        metadata={"help": "The query: the target's 'title' keywords, its 'category' / genres, or 'title_and_category' "
                          "(task_records.item_query)."},
    )
    image_generation_max_history_items: int | None = field(
        default=None,
        metadata={"help": "History items shown per image-generation prompt, saved with the processor (None: the "
                          "processor's, DEFAULT_IMAGE_GENERATION_MAX_HISTORY_ITEMS = 2 as in the reference, §2.2 vi)."},
    )
    # Evaluation
    generation_splits: list[str] = field(
        default_factory=lambda: ["test"],
        metadata={"help": "Splits whose targets are generated after training, each into <split>_generations.jsonl "
                          "('validation' is capped at max_eval_users; benchmarks.tasks scores both)."},
    )
    generation_batch_size: int = field(default=32, metadata={"help": "Test prompts per generate call."})
    eval_do_sample: bool = field(default=False, metadata={"help": "Sample the test grids (else greedy, §4.5)."})
    eval_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature when eval_do_sample."})
    eval_top_k: int | None = field(default=None, metadata={"help": "Top-k of sampling when eval_do_sample."})
    num_threads: int = field(default=2, metadata={"help": "torch CPU threads."})


# ----------------------------------------------------------------------------------------------
# Item images and codes
# ----------------------------------------------------------------------------------------------

def load_item_pixels(items: dict[str, dict], resolution: int, cache_path: Path | None = None
                     ) -> dict[str, torch.Tensor]:
    """item_id -> (3, R, R) uint8 pixels of every item with a readable image, resized as the image tokenizer's recipe
    does (JPEG draft decode, bicubic, aspect ratio not kept), cached at `cache_path`."""
    paths = {item_id: item["image"] for item_id, item in items.items() if isinstance(item.get("image"), str)}
    if cache_path is not None and cache_path.is_file():
        cached = torch.load(cache_path, weights_only=True)  # a cache holds tensors, str and lists only
        if cached["paths"] == paths:
            return cached["pixels"]
    pixels = {}
    for item_id, path in tqdm(paths.items(), desc=f"resize item images to {resolution} px", mininterval=10):
        try:
            array = load_pixel_array(path, resolution, draft=True)  # (R, R, 3) uint8
            pixels[item_id] = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        except OSError:
            logger.warning("item %s: image %s does not decode; the item has no codes", item_id, path)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"paths": paths, "pixels": pixels}, cache_path)
    return pixels


@torch.no_grad()
def encode_item_codes(image_tokenizer: UniMPImageTokenizer, pixels: dict[str, torch.Tensor], batch_size: int = 256
                      ) -> dict[str, list[int]]:
    """item_id -> the S codes of its image (row-major grid)."""
    item_ids = list(pixels)
    codes = {}
    for start in range(0, len(item_ids), batch_size):
        chunk = item_ids[start : start + batch_size]
        batch = torch.stack([pixels[item_id] for item_id in chunk]).float() / 127.5 - 1.0  # (b, 3, R, R) in [-1, 1]
        for item_id, row in zip(chunk, image_tokenizer.encode(batch)):
            codes[item_id] = row.tolist()
    return codes


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """(3, R, R) uint8 -> an RGB PIL image."""
    return Image.fromarray(pixels.permute(1, 2, 0).numpy(), mode="RGB")


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------

def image_generation_query(item: dict, source: str) -> str:
    """The query for a target item (reference §2.2 vi): title keywords, category, or both."""
    if source not in QUERY_SOURCES:
        raise ValueError(f"query_source={source!r} must be one of {QUERY_SOURCES}")
    if source == "title_and_category":
        parts = [item_query(item, source="title"), item.get("category") or ""]
        return " ".join(dict.fromkeys(part for part in parts if part))  # drop the duplicate when they coincide
    return item_query(item, source=source)


def build_records(dataset_dict, items, code_strings, split: str, generation: ImageGenerationArguments,
                  max_history_items: int, num_windows_per_user: int | None, seed: int,
                  max_users: int | None = None) -> list[dict]:
    """Image-generation records of `split` with the configured query and the processor's image-generation window
    (`max_history_items`); history items carry 64-px PIL images."""
    records = build_image_generation_records(
        dataset_dict[split], items, image_codes=code_strings, split=split, max_history_items=max_history_items,
        num_windows_per_user=num_windows_per_user, seed=seed,
    )
    if max_users is not None:
        records = records[:max_users]
    for record in records:
        record["query"] = image_generation_query(record["target"], generation.query_source)
    return records


def build_model(recipe: RecipeArguments, dataset_dict, items: dict[str, dict], num_image_code_tokens: int):
    """A fresh UniMP preset (optionally with a pretrained vision tower) and a processor with `<img_c>` tokens."""
    if recipe.model_name_or_path:
        model = UniMPForConditionalGeneration.from_pretrained(recipe.model_name_or_path)
        processor = UniMPProcessor.from_pretrained(recipe.model_name_or_path)
        if processor.num_image_code_tokens != num_image_code_tokens:
            raise ValueError(f"{recipe.model_name_or_path} has {processor.num_image_code_tokens} <img_c> tokens, the "
                             f"image tokenizer {num_image_code_tokens} codes")
        return model, processor
    if recipe.model_preset not in ("tiny", "paper"):
        raise ValueError(f"model_preset must be 'tiny' or 'paper', got {recipe.model_preset!r}")
    model = UniMPForConditionalGeneration(getattr(UniMPConfig, recipe.model_preset)())
    if recipe.vision_model_name_or_path:  # a tower pretrained by recipes.pretrain_vision
        from transformers import AutoModel

        tower = AutoModel.from_pretrained(recipe.vision_model_name_or_path)
        model.model.vision_model.load_state_dict(tower.state_dict())
    corpus = [render_item_text(item["attributes"]) for item in items.values()] + [_TEMPLATE_TEXT] * 20
    tokenizer = train_catalogue_tokenizer(corpus, vocab_size=recipe.tokenizer_vocab_size)
    processor = UniMPProcessor.from_catalogue(
        tokenizer, item_ids=list(items), item_titles=[item["title"] or "" for item in items.values()],
        item_images=[item["image"] for item in items.values()], image_size=model.config.vision_config.image_size,
        num_image_code_tokens=num_image_code_tokens,
    )
    processor.prepare_model(model)
    return model, processor


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------

def generate_test_images(pipe: UniMPImageGenerationPipeline, records: list[dict], generation: ImageGenerationArguments,
                         ) -> list[list[int]]:
    """The generated S codes of each record's target (test or validation), through the pipeline (constrained
    decoding)."""
    decoding = {"do_sample": generation.eval_do_sample}
    if generation.eval_do_sample:
        decoding.update(temperature=generation.eval_temperature, top_k=generation.eval_top_k)
    codes = []
    batch = generation.generation_batch_size
    for start in tqdm(range(0, len(records), batch), desc="generate images", mininterval=10):
        inputs = [{"history": record["history"], "query": record["query"]} for record in records[start : start + batch]]
        # the history window: the pipeline's default, the processor's image_generation_max_history_items
        outputs = pipe(inputs, batch_size=batch, return_codes=True, **decoding)
        codes.extend(output["codes"] for output in outputs)
    return codes


@torch.no_grad()
def score_generations(image_tokenizer: UniMPImageTokenizer, generated: torch.Tensor, targets: torch.Tensor,
                      target_pixels: torch.Tensor) -> dict[str, float]:
    """Pixel and code metrics of generated grids against the real targets, with the tokenizer's own reconstruction
    of the targets as the upper bound.

    Args:
        generated, targets: (n, S) code grids.
        target_pixels: (n, 3, R, R) uint8 real target images.
    Returns: code_accuracy (mean_i,s 1[generated = target code]), psnr / ssim of generated vs real, and
        reconstruction_psnr / reconstruction_ssim of decode(target codes) vs real (data range 1).
    """
    real = target_pixels.float() / 255.0
    metrics = {"code_accuracy": (generated == targets).double().mean().item()}
    for name, codes in (("generated", generated), ("reconstruction", targets)):
        decoded = torch.cat([image_tokenizer.decode(codes[start : start + 256]) for start in range(0, len(codes), 256)])
        decoded = ((decoded.clamp(-1, 1) + 1) / 2 * 255).round() / 255  # what the PNG holds
        metrics[f"{name}_psnr"] = compute_psnr(decoded, real).clamp(max=100).mean().item()
        metrics[f"{name}_ssim"] = compute_ssim(decoded, real).mean().item()
    return metrics


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------

def main(recipe: RecipeArguments, generation: ImageGenerationArguments, training: UniMPTrainingArguments) -> dict:
    """Train on the configured tasks (imggen required), save, generate the test users' targets; returns metrics."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(generation.num_threads)
    if "imggen" not in recipe.tasks:
        raise ValueError(f"tasks={recipe.tasks} must include 'imggen'; add e.g. 'rec' to mix it with recommendation")
    unknown = [split for split in generation.generation_splits if split not in GENERATION_SPLITS]
    if unknown:
        raise ValueError(f"generation_splits: {unknown} not among {GENERATION_SPLITS} (held-out splits only)")
    refuse_train_negatives(recipe, "train_image_generation")
    set_seed(training.seed)
    started = time.time()
    output_dir = Path(training.output_dir)
    dataset_dict = load_dataset_dict(recipe)
    items = items_by_id(dataset_dict["items"])
    image_tokenizer = UniMPImageTokenizer.from_pretrained(generation.image_tokenizer_name_or_path).eval()
    resolution = image_tokenizer.config.resolution
    pixels = load_item_pixels(items, resolution, output_dir / "cache" / f"item_pixels_{resolution}px.pt")
    item_codes = encode_item_codes(image_tokenizer, pixels)
    code_strings = {item_id: image_tokenizer.codes_to_string(codes) for item_id, codes in item_codes.items()}
    write_json(code_strings, output_dir / "image_codes.json")
    logger.info("%d of %d items have image codes (%d per image, codebook %d)", len(item_codes), len(items),
                image_tokenizer.config.num_image_codes, image_tokenizer.config.codebook_size)

    model, processor = build_model(recipe, dataset_dict, items, image_tokenizer.config.codebook_size)
    processor.vq_model_name_or_path = IMAGE_TOKENIZER_SUBFOLDER
    if training.max_history_items is not None:  # the rec window when mixed in; saved with the processor
        processor.max_history_items = training.max_history_items
    if generation.image_generation_max_history_items is not None:  # saved with the processor too
        processor.image_generation_max_history_items = generation.image_generation_max_history_items
    window = processor.image_generation_max_history_items
    set_trainable(model, training.trainable_stage)
    vision_size = model.config.vision_config.image_size
    images = {item_id: to_pil(p) if resolution == vision_size else to_pil(p).resize((vision_size, vision_size),
              Image.Resampling.BICUBIC) for item_id, p in pixels.items()}
    image_items = {item_id: {**item, "image": images.get(item_id)} for item_id, item in items.items()}

    train_records = build_records(dataset_dict, image_items, code_strings, TRAIN_SPLIT, generation, window,
                                  recipe.num_windows_per_user, training.seed)
    train_examples = [render_record(record, TRAIN_SPLIT, task_weights=training.task_weights)
                      for record in train_records]
    other_tasks = [task for task in recipe.tasks if task != "imggen"]
    if other_tasks:  # e.g. rec: common's records name images by path; give them the same decoded 64-px images
        path_images = {item["image"]: images.get(item_id) for item_id, item in items.items() if item.get("image")}
        train_examples.extend(render_examples(
            dataset_dict, processor, tasks=other_tasks, split=TRAIN_SPLIT, task_weights=training.task_weights,
            num_windows_per_user=recipe.num_windows_per_user,
            seed=training.seed, images=lambda image: path_images.get(image) if isinstance(image, str) else image,
        ))
    logger.info("%d training examples (%s)", len(train_examples),
                ", ".join(f"{task}: {sum(e['task'] == task for e in train_examples)}" for task in recipe.tasks))

    trainer = UniMPTrainer(
        model=model,
        args=training,
        train_dataset=train_examples,
        data_collator=UniMPDataCollator(processor, context_weight=training.context_weight),
    )
    if recipe.max_train_seconds:
        trainer.add_callback(TimeBudgetCallback(recipe.max_train_seconds))
    trainer.train()
    train_seconds = time.time() - started
    for checkpoint in output_dir.glob("checkpoint-*"):  # TimeBudgetCallback's resumable save; the model is saved below
        shutil.rmtree(checkpoint)
    model = trainer.model.eval()
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    image_tokenizer.save_pretrained(output_dir / IMAGE_TOKENIZER_SUBFOLDER)

    pipe = UniMPImageGenerationPipeline(model=model, processor=processor, image_tokenizer=image_tokenizer,
                                        device=model.device)
    scores = {}
    for split in generation.generation_splits:
        records = build_records(dataset_dict, image_items, code_strings, split, generation, window, None,
                                training.seed, max_users=recipe.max_test_users if split == "test"
                                else recipe.max_eval_users)
        generated = generate_test_images(pipe, records, generation)
        write_generations(records, generated, output_dir / f"{split}_generations.jsonl")
        target_ids = [record["target"]["item_id"] for record in records]
        scores[split] = score_generations(
            image_tokenizer, torch.tensor(generated), torch.tensor([item_codes[t] for t in target_ids]),
            torch.stack([pixels[t] for t in target_ids]),
        ) | {"num_users": len(records)}
    test_scores = dict(scores.pop("test", {}))
    num_test_users = test_scores.pop("num_users", 0)
    metrics = {
        "dataset": recipe.dataset, "protocol": recipe.protocol, "tasks": recipe.tasks, "split": "test",
        "query_source": generation.query_source, "num_test_users": num_test_users,
        "num_train_examples": len(train_examples), "global_step": trainer.state.global_step,
        "train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - started, 1),
        "train_loss": _last(trainer.state.log_history, "loss"), "decoding": "sample" if generation.eval_do_sample
        else "greedy", **test_scores, **scores,   # the test scores at the top level, other splits by name
    }
    write_json(metrics, output_dir / "metrics.json")
    write_json({"recipe": asdict(recipe), "image_generation": asdict(generation)}, output_dir / "recipe_args.json")
    write_training_curve(trainer.state.log_history, output_dir / "training_curve.png", metric="loss")
    return metrics


def write_generations(records: list[dict], generated: list[list[int]], path: Path) -> None:
    """One JSON line per record: user, history and target item ids, query and the generated codes (what
    `benchmarks/image_generation.py` scores)."""
    with open(path, "w") as handle:
        for record, codes in zip(records, generated):
            handle.write(json.dumps({
                "user_id": record["user_id"], "history_item_ids": [item["item_id"] for item in record["history"]],
                "target_item_id": record["target"]["item_id"], "query": record["query"], "generated_codes": codes,
            }) + "\n")


def _last(log_history: list[dict], key: str):
    values = [entry[key] for entry in log_history if key in entry]
    return values[-1] if values else None


def parse_args(argv: list[str]) -> tuple[RecipeArguments, ImageGenerationArguments, UniMPTrainingArguments]:
    """`train_image_generation.py CONFIG.yaml [key=value ...]` (see `recipes.common.parse_recipe_args`)."""
    return parse_recipe_args(argv, (RecipeArguments, ImageGenerationArguments, UniMPTrainingArguments),
                             "recipes.train_image_generation")


__all__ = [
    "ImageGenerationArguments",
    "build_records",
    "encode_item_codes",
    "image_generation_query",
    "load_item_pixels",
    "main",
    "score_generations",
]

if __name__ == "__main__":
    print(json.dumps(main(*parse_args(sys.argv[1:])), indent=2))
    sys.exit(0)
