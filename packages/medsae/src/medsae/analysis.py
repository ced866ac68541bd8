"""The paper's dissection of a set of units (SAE latents or raw embedding dimensions) on a labelled image set.

Pure functions over tensors: ``dissect`` returns the numbers of one row of the paper's comparison table.
"""

from __future__ import annotations

import torch

from medsae.metrics import firing_scores, label_entropy, monosemanticity, pearson, per_class_top


def dissect(
    a: torch.Tensor,
    e: torch.Tensor,
    y: torch.Tensor,
    *,
    l0_filter: tuple[float, float] | None = (15, 300),
    alive_thresh: float = 0.2,
) -> dict[str, object]:
    """Monosemanticity, label correlation, entropy and firing F1 of units ``a`` ``[N, K]``.

    Args:
        a: Unit activations on ``N`` images.
        e: Image embeddings ``[N, d]`` for the monosemanticity score's image similarity.
        y: Binary labels ``[N, C]``.
        l0_filter: Keep units with ``lo < L0 < hi`` for the F1 analysis (None: keep all).
        alive_thresh: Alive rule of the entropy analysis (``max |corr| > alive_thresh``).

    Returns:
        Scalars (``mono_mean``, ``mono_median``, ``mono_defined``, ``alive``, ``alive_frac``, ``top_corr_mean``,
        ``top_entropy_mean``, ``f1_mean``, ``f1_units``) and per-class tensors ``top_corr``, ``top_entropy``,
        ``top_unit``, ``best_f1`` ``[C]``, plus ``corr`` ``[K, C]`` and ``mono`` ``[K]``.
    """
    mono = monosemanticity(a, e)
    defined = mono[~mono.isnan()]
    corr = pearson(a, y)
    entropy, alive = label_entropy(corr, alive_thresh)
    top = per_class_top(corr, entropy)
    l0_min, l0_max = l0_filter or (-1, float("inf"))
    fire = firing_scores(a, y, l0_min=l0_min, l0_max=l0_max)
    f1 = fire["f1"][fire["keep"]].nan_to_num(0.0)
    best_f1 = f1.max(0).values if len(f1) else torch.full((y.shape[1],), float("nan"), dtype=torch.float64)
    return {
        "mono_mean": float(defined.mean()) if len(defined) else float("nan"),
        "mono_median": float(defined.median()) if len(defined) else float("nan"),
        "mono_defined": len(defined),
        "alive": int(alive.sum()),
        "alive_frac": float(alive.double().mean()),
        "top_corr_mean": float(top["corr"].mean()),
        "top_entropy_mean": float(top["entropy"].mean()),
        "f1_mean": float(best_f1.mean()),
        "f1_units": int(fire["keep"].sum()),
        "top_corr": top["corr"],
        "top_entropy": top["entropy"],
        "top_unit": top["unit"],
        "best_f1": best_f1,
        "corr": corr,
        "mono": mono,
    }
