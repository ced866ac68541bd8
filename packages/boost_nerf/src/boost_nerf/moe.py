"""The mixture of NeRF experts: filtering, gating, sparse dispatch, blending and rendering.

On CPU the samples come from the pure-torch sampler of :mod:`boost_nerf.render` (dense ``[rays, samples]``); on a
GPU with usable CUDA kernels from nerfacc's ``OccGridEstimator`` (packed samples), fed the same occupancy grid.

Per batch of rays: sample points in the box, drop points in empty occupancy cells, drop points whose alpha/weight
under the finest expert is below ``fast_color_thres``; the gate scores the remaining points, each expert evaluates
only the points routed to it, and radiance and alpha are blended with the gate weights before compositing.
"""

from __future__ import annotations

from typing import Literal

import torch
from nerfacc import accumulate_along_rays, render_weight_from_alpha
from reprokit.devices import cuda_kernels_available
from torch import nn

from boost_nerf.encoding import act_shift_for, raw_to_alpha
from boost_nerf.experts import Expert, HashGridExpert
from boost_nerf.gate import NeRFGate, top_k_routing
from boost_nerf.render import cell_centers, composite, occupancy_lookup, sample_along_rays

Mode = Literal["single", "topk", "ensemble"]


def linear_flops(module: nn.Module) -> int:
    """FLOPs per input row of all ``nn.Linear`` layers in ``module``: ``2 * in * out`` each (multiply + add)."""
    return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def density_linear_flops(expert: Expert) -> int:
    """Matmul FLOPs of ``expert.density`` per point: the NGP density MLP; zero for grid densities (DVGO, TensoRF)."""
    return linear_flops(expert.density_net) if isinstance(expert, HashGridExpert) else 0


def dispatch(
    experts: nn.ModuleList | list[Expert],
    x: torch.Tensor,
    d: torch.Tensor,
    weights: torch.Tensor,
    index: torch.Tensor | None,
    act_shift: float,
    interval: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blend expert outputs, evaluating each expert only on the points routed to it.

    Args:
        experts: M experts.
        x: Points ``[P, 3]``.
        d: Unit view directions ``[P, 3]``.
        weights: Blend weights ``[P, M]``.
        index: Routed experts ``[P, k]``, or None to evaluate every expert on every point (ensemble).
        act_shift: Raw-density shift of :func:`raw_to_alpha`.
        interval: Step length in finest-grid voxels.

    Returns:
        Blended radiance ``[P, 3]`` = sum_i g_i c_i, blended alpha ``[P]`` = sum_i g_i alpha_i, and the number of
        points each expert evaluated ``[M]`` (int64).
    """
    rgb = x.new_zeros(len(x), 3)
    alpha = x.new_zeros(len(x))
    counts = torch.zeros(len(experts), dtype=torch.long, device=x.device)
    for e, expert in enumerate(experts):
        if index is None:
            sel = torch.arange(len(x), device=x.device)
        else:
            sel = (index == e).any(-1).nonzero().squeeze(1)
        counts[e] = len(sel)
        if len(sel) == 0:
            continue
        rgb_e, raw_e = expert(x[sel], d[sel])
        g = weights[sel, e]
        rgb = rgb.index_add(0, sel, g[:, None] * rgb_e)
        alpha = alpha.index_add(0, sel, g * raw_to_alpha(raw_e, act_shift, interval))
    return rgb, alpha, counts


def _ray_outputs(
    rgb: torch.Tensor,
    opacity: torch.Tensor,
    probs: torch.Tensor,
    counts: torch.Tensor,
    points: int,
    candidates: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The dict both render paths return: colours, opacity, gate stats and the point counts the FLOP counter needs."""
    return {
        "rgb": rgb,
        "opacity": opacity,
        "probs": probs,
        "counts": counts,
        "points": torch.tensor(points),
        "candidates": candidates,
    }


class BoostNeRF(nn.Module):
    """Experts + gate + sampler: renders rays.

    Args:
        experts: The experts (one for a single-model baseline).
        gate: The gate (None in ``"single"`` mode).
        mode: ``"single"`` (one expert, no gate), ``"topk"`` (sparse routing) or ``"ensemble"`` (all experts,
            weighted by the full softmax).
        top_k: Experts per point in ``"topk"`` mode.
        aabb: Scene box ``[x0, y0, z0, x1, y1, z1]``.
        step_ratio: Sampling step in voxels of the finest expert (DVGO's ``stepsize``: 0.5).
        alpha_init: Alpha of a zero raw density over one voxel (sets DVGO's ``act_shift``).
        fast_color_thres: Points with alpha or weight below this (under the finest expert) are skipped.
        occupancy_resolution: Cells per side of the occupancy grid used to skip empty space.
        occupancy_threshold: A cell is occupied when the finest expert's alpha at its centre exceeds this.
        background: Background colour (1 = white, as in NeRF-Synthetic).
        renormalize_top1: Top-1 blends the chosen expert with weight 1 instead of its gate probability (see
            :func:`~boost_nerf.gate.top_k_routing`; default False, the released code's raw probability).
    """

    def __init__(
        self,
        experts: list[Expert],
        gate: NeRFGate | None,
        mode: Mode,
        top_k: int,
        aabb: tuple[float, ...],
        step_ratio: float = 0.5,
        alpha_init: float = 1e-2,
        fast_color_thres: float = 1e-4,
        occupancy_resolution: int = 64,
        occupancy_threshold: float = 1e-3,
        background: float = 1.0,
        renormalize_top1: bool = False,
    ):
        super().__init__()
        if mode not in ("single", "topk", "ensemble"):
            raise ValueError(f"mode must be single, topk or ensemble, got {mode!r}")
        if mode == "single" and len(experts) != 1:
            raise ValueError(f"single mode takes one expert, got {len(experts)}")
        if mode != "single" and gate is None:
            raise ValueError(f"{mode} mode needs a gate")
        self.experts = nn.ModuleList(experts)
        self.gate = gate
        self.mode, self.top_k = mode, top_k
        self.renormalize_top1 = renormalize_top1
        self.register_buffer("aabb", torch.tensor(aabb, dtype=torch.float32), persistent=False)
        self.finest = max(range(len(experts)), key=lambda i: experts[i].resolution)
        self.interval = step_ratio
        self.step = step_ratio * experts[self.finest].voxel_size
        self.act_shift = act_shift_for(alpha_init)
        self.fast_color_thres = fast_color_thres
        self.occupancy_threshold = occupancy_threshold
        self.background = background
        g = occupancy_resolution
        self.register_buffer("occupancy", torch.ones(g, g, g, dtype=torch.bool))

    @torch.no_grad()
    def update_occupancy(self, chunk: int = 65536) -> float:
        """Recompute the occupancy grid from the finest expert's alpha at cell centres; returns the occupied share."""
        centers = cell_centers(self.occupancy.shape[0], self.aabb.to(self.occupancy.device)).view(-1, 3)
        expert = self.experts[self.finest]
        raw = torch.cat([expert.density(centers[i : i + chunk]) for i in range(0, len(centers), chunk)])
        occ = raw_to_alpha(raw, self.act_shift, self.interval) > self.occupancy_threshold
        self.occupancy.copy_(occ.view_as(self.occupancy))
        return float(occ.float().mean())

    @torch.no_grad()
    def _keep(self, x: torch.Tensor, flat: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """Mask over candidate points ``[P]``: alpha and weight under the finest expert above the threshold."""
        alpha = raw_to_alpha(self.experts[self.finest].density(x), self.act_shift, self.interval)
        return self._keep_from_alpha(alpha, flat, shape)

    @torch.no_grad()
    def _keep_from_alpha(self, alpha: torch.Tensor, flat: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """Filter mask ``[P]`` from the finest expert's alpha at the candidate points.

        Args:
            alpha: Alpha ``[P]`` at the candidates.
            flat: Their flat indices ``[P]`` into the ``shape = (rays, samples)`` sample grid.
            shape: ``(rays, samples)``.

        Returns:
            True where alpha and the compositing weight are both above ``fast_color_thres``.
        """
        dense = alpha.new_zeros(shape[0] * shape[1]).index_copy(0, flat, alpha).view(shape)
        weights, _ = render_weight_from_alpha(dense)
        return (alpha > self.fast_color_thres) & (weights.view(-1)[flat] > self.fast_color_thres)

    def _blend(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Radiance ``[P, 3]``, alpha ``[P]``, gate probabilities ``[P, M]`` and counts ``[M]`` at kept points."""
        if self.mode == "single":
            rgb_p, raw = self.experts[0](x, d)
            alpha_p = raw_to_alpha(raw, self.act_shift, self.interval)
            return rgb_p, alpha_p, x.new_zeros(len(x), 0), torch.tensor([len(x)], device=x.device)
        probs = torch.softmax(self.gate(x, d), -1)
        if self.mode == "topk":
            weights, index = top_k_routing(probs, self.top_k, self.renormalize_top1)
        else:
            weights, index = probs, None
        rgb_p, alpha_p, counts = dispatch(self.experts, x, d, weights, index, self.act_shift, self.interval)
        return rgb_p, alpha_p, probs, counts

    def _render_packed(
        self, origins: torch.Tensor, dirs: torch.Tensor, viewdirs: torch.Tensor, stratified: bool
    ) -> dict[str, torch.Tensor]:
        """GPU path: nerfacc's OccGridEstimator samples (packed), the same filter, blend and compositing."""
        import nerfacc

        if getattr(self, "_estimator", None) is None:
            # Kept out of the state dict: the grid is rebuilt from ``occupancy``, so CPU and GPU checkpoints agree.
            estimator = nerfacc.OccGridEstimator(self.aabb, self.occupancy.shape[0], levels=1).to(origins.device)
            object.__setattr__(self, "_estimator", estimator)
        est = self._estimator
        est.binaries.copy_(self.occupancy[None])  # both index cells as [x, y, z]
        ray_idx, t0, t1 = est.sampling(origins, dirs, render_step_size=self.step, stratified=stratified)
        n_rays = len(origins)
        x = origins[ray_idx] + ((t0 + t1) / 2)[:, None] * dirs[ray_idx]
        candidates = torch.tensor(len(x))
        with torch.no_grad():
            alpha_f = raw_to_alpha(self.experts[self.finest].density(x), self.act_shift, self.interval)
            w_f, _ = render_weight_from_alpha(alpha_f, ray_indices=ray_idx, n_rays=n_rays)
            keep = (alpha_f > self.fast_color_thres) & (w_f > self.fast_color_thres)
        ray_idx, x = ray_idx[keep], x[keep]
        rgb_p, alpha_p, probs, counts = self._blend(x, viewdirs[ray_idx])
        weights, _ = render_weight_from_alpha(alpha_p, ray_indices=ray_idx, n_rays=n_rays)
        rgb = accumulate_along_rays(weights, rgb_p, ray_indices=ray_idx, n_rays=n_rays)
        opacity = accumulate_along_rays(weights, None, ray_indices=ray_idx, n_rays=n_rays)[:, 0]
        rgb = rgb + (1 - opacity[:, None]) * self.background
        return _ray_outputs(rgb, opacity, probs, counts, len(x), candidates)

    def render_rays(
        self,
        origins: torch.Tensor,
        dirs: torch.Tensor,
        jitter: torch.Tensor | None = None,
        viewdirs: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Render rays ``[R, 3]`` (unit directions).

        Args:
            origins: ``[R, 3]``.
            dirs: ``[R, 3]``, the directions samples are taken along (in NDC for forward-facing scenes).
            jitter: Per-ray sample offsets in ``[0, 1)`` ``[R]`` (training), None for mid-step samples.
            viewdirs: World-space unit view directions ``[R, 3]`` for the colour MLPs and the gate when they differ
                from ``dirs`` (NDC rays); None uses ``dirs``.

        Returns:
            ``rgb`` ``[R, 3]``, ``opacity`` ``[R]``, ``probs`` ``[P, M]`` gate probabilities of the evaluated points
            (empty in single mode), ``counts`` ``[M]`` points each expert evaluated, ``points`` the number P of points
            that passed the filter (gated and blended), ``candidates`` the number of points in occupied cells that
            the filter (the finest expert's density) was evaluated on.
        """
        viewdirs = dirs if viewdirs is None else viewdirs
        if origins.is_cuda and cuda_kernels_available():
            return self._render_packed(origins, dirs, viewdirs, stratified=jitter is not None)
        aabb = self.aabb.to(origins.device)
        t, valid = sample_along_rays(origins, dirs, aabb, self.step, jitter)
        shape = (t.shape[0], t.shape[1])
        pts = origins[:, None, :] + t[..., None] * dirs[:, None, :]
        flat = valid.view(-1).nonzero().squeeze(1)
        x = pts.view(-1, 3)[flat]
        occupied = occupancy_lookup(x, self.occupancy, aabb)
        flat, x = flat[occupied], x[occupied]
        candidates = torch.tensor(len(x))
        dirs_flat = viewdirs[:, None, :].expand_as(pts).reshape(-1, 3)
        if self.mode == "single" and self.experts[0].density_shares_forward and torch.is_grad_enabled():
            # Training a single expert whose density is most of a forward pass: one pass on every candidate gives
            # both the filter's alpha and the kept points' outputs (filter-then-evaluate's numbers, up to rounding).
            rgb_c, raw_c = self.experts[0](x, dirs_flat[flat])
            alpha_c = raw_to_alpha(raw_c, self.act_shift, self.interval)
            keep = self._keep_from_alpha(alpha_c.detach(), flat, shape)
            flat, rgb_p, alpha_p = flat[keep], rgb_c[keep], alpha_c[keep]
            probs, counts = x.new_zeros(len(flat), 0), torch.tensor([len(flat)], device=x.device)
        else:
            keep = self._keep(x, flat, shape)
            flat, x = flat[keep], x[keep]
            rgb_p, alpha_p, probs, counts = self._blend(x, dirs_flat[flat])
        n = shape[0] * shape[1]
        alphas = alpha_p.new_zeros(n).index_copy(0, flat, alpha_p).view(shape)
        rgbs = rgb_p.new_zeros(n, 3).index_copy(0, flat, rgb_p).view(*shape, 3)
        rgb, opacity, _ = composite(alphas, rgbs, self.background)
        return _ray_outputs(rgb, opacity, probs, counts, len(flat), candidates)

    @torch.no_grad()
    def render_image(
        self, origins: torch.Tensor, dirs: torch.Tensor, chunk: int = 8192, viewdirs: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Render one view's rays ``[H, W, 3]`` in chunks (``viewdirs`` ``[H, W, 3]``: see :meth:`render_rays`).

        Returns:
            ``rgb`` ``[H, W, 3]``, ``opacity`` ``[H, W]``; ``counts`` ``[M]``, ``points`` and ``candidates`` summed
            over chunks (see :meth:`render_rays`).
        """
        h, w = origins.shape[:2]
        o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        v = d if viewdirs is None else viewdirs.reshape(-1, 3)
        rgb, opacity, counts, points, candidates = [], [], 0, 0, 0
        for i in range(0, len(o), chunk):
            out = self.render_rays(o[i : i + chunk], d[i : i + chunk], viewdirs=v[i : i + chunk])
            rgb.append(out["rgb"])
            opacity.append(out["opacity"])
            counts = counts + out["counts"]
            points = points + out["points"]
            candidates = candidates + out["candidates"]
        return {
            "rgb": torch.cat(rgb).view(h, w, 3),
            "opacity": torch.cat(opacity).view(h, w),
            "counts": counts,
            "points": points,
            "candidates": candidates,
        }

    def matmul_flops(self, counts: torch.Tensor, points: int, candidates: int) -> dict[str, int]:
        """FLOPs of the network layers (``nn.Linear``, 2 per multiply-add) given how many points each part saw.

        A second formulation of what ``torch.utils.flop_counter`` measures on a render: the filter runs the finest
        expert's density on every candidate point, the gate runs on every kept point, and expert ``i`` runs only on
        the ``counts[i]`` points routed to it (sparse dispatch).

        Args:
            counts: Points evaluated by each expert ``[M]``.
            points: Points that passed the filter (gated).
            candidates: Points the filter evaluated.

        Returns:
            ``{"filter", "gate", "experts", "total"}`` FLOPs.
        """
        experts = sum(int(c) * linear_flops(e) for c, e in zip(counts.tolist(), self.experts, strict=True))
        gate = int(points) * linear_flops(self.gate) if self.mode != "single" else 0
        filt = int(candidates) * density_linear_flops(self.experts[self.finest])
        return {"filter": filt, "gate": gate, "experts": experts, "total": filt + gate + experts}
