"""Publish a UniMP checkpoint, its model card and optionally its processed dataset to the Hugging Face Hub (issue 6).

Usage:
    python -m recipes.push_to_hub CHECKPOINT_DIR ORG/NAME [--private] [--revision BRANCH] [--commit-message MSG]
        [--dataset ml-100k-posters --dataset-repo-id ORG/NAME-DATA] [--training-config CONFIG.yaml] [--dry-run]

Only the repo ids given are written to; `--dry-run` assembles the upload folder and the cards and pushes nothing.
Weights or data whose source terms forbid redistribution (every dataset in shared/data) are pushed only with
`--private`: the terms travel with the dataset (`DatasetInfo.license`) and the checkpoint
(`processor_config.json` `training_data_licences`).
"""

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger("unimp.recipes.push_to_hub")

TEMPLATES = Path(__file__).resolve().parents[1] / "model_cards"
MODEL_CARD_TEMPLATE = TEMPLATES / "unimp_model_card.md"
DATASET_CARD_TEMPLATE = TEMPLATES / "unimp_dataset_card.md"
PIPELINE_TAG = "image-text-to-text"  # the Hub task of the Auto class that loads the model (a Hub pipeline_tag)
TAGS = ["unimp", "recommendation", "sequential-recommendation", "multimodal", "flamingo"]
ROW_LABELS = {  # metrics.json keys (recipes/evaluate.py) -> table rows, UniMP's own results first
    "unimp": "UniMP",
    "pop": "Popularity",
    "unimp_masked": "UniMP, history masked",
    "pop_masked": "Popularity, history masked",
}
MODEL_INDEX_ROWS = {"unimp": "", "unimp_masked": "masked_"}  # rows of this model that go into `model-index`
CARRIED_FILES = ("metrics.json", "training_curve.png")  # copied from the checkpoint folder when present
_REDISTRIBUTION_BAN = re.compile(  # "do not redistribute", "forbid redistributing", "redistribution is prohibited"
    r"\b(forbid\w*|prohibit\w*|not|never|without permission)\b[^.]*\bredistribut"
    r"|\bredistribut\w*\b[^.]*\b(not (allowed|permitted)|prohibited|forbidden)"
    r"|inside this project only",
    re.I,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recipes.push_to_hub", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="A folder written by recipes.train (model, processor, metrics.json).")
    parser.add_argument("repo_id", help="The model repo to create or update, e.g. my-org/unimp-ml100k.")
    hub = parser.add_argument_group("Hub (as in huggingface_hub)")
    hub.add_argument("--private", action="store_true", default=None,
                     help="Create the repos private; existing repos keep their visibility.")
    hub.add_argument("--revision", default=None, help="Branch to commit to; created from main when missing.")
    hub.add_argument("--commit-message", default=None, help="Commit message (default: 'Upload UniMP ...').")
    hub.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login).")
    card = parser.add_argument_group("model card")
    card.add_argument("--training-config", default=None,
                      help="The recipes.train YAML to show in the card (default: CHECKPOINT/training_config.yaml).")
    card.add_argument("--license", default="other",
                      help="Hub licence id of the weights; 'other' (default) writes LICENSE.md from the data terms.")
    card.add_argument("--no-custom-pipeline", dest="custom_pipeline", action="store_false",
                      help="Omit config.custom_pipelines: pipeline('unimp-recommend') then needs the unimp package "
                           "and stops working with trust_remote_code alone.")
    card.add_argument("--item-image-paths", choices=("relative", "keep", "drop"), default="relative",
                      help="Catalogue image paths in the pushed processor: relative to --image-root (default), "
                           "as saved (local absolute paths), or none.")
    card.add_argument("--image-root", default=None,
                      help="Folder the relative paths start from (default: the dataset folder, else the images' "
                           "common folder).")
    data = parser.add_argument_group("dataset (optional)")
    data.add_argument("--dataset", default=None,
                      help="Push the processed dataset too: a processing.datasets_unimp builder name "
                           "(ml-100k-posters, ...) or a DatasetDict.save_to_disk folder.")
    data.add_argument("--data-dir", default=None, help="Raw-data folder of the builder (default: UNIMP_DATA_DIR).")
    data.add_argument("--protocol", default="leave_one_out", help="Split protocol of the builder.")
    data.add_argument("--dataset-repo-id", default=None,
                      help="The dataset repo (required with --dataset); also listed in the model card's metadata.")
    data.add_argument("--provenance", default=None,
                      help="The source's PROVENANCE.md (default: next to the raw data); its licence goes into both "
                           "cards.")
    parser.add_argument("--export-dir", default=None, help="Assemble the upload here (default: a temp folder).")
    parser.add_argument("--dry-run", action="store_true", help="Build the folder and cards; push nothing.")
    args = parser.parse_args(argv)
    if args.dataset and not args.dataset_repo_id:
        parser.error("--dataset needs --dataset-repo-id (nothing is pushed to a repo you did not name)")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    for option, repo_id in (("repo_id", args.repo_id), ("--dataset-repo-id", args.dataset_repo_id)):
        try:
            if repo_id is not None:
                validate_repo_id(repo_id)
        except HFValidationError as error:
            parser.error(f"{option} {repo_id!r} is not a valid Hub repo id: {error}")
    return args


# ------------------------------------------------------------------ inputs
def read_metrics(checkpoint: Path) -> dict | None:
    """The checkpoint's metrics.json (recipes/train.py or recipes/evaluate.py), or None when absent."""
    path = checkpoint / "metrics.json"
    if not path.is_file():
        logger.warning("%s has no metrics.json: the model card will have no evaluation results", checkpoint)
        return None
    return json.loads(path.read_text())


def read_provenance(path: Path | None) -> tuple[str | None, str | None]:
    """(the whole PROVENANCE.md, its licence section) or (None, None) when there is none."""
    from processing.datasets_unimp import read_licence

    if path is None or not path.is_file():
        return None, None
    return path.read_text(), read_licence(path)


def read_checkpoint_licences(checkpoint: Path) -> dict[str, str]:
    """Dataset name -> terms, as training recorded them in the checkpoint's processor_config.json ({} if none)."""
    path = checkpoint / "processor_config.json"
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text()).get("training_data_licences") or {})


def forbids_redistribution(licence_text: str | None) -> bool:
    """True when the terms say the data must not be redistributed (the PROVENANCE.md wording of shared/data)."""
    return bool(licence_text) and bool(_REDISTRIBUTION_BAN.search(" ".join(licence_text.split())))


def _dataset_folder(name: str | None, data_dir: str | None) -> Path | None:
    """The raw-data folder of a builder name (RecBole names accepted), or None for anything else."""
    if not name:
        return None
    from processing.datasets_unimp import RECBOLE_NAMES, default_data_dir

    name = {value: key for key, value in RECBOLE_NAMES.items()}.get(name, name)
    folder = Path(data_dir) if data_dir else default_data_dir()
    return folder / name if (folder / name).is_dir() else None


def load_processed_dataset(args: argparse.Namespace):
    """(DatasetDict, its name, its source folder or None) for --dataset."""
    path = Path(args.dataset)
    if (path / "dataset_dict.json").is_file():
        from datasets import load_from_disk

        return load_from_disk(str(path)), path.name, path
    from processing.datasets_unimp import load_unimp_dataset

    dataset_dict = load_unimp_dataset(args.dataset, args.data_dir, protocol=args.protocol)
    return dataset_dict, args.dataset, _dataset_folder(args.dataset, args.data_dir)


# ------------------------------------------------------------------ the upload folder
def export_checkpoint(checkpoint: Path, export_dir: Path, *, custom_pipeline: bool, item_image_paths: str,
                      image_root: Path | None):
    """Re-save the checkpoint's model and processor (with remote code) into `export_dir`; returns both.

    With `custom_pipeline`, `Pipeline.save_pretrained` writes `config.custom_pipelines` and copies
    pipeline_unimp.py, so `pipeline("unimp-recommend", model=repo, trust_remote_code=True)` works without the
    package (hf_stack_notes §3).
    """
    from modeling_unimp import UniMPForConditionalGeneration, UniMPProcessor, UniMPRecommendPipeline

    model = UniMPForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = UniMPProcessor.from_pretrained(checkpoint)
    processor.item_images = _rewrite_image_paths(processor.item_images, item_image_paths, image_root)
    export_dir.mkdir(parents=True, exist_ok=True)
    if custom_pipeline:
        UniMPRecommendPipeline(model=model, processor=processor, device="cpu").save_pretrained(export_dir)
    else:
        model.save_pretrained(export_dir)
    processor.save_pretrained(export_dir)
    for name in CARRIED_FILES:
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, export_dir / name)
    return model, processor


def _rewrite_image_paths(paths: list, policy: str, image_root: Path | None) -> list:
    """Local absolute paths mean nothing on the Hub: make them relative to `image_root` (or drop them)."""
    if policy == "keep":
        return list(paths)
    if policy == "drop":
        return [None] * len(paths)
    local = [p for p in paths if isinstance(p, str) and os.path.isabs(p)]
    if not local:
        return list(paths)
    root = str(image_root) if image_root is not None else os.path.commonpath([os.path.dirname(p) for p in local])
    rewritten = []
    for path in paths:
        if isinstance(path, str) and os.path.isabs(path):
            inside = os.path.commonpath([root, path]) == os.path.abspath(root)
            path = os.path.relpath(path, root) if inside else os.path.basename(path)
        rewritten.append(path)
    return rewritten


# ------------------------------------------------------------------ cards
def metric_table(metrics: dict) -> tuple[list[str], list[dict]]:
    """(columns, rows) of every metrics.json block (`unimp`, `pop`, ...), values with 4 decimals."""
    blocks = {key: value for key, value in metrics.items() if isinstance(value, dict) and value
              and all(isinstance(v, (int, float)) for v in value.values())}
    ordered = [key for key in ROW_LABELS if key in blocks] + [key for key in blocks if key not in ROW_LABELS]
    columns = list(blocks[ordered[0]]) if ordered else []
    rows = [{"label": ROW_LABELS.get(key, key), "values": [_format(blocks[key].get(c)) for c in columns]}
            for key in ordered]
    return columns, rows


def _format(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _eval_results(metrics: dict, dataset_type: str, dataset_name: str):
    from huggingface_hub import EvalResult

    results = []
    for key, prefix in MODEL_INDEX_ROWS.items():
        for metric, value in (metrics.get(key) or {}).items():
            results.append(EvalResult(
                task_type="recommendation", task_name="Next-item recommendation (full-catalogue ranking)",
                dataset_type=dataset_type, dataset_name=dataset_name, dataset_split=metrics.get("split"),
                metric_type=f"{prefix}{metric}", metric_value=round(float(value), 4),
                metric_name=metric.upper() + (" (history masked)" if prefix else ""),
            ))
    return results


def _training_summary(metrics: dict | None) -> list[tuple[str, str]]:
    if not metrics:
        return [("Training record", "no metrics.json next to the checkpoint")]
    summary = []
    if metrics.get("dataset"):
        summary.append(("Dataset", f"`{metrics['dataset']}`" + (f", {metrics['protocol']} split"
                                                                 if metrics.get("protocol") else "")))
    if metrics.get("tasks"):
        summary.append(("Tasks", ", ".join(f"`{task}`" for task in metrics["tasks"])))
    if metrics.get("global_step") is not None:
        summary.append(("Optimizer steps", str(metrics["global_step"])))
    if metrics.get("train_seconds") is not None:
        summary.append(("Training time", f"{metrics['train_seconds']} s"))
    if metrics.get("train_loss") is not None:
        summary.append(("Last logged training loss", f"{metrics['train_loss']:.4f}"))
    if metrics.get("best_checkpoint"):
        summary.append(("Selected checkpoint", f"`{Path(metrics['best_checkpoint']).name}` (best validation "
                                               "NDCG@10 during training)"))
    return summary


def licence_notes(weights_licence: str, dataset_name: str | None, licence_text: str | None) -> str:
    """The card's licence section: code Apache-2.0, weights under the training data's terms."""
    lines = ["The UniMP code in this repository (`*.py`) is Apache-2.0, like the `unimp` package."]
    if licence_text:
        lines += ["", f"The weights were trained on `{dataset_name}`; the data's terms, copied from its "
                      "`PROVENANCE.md`, apply to the weights and to the item catalogue the processor carries "
                      "(item ids and titles). Check that they allow your use:", "",
                  *[f"> {line}" if line else ">" for line in licence_text.splitlines()]]
    else:
        lines += ["", "No licence terms of the training data were recorded with this checkpoint; check the terms "
                      "of the data it was trained on before using it."]
    if weights_licence != "other":
        lines += ["", f"The weights are published under `{weights_licence}` by the uploader."]
    return "\n".join(lines)


def render_model_card(*, repo_id: str, model, processor, metrics: dict | None, dataset_repo_id: str | None,
                      dataset_name: str | None, licence: str, licence_text: str | None, training_config: str | None,
                      custom_pipeline: bool, image_paths_note: str):
    """The README.md of the model repo, from model_cards/unimp_model_card.md and the checkpoint's real numbers."""
    from huggingface_hub import ModelCard, ModelCardData

    config = model.config
    metrics = metrics or {}
    columns, rows = metric_table(metrics)
    dataset_name = dataset_name or metrics.get("dataset")
    card_data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        license=licence,
        license_name="training-data-terms" if licence == "other" else None,
        license_link="LICENSE.md" if licence == "other" else None,
        datasets=[dataset_repo_id] if dataset_repo_id else None,
        tags=TAGS,
        metrics=sorted({column.split("@")[0] for column in columns}) or None,
        eval_results=_eval_results(metrics, dataset_repo_id or dataset_name, dataset_name) if rows else None,
    )
    examples = list(zip(processor.item_ids[:3], processor.item_titles[:3]))
    titles = ", ".join(title for _, title in examples if title)
    usage = "\n".join([
        "from transformers import pipeline",
        "",
        f"recommend = pipeline(\"unimp-recommend\", model=\"{repo_id}\""
        + (", trust_remote_code=True)" if custom_pipeline else ")  # needs the unimp package installed"),
        f"recommend({[item_id for item_id, _ in examples]!r}, top_k=10)" + (f"  # {titles}" if titles else ""),
    ])
    return ModelCard.from_template(
        card_data,
        template_path=str(MODEL_CARD_TEMPLATE),
        model_id=repo_id,
        num_items=processor.num_items,
        num_parameters=f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M",
        vocab_size=model.get_input_embeddings().num_embeddings,
        vision_model_type=config.vision_config.model_type,
        image_size=config.vision_config.image_size,
        perceiver_num_latents=config.perceiver_num_latents,
        cross_attn_placement=_every_nth_layer(config.cross_attn_every_n_layers),
        text_model_type=config.text_config.model_type,
        hidden_size=config.text_config.hidden_size,
        num_hidden_layers=config.text_config.num_hidden_layers,
        custom_pipeline=custom_pipeline,
        usage_snippet=usage,
        max_history_items=processor.max_history_items,
        image_paths_note=image_paths_note,
        metric_columns=columns,
        metric_rows=rows,
        eval_dataset=dataset_name,
        eval_split=metrics.get("split", "test"),
        eval_protocol=metrics.get("protocol", "leave-one-out"),
        num_users=metrics.get("num_users"),
        training_summary=_training_summary(metrics or None),
        training_config=training_config,
        licence_notes=licence_notes(licence, dataset_name, licence_text),
    )


def _every_nth_layer(n: int) -> str:
    return "every layer" if n == 1 else f"every {n}{ {2: 'nd', 3: 'rd'}.get(n, 'th')} layer"


def render_dataset_card(*, dataset_dict, dataset_id: str, dataset_name: str, protocol: str, provenance: str,
                        licence_text: str, model_id: str | None, hub_card_data=None):
    """The README.md of the dataset repo: licence and provenance from PROVENANCE.md, splits, usage."""
    from huggingface_hub import DatasetCard, DatasetCardData

    card_data = hub_card_data if hub_card_data is not None else DatasetCardData()
    total = sum(len(split) for split in dataset_dict.values())
    card_data.license = "other"
    card_data.license_name = f"{dataset_name}-source-terms"
    card_data.pretty_name = f"UniMP {dataset_name} ({protocol})"
    card_data.tags = ["unimp", "recommendation", "multimodal"]
    card_data.size_categories = next(label for bound, label in ((1e3, "n<1K"), (1e4, "1K<n<10K"),
                                                                (1e5, "10K<n<100K"), (1e6, "100K<n<1M"),
                                                                (float("inf"), "n>1M")) if total < bound)
    items = dataset_dict["items"] if "items" in dataset_dict else None
    user_splits = [name for name in dataset_dict if name != "items"]
    descriptions = {"items": "one catalogue item: id, title, category, ordered attributes, image"}
    splits = [{"config": config, "name": name, "num_rows": len(split),
               "description": descriptions.get(name, "one user: the history and the next interaction (`target_*`)")}
              for config, splits in _dataset_configs(dataset_dict).items() for name, split in splits.items()]
    with_image = sum(image is not None for image in items.data.column("image").to_pylist()) if items else 0
    shifted = re.sub(r"^(#+)", r"#\1", provenance, flags=re.M)
    from processing.datasets_unimp import read_build_report

    dropped = read_build_report(next(iter(dataset_dict.values()))).get("dropped", {})
    return DatasetCard.from_template(
        card_data,
        template_path=str(DATASET_CARD_TEMPLATE),
        pretty_name=card_data.pretty_name,
        dataset_name=dataset_name,
        dataset_id=dataset_id,
        protocol=protocol,
        model_id=model_id,
        licence_text=licence_text,
        splits=splits,
        num_items=len(items) if items else 0,
        num_items_with_image=with_image,
        user_columns=list(dataset_dict[user_splits[0]].column_names) if user_splits else [],
        item_columns=list(items.column_names) if items else [],
        provenance=shifted,
        dropped=dropped,
    )


def _dataset_configs(dataset_dict) -> dict:
    """{"default": the user splits, "items": the item table}: the Hub configs of the processed dataset."""
    from datasets import DatasetDict

    configs = {"default": DatasetDict({name: split for name, split in dataset_dict.items() if name != "items"})}
    if "items" in dataset_dict:
        configs["items"] = DatasetDict({"items": dataset_dict["items"]})
    return configs


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict:
    """Assemble the upload (model, processor, remote code, cards) and push it; returns what was pushed where."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    checkpoint = Path(args.checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a checkpoint folder (no config.json)")
    metrics = read_metrics(checkpoint)
    dataset_name = args.dataset or (metrics or {}).get("dataset")
    dataset_dict, source_folder = None, _dataset_folder(dataset_name, args.data_dir)
    if args.dataset:
        dataset_dict, dataset_name, source_folder = load_processed_dataset(args)
    provenance_path = Path(args.provenance) if args.provenance else (
        source_folder / "PROVENANCE.md" if source_folder is not None else None)
    provenance, licence_text = read_provenance(provenance_path)
    if dataset_dict is not None and licence_text is None:  # a saved DatasetDict carries its builder's terms
        licence_text = next((split.info.license for split in dataset_dict.values() if split.info.license), None)
    if dataset_dict is not None:
        if licence_text is None:
            raise ValueError(f"no licence terms found for dataset {dataset_name!r} (looked for a '## Licence' section "
                             f"in {provenance_path}); pass --provenance PATH/PROVENANCE.md before pushing data")
        if forbids_redistribution(licence_text) and not args.private:
            raise ValueError(f"the terms of {dataset_name!r} forbid redistributing it ({provenance_path}); push the "
                             "dataset only to a private repo (--private) that stays within those terms, or leave "
                             "--dataset out")

    trained_on = read_checkpoint_licences(checkpoint)  # recorded by recipes.train: the weights' own data terms
    if licence_text is None and len(trained_on) == 1:
        licence_text = next(iter(trained_on.values()))
    forbidding = sorted(name for name, terms in {**trained_on, dataset_name: licence_text}.items()
                        if name and forbids_redistribution(terms))
    if forbidding and not args.private:
        raise ValueError(f"the terms of {', '.join(map(repr, forbidding))} forbid redistributing the data, and the "
                         f"weights and the processor's catalogue (item ids and titles) of {checkpoint} come from it; "
                         "push to a private repo (--private) that stays within those terms")
    if not trained_on and licence_text is None:
        logger.warning("%s records no terms of its training data (processor_config.json training_data_licences) and "
                       "none were found; check that they allow publishing before you push", checkpoint)
    if args.export_dir:
        export_dir = Path(args.export_dir)
        if export_dir.is_dir() and any(export_dir.iterdir()):  # everything in it is uploaded
            raise ValueError(f"--export-dir {export_dir} is not empty; give a new or empty folder")
        return _assemble_and_push(args, checkpoint, export_dir, metrics, dataset_dict, dataset_name, source_folder,
                                  provenance, licence_text)
    with tempfile.TemporaryDirectory(prefix="unimp-push-") as temporary:  # weights-sized: always removed
        result = _assemble_and_push(args, checkpoint, Path(temporary), metrics, dataset_dict, dataset_name,
                                    source_folder, provenance, licence_text)
    if args.dry_run:
        logger.info("the dry run's temporary folder is deleted; pass --export-dir DIR to keep the upload for "
                    "inspection")
    return {**result, "export_dir": None}


def _assemble_and_push(args: argparse.Namespace, checkpoint: Path, export_dir: Path, metrics: dict | None,
                       dataset_dict, dataset_name: str | None, source_folder: Path | None, provenance: str | None,
                       licence_text: str | None) -> dict:
    """Export the checkpoint and the cards into `export_dir`, then push them (or stop there for a dry run)."""
    image_root = Path(args.image_root) if args.image_root else source_folder
    model, processor = export_checkpoint(checkpoint, export_dir, custom_pipeline=args.custom_pipeline,
                                         item_image_paths=args.item_image_paths, image_root=image_root)
    training_config_path = Path(args.training_config) if args.training_config else checkpoint / "training_config.yaml"
    training_config = training_config_path.read_text().strip() if training_config_path.is_file() else None
    example = next((path for path in processor.item_images if isinstance(path, str)), None)
    image_paths_note = {
        "relative": f"Catalogue image paths are relative (e.g. `{example}`); pass `image_root=` (the matching folder "
                    "of your copy of the data) to the pipeline to use the images. The images are not in this repo.",
        "keep": "Catalogue image paths are the uploader's local paths; the images are not in this repo.",
        "drop": "The catalogue carries no image paths: items given by id are read from their text alone.",
    }[args.item_image_paths if example is not None else "drop"]
    card = render_model_card(
        repo_id=args.repo_id, model=model, processor=processor, metrics=metrics,
        dataset_repo_id=args.dataset_repo_id, dataset_name=dataset_name, licence=args.license,
        licence_text=licence_text, training_config=training_config, custom_pipeline=args.custom_pipeline,
        image_paths_note=image_paths_note,
    )
    card.save(export_dir / "README.md")
    if args.license == "other":
        (export_dir / "LICENSE.md").write_text(
            "# Licence\n\n" + licence_notes(args.license, dataset_name, licence_text) + "\n")
    result = {"repo_id": args.repo_id, "revision": args.revision or "main", "export_dir": str(export_dir),
              "files": sorted(p.name for p in export_dir.iterdir() if p.is_file()), "dry_run": args.dry_run,
              "dataset_repo_id": args.dataset_repo_id if dataset_dict is not None else None}
    if args.dry_run:
        if dataset_dict is not None:
            dataset_card = render_dataset_card(
                dataset_dict=dataset_dict, dataset_id=args.dataset_repo_id, dataset_name=dataset_name,
                protocol=args.protocol, provenance=provenance, licence_text=licence_text, model_id=args.repo_id)
            (export_dir / "dataset_card").mkdir(exist_ok=True)
            dataset_card.save(export_dir / "dataset_card" / "README.md")
        logger.info("dry run: the upload is in %s; nothing was pushed", export_dir)
        return result

    result.update(push_model(args, export_dir))
    if dataset_dict is not None:
        result.update(push_dataset(args, dataset_dict, dataset_name, provenance, licence_text))
    logger.info("pushed %s", json.dumps(result))
    return result


def push_model(args: argparse.Namespace, export_dir: Path) -> dict:
    """create_repo + (create_branch) + upload_folder of the assembled checkpoint."""
    from huggingface_hub import HfApi

    api = HfApi(token=args.token)
    api.create_repo(args.repo_id, private=args.private, exist_ok=True)
    if args.revision and args.revision != "main":
        api.create_branch(args.repo_id, branch=args.revision, exist_ok=True)
    commit = api.upload_folder(repo_id=args.repo_id, folder_path=export_dir, revision=args.revision,
                               commit_message=args.commit_message or "Upload UniMP checkpoint, processor and card")
    return {"model_commit": commit.oid, "model_commit_url": commit.commit_url}


def push_dataset(args: argparse.Namespace, dataset_dict, dataset_name: str, provenance: str,
                 licence_text: str) -> dict:
    """DatasetDict.push_to_hub, then the dataset card on top of the metadata (configs, features) it wrote."""
    from huggingface_hub import DatasetCard, HfApi, hf_hub_download

    api = HfApi(token=args.token)
    repo_id = args.dataset_repo_id
    api.create_repo(repo_id, repo_type="dataset", private=args.private, exist_ok=True)
    message = args.commit_message or f"Upload processed {dataset_name}"
    # One DatasetDict holds one feature set: the user splits are the "default" config, the item table "items".
    for config_name, splits in _dataset_configs(dataset_dict).items():
        splits.push_to_hub(repo_id, config_name=config_name, private=args.private, token=args.token,
                           revision=args.revision, commit_message=f"{message} ({config_name})")
    # Reads back the README that `push_to_hub` just wrote to the target repo (only when pushing; nothing else
    # is fetched, and the tests point HF_ENDPOINT at a loopback server).
    readme = hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=args.revision, token=args.token)
    card = render_dataset_card(
        dataset_dict=dataset_dict, dataset_id=repo_id, dataset_name=dataset_name, protocol=args.protocol,
        provenance=provenance, licence_text=licence_text, model_id=args.repo_id,
        hub_card_data=DatasetCard.load(readme).data,
    )
    commit = card.push_to_hub(repo_id, token=args.token, repo_type="dataset", revision=args.revision,
                              commit_message=f"{message}: dataset card")
    return {"dataset_commit": getattr(commit, "oid", None), "dataset_commit_url": str(commit)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
