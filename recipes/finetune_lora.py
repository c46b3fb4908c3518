"""LoRA fine-tuning of a trained UniMP checkpoint with PEFT (issue 4): `train.main` in its "lora" stage.

Usage: python -m recipes.finetune_lora recipes/configs/lora_ml100k.yaml model_name_or_path=outputs/ml100k_tiny
Writes the adapter to OUTPUT_DIR/adapter and the merged model (a plain UniMP checkpoint) to OUTPUT_DIR.
"""

import sys

from . import train


def main(recipe, training) -> dict:
    if not recipe.model_name_or_path:
        raise ValueError("finetune_lora needs model_name_or_path: the UniMP checkpoint to adapt")
    if training.trainable_stage != "lora":
        raise ValueError(f"finetune_lora trains the 'lora' stage; the config says {training.trainable_stage!r}")
    return train.main(recipe, training)


if __name__ == "__main__":
    print(main(*train.parse_args(sys.argv[1:])))
