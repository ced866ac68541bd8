"""The three fast-NeRF backbones used as experts, in pure torch.

Every expert maps points ``x`` ``[P, 3]`` (world space, inside ``aabb``) and unit view directions ``d`` ``[P, 3]``
to radiance ``[P, 3]`` in (0, 1) (sigmoid) and a raw density ``[P]`` (turned into alpha by
:func:`boost_nerf.encoding.raw_to_alpha`, shared by all experts so their alphas can be blended). ``resolution`` is
the grid size (dense and VM grids) or the finest hash-grid level (Instant-NGP); ``features(x)`` gives the appearance
features a gate grid is initialised from.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from boost_nerf.encoding import direction_encoding, direction_encoding_dim, normalize_to_box

#: Instant-NGP's spatial hash primes (the first is 1 so that a 1-D hash is the identity).
HASH_PRIMES = (1, 2654435761, 805459861)


def _mlp(d_in: int, width: int, d_out: int, depth: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else width, width), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


def _trilinear(grid: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
    """Sample a dense grid ``[1, C, R, R, R]`` (z, y, x order) at normalised points ``[P, 3]``: ``[P, C]``."""
    out = F.grid_sample(grid, xyz.view(1, 1, 1, -1, 3), mode="bilinear", align_corners=True)
    return out.view(grid.shape[1], -1).t()


class Expert(nn.Module):
    """Common interface of the backbones (see module docstring)."""

    resolution: int
    feature_dim: int
    #: True when ``density`` costs nearly a whole ``forward`` (Instant-NGP: the hash encoding and the density MLP
    #: are shared, only the small colour MLP differs). A single-expert training step then filters points with one
    #: forward pass on all candidates instead of a density pass plus a forward pass on the kept points.
    density_shares_forward: bool = False

    def __init__(self, resolution: int, aabb: tuple[float, ...], dir_freqs: int):
        super().__init__()
        self.resolution = int(resolution)
        self.register_buffer("aabb", torch.tensor(aabb, dtype=torch.float32), persistent=False)
        self.dir_freqs = dir_freqs

    @property
    def voxel_size(self) -> float:
        """Edge of one grid cell in world units (the finest level for hash grids)."""
        return float((self.aabb[3:] - self.aabb[:3]).max()) / self.resolution

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """Raw density ``[P]`` at world points ``[P, 3]``."""
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Appearance features ``[P, feature_dim]`` at world points ``[P, 3]``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Radiance ``[P, 3]`` and raw density ``[P]`` at points ``[P, 3]`` seen along unit directions ``[P, 3]``."""
        raise NotImplementedError

    def grid_parameters(self) -> list[nn.Parameter]:
        """Explicit grid/table parameters (trained with the backbone's large learning rate)."""
        raise NotImplementedError

    def mlp_parameters(self) -> list[nn.Parameter]:
        """Network parameters (trained with the small learning rate)."""
        ids = {id(p) for p in self.grid_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]


class DenseVoxelExpert(Expert):
    """DVGO's fine stage: a density grid, a feature grid and a small RGB MLP on features + view encoding.

    Args:
        resolution: Voxels per side.
        aabb: Scene box ``[x0, y0, z0, x1, y1, z1]``.
        feature_dim: Channels of the feature grid (DVGO: 12).
        mlp_width: Hidden width of the RGB MLP (DVGO: 128).
        dir_freqs: Octaves of the view-direction encoding.
    """

    def __init__(
        self,
        resolution: int,
        aabb: tuple[float, ...],
        feature_dim: int = 12,
        mlp_width: int = 128,
        dir_freqs: int = 4,
    ):
        super().__init__(resolution, aabb, dir_freqs)
        self.feature_dim = feature_dim
        r = self.resolution
        self.density_grid = nn.Parameter(torch.zeros(1, 1, r, r, r))
        self.feature_grid = nn.Parameter(torch.zeros(1, feature_dim, r, r, r))
        self.rgbnet = _mlp(feature_dim + direction_encoding_dim(dir_freqs), mlp_width, 3)
        nn.init.constant_(self.rgbnet[-1].bias, 0)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return _trilinear(self.density_grid, normalize_to_box(x, self.aabb))[:, 0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return _trilinear(self.feature_grid, normalize_to_box(x, self.aabb))

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xn = normalize_to_box(x, self.aabb)
        both = _trilinear(torch.cat([self.density_grid, self.feature_grid], 1), xn)
        rgb = torch.sigmoid(self.rgbnet(torch.cat([both[:, 1:], direction_encoding(d, self.dir_freqs)], -1)))
        return rgb, both[:, 0]

    def grid_parameters(self) -> list[nn.Parameter]:
        return [self.density_grid, self.feature_grid]


class TensoRFExpert(Expert):
    """TensoRF's vector-matrix (VM) decomposition: three plane x line factor pairs for density and appearance.

    Density is the sum of ``sum_m P_m(u, v) L_m(w)`` over the three axis-aligned modes; appearance concatenates the
    per-mode products and maps them with a linear basis to ``feature_dim`` features, then an MLP with the view
    encoding gives radiance.

    Args:
        resolution: Grid size per axis.
        aabb: Scene box.
        density_components: Components per mode for density (TensoRF: 16).
        appearance_components: Components per mode for appearance (TensoRF: 48).
        feature_dim: Output of the appearance basis (TensoRF: 27).
        mlp_width: Hidden width of the RGB MLP (TensoRF: 128).
        dir_freqs: Octaves of the view-direction encoding.
    """

    #: (plane axes, line axis) per mode, in x=0, y=1, z=2.
    MODES = ((0, 1, 2), (0, 2, 1), (1, 2, 0))

    def __init__(
        self,
        resolution: int,
        aabb: tuple[float, ...],
        density_components: int = 16,
        appearance_components: int = 48,
        feature_dim: int = 27,
        mlp_width: int = 128,
        dir_freqs: int = 4,
        init_scale: float = 0.1,
    ):
        super().__init__(resolution, aabb, dir_freqs)
        self.feature_dim = feature_dim
        r = self.resolution

        def factors(n: int, shape: tuple[int, ...]) -> nn.ParameterList:
            return nn.ParameterList(nn.Parameter(init_scale * torch.randn(1, n, *shape)) for _ in self.MODES)

        self.density_planes = factors(density_components, (r, r))
        self.density_lines = factors(density_components, (r, 1))
        self.app_planes = factors(appearance_components, (r, r))
        self.app_lines = factors(appearance_components, (r, 1))
        self.basis = nn.Linear(3 * appearance_components, feature_dim, bias=False)
        self.rgbnet = _mlp(feature_dim + direction_encoding_dim(dir_freqs), mlp_width, 3)

    def _vm(self, planes: nn.ParameterList, lines: nn.ParameterList, xn: torch.Tensor) -> torch.Tensor:
        """Per-mode, per-component products ``[P, 3 * n]`` at normalised points ``[P, 3]``."""
        out = []
        for (a, b, c), plane, line in zip(self.MODES, planes, lines, strict=True):
            # grid_sample's 2-D grid is (x=width, y=height): plane width indexes axis a, height axis b.
            uv = xn[:, [a, b]].view(1, 1, -1, 2)
            wl = torch.stack([torch.zeros_like(xn[:, c]), xn[:, c]], -1).view(1, 1, -1, 2)
            p = F.grid_sample(plane, uv, mode="bilinear", align_corners=True).view(plane.shape[1], -1)
            ln = F.grid_sample(line, wl, mode="bilinear", align_corners=True).view(line.shape[1], -1)
            out.append((p * ln).t())
        return torch.cat(out, -1)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return self._vm(self.density_planes, self.density_lines, normalize_to_box(x, self.aabb)).sum(-1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.basis(self._vm(self.app_planes, self.app_lines, normalize_to_box(x, self.aabb)))

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xn = normalize_to_box(x, self.aabb)
        sigma = self._vm(self.density_planes, self.density_lines, xn).sum(-1)
        feat = self.basis(self._vm(self.app_planes, self.app_lines, xn))
        rgb = torch.sigmoid(self.rgbnet(torch.cat([feat, direction_encoding(d, self.dir_freqs)], -1)))
        return rgb, sigma

    def grid_parameters(self) -> list[nn.Parameter]:
        return [*self.density_planes, *self.density_lines, *self.app_planes, *self.app_lines]


def level_resolutions(base: int, finest: int, levels: int) -> list[int]:
    """Instant-NGP's geometric level sizes ``floor(base * b^l)`` with ``b = (finest / base)^(1 / (levels - 1))``."""
    if levels == 1:
        return [finest]
    growth = math.exp((math.log(finest) - math.log(base)) / (levels - 1))
    return [math.floor(base * growth**level + 1e-6) for level in range(levels)]


def hash_grid_index(base: torch.Tensor, resolution: int, table_size: int) -> torch.Tensor:
    """Table slots ``[P, 8]`` of the 8 vertices of the cells whose lowest vertex is ``base`` ``[P, 3]`` (int64).

    Corner ``i`` is the vertex ``base + (i & 1, (i >> 1) & 1, (i >> 2) & 1)`` (x fastest). Coarse levels whose
    ``(resolution + 1)^3`` vertices fit the table are indexed one-to-one (row-major, x fastest); finer levels use the
    spatial hash ``(x * p0) xor (y * p1) xor (z * p2) mod table_size``.
    """
    side = resolution + 1
    # Both index maps are separable per axis: build the two values of each axis term once, then combine them by
    # broadcasting to [P, z, y, x] (2 x 2 x 2), instead of materialising 8 x 3 corner coordinates per point.
    axis = [torch.stack([base[:, a], base[:, a] + 1], -1) for a in range(3)]  # [P, 2] per axis
    if side**3 <= table_size:
        x, y, z = axis[0], axis[1] * side, axis[2] * side * side
        slots = z[:, :, None, None] + y[:, None, :, None] + x[:, None, None, :]
        return slots.reshape(-1, 8)
    x, y, z = (v * prime for v, prime in zip(axis, HASH_PRIMES, strict=True))
    h = torch.bitwise_xor(torch.bitwise_xor(z[:, :, None, None], y[:, None, :, None]), x[:, None, None, :])
    return torch.remainder(h.reshape(-1, 8), table_size)


class HashGridExpert(Expert):
    """Instant-NGP: a multiresolution hash encoding, a density MLP and a colour MLP.

    Args:
        resolution: Finest level's cells per side.
        aabb: Scene box.
        levels: Number of levels L (NGP: 16).
        features_per_level: F (NGP: 2).
        log2_table_size: log2 T (NGP: 19).
        base_resolution: Coarsest level's cells per side (NGP: 16).
        geo_feature_dim: Extra density-MLP outputs fed to the colour MLP (NGP: 15).
        mlp_width: Hidden width of both MLPs (NGP: 64).
        dir_freqs: Octaves of the view-direction encoding (NGP uses spherical harmonics; this is the shared PE).
    """

    density_shares_forward = True

    def __init__(
        self,
        resolution: int,
        aabb: tuple[float, ...],
        levels: int = 16,
        features_per_level: int = 2,
        log2_table_size: int = 19,
        base_resolution: int = 16,
        geo_feature_dim: int = 15,
        mlp_width: int = 64,
        dir_freqs: int = 4,
    ):
        super().__init__(resolution, aabb, dir_freqs)
        self.table_size = 2**log2_table_size
        self.level_res = level_resolutions(min(base_resolution, self.resolution), self.resolution, levels)
        self.feature_dim = levels * features_per_level
        # NGP's initialisation: small uniform values, so early density is near zero everywhere.
        self.tables = nn.Parameter(torch.empty(levels, self.table_size, features_per_level).uniform_(-1e-4, 1e-4))
        self.density_net = _mlp(self.feature_dim, mlp_width, 1 + geo_feature_dim, depth=1)
        self.rgbnet = _mlp(geo_feature_dim + direction_encoding_dim(dir_freqs), mlp_width, 3)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Hash encoding ``[P, L * F]`` of world points ``[P, 3]``."""
        unit = ((normalize_to_box(x, self.aabb) + 1) / 2).clamp(0, 1)
        out = []
        for level, res in enumerate(self.level_res):
            pos = unit * res
            base = pos.floor().long().clamp(max=res - 1)
            frac = pos - base
            # Trilinear weights of the 8 corners, as the outer product of per-axis (1 - f, f): [P, 2, 2, 2] (z, y, x).
            w = [torch.stack([1 - frac[:, a], frac[:, a]], -1) for a in range(3)]
            weights = (w[2][:, :, None, None] * w[1][:, None, :, None] * w[0][:, None, None, :]).reshape(-1, 8)
            slots = hash_grid_index(base, res, self.table_size)
            # index_select's backward is one index_add (F.embedding's CPU backward sorts the indices: ~5x slower).
            corner_feats = (
                self.tables[level].index_select(0, slots.view(-1)).view(len(x), 8, self.tables.shape[-1])
            )  # [P, 8, F]
            # An elementwise weighted sum, not bmm: the FLOP counter counts matmuls only, and grid interpolation is
            # left out for every backbone alike (DVGO's and TensoRF's grid_sample is not counted either).
            out.append((weights.view(-1, 8, 1) * corner_feats).sum(1))
        return torch.cat(out, -1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return self.density_net(self.encode(x))[:, 0]

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.density_net(self.encode(x))
        rgb = torch.sigmoid(self.rgbnet(torch.cat([h[:, 1:], direction_encoding(d, self.dir_freqs)], -1)))
        return rgb, h[:, 0]

    def grid_parameters(self) -> list[nn.Parameter]:
        return [self.tables]


BACKBONES = {"dvgo": DenseVoxelExpert, "tensorf": TensoRFExpert, "ngp": HashGridExpert}


def make_expert(backbone: str, resolution: int, aabb: tuple[float, ...], **kwargs) -> Expert:
    """Build one expert: ``backbone`` is ``"dvgo"``, ``"tensorf"`` or ``"ngp"``; ``kwargs`` go to its class."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[backbone](resolution, tuple(aabb), **kwargs)
