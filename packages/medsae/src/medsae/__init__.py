"""MedSAE: sparse autoencoders that dissect a medical CLIP's image embeddings (arXiv 2510.26411)."""

from medsae.metrics import monosemanticity
from medsae.sae import VARIANTS, make_sae

__all__ = ["VARIANTS", "make_sae", "monosemanticity"]
