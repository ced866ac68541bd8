"""When does pruning benefit vision representations? (Cassano et al., 2025): pruning, attribution, LOST, OOD."""

from pruning_vision.lost import lost
from pruning_vision.metrics import CorLoc, RelevanceMassAccuracy, RelevanceRankAccuracy
from pruning_vision.pruning import magnitude_prune, schedule, snip_prune

__all__ = [
    "CorLoc",
    "RelevanceMassAccuracy",
    "RelevanceRankAccuracy",
    "lost",
    "magnitude_prune",
    "schedule",
    "snip_prune",
]
