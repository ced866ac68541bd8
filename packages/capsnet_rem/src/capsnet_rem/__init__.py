"""REM (routing entropy minimisation) and efficient capsule networks, in plain PyTorch with a Lightning CLI."""

from capsnet_rem.capsules import ClassCapsules, PrimaryCapsules, dynamic_routing, margin_loss, squash
from capsnet_rem.model import CapsNet, compact

__all__ = ["CapsNet", "ClassCapsules", "PrimaryCapsules", "compact", "dynamic_routing", "margin_loss", "squash"]
