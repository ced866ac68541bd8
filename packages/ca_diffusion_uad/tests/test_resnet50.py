import math

import pytest
import torch
import torchvision
from ca_diffusion_uad.lightning_module import DiffusionUAD, EncoderPretraining
from ca_diffusion_uad.networks import BottleneckResNetEncoder, MaskedGroupNorm
from ca_diffusion_uad.ssl import random_patch_mask
from torch import nn

R50 = dict(widths=(64, 128, 256, 512), blocks=(3, 4, 6, 3))


def test_resnet50_parameter_count_is_torchvisions_minus_the_stem_and_fc_difference():
    ours = BottleneckResNetEncoder(1, embed_dim=128, **R50)
    backbone = sum(p.numel() for n, p in ours.named_parameters() if not n.startswith("proj."))
    tv = torchvision.models.resnet50(weights=None)
    tv_total = sum(p.numel() for p in tv.parameters())
    # torchvision: a 3-channel 7x7 stem and a 2048 -> 1000 classifier; ours: a 1-channel stem and no classifier.
    expected = tv_total - 3 * 64 * 7 * 7 + 1 * 64 * 7 * 7 - (2048 * 1000 + 1000)
    assert tv_total == 25_557_032
    assert backbone == expected
    assert sum(p.numel() for p in ours.proj.parameters()) == 2048 * 128 + 128


def test_unmasked_resnet50_is_torchvisions_resnet50_with_groupnorm_and_a_1_channel_stem():
    torch.manual_seed(0)
    ours = BottleneckResNetEncoder(1, embed_dim=16, **R50).eval()
    tv = torchvision.models.resnet50(weights=None, norm_layer=lambda c: nn.GroupNorm(math.gcd(32, c), c))
    tv.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    tv.fc = nn.Identity()
    state = {}
    for k, v in ours.state_dict().items():
        if k.startswith("proj."):
            continue
        for i in range(4):
            k = k.replace(f"stages.{i}.", f"layer{i + 1}.")
        state[k] = v
    tv.load_state_dict(state, strict=True)  # every torchvision tensor has exactly one counterpart here
    tv.eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.pooled(ours.features(x)), tv(x), rtol=1e-4, atol=1e-5)


def test_resnet50_feature_and_output_shapes():
    enc = BottleneckResNetEncoder(1, embed_dim=128, **R50)
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        feats = enc.features(x)
        out = enc(x)
    assert [tuple(f.shape) for f in feats] == [(2, 256, 24, 24), (2, 512, 12, 12), (2, 1024, 6, 6), (2, 2048, 3, 3)]
    assert enc.feature_strides == [4, 8, 16, 32] and enc.feature_widths == [256, 512, 1024, 2048]
    assert out.shape == (2, 128)


def test_masked_groupnorm_uses_visible_positions_only_float64_loop():
    g = torch.Generator().manual_seed(0)
    norm = MaskedGroupNorm(2, 4).double()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, -1.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.0, 0.1, 0.2, 0.3]))
    x = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64)
    keep = (torch.rand(2, 1, 3, 5, generator=g) > 0.4).double()
    out = norm(x, keep)
    weight, bias = norm.weight.detach().tolist(), norm.bias.detach().tolist()
    ref = torch.zeros_like(x)
    for b in range(2):
        for grp in range(2):
            vals = [
                float(x[b, c, i, j])
                for c in (2 * grp, 2 * grp + 1)
                for i in range(3)
                for j in range(5)
                if keep[b, 0, i, j]
            ]
            mean = sum(vals) / len(vals)
            var = sum((v - mean) ** 2 for v in vals) / len(vals)
            for c in (2 * grp, 2 * grp + 1):
                for i in range(3):
                    for j in range(5):
                        if keep[b, 0, i, j]:
                            z = (float(x[b, c, i, j]) - mean) / math.sqrt(var + norm.eps)
                            ref[b, c, i, j] = z * weight[c] + bias[c]
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(norm(x), nn.functional.group_norm(x, 2, norm.weight, norm.bias, norm.eps))


def test_bottleneck_masking_honours_the_ratio_at_every_stage_and_ignores_hidden_pixels():
    torch.manual_seed(0)
    enc = BottleneckResNetEncoder(1, widths=(8, 8, 16, 16), blocks=(1, 2, 1, 1), embed_dim=8)
    keep = random_patch_mask(3, (128, 128), 32, 0.65, torch.Generator().manual_seed(1))
    n_hide = round(0.65 * 16)
    x = torch.randn(3, 1, 128, 128)
    y = torch.where(keep > 0, x, torch.randn_like(x) * 5)  # different content in the hidden patches only
    fx, fy = enc.features(x, keep), enc.features(y, keep)
    for f, g_, stride in zip(fx, fy, enc.feature_strides):
        torch.testing.assert_close(f, g_)
        cells = keep[:, :, ::stride, ::stride]  # one value per feature cell (patches are whole cells)
        hidden = cells[:, 0] == 0
        assert (hidden.flatten(1).float().mean(1) == n_hide / 16).all()
        active = f.abs().sum(1) > 0
        assert not active[hidden].any()  # hidden cells exactly zero
        assert active[~hidden].all()  # visible cells carry features


def test_resnet50_pretraining_gradient_step_and_patch_check():
    torch.manual_seed(0)
    model = EncoderPretraining(
        image_size=64, arch="bottleneck", decoder_widths=(32, 64, 64, 64), embed_dim=32, patch_size=32, **R50
    )
    opt = model.configure_optimizers()
    x = torch.rand(4, 1, 64, 64)
    before = model.encoder.stages[3][2].conv3.weight.detach().clone()
    out = model.losses(x, torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert model.encoder.conv1.weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(before, model.encoder.stages[3][2].conv3.weight)
    with pytest.raises(ValueError, match="multiple of the encoder's deepest downsampling"):
        EncoderPretraining(image_size=64, arch="bottleneck", patch_size=16, **R50)


def test_diffusion_model_loads_a_bottleneck_encoder_from_pretraining(tmp_path):
    small = dict(widths=(4, 8, 8, 8), blocks=1)
    pre = EncoderPretraining(image_size=32, arch="bottleneck", embed_dim=8, patch_size=32, **small)
    ckpt = tmp_path / "enc.ckpt"
    torch.save({"state_dict": pre.state_dict()}, ckpt)
    model = DiffusionUAD(
        image_size=32,
        channels=(8, 8),
        attention=(False, False),
        encoder_arch="bottleneck",
        encoder_widths=small["widths"],
        encoder_blocks=1,
        cond_dim=8,
        encoder_ckpt=str(ckpt),
    )
    model.setup("fit")
    for a, b in zip(model.encoder.state_dict().values(), pre.encoder.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.isfinite(model.denoise_loss(torch.rand(2, 1, 32, 32)))
