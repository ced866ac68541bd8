"""The CheXpert label hierarchy used by the hierarchical residual head (the one place it is defined).

CheXpert's 14 observations split into 8 parents and 6 children; a child finding implies its parent (cardiomegaly
implies an enlarged cardiomediastinum; a lesion, edema, consolidation, pneumonia or atelectasis implies a lung
opacity). The head predicts the parents first and feeds them to the child layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from reprokit import cxr

CHEXPERT_LABELS = cxr.CHEXPERT_LABELS  # the 14 observations in CheXpert's CSV column order

#: child -> parent.
CHEXPERT_CHILD_TO_PARENT = {
    "Cardiomegaly": "Enlarged Cardiomediastinum",
    "Lung Lesion": "Lung Opacity",
    "Edema": "Lung Opacity",
    "Consolidation": "Lung Opacity",
    "Pneumonia": "Lung Opacity",
    "Atelectasis": "Lung Opacity",
}

#: The offline analogue's labels: the CheXpert observations that reprokit.cxr draws, and where they come from.
OFFLINE_FROM_CXR = {
    "No Finding": None,  # none of the findings below
    "Enlarged Cardiomediastinum": ("cardiomegaly", "wide_mediastinum"),
    "Cardiomegaly": ("cardiomegaly",),
    "Lung Opacity": ("nodule", "edema", "consolidation"),
    "Lung Lesion": ("nodule",),
    "Edema": ("edema",),
    "Consolidation": ("consolidation",),
    "Pleural Effusion": ("effusion",),
    "Support Devices": ("support_device",),
}


@dataclass(frozen=True)
class Hierarchy:
    """Labels split into parents and children.

    Attributes:
        labels: All label names in output order.
        parents: Parent label names (predicted by the first layer), in output order.
        children: Child label names (predicted by the second layer), in output order.
        parent_of: For each child, the index of its parent within ``parents``.
    """

    labels: tuple[str, ...]
    parents: tuple[str, ...]
    children: tuple[str, ...]
    parent_of: tuple[int, ...]

    @classmethod
    def from_labels(cls, labels: tuple[str, ...], child_to_parent: dict[str, str]) -> Hierarchy:
        """Build from label names and a child -> parent map (children absent from ``labels`` are dropped)."""
        children = tuple(name for name in labels if name in child_to_parent)
        parents = tuple(name for name in labels if name not in child_to_parent)
        missing = [child_to_parent[c] for c in children if child_to_parent[c] not in parents]
        if missing:
            raise ValueError(f"parents {missing} of some children are not among the labels")
        return cls(tuple(labels), parents, children, tuple(parents.index(child_to_parent[c]) for c in children))

    @property
    def parent_index(self) -> list[int]:
        """Positions of the parents in ``labels``."""
        return [self.labels.index(p) for p in self.parents]

    @property
    def child_index(self) -> list[int]:
        """Positions of the children in ``labels``."""
        return [self.labels.index(c) for c in self.children]


CHEXPERT = Hierarchy.from_labels(CHEXPERT_LABELS, CHEXPERT_CHILD_TO_PARENT)
OFFLINE = Hierarchy.from_labels(tuple(OFFLINE_FROM_CXR), CHEXPERT_CHILD_TO_PARENT)
HIERARCHIES = {"chexpert": CHEXPERT, "offline": OFFLINE}


def offline_targets(findings):
    """Map reprokit.cxr findings ``[N, len(cxr.FINDINGS)]`` (bool) to ``OFFLINE.labels`` targets ``[N, L]`` float."""
    import torch

    col = {name: findings[:, i] for i, name in enumerate(cxr.FINDINGS)}
    any_finding = findings.any(1)
    out = []
    for sources in OFFLINE_FROM_CXR.values():
        if sources is None:
            out.append(~any_finding)
        else:
            out.append(torch.stack([col[s] for s in sources], 1).any(1))
    return torch.stack(out, 1).float()
