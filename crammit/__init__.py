"""crammit: train a crammed BERT on a budget, and study how loss scales with compute."""

__version__ = "0.1.0"
