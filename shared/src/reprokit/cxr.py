"""Chest-X-ray-like images with exact findings, built on the real lung masks shipped in the torchxrayvision wheel.

No X-ray image can be downloaded here, but torchxrayvision's wheel ships 517 hand-drawn binary lung masks
(``torchxrayvision/data/semantic_masks_v7labs_lungs.zip``; 435 of them outline both lungs). Each synthetic image takes
one of those real lung shapes, draws a soft-tissue body, mediastinum, heart shadow and ribs around it, adds the
findings it was asked for, and finally passes through a "hospital" acquisition style. Every finding is drawn from an
explicit rule, so the labels are exact ground truth, not annotations.

API::

    from reprokit import cxr

    masks = cxr.lung_masks(128)                      # [M, 128, 128] bool, real lung shapes (cached on disk)
    batch = cxr.generate(1000, seed=0, size=96,      # CXRBatch: images [N,1,S,S] in [0,1], findings [N,F] bool,
                         prevalence={"effusion": 0.3},  # covid [N] bool, patient [N] (the lung-mask index),
                         covid=[...], styles=[...])     # style [N] (index into the styles given, -1 = neutral)
    cxr.FINDINGS                                      # the finding names, in the column order of batch.findings
    cxr.HOSPITALS["molinette"]                        # an AcquisitionStyle preset (4 named after CORDA's hospitals)
    img, findings = cxr.render_one(index=7, seed=0)  # a single image: exactly batch.images[7] of the same call

Findings (``FINDINGS``): consolidation (1-3 dense focal blobs in one lung), nodule (one small round dense spot), edema
(bilateral perihilar haze), effusion (one costophrenic angle filled up to a meniscus), cardiomegaly (heart wider than
half the thorax), wide_mediastinum (a widened upper mediastinal band) and support_device (a tube down the midline and
a dense rectangular generator). ``covid=True`` adds a separate COVID-like pattern: bilateral, peripheral,
lower-zone, patchy ground-glass haze.

Acquisition styles (:class:`AcquisitionStyle`): an intensity curve (gamma, contrast, offset), Gaussian noise, a bright
corner marker and collimation (dark borders). They change nothing in the anatomy, which is what makes them a nuisance
attribute that a classifier can exploit when it is correlated with the label.

Determinism: image ``i`` of a ``generate(..., seed=s)`` call depends only on ``(s, i)`` and the labels/style it is
given (its own ``numpy.random.SeedSequence([s, i])`` stream), never on the global RNG, the batch size or the order.
Speed: about 1-2 ms per 96-128 px image on one CPU core after the one-off mask load (~4 s, then cached on disk under
``$REPROKIT_CACHE`` or ``~/.cache/reprokit``).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import math
import os
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

#: The 14 CheXpert observations, in the column order of CheXpert's CSV files (the real-data path of corsa and
#: medsae reads these columns).
CHEXPERT_LABELS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

FINDINGS = (
    "consolidation",
    "nodule",
    "edema",
    "effusion",
    "cardiomegaly",
    "wide_mediastinum",
    "support_device",
)
DEFAULT_PREVALENCE = dict.fromkeys(FINDINGS, 0.2)
MASK_ZIP = "data/semantic_masks_v7labs_lungs.zip"
BASE_SIZE = 256  # resolution of the cached masks; other sizes are resized from it
CACHE_ENV = "REPROKIT_CACHE"
_CACHE_VERSION = 1


# ------------------------------------------------------------------------------------------------------ lung masks
def mask_zip_path() -> Path:
    """Path of the lung-mask zip inside the installed torchxrayvision package (without importing it)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("reprokit.cxr needs the torchxrayvision wheel (pip install torchxrayvision)")
    path = Path(next(iter(spec.submodule_search_locations))) / MASK_ZIP
    if not path.is_file():
        raise FileNotFoundError(f"torchxrayvision is installed but its lung masks are missing: {path}")
    return path


def _cache_file() -> Path:
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "reprokit")
    return root / f"cxr_lung_masks_v{_CACHE_VERSION}_{BASE_SIZE}.npz"


def _decode_masks(zip_path: Path) -> tuple[np.ndarray, list[str]]:
    """Decode, keep two-lung masks, crop each to its bounding box and resize to ``BASE_SIZE`` squared."""
    from PIL import Image

    kept, names = [], []
    with zipfile.ZipFile(zip_path) as archive:
        for name in sorted(n for n in archive.namelist() if not n.endswith("/")):
            image = Image.open(io.BytesIO(archive.read(name)))
            image.draft("L", (2 * BASE_SIZE, 2 * BASE_SIZE))  # JPEG: decode at reduced scale, much faster
            mask = np.asarray(image.convert("L")) > 127
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            if len(rows) < 16 or len(cols) < 16:
                continue
            crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            half = crop.shape[1] // 2
            left, right = crop[:, :half].mean(), crop[:, half:].mean()
            # Keep masks outlining both lungs, with lungs filling a plausible share of their bounding box.
            if min(left, right) < 0.15 or not 0.2 < crop.mean() < 0.85:
                continue
            resized = Image.fromarray(crop.astype(np.uint8) * 255).resize((BASE_SIZE, BASE_SIZE), Image.BILINEAR)
            kept.append(np.asarray(resized) > 127)
            names.append(name.rsplit("/", 1)[-1])
    return np.stack(kept), names


@functools.lru_cache(maxsize=1)
def _base_masks() -> tuple[np.ndarray, tuple[str, ...]]:
    cache = _cache_file()
    if cache.is_file():
        try:
            with np.load(cache) as data:
                return np.unpackbits(data["bits"], axis=-1)[..., :BASE_SIZE].astype(bool), tuple(data["names"])
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: rebuild it below
    masks, names = _decode_masks(mask_zip_path())
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".npz")
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(handle, bits=np.packbits(masks, axis=-1), names=np.array(names))
        os.replace(tmp, cache)  # atomic: concurrent processes never read a half-written cache
    except OSError:
        pass  # a read-only home only costs the decode time next run
    return masks, tuple(names)


def mask_names() -> tuple[str, ...]:
    """File names (in the torchxrayvision zip) of the masks returned by :func:`lung_masks`, in order."""
    return _base_masks()[1]


@functools.lru_cache(maxsize=4)
def lung_masks(size: int = 128) -> torch.Tensor:
    """The real two-lung masks, cropped to their bounding box and resized to ``size`` squared.

    Returns:
        ``[M, size, size]`` bool (M = 435 with torchxrayvision 1.x). Image left is the patient's right lung.
    """
    base = torch.from_numpy(_base_masks()[0]).float().unsqueeze(1)
    return (F.interpolate(base, size=(size, size), mode="area")[:, 0] > 0.5).contiguous()


# ------------------------------------------------------------------------------------------------ acquisition style
@dataclass(frozen=True)
class AcquisitionStyle:
    """How one "hospital" acquires images; applied after the anatomy, so it never changes a label.

    Args:
        gamma: Intensity curve ``x -> x ** gamma`` (before contrast/offset).
        contrast: Multiplier around 0.5 after the curve.
        offset: Added brightness after the curve.
        noise_std: Standard deviation of additive Gaussian noise.
        marker: Corner of a bright square marker (``"tl"``, ``"tr"``, ``"bl"``, ``"br"``) or None.
        marker_size: Marker side as a fraction of the image side.
        collimation: Fraction of the image side blacked out at every border (0 = none).
    """

    gamma: float = 1.0
    contrast: float = 1.0
    offset: float = 0.0
    noise_std: float = 0.0
    marker: str | None = None
    marker_size: float = 0.07
    collimation: float = 0.0

    def __post_init__(self) -> None:
        if self.marker not in (None, "tl", "tr", "bl", "br"):
            raise ValueError(f"marker must be None or one of tl/tr/bl/br, got {self.marker!r}")
        if not 0.0 <= self.collimation < 0.4 or self.gamma <= 0:
            raise ValueError("collimation must be in [0, 0.4) and gamma > 0")

    def apply(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Apply the style to ``image`` ``[S, S]`` in [0, 1]; returns a new ``[S, S]`` tensor in [0, 1]."""
        size = image.shape[-1]
        out = (image.clamp(0, 1) ** self.gamma - 0.5) * self.contrast + 0.5 + self.offset
        if self.noise_std > 0:
            out = out + self.noise_std * torch.from_numpy(rng.standard_normal((size, size), dtype=np.float32))
        if self.collimation > 0:
            edge = max(1, round(self.collimation * size))
            out[:edge], out[-edge:], out[:, :edge], out[:, -edge:] = 0.0, 0.0, 0.0, 0.0
        if self.marker is not None:
            side = max(2, round(self.marker_size * size))
            pad = max(1, round((self.collimation + 0.02) * size))
            r0 = pad if self.marker[0] == "t" else size - pad - side
            c0 = pad if self.marker[1] == "l" else size - pad - side
            out[r0 : r0 + side, c0 : c0 + side] = 0.95
        return out.clamp(0, 1)


NEUTRAL = AcquisitionStyle()
#: Four acquisition styles named after CORDA's hospitals (the styles themselves are invented).
HOSPITALS: dict[str, AcquisitionStyle] = {
    "molinette": AcquisitionStyle(gamma=0.8, contrast=1.1, noise_std=0.02, marker="tl"),
    "mauriziano": AcquisitionStyle(gamma=1.25, contrast=0.9, offset=0.03, noise_std=0.05, marker="tr"),
    "sanluigi": AcquisitionStyle(gamma=1.0, contrast=1.2, offset=-0.03, noise_std=0.03, collimation=0.08),
    "monzino": AcquisitionStyle(gamma=1.1, contrast=0.8, offset=0.05, noise_std=0.01, marker="br", collimation=0.04),
}


# --------------------------------------------------------------------------------------------------------- drawing
def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[S, S]`` with standard deviation ``sigma`` pixels (reflect padding)."""
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    y = F.pad(x[None, None], (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    return F.conv2d(y, k.view(1, 1, -1, 1))[0, 0]


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> torch.Tensor:
    """Low-frequency noise ``[S, S]`` in about [-1, 1]: a ``cells`` squared random grid upsampled bicubically."""
    grid = torch.from_numpy(rng.standard_normal((1, 1, cells, cells), dtype=np.float32))
    return F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=True)[0, 0].clamp(-2.5, 2.5) / 2


def _pick_pixel(mask: torch.Tensor, rng: np.random.Generator) -> tuple[float, float]:
    """A uniformly random ``(row, col)`` inside ``mask`` (normalised to [0, 1])."""
    idx = torch.nonzero(mask)
    r, c = idx[int(rng.integers(len(idx)))].tolist()
    size = mask.shape[-1]
    return (r + 0.5) / size, (c + 0.5) / size


@dataclass(frozen=True)
class _Canvas:
    size: int
    yy: torch.Tensor
    xx: torch.Tensor


@functools.lru_cache(maxsize=4)
def _canvas(size: int) -> _Canvas:
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    return _Canvas(size, yy, xx)


def _place_lungs(mask: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Put a bounding-box-cropped lung mask ``[S, S]`` into the thorax with a small random scale and shift."""
    size = mask.shape[-1]
    sx, sy = 0.74 * rng.uniform(0.94, 1.06), 0.66 * rng.uniform(0.94, 1.06)  # lungs span ~74% x 66% of the film
    tx, ty = rng.uniform(-0.03, 0.03), 0.02 + rng.uniform(-0.03, 0.03)
    theta = torch.tensor([[1 / sx, 0.0, -tx / sx], [0.0, 1 / sy, -ty / sy]], dtype=torch.float32)
    grid = F.affine_grid(theta[None], [1, 1, size, size], align_corners=False)
    placed = F.grid_sample(mask.float()[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return placed[0, 0]


def draw(
    mask: torch.Tensor,
    findings: Mapping[str, bool],
    covid: bool,
    style: AcquisitionStyle,
    rng: np.random.Generator,
) -> torch.Tensor:
    """Draw one chest-X-ray-like image.

    Args:
        mask: A lung mask ``[S, S]`` bool from :func:`lung_masks`.
        findings: ``{name: present}`` for names in ``FINDINGS`` (missing names are absent).
        covid: Add the COVID-like pattern.
        style: Acquisition style applied last.
        rng: The image's own random stream.

    Returns:
        ``[S, S]`` float32 in [0, 1] (bright = dense, as on a radiograph).
    """
    unknown = set(findings) - set(FINDINGS)
    if unknown:
        raise ValueError(f"unknown findings {sorted(unknown)}; known: {FINDINGS}")
    # One child stream per component: switching a finding on never changes how anything else is drawn.
    anatomy, covid_rng, noise_rng, style_rng, *finding_rngs = rng.spawn(4 + len(FINDINGS))
    frng = dict(zip(FINDINGS, finding_rngs))
    rng = anatomy
    cv = _canvas(mask.shape[-1])
    size, yy, xx = cv.size, cv.yy, cv.xx
    lungs = _place_lungs(mask, rng)
    lung_bin = lungs > 0.5
    rows = torch.nonzero(lung_bin.any(1)).flatten()
    top, bottom = (rows[0].item() + 0.5) / size, (rows[-1].item() + 0.5) / size
    left_lung, right_lung = lung_bin & (xx < 0.5), lung_bin & (xx >= 0.5)
    lungs = _blur(lungs, 0.012 * size)

    # Soft tissue: an elliptical thorax with a smooth edge, a little patient-to-patient texture.
    r = torch.sqrt(((xx - 0.5) / 0.47) ** 2 + ((yy - 0.56) / 0.56) ** 2)
    body = torch.sigmoid((1 - r) / 0.03)
    density = 0.08 + 0.45 * body + 0.04 * _smooth_noise(rng, size, 6) * body
    # Mediastinum and spine: a vertical dense band; wider in its upper half for a wide mediastinum.
    width, widening = 0.055 * rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.2)
    if findings.get("wide_mediastinum", False):
        width = width * (1.0 + (1.0 - torch.sigmoid((yy - 0.45) / 0.04)) * widening)
    density = density + 0.25 * torch.exp(-(((xx - 0.5) / width) ** 2)) * body
    # Aerated lungs are dark; ribs are faint curved bands across them.
    phase, freq = rng.uniform(0, 2 * math.pi), rng.uniform(7.0, 9.0)
    ribs = 0.5 + 0.5 * torch.sin(2 * math.pi * freq * (yy + 0.35 * (xx - 0.5) ** 2) + phase)
    density = density - 0.34 * lungs + 0.06 * ribs * lungs
    # Heart: an ellipse low and to the image right (patient left); cardiothoracic ratio > 0.5 for cardiomegaly.
    ctr = rng.uniform(0.56, 0.64) if findings.get("cardiomegaly", False) else rng.uniform(0.36, 0.44)
    half_w = ctr * 0.5 * 0.74
    cx, cy, half_h = 0.53 + rng.uniform(-0.01, 0.02), bottom - 0.16 + rng.uniform(-0.02, 0.02), 0.12
    heart = torch.sigmoid((1 - torch.sqrt(((xx - cx) / half_w) ** 2 + ((yy - cy) / half_h) ** 2)) / 0.06)
    density = density + 0.32 * heart * (0.4 + lungs)

    if findings.get("consolidation", False):
        rng = frng["consolidation"]
        side = left_lung if rng.random() < 0.5 else right_lung
        for _ in range(int(rng.integers(1, 4))):
            py, px = _pick_pixel(side, rng)
            sigma = rng.uniform(0.04, 0.07)
            density = density + 0.28 * torch.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * sigma**2)) * lungs
    if findings.get("nodule", False):
        rng = frng["nodule"]
        py, px = _pick_pixel(lung_bin, rng)
        radius = rng.uniform(0.018, 0.03)
        dist = torch.sqrt((yy - py) ** 2 + (xx - px) ** 2)
        density = density + 0.35 * torch.sigmoid((radius - dist) / 0.004)
    if findings.get("edema", False):
        rng = frng["edema"]
        hila = sum(torch.exp(-((yy - 0.48) ** 2 + (xx - hx) ** 2) / (2 * 0.11**2)) for hx in (0.36, 0.64))
        density = density + 0.25 * hila * lungs * (1 + 0.3 * _smooth_noise(rng, size, 10))
    if findings.get("effusion", False):
        rng = frng["effusion"]
        side = left_lung if rng.random() < 0.5 else right_lung
        level = bottom - rng.uniform(0.15, 0.3) * (bottom - top)
        lateral = (xx - 0.5).abs()  # the meniscus climbs towards the chest wall
        fluid = torch.sigmoid((yy - level + 0.4 * (lateral - 0.2).clamp(min=0)) / 0.008)
        density = density + 0.36 * fluid * _blur(side.float(), 0.01 * size)
    if covid:
        rng = covid_rng
        # Peripheral = far from the lung's own interior: 1 - a wide blur of the lung mask, inside the lung.
        periphery = (1 - _blur(lung_bin.float(), 0.08 * size)).clamp(0, 1) * lungs
        lower = torch.sigmoid((yy - (top + 0.45 * (bottom - top))) / 0.05)
        patches = (0.6 + _smooth_noise(rng, size, 8)).clamp(0, 1)
        density = density + 0.8 * periphery * lower * patches
    if findings.get("support_device", False):
        # A tube down the midline to a random depth, and a dense rectangular generator under the left clavicle.
        rng = frng["support_device"]
        end = rng.uniform(0.45, 0.75)
        path = 0.5 + 0.02 * torch.sin(6 * yy + rng.uniform(0, 6))
        tube = torch.sigmoid((0.006 - (xx - path).abs()) / 0.002) * (yy < end)
        gy, gx = rng.uniform(0.12, 0.2), rng.uniform(0.7, 0.8)
        box = ((yy - gy).abs() < 0.035) & ((xx - gx).abs() < 0.05)
        density = torch.maximum(density, 0.9 * tube.float()).masked_fill(box, 0.95)

    noise = 0.01 * torch.from_numpy(noise_rng.standard_normal((size, size), dtype=np.float32))
    return style.apply((density + noise).clamp(0, 1), style_rng)


# ---------------------------------------------------------------------------------------------------- generation
@dataclass
class CXRBatch:
    """A generated set of images with their exact labels.

    Attributes:
        images: ``[N, 1, S, S]`` float32 in [0, 1].
        findings: ``[N, len(FINDINGS)]`` bool, columns in ``FINDINGS`` order.
        covid: ``[N]`` bool.
        patient: ``[N]`` int64, the lung-mask index (images of one "patient" share lung anatomy).
        style: ``[N]`` int64, index into the ``styles`` argument of :func:`generate` (-1: neutral).
    """

    images: torch.Tensor
    findings: torch.Tensor
    covid: torch.Tensor
    patient: torch.Tensor
    style: torch.Tensor


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of image ``index`` under ``seed`` (independent of every other image)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def render_one(
    index: int,
    seed: int,
    size: int = 128,
    *,
    prevalence: Mapping[str, float] | None = None,
    findings: Mapping[str, bool] | None = None,
    covid: bool = False,
    style: AcquisitionStyle | None = None,
    patient: int | None = None,
) -> tuple[torch.Tensor, dict[str, bool], int]:
    """Image ``index`` of seed ``seed``.

    Args:
        index: Image index (its own random stream).
        seed: Dataset seed.
        size: Image side in pixels.
        prevalence: Probability of each finding when ``findings`` is not given (default 0.2 each).
        findings: Fixed findings instead of drawing them.
        covid: Add the COVID-like pattern.
        style: Acquisition style (neutral when None).
        patient: Lung-mask index; drawn from the image's stream when None.

    Returns:
        ``(image [1, S, S], findings dict, patient)``.
    """
    rng = image_rng(seed, index)
    masks = lung_masks(size)
    # Draw labels first and always the same number of values, so fixing one label does not shift the others' streams.
    draws = rng.random(len(FINDINGS))
    drawn_patient = int(rng.integers(len(masks)))
    if findings is None:
        prev = {**DEFAULT_PREVALENCE, **(prevalence or {})}
        findings = {name: bool(u < prev[name]) for name, u in zip(FINDINGS, draws)}
    patient = drawn_patient if patient is None else int(patient)
    image = draw(masks[patient], findings, covid, style or NEUTRAL, rng)
    return image[None], {name: bool(findings.get(name, False)) for name in FINDINGS}, patient


def generate(
    n: int,
    *,
    seed: int,
    size: int = 128,
    start: int = 0,
    prevalence: Mapping[str, float] | None = None,
    covid: Sequence[bool] | torch.Tensor | None = None,
    styles: Sequence[AcquisitionStyle] = (),
    style_index: Sequence[int] | torch.Tensor | None = None,
    patients: Sequence[int] | torch.Tensor | None = None,
) -> CXRBatch:
    """Generate images ``start .. start + n - 1`` of seed ``seed``.

    Args:
        n: Number of images.
        seed: Dataset seed.
        size: Image side in pixels.
        start: Index of the first image (image ``i`` is the same whatever ``start`` and ``n`` cover it).
        prevalence: Probability of each finding (default 0.2 each).
        covid: ``[n]`` whether each image has the COVID-like pattern (default: none).
        styles: Acquisition styles that ``style_index`` refers to.
        style_index: ``[n]`` style of each image (index into ``styles``; -1 = neutral). Default: all neutral.
        patients: ``[n]`` lung-mask index of each image (default: drawn per image).
    """
    covid_t = torch.zeros(n, dtype=torch.bool) if covid is None else torch.as_tensor(covid, dtype=torch.bool)
    style_t = torch.full((n,), -1) if style_index is None else torch.as_tensor(style_index, dtype=torch.int64)
    if len(covid_t) != n or len(style_t) != n or (patients is not None and len(patients) != n):
        raise ValueError("covid, style_index and patients must have one entry per image")
    if len(style_t) and int(style_t.max()) >= len(styles):
        raise ValueError(f"style_index refers to style {int(style_t.max())} but only {len(styles)} styles are given")
    images = torch.empty(n, 1, size, size)
    findings = torch.zeros(n, len(FINDINGS), dtype=torch.bool)
    patient = torch.empty(n, dtype=torch.int64)
    for k in range(n):
        s = int(style_t[k])
        img, found, pat = render_one(
            start + k,
            seed,
            size,
            prevalence=prevalence,
            covid=bool(covid_t[k]),
            style=styles[s] if s >= 0 else None,
            patient=None if patients is None else int(patients[k]),
        )
        images[k], patient[k] = img, pat
        findings[k] = torch.tensor([found[name] for name in FINDINGS])
    return CXRBatch(images, findings, covid_t, patient, style_t)
