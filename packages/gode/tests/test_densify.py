"""3DGS default densification: clone, split, prune, opacity reset, statistics and optimiser bookkeeping."""

import math

import numpy as np
import pytest
import torch
from gode import densify
from gode.rasterizer import composite, rasterize
from reprokit.cli import package_path, run_cli
from scipy.spatial.transform import Rotation


def make_params(n: int, seed: int = 0) -> dict[str, torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    shapes = {"means": (n, 3), "quats": (n, 4), "log_scales": (n, 3), "opacity_logits": (n,), "sh0": (n, 1, 3)}
    shapes["shN"] = (n, 3, 3)
    return {k: torch.nn.Parameter(torch.randn(s, generator=gen)) for k, s in shapes.items()}


def stepped_adam(params: dict[str, torch.nn.Parameter]) -> torch.optim.Adam:
    """Adam after one step, so that every row has non-zero moments."""
    optimizer = torch.optim.Adam(params.values(), lr=1e-3)
    sum((p * torch.arange(1, p.numel() + 1).reshape(p.shape)).sum() for p in params.values()).backward()
    optimizer.step()
    return optimizer


def test_clone_duplicates_exactly_the_selected_and_zeroes_their_moments():
    params = make_params(7)
    optimizer = stepped_adam(params)
    old = {k: v.detach().clone() for k, v in params.items()}
    old_m = {k: optimizer.state[v]["exp_avg"].clone() for k, v in params.items()}
    old_v = {k: optimizer.state[v]["exp_avg_sq"].clone() for k, v in params.items()}
    selected = torch.tensor([False, True, False, False, True, True, False])
    densify.clone(params, optimizer, selected)
    for k, p in params.items():
        assert p.shape[0] == 10
        torch.testing.assert_close(p.data, torch.cat([old[k], old[k][[1, 4, 5]]]), rtol=0, atol=0)
        state = optimizer.state[p]
        assert state["exp_avg"].shape == state["exp_avg_sq"].shape == p.shape
        torch.testing.assert_close(state["exp_avg"][:7], old_m[k], rtol=0, atol=0)
        torch.testing.assert_close(state["exp_avg_sq"][:7], old_v[k], rtol=0, atol=0)
        assert state["exp_avg"][7:].abs().sum() == 0 and state["exp_avg_sq"][7:].abs().sum() == 0
    # The optimiser still owns the same objects and can step with the new shapes.
    sum(p.sum() for p in params.values()).backward()
    optimizer.step()


def test_split_children_sample_the_parent_covariance_with_scales_over_1_6():
    m = 20000  # many identical parents: the children's empirical covariance must be the parent's
    rot = Rotation.from_euler("xyz", [0.4, -0.9, 1.3])
    x, y, z, w = rot.as_quat()
    scales = np.array([0.3, 0.1, 0.05])
    params = make_params(m + 2)
    optimizer = stepped_adam(params)
    with torch.no_grad():
        params["means"][:m] = torch.tensor([1.0, -2.0, 0.5])
        params["quats"][:m] = torch.tensor([w, x, y, z], dtype=torch.float) * 3.0  # unnormalised on purpose
        params["log_scales"][:m] = torch.tensor(np.log(scales), dtype=torch.float)
    old = {k: v.detach().clone() for k, v in params.items()}
    selected = torch.zeros(m + 2, dtype=torch.bool)
    selected[:m] = True
    densify.split(params, optimizer, selected, torch.Generator().manual_seed(0))

    assert params["means"].shape == (2 + 2 * m, 3)
    for k in params:  # the two unselected Gaussians come first, untouched, with their moments
        torch.testing.assert_close(params[k].data[:2], old[k][m:], rtol=0, atol=0)
        assert optimizer.state[params[k]]["exp_avg"].shape == params[k].shape
        assert optimizer.state[params[k]]["exp_avg"][2:].abs().sum() == 0
    children = params["means"].data[2:].double() - torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    cov = rot.as_matrix() @ np.diag(scales**2) @ rot.as_matrix().T  # float64, independent of gode's rotation
    empirical = (children.T @ children / len(children)).numpy()
    np.testing.assert_allclose(empirical, cov, atol=0.03 * scales.max() ** 2)
    mahalanobis = np.einsum("ni,ij,nj->n", children.numpy(), np.linalg.inv(cov), children.numpy())
    assert abs(mahalanobis.mean() - 3.0) < 0.1  # chi-square with 3 degrees of freedom
    np.testing.assert_allclose(
        torch.exp(params["log_scales"].data[2:]).numpy(), np.tile(scales / 1.6, (2 * m, 1)), rtol=1e-5
    )
    for k in ("quats", "opacity_logits", "sh0", "shN"):
        torch.testing.assert_close(params[k].data[2:], old[k][:m].repeat(2, *([1] * (old[k].dim() - 1))))


def test_prune_removes_exactly_the_ones_below_threshold():
    params = make_params(9)
    optimizer = stepped_adam(params)
    with torch.no_grad():
        params["opacity_logits"].copy_(
            torch.logit(torch.tensor([0.5, 0.001, 0.3, 0.004, 0.9, 0.006, 0.2, 0.0, 1.0]).clamp(1e-6, 1 - 1e-6))
        )
    old = {k: v.detach().clone() for k, v in params.items()}
    old_m = {k: optimizer.state[v]["exp_avg"].clone() for k, v in params.items()}
    dead = torch.sigmoid(params["opacity_logits"]) < 0.005
    assert dead.tolist() == [False, True, False, True, False, False, False, True, False]
    densify.prune(params, optimizer, dead)
    keep = [0, 2, 4, 5, 6, 8]
    for k, p in params.items():
        torch.testing.assert_close(p.data, old[k][keep], rtol=0, atol=0)
        torch.testing.assert_close(optimizer.state[p]["exp_avg"], old_m[k][keep], rtol=0, atol=0)
        assert optimizer.state[p]["exp_avg_sq"].shape == p.shape


def test_gradient_statistics_average_over_the_views_that_saw_each_gaussian():
    grad2d, count = torch.zeros(3), torch.zeros(3)
    width, height = 4, 2  # pixel gradients times (W/2, H/2) = (2, 1) are NDC gradients
    views = [
        (torch.tensor([[0.5, 1.0], [9.0, 9.0], [0.0, 0.0]]), torch.tensor([True, False, False])),
        (torch.tensor([[0.0, -3.0], [9.0, 9.0], [1.5, 0.0]]), torch.tensor([True, False, True])),
        (torch.tensor([[7.0, 7.0], [9.0, 9.0], [0.0, 0.0]]), torch.tensor([False, False, False])),
    ]
    for grad, visible in views:
        densify.accumulate_grad2d(grad2d, count, grad, visible, width, height)
    # Gaussian 0: |(1, 1)| = sqrt 2 and |(0, -3)| = 3 over 2 views; 1: never seen; 2: |(3, 0)| = 3 over 1 view.
    expected = torch.tensor([(math.sqrt(2) + 3) / 2, 0.0, 3.0])
    torch.testing.assert_close(densify.average_grad2d(grad2d, count), expected)
    torch.testing.assert_close(count, torch.tensor([2.0, 0.0, 1.0]))


def test_retained_means2d_gradient_is_the_screen_space_derivative():
    # The CPU rasterizer's means2d.grad must be d loss / d (pixel centre) with everything else fixed: check it by
    # central differences of the compositor in float64.
    gen = torch.Generator().manual_seed(3)
    n = 6
    means = torch.cat([torch.rand(n, 2, generator=gen) - 0.5, torch.zeros(n, 1)], -1).double().requires_grad_()
    quats = torch.randn(n, 4, generator=gen).double()
    scales = (0.15 + 0.1 * torch.rand(n, 3, generator=gen)).double()
    opac = (0.4 + 0.5 * torch.rand(n, generator=gen)).double()
    coeffs = torch.randn(n, 1, 3, generator=gen).double()
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[2, 3] = 3.0
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 7], [0, 0, 1]], dtype=torch.float64)
    weights = torch.rand(14, 16, 3, generator=gen).double()
    out = rasterize(means, quats, scales, opac, coeffs, viewmat, K, 16, 14, tile_size=8)
    out.means2d.retain_grad()
    (out.rgb * weights).sum().backward()
    grad = out.means2d.grad
    assert grad.shape == (n, 2) and grad.abs().sum() > 0

    from gode import _gsplat

    with torch.no_grad():
        covars = _gsplat.covariances(quats, scales)
        radii, means2d, depths, conics = _gsplat.project(means.detach(), covars, viewmat, K, 16, 14)
        colors = _gsplat.sh_to_rgb(0, means.detach() - torch.tensor([0, 0, -3.0], dtype=torch.float64), coeffs)

        def loss(m2d):
            feats, _ = composite(m2d, conics, opac, colors, depths, radii, 16, 14, tile_size=8)
            return float((feats * weights).sum())

        eps = 1e-6
        fd = torch.zeros(n, 2, dtype=torch.float64)
        for i in range(n):
            for j in range(2):
                shift = torch.zeros(n, 2, dtype=torch.float64)
                shift[i, j] = eps
                fd[i, j] = (loss(means2d + shift) - loss(means2d - shift)) / (2 * eps)
    torch.testing.assert_close(grad, fd, atol=1e-6, rtol=1e-5)


@pytest.mark.gpu
def test_gsplat_means2d_gradient_matches_the_cpu_path():
    # The statistics read means2d.grad on either path: gsplat's [1, N, 2] and the CPU [N, 2] must agree.
    gen = torch.Generator().manual_seed(5)
    n = 40
    means = torch.cat([torch.rand(n, 2, generator=gen) - 0.5, 0.3 * torch.rand(n, 1, generator=gen)], -1)
    quats = torch.randn(n, 4, generator=gen)
    scales = 0.05 + 0.1 * torch.rand(n, 3, generator=gen)
    opac = 0.3 + 0.6 * torch.rand(n, generator=gen)
    coeffs = torch.randn(n, 1, 3, generator=gen)
    viewmat = torch.eye(4)
    viewmat[2, 3] = 3.0
    K = torch.tensor([[30.0, 0, 16], [0, 30.0, 12], [0, 0, 1]])
    weights = torch.rand(24, 32, 3, generator=gen)
    grads = []
    for use_cuda in (True, False):
        args = [t.cuda() for t in (means, quats, scales, opac, coeffs, viewmat, K)]
        out = rasterize(*args[:5], args[5], args[6], 32, 24, use_cuda=use_cuda)
        out.means2d.retain_grad()
        (out.rgb * weights.cuda()).sum().backward()
        grads.append(out.means2d.grad.reshape(n, 2))
        assert (out.radii.reshape(n, -1) > 0).all(-1).any()
    torch.testing.assert_close(grads[1], grads[0], atol=1e-3 * float(grads[1].abs().max()), rtol=1e-2)


def test_refine_clones_small_splits_large_prunes_and_resets():
    params = make_params(6)
    optimizer = stepped_adam(params)
    with torch.no_grad():
        # scene_scale 1: dense_fraction 0.01 -> clone below 0.01, split above; prune_scale 0.1
        params["log_scales"].copy_(
            torch.log(torch.tensor([[0.005] * 3, [0.05] * 3, [0.005] * 3, [0.05] * 3, [0.5] * 3, [0.005] * 3]))
        )
        params["opacity_logits"].copy_(torch.logit(torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5, 0.001])))
    strategy = densify.DefaultDensification(start=10, stop=1000, every=10, grad_threshold=1e-3, reset_every=50)
    stats = {"grad2d": torch.tensor([2e-3, 2e-3, 1e-4, 1e-4, 0.0, 0.0]), "count": torch.tensor([1.0, 1, 1, 1, 1, 1])}
    done = strategy.refine(params, optimizer, stats, 15, 1.0, torch.Generator().manual_seed(0))
    assert done == {"densified": 0, "cloned": 0, "split": 0, "pruned": 0, "reset": 0}  # not a densification step
    done = strategy.refine(params, optimizer, stats, 20, 1.0, torch.Generator().manual_seed(0))
    # clone #0, split #1 into two, prune #5 (opacity); #4 is too large but the first reset (50) has not passed
    assert done == {"densified": 1, "cloned": 1, "split": 1, "pruned": 1, "reset": 0}
    assert params["means"].shape[0] == 6 + 1 + 1 - 1
    assert all(optimizer.state[p]["exp_avg"].shape == p.shape for p in params.values())
    stats = {"grad2d": torch.zeros(7), "count": torch.zeros(7)}
    done = strategy.refine(params, optimizer, stats, 60, 1.0, None)
    assert done["pruned"] == 1 and params["means"].shape[0] == 6  # now the large one goes
    done = strategy.refine(params, optimizer, {"grad2d": torch.zeros(6), "count": torch.zeros(6)}, 100, 1.0, None)
    assert done["reset"] == 1
    assert torch.sigmoid(params["opacity_logits"]).max() <= 0.01 + 1e-6
    assert optimizer.state[params["opacity_logits"]]["exp_avg"].abs().sum() == 0


def densify_args(epochs: int) -> list[str]:
    return [
        "fit",
        "--config",
        str(package_path("gode", "configs") / "cpu" / "contract.yaml"),
        "--model.init_args.densification=default",
        "--model.init_args.num_gaussians=150",
        "--model.init_args.num_levels=0",
        "--model.init_args.refine_start=1",
        "--model.init_args.refine_every=2",
        "--model.init_args.opacity_reset_every=5",
        "--model.init_args.densify_grad_threshold=0.00001",
        "--trainer.limit_train_batches=4",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.max_epochs={epochs}",
    ]


def test_default_densification_through_the_cli_grows_and_resumes_exactly():
    full = run_cli("gode", [*densify_args(2), "--experiment=full"])
    n = len(full.model.gaussians)
    assert n != 150  # the count changed during the run
    half = run_cli("gode", [*densify_args(1), "--experiment=half"])
    ckpt = half.trainer.checkpoint_callback.best_model_path
    resumed = run_cli("gode", [*densify_args(2), "--experiment=resumed", "--ckpt_path", ckpt])
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and "grad2d" in a
    assert not [k for k in a if not torch.equal(a[k], b[k])]


def test_default_densification_refuses_ddp_and_mcmc_registers_no_statistics():
    import types

    from gode.lightning_module import GoDeModule

    module = GoDeModule(num_gaussians=20, sh_degree=0, scene_scale=1.0, densification="default")
    module._trainer = types.SimpleNamespace(world_size=2, datamodule=None)
    with pytest.raises(ValueError, match="DDP"):
        module.setup("fit")
    module._trainer = types.SimpleNamespace(world_size=1, datamodule=None)
    module.setup("fit")
    assert "grad2d" in module.state_dict()
    assert "grad2d" not in GoDeModule(num_gaussians=20, sh_degree=0).state_dict()
