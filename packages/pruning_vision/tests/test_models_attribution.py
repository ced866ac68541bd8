import pytest
import torch
from pruning_vision.attribution import attention, gradcam, guided_gradcam, integrated_gradients
from pruning_vision.models import SmallResNet, SmallViT
from torch.nn import functional as F


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return SmallResNet(10, widths=(4, 8, 8)).eval(), SmallViT(10, 16, 4, dim=16, depth=2, heads=2).eval()


def test_patch_features_shapes(models):
    cnn, vit = models
    x = torch.rand(2, 3, 16, 16)
    f, grid = cnn.patch_features(x)
    assert f.shape == (2, 16, 8) and grid == (4, 4)
    f, grid = vit.patch_features(x)
    assert f.shape == (2, 16, 16) and grid == (4, 4)


def test_vit_keys_and_cls_attention_match_a_manual_computation(models):
    _, vit = models
    x = torch.rand(2, 3, 16, 16)
    # Recompute the last block's input from scratch, then its keys and CLS attention by hand.
    t = vit.patch(x).flatten(2).transpose(1, 2)
    t = torch.cat([vit.cls.expand(2, -1, -1), t], 1) + vit.pos
    t = vit.blocks[0](t)
    h = vit.blocks[1].norm1(t)
    q, k, _ = F.linear(h, vit.blocks[1].attn.qkv.weight, vit.blocks[1].attn.qkv.bias).chunk(3, dim=-1)
    feats, _ = vit.patch_features(x)
    torch.testing.assert_close(feats, k[:, 1:])
    heads = [
        torch.softmax(qh[:, :1] @ kh.transpose(1, 2) / 8**0.5, -1)[:, 0, 1:]
        for qh, kh in zip(q.split(8, -1), k.split(8, -1))
    ]
    torch.testing.assert_close(vit.cls_attention(x), torch.stack(heads).mean(0).view(2, 4, 4))
    assert attention(vit, x).shape == (2, 16, 16)


def test_integrated_gradients_completeness(models):
    cnn, _ = models
    x, target = torch.rand(2, 3, 16, 16), torch.tensor([3, 7])
    maps = integrated_gradients(cnn, x, target, steps=64)
    with torch.no_grad():
        gap = cnn(x)[torch.arange(2), target] - cnn(torch.zeros_like(x))[torch.arange(2), target]
    torch.testing.assert_close(maps.sum((1, 2)), gap, atol=2e-2 * gap.abs().max().item() + 1e-4, rtol=0)


def test_gradcam_maps_and_guided_gradcam(models):
    cnn, vit = models
    x, target = torch.rand(2, 3, 16, 16), torch.tensor([1, 2])
    for model in (cnn, vit):
        maps = gradcam(model, x, target)
        assert maps.shape == (2, 16, 16) and float(maps.min()) >= 0 and float(maps.max()) <= 1 + 1e-6
    assert guided_gradcam(cnn, x, target).shape == (2, 16, 16)
    with pytest.raises(ValueError):
        guided_gradcam(vit, x, target)
