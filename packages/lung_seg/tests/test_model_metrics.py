import math

import numpy as np
import pytest
import torch
from lung_seg.augment import augment, paper_augmentation
from lung_seg.lightning_module import make_loss
from lung_seg.metrics import DiceIoU, diameter_bin, dice_iou, equivalent_diameter, score_nodules, summarise_by_bin
from lung_seg.model import MonaiBasicUNet, UNet


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (17, 16)])
def test_unet_keeps_odd_sizes(size):
    net = UNet(base_channels=4, depth=4).eval()
    assert net(torch.randn(2, 1, *size)).shape == (2, 1, *size)


def test_unet_paper_widths():
    net = UNet(base_channels=64, depth=4)
    assert [b[0].out_channels for b in net.down] == [64, 128, 256, 512, 1024]
    assert [u.reduce.out_channels for u in net.up] == [512, 256, 128, 64]
    assert all(u.reduce.kernel_size == (2, 2) for u in net.up)


def test_models_reject_wrong_channels():
    for net in (UNet(base_channels=2, depth=1), MonaiBasicUNet((2, 2, 2, 2, 2, 2))):
        with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
            net(torch.zeros(1, 3, 16, 16))


def test_dice_iou_hand_case():
    pred = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    target = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    pred[0, 0, :2, :2] = True  # 4 pixels
    target[0, 0, :2, :3] = True  # 6 pixels, 4 shared
    dice, iou = dice_iou(pred, target, smooth=1.0)
    assert dice[0].item() == pytest.approx((2 * 4 + 1) / (4 + 6 + 1))
    assert iou[0].item() == pytest.approx((4 + 1) / (6 + 1))
    assert dice[1].item() == iou[1].item() == 1.0  # both empty


def test_dice_iou_matches_monai_without_smoothing():
    from monai.metrics import DiceMetric, MeanIoU

    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(6, 1, 9, 11, generator=gen) > 0.5
    target = torch.rand(6, 1, 9, 11, generator=gen) > 0.6
    dice, iou = dice_iou(pred, target, smooth=0.0)
    monai_dice = DiceMetric(reduction="none")(pred.float(), target.float()).flatten()
    monai_iou = MeanIoU(reduction="none")(pred.float(), target.float()).flatten()
    torch.testing.assert_close(dice, monai_dice.float())
    torch.testing.assert_close(iou, monai_iou.float())


def test_dice_iou_metric_accumulates_the_per_slice_mean():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(10, 1, 8, 8, generator=gen)
    target = (torch.rand(10, 1, 8, 8, generator=gen) > 0.7).float()
    metric = DiceIoU()
    metric.update(logits[:3], target[:3])
    metric.update(logits[3:], target[3:])
    dice, iou = dice_iou(logits > 0, target > 0.5)  # sigmoid > 0.5 <=> logit > 0
    out = metric.compute()
    assert out["dice"].item() == pytest.approx(dice.mean().item(), rel=1e-6)
    assert out["iou"].item() == pytest.approx(iou.mean().item(), rel=1e-6)


def _ball(shape, center, radius_vox):
    grid = np.indices(shape).astype(float)
    return (sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius_vox**2).astype(np.uint8)


def test_planted_spheres_get_their_diameter_bins():
    spacing = (1.0, 0.5, 0.5)
    shape = (40, 80, 80)
    diameters = {(10, 20, 20): 4.0, (20, 60, 20): 8.0, (25, 40, 60): 15.0}
    truth = np.zeros(shape, np.uint8)
    for center, d in diameters.items():
        # an ellipsoid in voxels that is a sphere of diameter d in mm
        grid = np.indices(shape).astype(float)
        rho = sum(((g - c) * s / (d / 2)) ** 2 for g, c, s in zip(grid, center, spacing))
        truth |= (rho <= 1).astype(np.uint8)
    scores = score_nodules(truth, truth, spacing)
    np.testing.assert_allclose(np.sort(scores.diameter_mm), sorted(diameters.values()), rtol=0.08)
    np.testing.assert_array_equal(np.sort(diameter_bin(scores.diameter_mm)), [0, 1, 2])
    rows = summarise_by_bin([scores])
    assert [r["nodules"] for r in rows] == [1, 1, 1, 0]
    assert all(r["dice"] == 1.0 and r["detection"] == 1.0 for r in rows[:3])
    assert np.isnan(rows[3]["dice"])


def test_score_nodules_hand_case():
    truth = _ball((20, 20, 20), (5, 5, 5), 2) | _ball((20, 20, 20), (14, 14, 14), 2)
    pred = np.zeros_like(truth)
    pred[3:8, 3:8, 3:8] = 1  # a cube around the first nodule
    pred[0:2, 18:20, 0:2] = 1  # a false positive far away
    scores = score_nodules(pred, truth, (1.0, 1.0, 1.0))
    n_ball = int(_ball((20, 20, 20), (5, 5, 5), 2).sum())
    order = np.argsort([5, 14])
    assert scores.detected[order].tolist() == [True, False]
    assert scores.dice[order][0] == pytest.approx(2 * n_ball / (125 + n_ball))
    assert scores.dice[order][1] == 0.0
    assert scores.false_positives == 1
    assert equivalent_diameter(n_ball, (1, 1, 1)) == pytest.approx((6 * n_ball / np.pi) ** (1 / 3))


def test_augment_mirror_and_flip_are_exact():
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(3, 1, 7, 9, generator=gen)
    mask = (image > 0.5).float()
    mirror = paper_augmentation(mirror_p=1.0, flip_p=0.0, max_rotation_deg=0.0)
    out, out_mask = augment(mirror, image, mask, seed=1, epoch=0, indices=[0, 1, 2])
    torch.testing.assert_close(out, image.flip(-1))
    torch.testing.assert_close(out_mask, mask.flip(-1))
    flip = paper_augmentation(mirror_p=0.0, flip_p=1.0, max_rotation_deg=0.0)
    out, _ = augment(flip, image, mask, seed=1, epoch=0, indices=[0, 1, 2])
    torch.testing.assert_close(out, image.flip(-2))


def test_augment_depends_only_on_seed_epoch_and_index():
    image = torch.rand(4, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    mask = (image > 0.7).float()
    one = augment(paper_augmentation(), image, mask, seed=5, epoch=3, indices=[10, 11, 12, 13])
    torch.manual_seed(123)  # the global RNG plays no part
    # A fresh transform, the same samples in another batch order: each sample gets the same draws.
    perm = [2, 0, 3, 1]
    two = augment(paper_augmentation(), image[perm], mask[perm], seed=5, epoch=3, indices=[12, 10, 13, 11])
    torch.testing.assert_close(two[0], one[0][perm], rtol=0, atol=0)
    torch.testing.assert_close(two[1], one[1][perm], rtol=0, atol=0)
    other_epoch = augment(paper_augmentation(), image, mask, seed=5, epoch=4, indices=[10, 11, 12, 13])
    assert not torch.equal(other_epoch[0], one[0])


def _principal_angle(mask: torch.Tensor) -> float:
    """Orientation (degrees, in x = column / y = -row axes) of a 2D mask's major axis from its second moments."""
    rows, cols = torch.nonzero(mask, as_tuple=True)
    x, y = cols.double() - cols.double().mean(), -(rows.double() - rows.double().mean())
    return math.degrees(0.5 * math.atan2(2 * (x * y).mean(), (x * x).mean() - (y * y).mean()))


def test_augment_rotation_matches_the_drawn_angle_and_mask_stays_binary():
    yy, xx = torch.meshgrid(torch.arange(65.0), torch.arange(65.0), indexing="ij")
    # A horizontal ellipse at the centre (major axis along the columns: angle 0) plus an off-centre dot that must
    # move with it in image and mask alike.
    blob = (((yy - 32) ** 2 / 16 + (xx - 32) ** 2 / 400) <= 1) | (((yy - 12) ** 2 + (xx - 32) ** 2) <= 9)
    ellipse = (((yy - 32) ** 2 / 16 + (xx - 32) ** 2 / 400) <= 1).float()
    image = blob.float().expand(16, 1, 65, 65).clone()
    transform = paper_augmentation(mirror_p=0.0, flip_p=0.0, max_rotation_deg=20.0)
    measured, drawn = [], []
    for index in range(16):
        out, out_mask = augment(transform, image[:1], image[:1], seed=0, epoch=0, indices=[index])
        drawn.append(math.degrees(transform.transforms[2].rand_rotate.x))
        assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
        inter = ((out > 0.5) & (out_mask > 0.5)).sum().item()
        assert inter / ((out > 0.5) | (out_mask > 0.5)).sum().item() > 0.9  # image and mask stay aligned
        rotated_ellipse, _ = augment(
            transform, ellipse.expand(1, 1, 65, 65), ellipse.expand(1, 1, 65, 65), seed=0, epoch=0, indices=[index]
        )
        measured.append(_principal_angle(rotated_ellipse[0, 0] > 0.5))
    drawn, measured = np.array(drawn), np.array(measured)
    assert np.abs(drawn).max() <= 20.0 and drawn.min() < -5 and drawn.max() > 5  # spread over +-20 degrees
    # The same magnitude; one sign convention for every sample (MONAI's angle is counter-clockwise in its axes).
    sign = np.sign(np.dot(drawn, measured))
    np.testing.assert_allclose(measured, sign * drawn, atol=1.5)


def test_augment_crop_is_centred_on_a_nodule_when_asked():
    image = torch.rand(6, 1, 40, 40, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(6, 1, 40, 40)
    mask[:, :, 30:33, 5:8] = 1  # a 3x3 nodule near a corner
    crop = paper_augmentation(0.0, 0.0, 0.0, crop_size=16, crop_foreground_p=1.0)
    out, out_mask = augment(crop, image, mask, seed=0, epoch=0, indices=range(6))
    assert out.shape == out_mask.shape == (6, 1, 16, 16)
    assert (out_mask.flatten(1).sum(1) > 0).all()  # every crop holds (part of) the nodule
    for img, msk, full in zip(out, out_mask, image):  # each crop is one window of the original, for image and mask
        windows = full[0].unfold(0, 16, 1).unfold(1, 16, 1)  # [25, 25, 16, 16]
        hits = (windows == img[0]).flatten(2).all(2).nonzero().tolist()
        assert len(hits) == 1
        i, j = hits[0]
        torch.testing.assert_close(mask[0, 0, i : i + 16, j : j + 16], msk[0], rtol=0, atol=0)


def test_dice_bce_loss_is_dice_plus_bce():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 1, 6, 6, generator=gen, dtype=torch.float64)
    target = (torch.rand(3, 1, 6, 6, generator=gen) > 0.7).double()
    p = torch.sigmoid(logits)
    # MONAI's Dice loss: per sample, smooth 1e-5 in numerator and denominator, then the batch mean.
    inter, total = (p * target).flatten(1).sum(1), (p + target).flatten(1).sum(1)
    dice = (1 - (2 * inter + 1e-5) / (total + 1e-5)).mean()
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    torch.testing.assert_close(make_loss("dice")(logits, target), dice)
    torch.testing.assert_close(make_loss("dice_bce")(logits, target), dice + bce)
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("l2")


def test_output_prior_sets_the_last_bias():
    from lung_seg.model import MonaiUNet, init_output_prior

    for net in (UNet(base_channels=2, depth=2), MonaiUNet((2, 4, 8), num_res_units=0)):
        init_output_prior(net, 0.01)
        last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)][-1]
        assert torch.sigmoid(last.bias).item() == pytest.approx(0.01)
