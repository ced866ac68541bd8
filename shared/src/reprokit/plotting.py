"""One figure style for every package, and an atomic PNG save."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless machines and CI: never ask for a display
import matplotlib.pyplot as plt

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "image.cmap": "viridis",
}

#: Colour per role, so baseline vs method reads the same in every paper's figures.
COLORS = {"baseline": "#7f7f7f", "method": "#d62728", "reference": "#1f77b4", "extra": "#2ca02c"}


def use_style() -> None:
    """Apply the repository's figure style to matplotlib's global rcParams."""
    plt.rcParams.update(STYLE)


def figure(nrows: int = 1, ncols: int = 1, *, width: float = 4.0, height: float = 3.2, **kwargs):
    """Create a styled figure with ``nrows x ncols`` axes of the given size each (inches)."""
    use_style()
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kwargs)


def save_png(fig, path: str | os.PathLike) -> Path:
    """Save ``fig`` as PNG atomically (temp file + rename) and close it.

    Returns:
        The final path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        plt.close(fig)
    return path
