"""Share of padding in a recipe's training batches, random vs length-grouped (issue 13, BENCHMARKS.md §8).

Renders and tokenizes the training windows of a `recipes.train` config with its own processor (no training), then
counts the padded tokens of consecutive batches of a seeded shuffle, and of the same shuffle grouped by length the way
transformers' `LengthGroupedSampler` does (megabatches of 50 batches, each sorted by length).

Usage: python -m benchmarks.padding [CONFIG.yaml] [--batch-size 32]
"""

import argparse
import random

from modeling_unimp import UniMPConfig
from recipes import train as train_recipe
from recipes.common import build_processor, load_dataset_dict, render_examples

MEGABATCH_BATCHES = 50   # transformers.trainer_pt_utils.get_length_grouped_indices' default mega_batch_mult


def padding_share(lengths: list[int], order: list[int], batch_size: int) -> tuple[float, int]:
    """(padded share, padded token count) of the full batches of `order`, each padded to its longest example."""
    real = padded = 0
    for start in range(0, len(order) - batch_size + 1, batch_size):
        batch = [lengths[i] for i in order[start:start + batch_size]]
        real += sum(batch)
        padded += max(batch) * len(batch)
    if padded == 0:
        raise ValueError(f"fewer than one batch of {batch_size} examples")
    return 1 - real / padded, padded


def length_grouped(order: list[int], lengths: list[int], batch_size: int) -> list[int]:
    """`order` cut into megabatches of MEGABATCH_BATCHES batches, each sorted by decreasing length."""
    size = batch_size * MEGABATCH_BATCHES
    return [i for start in range(0, len(order), size)
            for i in sorted(order[start:start + size], key=lambda i: -lengths[i])]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default="recipes/configs/ml100k_tiny.yaml")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    recipe, training = train_recipe.parse_args([args.config, "output_dir=outputs/padding"])
    dataset_dict = load_dataset_dict(recipe)
    # the processor a fresh run of the config builds (tokens only: no model is needed)
    image_size = getattr(UniMPConfig, recipe.model_preset)().vision_config.image_size
    processor = build_processor(dataset_dict, recipe, image_size)
    if training.max_history_items is not None:
        processor.max_history_items = training.max_history_items
    examples = render_examples(dataset_dict, processor, tasks=recipe.tasks, split="train", task_weights=None,
                               num_windows_per_user=recipe.num_windows_per_user, seed=training.seed)
    lengths = [len(processor.tokenizer(example["text"])["input_ids"]) for example in examples]
    order = list(range(len(lengths)))
    random.Random(args.seed).shuffle(order)
    shuffled, shuffled_tokens = padding_share(lengths, order, args.batch_size)
    grouped, grouped_tokens = padding_share(lengths, length_grouped(order, lengths, args.batch_size), args.batch_size)
    result = {"examples": len(lengths), "min_tokens": min(lengths), "mean_tokens": sum(lengths) / len(lengths),
              "max_tokens": max(lengths), "padding_random": shuffled, "padding_length_grouped": grouped,
              "padded_tokens_ratio": grouped_tokens / shuffled_tokens}
    print(result)
    return result


if __name__ == "__main__":
    main()
