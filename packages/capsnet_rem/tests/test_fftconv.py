"""The frequency-domain convolution against ``F.conv2d`` (float64), and the CapsNet option that uses it."""

import pytest
import torch
from capsnet_rem.fftconv import dft_matrices, fft_conv2d, unique_frequencies
from capsnet_rem.model import compact
from torch.nn import functional as F

# (batch, in, out, H, W, kh, kw, stride, bias): strides 1/2/3 and mixed, odd and even sizes, kernels that do and
# do not divide the stride, inputs with rows no output reads, rectangular maps and kernels, a 1x1 output
CASES = [
    (2, 3, 4, 9, 9, 3, 3, 1, True),
    (2, 3, 4, 10, 8, 4, 2, 1, False),
    (3, 2, 5, 11, 11, 9, 9, 2, True),
    (2, 4, 3, 20, 20, 9, 9, 2, False),
    (2, 2, 3, 10, 13, 4, 5, 2, True),
    (1, 3, 2, 13, 14, 5, 4, 3, False),
    (2, 2, 3, 9, 11, 3, 5, (2, 3), True),
    (1, 2, 2, 7, 6, 7, 6, 3, True),
]


def _inputs(case, dtype=torch.float64):
    b, c, o, h, w, kh, kw, stride, bias = case
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, c, h, w, generator=gen, dtype=dtype, requires_grad=True)
    weight = torch.randn(o, c, kh, kw, generator=gen, dtype=dtype, requires_grad=True)
    bvec = torch.randn(o, generator=gen, dtype=dtype, requires_grad=True) if bias else None
    return x, weight, bvec, stride


@pytest.mark.parametrize("case", CASES)
def test_matches_conv2d_outputs_and_gradients(case):
    x, weight, bias, stride = _inputs(case)
    leaves = [t for t in (x, weight, bias) if t is not None]
    ref = F.conv2d(x, weight, bias, stride)
    out = fft_conv2d(x, weight, bias, stride)
    assert out.shape == ref.shape and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    probe = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=ref.dtype)
    grads = torch.autograd.grad(out, leaves, probe)
    ref_grads = torch.autograd.grad(ref, leaves, probe)
    for g, r in zip(grads, ref_grads, strict=True):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=0, atol=1e-12)


def test_only_requested_gradients():
    x, weight, bias, stride = _inputs(CASES[2])
    x.requires_grad_(False)
    out = fft_conv2d(x, weight, bias, stride)
    (gw,) = torch.autograd.grad(out.sum(), [weight])
    torch.testing.assert_close(gw, torch.autograd.grad(F.conv2d(x, weight, bias, stride).sum(), [weight])[0])


def test_gradcheck():
    x, weight, bias, stride = _inputs((1, 2, 2, 7, 6, 3, 2, 2, True))
    assert torch.autograd.gradcheck(lambda a, w, b: fft_conv2d(a, w, b, stride), (x, weight, bias))


def test_float32_close_to_float64_reference():
    # the Sabour primary convolution's geometry with fewer channels and images
    x, weight, bias, _ = _inputs((4, 32, 16, 20, 20, 9, 9, 2, True), torch.float32)
    ref = F.conv2d(x.double(), weight.double(), bias.double(), 2)
    err = (fft_conv2d(x, weight, bias, 2).double() - ref).abs().max() / ref.abs().max()
    assert err < 1e-6


@pytest.mark.parametrize(("size", "unique"), [((10, 10), 52), ((5, 6), 16), ((7, 5), 18), ((1, 1), 1)])
def test_dft_matrices_are_torch_rfft2_without_conjugate_pairs_and_invert_it(size, unique):
    # unique: the half spectrum n_h (n_w // 2 + 1) minus, in the columns k_w = 0 (and n_w / 2 for even n_w),
    # the rows k_h > n_h / 2, e.g. 10 x 10: 60 - 2 * 4 = 52; 5 x 6: 20 - 2 * 2 = 16; 7 x 5: 21 - 3 = 18
    keep = unique_frequencies(size)
    assert len(keep) == unique
    img = torch.randn(3, *size, dtype=torch.float64)
    fwd, inv = dft_matrices(size, torch.float64, torch.device("cpu"))
    spec = torch.fft.rfft2(img).flatten(1)[:, keep]  # [3, F]
    pixels = size[0] * size[1]
    assert fwd.shape == (2 * unique, pixels) and inv.shape == (pixels, 2 * unique)
    torch.testing.assert_close(img.flatten(1) @ fwd.T, torch.cat([spec.real, spec.imag], 1))
    torch.testing.assert_close(inv @ fwd, torch.eye(pixels, dtype=torch.float64))


def test_rejects_bad_arguments():
    x = torch.randn(1, 2, 5, 5)
    with pytest.raises(ValueError, match="larger than the input"):
        fft_conv2d(x, torch.randn(3, 2, 6, 3))
    with pytest.raises(ValueError, match="stride"):
        fft_conv2d(x, torch.randn(3, 2, 3, 3), stride=0)
    with pytest.raises(ValueError, match="expected x"):
        fft_conv2d(x, torch.randn(3, 4, 3, 3))


def _loss_and_grads(net, x, y):
    out = net(x, y)
    loss = out.lengths.square().sum() + out.reconstruction.sum()
    grads = torch.autograd.grad(loss, list(net.parameters()))
    return out, grads


def test_capsnet_fft_equals_direct(small_capsnet):
    direct = small_capsnet(decoder=True).double()
    fft = small_capsnet(decoder=True, primary_conv="fft").double()
    assert fft.primary.algorithm == "fft"
    fft.load_state_dict(direct.state_dict())  # same parameters and state_dict either way
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 20, 20, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (4,), generator=gen)
    out_d, grads_d = _loss_and_grads(direct, x, y)
    out_f, grads_f = _loss_and_grads(fft, x, y)
    for a, b in zip(out_f, out_d, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for a, b in zip(grads_f, grads_d, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_capsnet_rejects_unknown_algorithm(small_capsnet):
    with pytest.raises(ValueError, match="unknown convolution algorithm"):
        small_capsnet(primary_conv="winograd")


def test_compact_keeps_fft(small_capsnet):
    net = small_capsnet(primary_conv="fft").double().eval()
    with torch.no_grad():
        net.primary.conv.weight[: 2 * net.primary.dims] = 0  # types 0 and 1 can no longer vote
        net.primary.conv.bias[: 2 * net.primary.dims] = 0
    small = compact(net)
    assert small.primary.algorithm == "fft" and small.primary.types == net.primary.types - 2
    x = torch.rand(3, 1, 20, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(small(x).lengths, net(x).lengths, rtol=0, atol=1e-12)
