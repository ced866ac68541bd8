import nibabel as nib
import numpy as np
import pytest
import torch
from ca_diffusion_uad.data import add_lesions, augment_subject, mni152, read_nifti_split
from ca_diffusion_uad.lightning_module import DiffusionUAD, EncoderPretraining
from ca_diffusion_uad.networks import ConditionalUNet, ResNetEncoder


def test_conditioning_changes_the_output_and_is_required():
    torch.manual_seed(0)
    unet = ConditionalUNet(16, (8, 16), 1, (False, True), cond_dim=6).eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 500])
    c1, c2 = torch.randn(2, 6), torch.randn(2, 6)
    with torch.no_grad():
        y1, y1b, y2 = unet(x, t, c1), unet(x, t, c1), unet(x, t, c2)
    assert torch.equal(y1, y1b)
    assert (y1 - y2).abs().max() > 1e-4
    # The condition enters through a concatenation: the resblocks' time projection sees twice the time width.
    assert (
        unet.unet.down_blocks[0].resnets[0].time_emb_proj.in_features
        == 2 * unet.unet.time_embedding.linear_2.out_features
    )
    with pytest.raises(ValueError, match="condition"):
        unet(x, t, None)


def test_masked_encoder_features_ignore_hidden_pixels():
    enc = ResNetEncoder(1, (4, 8), 1, 5)
    x = torch.randn(1, 1, 16, 16)
    keep = torch.ones(1, 1, 16, 16)
    keep[..., :8, :8] = 0
    y = x.clone()
    y[..., :8, :8] = torch.randn(8, 8)
    for a, b in zip(enc.features(x, keep), enc.features(y, keep)):
        torch.testing.assert_close(a, b)


def test_modules_reject_wrong_image_shapes():
    model = DiffusionUAD(image_size=16, channels=(8, 8), attention=(False, False), encoder_widths=(4, 8), cond_dim=4)
    with pytest.raises(ValueError, match=r"\[B, 1, 16, 16\]"):
        model.denoise_loss(torch.zeros(2, 3, 16, 16))
    enc = EncoderPretraining(image_size=16, widths=(4, 8), embed_dim=4, patch_size=4)
    with pytest.raises(ValueError, match="1-channel"):
        enc.losses(torch.zeros(2, 1, 20, 20))


def test_offline_subject_and_lesions_are_exact_and_inside_the_healthy_range():
    template, brain = mni152(32, (30, 50, 4))
    assert template.shape == (5, 1, 32, 32) and template.max() <= 1 and (template[brain == 0] == 0).all()
    g = torch.Generator().manual_seed(0)
    image, mask = augment_subject(template, brain, g)
    healthy = image.clone()
    lesioned, lesion = add_lesions(image, mask, torch.Generator().manual_seed(1), max_lesions=2)
    assert lesion.sum() > 0 and (lesion <= mask).all()
    lo, hi = torch.quantile(healthy[mask > 0.5], torch.tensor([0.05, 0.95]))
    inside = lesioned[lesion > 0.5]
    assert inside.min() >= lo - 0.15 and inside.max() <= hi + 0.15
    changed = (lesioned - healthy).abs() > 0.1
    assert changed[lesion > 0.5].float().mean() > 0.5  # the mask marks pixels that did change
    assert changed[lesion < 0.5].float().mean() < 0.02
    # Same generator state, same subject.
    again, _ = augment_subject(template, brain, torch.Generator().manual_seed(0))
    assert torch.equal(again, healthy)


def test_nifti_reader_builds_slices_masks_and_lesions(tmp_path):
    vol = np.zeros((20, 24, 12), dtype=np.float32)
    vol[4:16, 4:20, :] = 100.0
    seg = np.zeros_like(vol)
    seg[8:12, 8:12, 4:8] = 1
    for kind, arr in (("t2", vol), ("mask", (vol > 0).astype(np.float32)), ("seg", seg)):
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(tmp_path / f"s01_{kind}.nii.gz"))
    out = read_nifti_split(tmp_path, 16, (2, 10, 1))
    assert out["image"].shape == (1, 8, 1, 16, 16)
    assert out["image"].max() == pytest.approx(1.0) and out["image"].min() == 0.0
    assert out["lesion"][0, 2:6].sum() > 0 and out["lesion"][0, :2].sum() == 0 and out["lesion"][0, 6:].sum() == 0
    assert (out["image"][out["brain"] == 0] == 0).all()
