"""UniMPDataCollator: padding, labels on answer spans only, per-token task weights (reference §3.1-§3.4)."""

from dataclasses import dataclass

import torch

from modeling_unimp.catalogue_cache import UniMPImageCache
from modeling_unimp.modeling_unimp import IGNORE_INDEX
from modeling_unimp.processing_unimp import UniMPProcessor
from modeling_unimp.prompt_templates import ANSWER_TOKEN, END_OF_CHUNK_TOKEN, IMAGE_TOKEN


@dataclass
class UniMPDataCollator:
    r"""Batch rendered prompts (`prompt_templates.render_record` output) into model inputs plus `labels` and
    `token_weights`.

    Supervised tokens are the answer spans: everything after an `<answer>` up to its `<|endofchunk|>`; the final
    answer runs to the end of the sequence, EOS included (reference §3.1). `<answer>`, `<image>`, padding and
    position 0 are never supervised. Spans of history items (context reconstruction, §3.2) get the weight
    `task_weight × context_weight`; the final answer gets `task_weight` (§3.4).

    Example:
        >>> from modeling_unimp import UniMPProcessor, train_catalogue_tokenizer
        >>> tokenizer = train_catalogue_tokenizer(["Heat Toy Story"], vocab_size=300)
        >>> processor = UniMPProcessor.from_catalogue(tokenizer, ["a", "b"], image_size=32)
        >>> collator = UniMPDataCollator(processor, context_weight=0.5)
        >>> batch = collator([{"text": "<image> Heat <answer> <item_0> <|endofchunk|> Next? <answer> <item_1>",
        ...                    "images": [None], "task_weight": 2.0}])
        >>> processor.tokenizer.convert_ids_to_tokens(batch["labels"][0][batch["labels"][0] != -100].tolist())
        ['<item_0>', '<item_1>', '<|endoftext|>']
        >>> batch["token_weights"][0][batch["labels"][0] != -100].tolist()
        [1.0, 2.0, 2.0]
    """

    processor: UniMPProcessor
    context_weight: float = 1.0  # official behaviour: history answers weigh as much as the target (§3.2)
    for_generation: bool = False  # left padding, no EOS, no labels: prompts that end at `<answer>`
    # each image preprocessed once for the whole run instead of once per batch that shows it (issue 13)
    image_cache: UniMPImageCache | None = None

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("UniMPDataCollator got an empty batch")
        for index, example in enumerate(examples):
            for key in ("text", "images"):
                if key not in example:
                    raise ValueError(f"example {index} has no {key!r} field; pass render_record(...) output")
        images = [list(example["images"]) for example in examples]
        if self.image_cache is not None:  # cached (3, H, W) pixel values; None stays None (image-less item)
            flat = [image for row in images for image in row]
            pixels, present = self.image_cache.pixel_values(flat)
            cached = iter([pixels[n] if present[n] else None for n in range(len(flat))])
            images = [[next(cached) for _ in row] for row in images]
        batch = self.processor(
            text=[example["text"] for example in examples],
            images=images,
            padding_side="left" if self.for_generation else "right",
            add_eos=not self.for_generation,
        )
        batch = dict(batch)
        if self.for_generation:
            return batch
        task_weights = torch.tensor([float(example.get("task_weight", 1.0)) for example in examples])
        labels, token_weights = self.build_labels(batch["input_ids"], batch["attention_mask"], task_weights)
        batch["labels"], batch["token_weights"] = labels, token_weights
        return batch

    def build_labels(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task_weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels (B, T) with -100 outside answer spans, and token_weights (B, T), 0 where unsupervised.

        A span runs from the token after an `<answer>` up to the first `<|endofchunk|>`, `<answer>`, `<image>` or
        padding; computed with cumulative counts instead of a loop over tokens (issue 13).
        """
        tokenizer = self.processor.tokenizer
        answer_id = tokenizer.convert_tokens_to_ids(ANSWER_TOKEN)
        end_of_chunk_id = tokenizer.convert_tokens_to_ids(END_OF_CHUNK_TOKEN)
        image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        real = attention_mask.bool()
        is_answer = (input_ids == answer_id) & real  # (B, T)
        stops = torch.isin(input_ids, torch.tensor([end_of_chunk_id, answer_id, image_id])) | ~real
        stops_so_far = stops.long().cumsum(dim=-1)  # (B, T), counts the answer token itself
        # the stop count at the latest answer: unchanged since then means no stop between it and t
        at_last_answer = torch.where(is_answer, stops_so_far, -1).cummax(dim=-1).values
        supervised = (stops_so_far == at_last_answer) & ~is_answer & (at_last_answer >= 0)
        span_index = is_answer.long().cumsum(dim=-1)  # (B, T): 1 for the first answer's span, ...
        is_target = span_index == span_index[:, -1:]
        weights = task_weights.float().unsqueeze(1) * torch.where(is_target, 1.0, float(self.context_weight))
        labels = torch.where(supervised, input_ids, IGNORE_INDEX)
        weights = torch.where(supervised, weights, 0.0)
        labels[:, 0] = IGNORE_INDEX
        weights[:, 0] = 0.0
        return labels, weights


__all__ = ["UniMPDataCollator"]
