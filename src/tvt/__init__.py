"""tvt: TVT (Three-Way Vision Transformer) for zero-shot sketch-based image retrieval."""

__version__ = "0.1.0"
