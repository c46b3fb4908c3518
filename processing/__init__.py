"""unimp data side: prompt templates, the processor, the collator, dataset builders and metrics."""

from .collator_unimp import IGNORE_INDEX, UniMPDataCollator
from .processing_unimp import UniMPProcessor, make_image_processor, train_catalogue_tokenizer

__all__ = ["IGNORE_INDEX", "UniMPDataCollator", "UniMPProcessor", "make_image_processor", "train_catalogue_tokenizer"]
