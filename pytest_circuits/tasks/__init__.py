"""Prompt-set builders: seeded, reproducible tasks that claims measure."""

from .comparison import Comparison, comparison
from .comparison import distractor as comparison_distractor
from .comparison import prob_diff as comparison_prob_diff
from .facts import facts, load_facts
from .greater_than import GreaterThan, cutoff_sharpness, from_rows, greater_than, per_prompt_prob_diff, prob_diff
from .induction import repeated_tokens
from .ioi import ioi
from .logit_difference import LogitDifference, logit_difference
from .ordinal import ordinals, successor_prompts

__all__ = ["GreaterThan", "greater_than", "from_rows", "prob_diff", "per_prompt_prob_diff", "cutoff_sharpness",
           "facts", "load_facts", "repeated_tokens", "ioi", "ordinals", "successor_prompts", "Comparison", "comparison", "comparison_prob_diff", "comparison_distractor",
           "LogitDifference", "logit_difference"]
