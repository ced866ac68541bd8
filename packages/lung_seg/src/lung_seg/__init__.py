"""Lung-nodule segmentation from CT DICOM (Chaudhry et al., arXiv 2208.00641) with MONAI and Lightning."""

from lung_seg.model import UNet

__all__ = ["UNet"]
