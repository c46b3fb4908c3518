"""Item -> text chunk and the per-task prompt templates (reference unimp_method.md §2); pure Python."""

# Token strings shared by the templates, the processor and the model config (reference §1.5).
IMAGE_TOKEN = "<image>"
END_OF_CHUNK_TOKEN = "<|endofchunk|>"
ANSWER_TOKEN = "<answer>"
RATING_TOKENS = tuple(f"rate_{r}" for r in range(1, 6))  # rating answers, reference §1.5
SELECTION_TOKENS = tuple(f"s_{i}" for i in range(5))  # selection slots, reference §1.5


def item_token(index: int) -> str:
    """The single added token that names catalogue item `index` (issue 2: one `<item_k>` per item)."""
    return f"<item_{index}>"
