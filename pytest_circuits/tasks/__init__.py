"""Prompt-set builders: seeded, reproducible tasks that claims measure."""

from .comparison import Comparison, comparison
from .comparison import distractor as comparison_distractor
from .comparison import prob_diff as comparison_prob_diff
from .facts import facts, load_facts
from .greater_than import GreaterThan, cutoff_sharpness, from_rows, greater_than, per_prompt_prob_diff, prob_diff

__all__ = ["GreaterThan", "greater_than", "from_rows", "prob_diff", "per_prompt_prob_diff", "cutoff_sharpness",
           "facts", "load_facts", "Comparison", "comparison", "comparison_prob_diff", "comparison_distractor"]
