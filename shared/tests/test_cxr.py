import numpy as np
import pytest
import reprokit.cxr as cxr  # needs the `cxr` extra (torchxrayvision); the repo test env has it
import torch


def test_masks_are_real_two_lung_shapes():
    masks = cxr.lung_masks(64)
    assert masks.dtype == torch.bool and masks.shape[1:] == (64, 64)
    assert 300 <= len(masks) <= 517 and len(cxr.mask_names()) == len(masks)
    left, right = masks[:, :, :32].float().mean((1, 2)), masks[:, :, 32:].float().mean((1, 2))
    assert (left > 0.1).all() and (right > 0.1).all()
    # Cropped to the bounding box: the first and last rows and columns touch the lungs.
    assert masks[:, :2].any((1, 2)).all() and masks[:, :, -2:].any((1, 2)).all()
    assert len({m.numpy().tobytes() for m in masks[:50]}) == 50  # 50 different real shapes, not one template


def test_image_depends_only_on_seed_and_index():
    a = cxr.generate(6, seed=3, size=48)
    b = cxr.generate(3, seed=3, size=48, start=3)
    assert torch.equal(a.images[3:], b.images) and torch.equal(a.findings[3:], b.findings)
    img, found, patient = cxr.render_one(4, 3, 48)
    assert torch.equal(img, a.images[4]) and patient == a.patient[4]
    assert [found[n] for n in cxr.FINDINGS] == a.findings[4].tolist()
    np.random.seed(0)
    torch.manual_seed(0)
    assert torch.equal(cxr.generate(6, seed=3, size=48).images, a.images)  # global RNG plays no part
    assert not torch.equal(cxr.generate(6, seed=4, size=48).images, a.images)


def test_prevalence_controls_findings():
    batch = cxr.generate(200, seed=0, size=32, prevalence={"nodule": 1.0, "effusion": 0.0, "edema": 0.5})
    col = {n: batch.findings[:, i].float().mean().item() for i, n in enumerate(cxr.FINDINGS)}
    assert col["nodule"] == 1.0 and col["effusion"] == 0.0 and 0.35 < col["edema"] < 0.65
    assert batch.images.min() >= 0 and batch.images.max() <= 1


def _pair(findings_on, covid=False, **kw):
    """The same patient and stream with and without one change."""
    base, _, _ = cxr.render_one(11, 0, 64, findings={}, **kw)
    changed, _, _ = cxr.render_one(11, 0, 64, findings=findings_on, covid=covid, **kw)
    return base[0], changed[0]


def test_findings_add_density_where_they_should():
    # Effusion fills a costophrenic angle: the lower third gains density, the upper third does not change.
    base, eff = _pair({"effusion": True})
    diff = eff - base
    assert diff[43:].sum() > 5 and diff[:20].abs().max() < 1e-5
    # Cardiomegaly widens the heart: density rises only in the lower half.
    base, card = _pair({"cardiomegaly": True})
    assert (card - base).sum() > 1 and (card - base)[:24].abs().max() < 1e-5
    # A nodule is small: it changes a compact region only.
    base, nod = _pair({"nodule": True})
    changed = (nod - base).abs() > 0.05
    assert 2 <= changed.sum() <= 60
    # COVID-like haze is peripheral and basal: more added in the lower half than the upper half.
    base, cov = _pair({}, covid=True)
    diff = cov - base
    assert diff.min() >= -1e-6 and diff[32:].sum() > 3 * diff[:32].sum() > 0


def test_style_is_the_documented_curve():
    style = cxr.AcquisitionStyle(gamma=2.0, contrast=0.5, offset=0.1)
    image = torch.full((16, 16), 0.6)
    out = style.apply(image, np.random.default_rng(0))
    expected = (0.6**2 - 0.5) * 0.5 + 0.5 + 0.1
    assert torch.allclose(out, torch.full((16, 16), expected))


def test_style_marker_and_collimation():
    style = cxr.AcquisitionStyle(marker="br", marker_size=0.125, collimation=0.125)
    out = style.apply(torch.full((32, 32), 0.5), np.random.default_rng(0))
    assert (out[:4] == 0).all() and (out[:, :4] == 0).all() and (out[-4:] == 0).all()
    marker = out >= 0.95
    rows, cols = torch.nonzero(marker).T
    assert marker.sum() == 16 and rows.min() > 16 and cols.min() > 16
    with pytest.raises(ValueError):
        cxr.AcquisitionStyle(marker="middle")


def test_styles_do_not_change_labels_or_anatomy_stream():
    styles = list(cxr.HOSPITALS.values())
    plain = cxr.generate(8, seed=1, size=32)
    styled = cxr.generate(8, seed=1, size=32, styles=styles, style_index=[0, 1, 2, 3, 0, 1, 2, 3])
    assert torch.equal(plain.findings, styled.findings) and torch.equal(plain.patient, styled.patient)
    assert not torch.equal(plain.images, styled.images)
    with pytest.raises(ValueError):
        cxr.generate(2, seed=0, size=32, styles=styles[:1], style_index=[0, 1])
