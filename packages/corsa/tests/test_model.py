import pytest
import torch
from corsa.ensemble import ensemble_probabilities, soup
from corsa.folds import patient_folds
from corsa.hierarchy import CHEXPERT, CHEXPERT_LABELS, OFFLINE, offline_targets
from corsa.model import (
    CovidHead,
    HierarchicalResidualHead,
    SmallCNN,
    apply_uncertain_policy,
    positive_weights,
    set_finetune,
    weighted_bce,
)


def test_chexpert_hierarchy_is_8_parents_and_6_children():
    assert len(CHEXPERT.parents) == 8 and len(CHEXPERT.children) == 6
    assert set(CHEXPERT.labels) == set(CHEXPERT_LABELS)
    cardio = CHEXPERT.children.index("Cardiomegaly")
    assert CHEXPERT.parents[CHEXPERT.parent_of[cardio]] == "Enlarged Cardiomediastinum"
    assert set(OFFLINE.labels) <= set(CHEXPERT_LABELS)


def test_hierarchical_head_wiring_by_hand():
    torch.manual_seed(0)
    head = HierarchicalResidualHead(5, CHEXPERT).double()
    h = torch.randn(3, 5, dtype=torch.float64)
    out = head(h)
    parents = h @ head.fc1.weight.T + head.fc1.bias
    children = torch.cat([h, parents], 1) @ head.fc2.weight.T + head.fc2.bias
    for k, name in enumerate(CHEXPERT.parents):
        assert torch.allclose(out[:, CHEXPERT_LABELS.index(name)], parents[:, k])
    for k, name in enumerate(CHEXPERT.children):
        assert torch.allclose(out[:, CHEXPERT_LABELS.index(name)], children[:, k])
    # A child depends on the parent logits: changing fc1 alone changes every child output.
    with torch.no_grad():
        head.fc1.bias += 1.0
    assert not torch.allclose(head(h)[:, CHEXPERT.child_index], out[:, CHEXPERT.child_index])


def test_uncertain_policies():
    labels = torch.tensor([[1.0, 0.0, -1.0, float("nan")]])
    for policy, value in (("zeros", 0.0), ("ones", 1.0), ("half", 0.5)):
        targets, mask = apply_uncertain_policy(labels, policy)
        assert targets.tolist() == [[1.0, 0.0, value, 0.0]] and mask.tolist() == [[1.0, 1.0, 1.0, 1.0]]
    targets, mask = apply_uncertain_policy(labels, "ignore")
    assert mask.tolist() == [[1.0, 1.0, 0.0, 1.0]]
    with pytest.raises(ValueError):
        apply_uncertain_policy(labels, "maybe")


def test_weighted_bce_by_hand():
    logits = torch.tensor([[0.3, -1.2], [2.0, 0.1]], dtype=torch.float64)
    targets = torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    w = positive_weights(torch.tensor([[1.0, 0], [0, 0], [0, 1], [0, 1]]))
    assert w.tolist() == [3.0, 1.0]
    p = torch.sigmoid(logits)
    per = -(w.double() * targets * torch.log(p) + (1 - targets) * torch.log(1 - p))
    expected = (per * mask).sum() / 3
    assert torch.allclose(weighted_bce(logits, targets, mask, w.double()), expected)


def test_offline_targets_follow_the_hierarchy():
    from reprokit import cxr

    findings = torch.zeros(3, len(cxr.FINDINGS), dtype=torch.bool)
    findings[1, cxr.FINDINGS.index("cardiomegaly")] = True
    findings[2, cxr.FINDINGS.index("nodule")] = True
    t = offline_targets(findings)
    col = {n: t[:, i].tolist() for i, n in enumerate(OFFLINE.labels)}
    assert col["No Finding"] == [1, 0, 0]
    assert col["Cardiomegaly"] == [0, 1, 0] and col["Enlarged Cardiomediastinum"] == [0, 1, 0]
    assert col["Lung Lesion"] == [0, 0, 1] and col["Lung Opacity"] == [0, 0, 1]


def test_covid_head_and_finetune_modes():
    enc = SmallCNN(4)
    head = CovidHead(enc.num_features, 8)
    logits, z = head(enc(torch.randn(2, 1, 32, 32)))
    assert logits.shape == (2, 2) and z.shape == (2, 8) and (z >= 0).all()
    set_finetune(enc, "freeze")
    assert not any(p.requires_grad for p in enc.parameters())
    set_finetune(enc, "last_block")
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("features.12") or n.startswith("features.13") for n in trainable)


def test_patient_folds_no_overlap_and_balanced():
    g = torch.Generator().manual_seed(0)
    patients = torch.randint(0, 120, (600,), generator=g)
    labels = (patients % 3 == 0).long()  # label is a patient property, as for a diagnosis
    folds = patient_folds(labels, patients, 4, seed=0)
    seen = torch.cat([va for _, va in folds]).sort().values
    assert torch.equal(seen, torch.arange(600))  # every image validated exactly once
    share = labels.float().mean()
    for tr, va in folds:
        assert not set(patients[tr].tolist()) & set(patients[va].tolist())
        assert abs(labels[va].float().mean() - share) < 0.06


def test_ensemble_and_soup_against_hand_averages():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(7)}
    c = {"w": torch.tensor([2.0, 1.0]), "n": torch.tensor(9)}
    out = soup([a, b, c])
    assert torch.allclose(out["w"], torch.tensor([2.0, 3.0])) and out["n"].item() == 5
    probs = [torch.tensor([[0.2, 0.8]]), torch.tensor([[0.6, 0.4]])]
    assert torch.allclose(ensemble_probabilities(probs), torch.tensor([[0.4, 0.6]]))
    with pytest.raises(ValueError):
        soup([a, {"x": torch.zeros(2)}])
