"""Attribution heatmaps ``[B, H, W]`` at input resolution for the target classes.

Integrated Gradients and Guided Grad-CAM come from captum, Grad-CAM from pytorch-grad-cam, and the ViT attention map
is the last layer's CLS-to-patch attention. Every method is a plain function of a backbone (see
:mod:`pruning_vision.models`), images ``[B, C, H, W]`` and targets ``[B]``.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn import functional as F

METHODS = ("integrated_gradients", "gradcam", "guided_gradcam", "attention")


def integrated_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int = 16) -> torch.Tensor:
    """Integrated Gradients from a black baseline, summed over channels."""
    from captum.attr import IntegratedGradients

    attr = IntegratedGradients(model).attribute(
        x, baselines=torch.zeros_like(x), target=target, n_steps=steps, internal_batch_size=len(x) * steps
    )
    return attr.sum(1).detach()


def gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM on the backbone's ``gradcam_layer()`` (pytorch-grad-cam; ReLU'd, per-image [0, 1], upsampled)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer, reshape = model.gradcam_layer()
    was_training = model.training
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in target])
    model.train(was_training)
    return torch.from_numpy(maps).to(x.device, torch.float32)


def guided_gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Guided Grad-CAM (captum) on the backbone's ``gradcam_layer()``, summed over channels (CNNs)."""
    from captum.attr import GuidedGradCam

    layer, reshape = model.gradcam_layer()
    if reshape is not None:
        raise ValueError("guided_gradcam needs a convolutional gradcam_layer (use it with CNN backbones)")
    with warnings.catch_warnings():  # captum announces its ReLU hooks and the grad requirement on every call
        warnings.simplefilter("ignore", UserWarning)
        return GuidedGradCam(model, layer).attribute(x.detach().requires_grad_(), target=target).sum(1).detach()


def attention(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Last-layer CLS attention (mean over heads), bilinearly upsampled to the input size (ViTs)."""
    if not hasattr(model, "cls_attention"):
        raise ValueError(f"{type(model).__name__} has no attention maps")
    with torch.no_grad():
        maps = model.cls_attention(x)
    return F.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def heatmaps(method: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor, ig_steps: int = 16) -> torch.Tensor:
    """Heatmaps ``[B, H, W]`` of ``method`` (one of :data:`METHODS`)."""
    if method == "integrated_gradients":
        return integrated_gradients(model, x, target, ig_steps)
    if method == "gradcam":
        return gradcam(model, x, target)
    if method == "guided_gradcam":
        return guided_gradcam(model, x, target)
    if method == "attention":
        return attention(model, x, target)
    raise ValueError(f"unknown attribution method {method!r}; choose from {METHODS}")
