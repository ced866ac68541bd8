"""Patient-level, class-stratified k-fold cross-validation."""

from __future__ import annotations

import numpy as np
import torch


def patient_folds(labels, patients, k: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``k`` (train, val) index splits: no patient in both, each fold's class share close to the whole set's.

    Args:
        labels: ``[N]`` class of each image.
        patients: ``[N]`` patient id of each image (all of a patient's images land in one fold).
        k: Number of folds.
        seed: Seed of the shuffle.

    Returns:
        ``k`` pairs of sorted index tensors.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    labels, patients = np.asarray(labels), np.asarray(patients)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [
        (torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(va)))
        for tr, va in splitter.split(np.zeros(len(labels)), labels, patients)
    ]
