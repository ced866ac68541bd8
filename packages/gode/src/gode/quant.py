"""GoDe's quantisation: int8 (per-channel min-max) on SH coefficients, fp16 on geometry, and their QAT versions.

The fake-quantised forward value equals ``dequantize_int8(quantize_int8(x))`` bit for bit, and the backward pass is
the straight-through identity, so what fine-tuning optimises is exactly what the compressed file decodes to.
"""

from __future__ import annotations

import torch

INT8_LEVELS = 255  # codes 0..255 (stored as uint8)


def int8_range(x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``lo, hi`` (each ``x.shape[1:]``) of ``x [N, ...]`` over the rows in ``mask`` (default all)."""
    rows = x.detach() if mask is None else x.detach()[mask]
    if rows.shape[0] == 0:
        zeros = torch.zeros(x.shape[1:], dtype=x.dtype, device=x.device)
        return zeros, zeros
    return rows.amin(0), rows.amax(0)


def _step(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    # A constant channel gets step 1 so that it quantises to code 0 and decodes to lo exactly.
    return torch.where(hi > lo, (hi - lo) / INT8_LEVELS, torch.ones_like(hi))


def quantize_int8(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """uint8 codes ``round((x - lo) / step)`` clamped to [0, 255], ``step = (hi - lo) / 255`` per channel."""
    return torch.round((x.detach() - lo) / _step(lo, hi)).clamp(0, INT8_LEVELS).to(torch.uint8)


def dequantize_int8(codes: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Values ``lo + code * step`` of uint8 ``codes``."""
    return lo + codes.to(lo.dtype) * _step(lo, hi)


def fake_quant_int8(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Quantise-dequantise in the forward pass, identity gradient (straight-through estimator)."""
    # ``q + (x - x.detach())`` is exactly ``q`` in the forward pass (``x + (q - x)`` would not be, in floats).
    return dequantize_int8(quantize_int8(x, lo, hi), lo, hi) + (x - x.detach())


def fake_quant_fp16(x: torch.Tensor) -> torch.Tensor:
    """Round to float16 and back in the forward pass, identity gradient."""
    return x.detach().half().to(x.dtype) + (x - x.detach())


def quantize_params(
    raw: dict[str, torch.Tensor], mask: torch.Tensor | None = None, fake: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """GoDe's scheme over a model's raw parameters: int8 on ``sh0``/``shN``, fp16 on everything else.

    Args:
        raw: Raw parameters (see :class:`gode.gaussians.Gaussians`).
        mask: Rows ``[N]`` that define the int8 ranges (the stored Gaussians; default all).
        fake: Straight-through (differentiable) when True; plain detached values otherwise.

    Returns:
        Quantised raw parameters (same shapes and dtype) and the int8 ranges ``{name: (lo, hi)}``.
    """
    out, ranges = {}, {}
    for name, x in raw.items():
        if name in ("sh0", "shN"):
            lo, hi = int8_range(x, mask)
            ranges[name] = (lo, hi)
            out[name] = fake_quant_int8(x, lo, hi)
        else:
            out[name] = fake_quant_fp16(x)
        if not fake:
            out[name] = out[name].detach()
    return out, ranges
