"""Reading activations out of a UNet block with forward hooks, and the chunked on-disk activation store."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from reprokit.results import atomic_write_json
from torch.utils.data import Dataset


def block_tokens(output) -> torch.Tensor:
    """A Transformer2D block's output (a 1-tuple of ``[B, C, H, W]``) as tokens ``[B, H * W, C]``."""
    hidden = output[0] if isinstance(output, tuple) else output
    b, c, h, w = hidden.shape
    return hidden.permute(0, 2, 3, 1).reshape(b, h * w, c)


@contextmanager
def capture(model: torch.nn.Module, block: str, half: str = "cond") -> Iterator[list[torch.Tensor]]:
    """Collect the output tokens of ``model.<block>`` on every forward call.

    Under classifier-free guidance the batch is ``[unconditional; conditional]``; ``half="cond"`` keeps only the
    second half (what the SAE is trained on), ``"all"`` keeps everything.

    Yields:
        A list that receives one ``[B', H * W, C]`` CPU tensor per forward call.
    """
    if half not in ("cond", "all"):
        raise ValueError(f"half must be 'cond' or 'all', got {half!r}")
    module = model.get_submodule(block)
    store: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        tokens = block_tokens(output)
        if half == "cond":
            tokens = tokens[tokens.shape[0] // 2 :]
        store.append(tokens.detach().float().cpu())

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


class ActivationWriter:
    """Streams items ``[T, d]`` with integer labels to ``root/chunk_XXXXX.npy`` (float16) and ``labels_XXXXX.npy``.

    ``close()`` writes ``index.json`` last (atomically), so a store without an index is incomplete and is refused.
    """

    def __init__(self, root: str | os.PathLike, chunk_items: int = 512, label_names: tuple[str, ...] = ()):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.chunk_items, self.label_names = chunk_items, label_names
        self._acts: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._chunks: list[int] = []
        self.shape: tuple[int, int] | None = None

    def append(self, acts: torch.Tensor, labels: torch.Tensor) -> None:
        """Add items ``acts`` ``[b, T, d]`` with ``labels`` ``[b, L]``."""
        if self.shape is None:
            self.shape = tuple(acts.shape[1:])
        if tuple(acts.shape[1:]) != self.shape or labels.shape[0] != acts.shape[0]:
            raise ValueError(f"items must be [b, {self.shape}] with one label row each")
        self._acts.append(acts.to(torch.float16).numpy())
        self._labels.append(labels.to(torch.int64).numpy())
        while sum(len(a) for a in self._acts) >= self.chunk_items:
            self._flush(self.chunk_items)

    def _flush(self, n: int) -> None:
        acts, labels = np.concatenate(self._acts), np.concatenate(self._labels)
        i = len(self._chunks)
        np.save(self.root / f"chunk_{i:05d}.npy", acts[:n])
        np.save(self.root / f"labels_{i:05d}.npy", labels[:n])
        self._chunks.append(int(min(n, len(acts))))
        self._acts, self._labels = ([acts[n:]], [labels[n:]]) if len(acts) > n else ([], [])

    def close(self) -> Path:
        """Write what is left and the index; returns the store folder."""
        rest = sum(len(a) for a in self._acts)
        if rest:
            self._flush(rest)
        atomic_write_json(
            self.root / "index.json",
            {"chunks": self._chunks, "item_shape": list(self.shape or ()), "label_names": list(self.label_names)},
        )
        return self.root


class ActivationStore(Dataset):
    """Memory-mapped reader of an :class:`ActivationWriter` folder; items are ``(acts [T, d] float32, labels [L])``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        index_path = self.root / "index.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"{self.root} is not a complete activation store (no index.json)")
        index = json.loads(index_path.read_text())
        self.label_names = tuple(index["label_names"])
        self._acts = [np.load(self.root / f"chunk_{i:05d}.npy", mmap_mode="r") for i in range(len(index["chunks"]))]
        self._labels = [np.load(self.root / f"labels_{i:05d}.npy") for i in range(len(index["chunks"]))]
        self._offsets = np.cumsum([0, *index["chunks"]])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = int(np.searchsorted(self._offsets, index, side="right") - 1)
        j = index - self._offsets[chunk]
        return torch.from_numpy(np.asarray(self._acts[chunk][j], dtype=np.float32)), torch.from_numpy(
            self._labels[chunk][j]
        )

    @property
    def labels(self) -> torch.Tensor:
        """All label rows ``[N, L]``."""
        return torch.from_numpy(np.concatenate(self._labels))
