"""Boost Your NeRF (ECCV 2024): a model-agnostic mixture of fast-NeRF experts with a NeRF gate."""

from boost_nerf.experts import DenseVoxelExpert, HashGridExpert, TensoRFExpert, make_expert
from boost_nerf.gate import NeRFGate, top_k_routing
from boost_nerf.losses import resolution_balancing_loss
from boost_nerf.moe import BoostNeRF, dispatch

__all__ = [
    "BoostNeRF",
    "DenseVoxelExpert",
    "HashGridExpert",
    "NeRFGate",
    "TensoRFExpert",
    "dispatch",
    "make_expert",
    "resolution_balancing_loss",
    "top_k_routing",
]
