"""The CPU rasterizer against an independent float64 per-pixel reference, and its gradients by finite differences."""

import math

import pytest
import torch
from gode.rasterizer import composite, rasterize

C1 = 0.4886025119029199  # |Y_1^m| normalisation
C0 = 0.28209479177387814


def rotmat(q):
    w, x, y, z = (q / q.norm()).tolist()
    return torch.tensor(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ],
        dtype=torch.float64,
    )


def reference_render(means, quats, scales, opacities, coeffs, viewmat, K, width, height, background):
    """Textbook EWA splatting, one pixel and one Gaussian at a time, in float64."""
    R, t = viewmat[:3, :3].double(), viewmat[:3, 3].double()
    fx, fy, cx, cy = K[0, 0].item(), K[1, 1].item(), K[0, 2].item(), K[1, 2].item()
    campos = -R.T @ t
    splats = []
    for i in range(len(means)):
        m = means[i].double()
        rs = rotmat(quats[i].double()) @ torch.diag(scales[i].double())
        cov_c = R @ (rs @ rs.T) @ R.T
        x, y, z = (R @ m + t).tolist()
        J = torch.tensor([[fx / z, 0, -fx * x / z**2], [0, fy / z, -fy * y / z**2]], dtype=torch.float64)
        cov2 = J @ cov_c @ J.T + 0.3 * torch.eye(2, dtype=torch.float64)
        d = m - campos
        d = d / d.norm()
        basis = [C0, -C1 * d[1].item(), C1 * d[2].item(), -C1 * d[0].item()]
        color = sum(b * coeffs[i, k].double() for k, b in enumerate(basis)) + 0.5
        splats.append(
            (z, fx * x / z + cx, fy * y / z + cy, torch.linalg.inv(cov2), opacities[i].item(), color.clamp_min(0))
        )
    splats.sort(key=lambda s: s[0])
    image = torch.zeros(height, width, 3, dtype=torch.float64)
    alpha_img = torch.zeros(height, width, dtype=torch.float64)
    for row in range(height):
        for col in range(width):
            T, rgb = 1.0, torch.zeros(3, dtype=torch.float64)
            for _, u, v, inv, o, color in splats:
                dx = torch.tensor([col + 0.5 - u, row + 0.5 - v], dtype=torch.float64)
                alpha = min(0.999, o * math.exp(-0.5 * float(dx @ inv @ dx)))
                if alpha < 1 / 255:
                    continue
                if T * (1 - alpha) <= 1e-4:
                    break
                rgb += alpha * T * color
                T *= 1 - alpha
            image[row, col] = rgb + T * background.double()
            alpha_img[row, col] = 1 - T
    return image, alpha_img


def scene(n=6, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=gen) - 0.5) * 1.2
    quats = torch.randn(n, 4, generator=gen)
    scales = 0.08 + 0.15 * torch.rand(n, 3, generator=gen)
    opacities = 0.3 + 0.65 * torch.rand(n, generator=gen)
    coeffs = torch.randn(n, 4, 3, generator=gen) * 0.3
    viewmat = torch.eye(4)
    viewmat[:3, :3] = torch.linalg.matrix_exp(torch.tensor([[0, -0.1, 0.2], [0.1, 0, -0.15], [-0.2, 0.15, 0]]))
    viewmat[:3, 3] = torch.tensor([0.05, -0.1, 3.0])
    K = torch.tensor([[30.0, 0, 13.0], [0, 28.0, 10.5], [0, 0, 1]])
    return [t.to(dtype) for t in (means, quats, scales, opacities, coeffs, viewmat, K)]


def test_matches_float64_per_pixel_reference():
    means, quats, scales, opacities, coeffs, viewmat, K = scene()
    width, height = 26, 21
    bg = torch.tensor([0.2, 0.4, 0.9])
    out = rasterize(means, quats, scales, opacities, coeffs, viewmat, K, width, height, background=bg, tile_size=8)
    ref_rgb, ref_alpha = reference_render(means, quats, scales, opacities, coeffs, viewmat, K, width, height, bg)
    assert out.rgb.shape == (height, width, 3) and out.alpha.shape == (height, width, 1)
    assert ref_alpha.max() > 0.5  # the Gaussians are in view
    torch.testing.assert_close(out.rgb.double(), ref_rgb, atol=2e-5, rtol=0)
    torch.testing.assert_close(out.alpha[..., 0].double(), ref_alpha, atol=2e-5, rtol=0)


def test_tile_size_does_not_change_the_image():
    means, quats, scales, opacities, coeffs, viewmat, K = scene(n=20, seed=3)
    a = rasterize(means, quats, scales, opacities, coeffs, viewmat, K, 26, 21, tile_size=4)
    b = rasterize(means, quats, scales, opacities, coeffs, viewmat, K, 26, 21, tile_size=16)
    torch.testing.assert_close(a.rgb, b.rgb, atol=1e-6, rtol=0)


def test_depth_is_alpha_weighted_camera_z():
    # One opaque-ish Gaussian facing the camera: depth / alpha recovers its z everywhere it is visible.
    means = torch.tensor([[0.0, 0.0, 0.0]])
    out = rasterize(
        means,
        torch.tensor([[1.0, 0, 0, 0]]),
        torch.full((1, 3), 0.3),
        torch.tensor([0.9]),
        torch.zeros(1, 1, 3),
        torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2.5], [0, 0, 0, 1]]),
        torch.tensor([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]),
        16,
        16,
    )
    seen = out.alpha[..., 0] > 0.05
    torch.testing.assert_close(out.depth[..., 0][seen] / out.alpha[..., 0][seen], torch.full((int(seen.sum()),), 2.5))


def test_gradients_match_finite_differences():
    means, quats, scales, opacities, coeffs, viewmat, K = scene(n=4, seed=1, dtype=torch.float64)
    weights = torch.rand(9, 11, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss(means, scales, opacities, coeffs, quats):
        out = rasterize(means, quats, scales, opacities, coeffs, viewmat, K * 0.4, 11, 9, tile_size=4)
        return (out.rgb * weights).sum() + out.alpha.sum()

    inputs = tuple(t.clone().requires_grad_(True) for t in (means, scales, opacities, coeffs, quats))
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_empty_view_renders_background():
    means = torch.tensor([[0.0, 0.0, -5.0]])  # behind the camera
    rgb, alpha = composite(
        torch.zeros(1, 2),
        torch.ones(1, 3),
        torch.ones(1),
        torch.ones(1, 3),
        torch.ones(1),
        torch.zeros(1, 2, dtype=torch.int32),
        8,
        8,
    )
    assert rgb.abs().sum() == 0 and alpha.abs().sum() == 0
    out = rasterize(
        means,
        torch.tensor([[1.0, 0, 0, 0]]),
        torch.ones(1, 3) * 0.1,
        torch.ones(1) * 0.5,
        torch.zeros(1, 1, 3),
        torch.eye(4),
        torch.tensor([[10.0, 0, 4], [0, 10.0, 4], [0, 0, 1]]),
        8,
        8,
        background=torch.tensor([0.1, 0.2, 0.3]),
    )
    torch.testing.assert_close(out.rgb, torch.tensor([0.1, 0.2, 0.3]).expand(8, 8, 3))


@pytest.mark.gpu
def test_cpu_path_matches_gsplat_cuda():
    means, quats, scales, opacities, coeffs, viewmat, K = (t.cuda() for t in scene(n=50, seed=2))
    bg = torch.tensor([1.0, 1.0, 1.0], device="cuda")
    gpu = rasterize(means, quats, scales, opacities, coeffs, viewmat, K, 26, 21, background=bg, use_cuda=True)
    cpu = rasterize(means, quats, scales, opacities, coeffs, viewmat, K, 26, 21, background=bg, use_cuda=False)
    torch.testing.assert_close(cpu.rgb, gpu.rgb, atol=2e-3, rtol=0)
    torch.testing.assert_close(cpu.alpha, gpu.alpha, atol=2e-3, rtol=0)


def test_cpu_path_never_loads_gsplat_cuda_backend():
    # gsplat JIT-builds its CUDA extension when gsplat.cuda._backend is imported; the CPU path must never get there.
    import subprocess
    import sys

    code = """
import sys, torch
from gode.rasterizer import rasterize
viewmat = torch.eye(4)
viewmat[2, 3] = 3.0
K = torch.tensor([[8.0, 0, 4], [0, 8.0, 4], [0, 0, 1]])
quats = torch.tensor([[1.0, 0, 0, 0]])
out = rasterize(torch.zeros(1, 3), quats, torch.full((1, 3), 0.2), torch.full((1,), 0.5), torch.zeros(1, 1, 3),
                viewmat, K, 8, 8, use_cuda=False)
assert out.alpha.max() > 0
assert "gsplat.cuda._backend" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
