"""Lightning callbacks shared by every package."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


class RNGStateCallback(pl.Callback):
    """Carries the Python, NumPy and torch RNG states inside checkpoints.

    Lightning restores weights, optimizer and loop counters on resume but not the global random streams that
    dropout, random masks or noise draw from. This callback stores them when a checkpoint is written and puts them
    back when training restarts (after the sanity check, which would otherwise consume random numbers), so a resumed
    run matches an uninterrupted one bit for bit on CPU.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state(legacy=False)
        return {
            "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0],
            "python_gauss": random.getstate()[2],
            "numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "numpy_pos": int(np_state["state"]["pos"]),
            "numpy_has_gauss": int(np_state["has_gauss"]),
            "numpy_gauss": float(np_state["gauss"]),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is None:
            return
        s, self._pending = self._pending, None
        random.setstate((s["python_version"], tuple(s["python"]), s["python_gauss"]))
        np.random.set_state(
            {
                "bit_generator": "MT19937",
                "state": {"key": s["numpy_key"].numpy().astype(np.uint32), "pos": s["numpy_pos"]},
                "has_gauss": s["numpy_has_gauss"],
                "gauss": s["numpy_gauss"],
            }
        )
        torch.set_rng_state(s["torch"])
        if s["cuda"] and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(s["cuda"])
