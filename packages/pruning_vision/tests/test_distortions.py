import numpy as np
import pytest
import torch
from pruning_vision.distortions import (
    LUMA,
    contrast,
    distort,
    false_colour,
    greyscale,
    high_pass,
    low_pass,
    luminance,
    phase_scrambling,
    power_equalisation,
    rotation,
)
from scipy import ndimage


@pytest.fixture
def images():
    return torch.rand(3, 3, 16, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_contrast_keeps_the_mean_and_scales_deviations(images):
    out = contrast(images, 0.3)
    torch.testing.assert_close(out.mean((1, 2, 3)), images.mean((1, 2, 3)))
    torch.testing.assert_close(out.std((1, 2, 3)), 0.3 * images.std((1, 2, 3)))


def test_low_pass_is_scipys_fourier_gaussian_and_removes_high_frequencies(images):
    sigma = 1.5
    out = low_pass(images, sigma)
    ref = np.fft.ifft2(ndimage.fourier_gaussian(np.fft.fft2(images.numpy()[0, 0]), sigma)).real
    np.testing.assert_allclose(out[0, 0].numpy(), ref, atol=1e-12)
    spec_in, spec_out = np.abs(np.fft.fft2(images.numpy())), np.abs(np.fft.fft2(out.numpy()))
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(16), np.fft.fftfreq(20), indexing="ij"))
    high = f > 0.3  # well above the cut-off 1/(2πσ) ≈ 0.106 cycles/pixel
    assert (spec_out[..., high] ** 2).sum() < 1e-3 * (spec_in[..., high] ** 2).sum()
    np.testing.assert_allclose(spec_out[..., 0, 0], spec_in[..., 0, 0])  # DC (the mean) kept


def test_high_pass_removes_low_frequencies_but_keeps_the_mean(images):
    out = high_pass(images, 2.0)
    torch.testing.assert_close(out.mean((-2, -1)), images.mean((-2, -1)))
    spec_in = np.abs(np.fft.fft2(images.numpy()))
    spec_out = np.abs(np.fft.fft2(out.numpy()))
    # lowest non-zero frequency is attenuated by 1 - exp(-2π²σ²f²) with f = 1/20
    expected = 1 - np.exp(-2 * np.pi**2 * 4.0 * (1 / 20) ** 2)
    np.testing.assert_allclose(spec_out[..., 0, 1], expected * spec_in[..., 0, 1], rtol=1e-9)


def test_phase_scrambling_keeps_amplitudes_and_changes_the_image(images):
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    out = phase_scrambling(images, 90.0, gens)
    np.testing.assert_allclose(np.abs(np.fft.fft2(out.numpy())), np.abs(np.fft.fft2(images.numpy())), atol=1e-9)
    assert (out - images).abs().max() > 0.05
    same = phase_scrambling(images, 0.0, [torch.Generator().manual_seed(i) for i in range(3)])
    torch.testing.assert_close(same, images)


def test_power_equalisation_sets_the_common_spectrum_and_keeps_phase(images):
    out = power_equalisation(images)
    spec_in, spec_out = np.fft.fft2(images.numpy()), np.fft.fft2(out.numpy())
    target = np.abs(spec_in).mean(0)
    np.testing.assert_allclose(np.abs(spec_out), np.broadcast_to(target, spec_out.shape), atol=1e-9)
    keep = np.abs(spec_in) > 1e-6
    np.testing.assert_allclose(np.angle(spec_out[keep] * np.conj(spec_in[keep])), 0, atol=1e-6)


def test_rotation_and_colour_transforms():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float64).view(2, 3, 4, 4) / 100
    r = rotation(x, 90)
    assert r[0, 0, 0, 0] == x[0, 0, 0, 3]  # counter-clockwise: the top-right pixel moves to the top-left
    torch.testing.assert_close(rotation(rotation(r, 180), 90), x)
    with pytest.raises(ValueError):
        rotation(x, 45)
    lum = (x * torch.tensor(LUMA, dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)
    torch.testing.assert_close(luminance(greyscale(x)), lum)
    assert torch.equal(greyscale(x)[:, 0], greyscale(x)[:, 2])
    torch.testing.assert_close(luminance(false_colour(x * 0.5 + 0.25)), luminance(x * 0.5 + 0.25))
    grey = torch.full((1, 3, 4, 4), 0.3, dtype=torch.float64)
    torch.testing.assert_close(false_colour(grey), grey)


def test_random_distortions_depend_on_the_image_index_not_the_batch(images):
    idx = torch.tensor([10, 11, 12])
    for name, level in (("uniform_noise", 0.2), ("phase_scrambling", 60.0)):
        whole = distort(name, images, level, idx, seed=3)
        single = distort(name, images[1:2], level, idx[1:2], seed=3)
        torch.testing.assert_close(whole[1:2], single)
        assert not torch.equal(distort(name, images, level, idx, seed=4), whole)
    noisy = distort("uniform_noise", images * 0.5 + 0.25, 0.2, idx)
    assert ((noisy - (images * 0.5 + 0.25)).abs() <= 0.2 + 1e-12).all()
