"""Contrastive-encoder-conditioned diffusion for unsupervised anomaly detection in brain MRI (arXiv 2406.00772)."""

__version__ = "0.1.0"
