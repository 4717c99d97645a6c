"""resa-interp: SAE feature analysis of reasoning models (the Resa method as a toolkit)."""

__version__ = "0.1.0"
