"""aapp: alignment-aware dynamic structured pruning of LLMs."""

__version__ = "0.1.0"
