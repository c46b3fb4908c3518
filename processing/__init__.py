"""unimp data side: dataset builders, task records, the collator and the metrics (see ARCHITECTURE.md)."""

from .collator_unimp import UniMPDataCollator

__all__ = ["UniMPDataCollator"]
