"""GoDe: Gaussians on Demand — progressive levels of detail and scalable compression for 3D Gaussian Splatting."""

from gode.gaussians import Gaussians
from gode.levels import assign_levels, level_mask, level_sizes
from gode.rasterizer import Render, rasterize

__all__ = ["Gaussians", "Render", "assign_levels", "level_mask", "level_sizes", "rasterize"]
