"""Prompt-set builders: seeded, reproducible tasks that claims measure."""

from .facts import facts, load_facts
from .greater_than import GreaterThan, cutoff_sharpness, greater_than, prob_diff

__all__ = ["GreaterThan", "greater_than", "prob_diff", "cutoff_sharpness", "facts", "load_facts"]
