"""What every folder `recipes.train` writes carries, final or `checkpoint-N/` (issue 15): the processor (the trainer's
`processing_class`), a `custom_pipelines` declaration in the config and the pipeline's code, as a pushed repo has
(recipes/push_to_hub.py), so `AutoProcessor.from_pretrained(folder)` and
`pipeline("unimp-recommend", model=folder, trust_remote_code=True)` work on any of them.
"""

from pathlib import Path

from transformers import TrainerCallback
from transformers.dynamic_module_utils import custom_object_save
from transformers.pipelines import PIPELINE_REGISTRY

from modeling_unimp import UniMPRecommendPipeline

RECOMMEND_TASK = "unimp-recommend"


def custom_pipelines_entry() -> dict:
    """The config's `custom_pipelines` value, as `Pipeline.save_pretrained` writes it (hf_stack_notes §3)."""
    info = dict(PIPELINE_REGISTRY.supported_tasks[RECOMMEND_TASK])
    pipeline_class = info["impl"]
    info["impl"] = f"{pipeline_class.__module__.split('.')[-1]}.{pipeline_class.__name__}"
    info["pt"] = [auto_class.__name__ for auto_class in info["pt"]]  # Auto class names: resolved in transformers
    return {RECOMMEND_TASK: info}


def declare_custom_pipeline(model) -> None:
    """Record the declaration in `model.config` (a PEFT wrapper shares its base model's config)."""
    model.config.custom_pipelines = custom_pipelines_entry()


def write_pipeline_code(folder: str | Path) -> list[str]:
    """Copy pipeline_unimp.py and its relative imports next to a saved model (the files the declaration names)."""
    return custom_object_save(UniMPRecommendPipeline, str(folder))


class PipelineCodeCallback(TrainerCallback):
    """After each checkpoint save, put the pipeline's code into `checkpoint-N/` next to the config that declares it
    (the processor is saved there by `Trainer` itself, as its `processing_class`)."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.should_save and (folder / "config.json").is_file():  # a LoRA checkpoint holds the adapter only
            write_pipeline_code(folder)
        return control


__all__ = ["PipelineCodeCallback", "custom_pipelines_entry", "declare_custom_pipeline", "write_pipeline_code"]
