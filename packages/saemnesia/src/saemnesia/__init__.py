"""SAEmnesia: supervised sparse autoencoders with one latent per concept, and concept erasure in diffusion models."""

from saemnesia.erasure import ConceptEraser, feature_scores, select_by_quantile
from saemnesia.sae import TopKSAE, batch_topk_activation, topk_activation
from saemnesia.supervised import concept_loss, decorrelation_loss, greedy_assignment, supervised_loss

__all__ = [
    "ConceptEraser",
    "TopKSAE",
    "batch_topk_activation",
    "concept_loss",
    "decorrelation_loss",
    "feature_scores",
    "greedy_assignment",
    "select_by_quantile",
    "supervised_loss",
    "topk_activation",
]
