"""The parametric model-vs-human distortions (Geirhos et al.) as batched image transforms.

Every function maps images ``[B, C, H, W]`` (RGB in [0, 1]) to images of the same shape. Random ones take one
``torch.Generator`` per image (seeded by the image's index) so that a result never depends on batch composition or
on the global RNG. Filters act on the periodic image (FFT), so they are exact linear operators.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

LUMA = (0.299, 0.587, 0.114)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """Luma ``[B, 1, H, W]`` of RGB images (ITU-R BT.601 weights)."""
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def greyscale(x: torch.Tensor) -> torch.Tensor:
    """Luminance copied to all three channels."""
    return luminance(x).expand_as(x).clone()


def contrast(x: torch.Tensor, level: float) -> torch.Tensor:
    """Contrast scaled to ``level`` around each image's mean (``level=1`` is the identity; the mean is kept)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + level * (x - mean)


def uniform_noise(x: torch.Tensor, width: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Add i.i.d. noise from U(-width, width) per pixel (shared by the channels) and clip to [0, 1]."""
    h, w = x.shape[-2:]
    noise = torch.stack([torch.rand(1, h, w, generator=g) for g in generators]).to(x) * 2 - 1
    return (x + width * noise).clamp(0, 1)


def _freqs(h: int, w: int, device) -> torch.Tensor:
    """Squared radial frequency ``fx² + fy²`` in cycles/pixel on the FFT grid, ``[h, w]``."""
    fy = torch.fft.fftfreq(h, device=device, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(w, device=device, dtype=torch.float64)[None, :]
    return fy**2 + fx**2


def low_pass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur with standard deviation ``sigma`` pixels (periodic boundary).

    The transfer function is ``exp(-2π²σ²f²)``: the DC term (the mean) is kept and high frequencies vanish.
    """
    gain = torch.exp(-2 * math.pi**2 * sigma**2 * _freqs(*x.shape[-2:], x.device)).to(x.dtype)
    return torch.fft.ifft2(torch.fft.fft2(x) * gain).real


def high_pass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Image minus its Gaussian blur, plus the image mean (so that the result is a visible grey image)."""
    return x - low_pass(x, sigma) + x.mean(dim=(-2, -1), keepdim=True)


def _antisymmetric(u: torch.Tensor) -> torch.Tensor:
    """Make a ``[..., H, W]`` field odd under ``f -> -f`` (real inverse FFT), zero on self-conjugate frequencies.

    Each pair ``{f, -f}`` takes the value drawn at the member with the smaller flat index, negated at the other.
    """
    h, w = u.shape[-2:]
    idx = torch.arange(h * w, device=u.device).view(h, w)
    mirror = torch.roll(torch.flip(idx, (0, 1)), (1, 1), (0, 1))  # flat index of -f
    u_neg = torch.roll(torch.flip(u, (-2, -1)), (1, 1), (-2, -1))
    return torch.where(idx < mirror, u, torch.where(idx > mirror, -u_neg, torch.zeros_like(u)))


def phase_scrambling(x: torch.Tensor, width_deg: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Add uniform phase noise in [-width, width] degrees to every frequency, keeping the amplitude spectrum.

    The same noise field is used for the three channels; it is odd in frequency, so the output is real and every
    amplitude (and the mean) is unchanged.
    """
    h, w = x.shape[-2:]
    u = torch.stack([torch.rand(h, w, generator=g, dtype=torch.float64) for g in generators]).to(x.device)
    phi = _antisymmetric((u * 2 - 1) * math.radians(width_deg))[:, None]  # [B, 1, H, W]
    spec = torch.fft.fft2(x.double())
    return torch.fft.ifft2(spec * torch.exp(1j * phi)).real.to(x.dtype)


def power_equalisation(x: torch.Tensor, amplitude: torch.Tensor | None = None) -> torch.Tensor:
    """Replace each image's amplitude spectrum with a common one, keeping its phase.

    Args:
        x: Images ``[B, C, H, W]``.
        amplitude: The common amplitude spectrum ``[C, H, W]``; the mean over the batch when ``None``.
    """
    spec = torch.fft.fft2(x.double())
    amp = spec.abs()
    target = amp.mean(0) if amplitude is None else amplitude.to(amp)
    phase = torch.exp(1j * spec.angle())
    return torch.fft.ifft2(target * phase).real.to(x.dtype)


def rotation(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate by a multiple of 90 degrees (counter-clockwise)."""
    if degrees % 90:
        raise ValueError(f"rotation supports multiples of 90 degrees, got {degrees}")
    return torch.rot90(x, int(degrees // 90) % 4, dims=(-2, -1))


def false_colour(x: torch.Tensor) -> torch.Tensor:
    """Opponent colours: chroma negated around the luminance, which is kept (``x' = 2·L - x``), clipped to [0, 1]."""
    return (2 * luminance(x) - x).clamp(0, 1)


#: name -> (function, whether it takes per-image generators)
DISTORTIONS = {
    "contrast": (contrast, False),
    "uniform_noise": (uniform_noise, True),
    "low_pass": (low_pass, False),
    "high_pass": (high_pass, False),
    "phase_scrambling": (phase_scrambling, True),
    "power_equalisation": (lambda x, _level=None: power_equalisation(x), False),
    "rotation": (rotation, False),
    "false_colour": (lambda x, _level=None: false_colour(x), False),
    "greyscale": (lambda x, _level=None: greyscale(x), False),
}


def distort(name: str, x: torch.Tensor, level: float | None, indices: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Apply distortion ``name`` at ``level``; random draws are seeded by ``(seed, index)`` of each image.

    Args:
        name: A key of :data:`DISTORTIONS`.
        x: Images ``[B, C, H, W]``.
        level: The distortion's parameter (contrast level, noise width, sigma, degrees); ignored where it has none.
        indices: ``[B]`` dataset indices of the images.
        seed: Seed of the distortion's random draws.
    """
    if name not in DISTORTIONS:
        raise ValueError(f"unknown distortion {name!r}; choose from {sorted(DISTORTIONS)}")
    fn, random = DISTORTIONS[name]
    if random:
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + int(i)) for i in indices]
        return fn(x, level, gens)
    return fn(x, level)
