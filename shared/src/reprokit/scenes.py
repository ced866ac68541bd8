"""Blender-format scenes: reader/writer and a procedural offline scene with exact ground truth.

The NeRF-Synthetic ("Blender") layout is ``transforms_{train,val,test}.json`` plus RGBA PNGs; every camera shares
``camera_angle_x`` (horizontal field of view) and each frame stores a camera-to-world matrix in the OpenGL convention
(camera looks down ``-z``, ``+y`` up, world ``+z`` up). The offline scene is a handful of analytic shapes (spheres,
boxes, upright cylinders) with flat colours and Blinn-Phong shading, rendered by the independent pure-torch ray caster
below, alpha 1 on the shapes and 0 elsewhere (fractional at supersampled edges). It is written in exactly that
layout, so the real-data loaders read it unchanged.

Stable API (other packages build on it)::

    root = generate_blender_scene(cache_dir / "scene", image_size=64, n_train=100, n_val=8, n_test=16, seed=0)
    split = read_blender_split(root, "train")          # BlenderSplit: images [N,H,W,4], c2w [N,4,4], focal, ...
    rgb = split.rgb(background=1.0)                    # [N,H,W,3] composited on white
    origins, dirs = camera_rays(split.height, split.width, split.focal, split.c2w)   # [N,H,W,3] each
    scene = ProceduralScene.from_seed(0)               # the analytic scene itself (exact ground truth)
    rgb, alpha, depth = scene.cast(origins, dirs)      # ray caster; scene.occupancy(points) -> bool [...]
    write_blender_split(root, "train", images, c2w, camera_angle_x)                   # any RGBA views

Generation is deterministic in ``seed`` and the parameters; a call whose ``root`` already holds a scene with the
same parameters returns at once (``root/scene.json`` records them), otherwise it is written to a temp folder and
renamed, so a crash never leaves a half-written scene.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

SPLITS = ("train", "val", "test")
#: Field of view of the NeRF-Synthetic cameras (radians).
BLENDER_CAMERA_ANGLE_X = 0.6911112070083618
SCENE_VERSION = 1


# ------------------------------------------------------------------------------------------------------- cameras
def look_at(eye: torch.Tensor, target: torch.Tensor | None = None, up: torch.Tensor | None = None) -> torch.Tensor:
    """Camera-to-world matrices (OpenGL convention) of cameras at ``eye`` looking at ``target``.

    Args:
        eye: Camera centres ``[N, 3]``.
        target: Point looked at ``[3]`` (default: origin).
        up: World up ``[3]`` (default: ``+z``).

    Returns:
        ``[N, 4, 4]`` float32.
    """
    eye = eye.double()
    target = torch.zeros(3, dtype=torch.float64) if target is None else target.double()
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) if up is None else up.double()
    back = torch.nn.functional.normalize(eye - target, dim=-1)  # camera +z points away from what it looks at
    right = torch.nn.functional.normalize(torch.cross(up.expand_as(back), back, dim=-1), dim=-1)
    cam_up = torch.cross(back, right, dim=-1)
    c2w = torch.eye(4, dtype=torch.float64).repeat(len(eye), 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, cam_up, back, eye
    return c2w.float()


def hemisphere_poses(n: int, radius: float, seed: int, min_elevation_deg: float = 5.0) -> torch.Tensor:
    """``n`` cameras spread over the upper hemisphere (jittered Fibonacci lattice), looking at the origin.

    Returns:
        ``[n, 4, 4]`` camera-to-world matrices.
    """
    gen = torch.Generator().manual_seed(seed)
    i = torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=gen, dtype=torch.float64) * 0.5
    z_min = math.sin(math.radians(min_elevation_deg))
    z = z_min + (1 - z_min) * (i + 0.25) / n  # uniform in z = uniform in area on the sphere cap
    phi = i * math.pi * (3 - math.sqrt(5)) + 2 * math.pi * torch.rand((), generator=gen, dtype=torch.float64)
    r = torch.sqrt(1 - z**2)
    eye = radius * torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)
    return look_at(eye)


def orbit_poses(n: int, radius: float, elevation_deg: float = 30.0, phase: float = 0.0) -> torch.Tensor:
    """``n`` cameras on a circle at ``elevation_deg``, evenly spaced in azimuth, looking at the origin.

    Returns:
        ``[n, 4, 4]`` camera-to-world matrices.
    """
    phi = phase + 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    el = math.radians(elevation_deg)
    eye = radius * torch.stack(
        [math.cos(el) * torch.cos(phi), math.cos(el) * torch.sin(phi), torch.full_like(phi, math.sin(el))], -1
    )
    return look_at(eye)


def focal_from_angle(width: int, camera_angle_x: float) -> float:
    """Focal length in pixels of a pinhole camera ``width`` pixels wide with horizontal FoV ``camera_angle_x``."""
    return 0.5 * width / math.tan(0.5 * camera_angle_x)


def camera_rays(
    height: int, width: int, focal: float, c2w: torch.Tensor, *, offset: tuple[float, float] = (0.5, 0.5)
) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space rays through pixel ``(row, col) + offset`` of pinhole cameras (OpenGL convention).

    Args:
        height: Image height.
        width: Image width.
        focal: Focal length in pixels.
        c2w: Camera-to-world ``[N, 4, 4]`` (or ``[4, 4]``).
        offset: Sub-pixel position of the ray (``(0.5, 0.5)`` = pixel centre).

    Returns:
        Origins and unit directions, ``[N, H, W, 3]`` each (``[H, W, 3]`` for a single camera).
    """
    single = c2w.ndim == 2
    c2w = c2w.reshape(-1, 4, 4).float()
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float32) + offset[0],
        torch.arange(width, dtype=torch.float32) + offset[1],
        indexing="ij",
    )
    cam = torch.stack([(cols - 0.5 * width) / focal, -(rows - 0.5 * height) / focal, -torch.ones_like(cols)], -1)
    dirs = torch.einsum("hwj,nij->nhwi", cam, c2w[:, :3, :3])
    dirs = torch.nn.functional.normalize(dirs, dim=-1)
    origins = c2w[:, None, None, :3, 3].expand_as(dirs)
    if single:
        return origins[0], dirs[0]
    return origins, dirs


# ------------------------------------------------------------------------------------------------ the ray caster
@dataclass(frozen=True)
class Shape:
    """One analytic shape.

    Attributes:
        kind: ``"sphere"`` (size = radius), ``"box"`` (size = half-extents, axis-aligned) or ``"cylinder"``
            (upright along ``z``; size = (radius, half-height)).
        center: Centre ``(x, y, z)``.
        size: See ``kind``.
        color: Albedo ``(r, g, b)`` in [0, 1].
    """

    kind: str
    center: tuple[float, float, float]
    size: tuple[float, ...]
    color: tuple[float, float, float]


def _hit_sphere(o: torch.Tensor, d: torch.Tensor, s: Shape) -> tuple[torch.Tensor, torch.Tensor]:
    c = o.new_tensor(s.center)
    oc = o - c
    b = (oc * d).sum(-1)
    disc = b**2 - ((oc * oc).sum(-1) - s.size[0] ** 2)
    sq = disc.clamp_min(0).sqrt()
    t0, t1 = -b - sq, -b + sq
    t = torch.where(t0 > 1e-6, t0, t1)
    t = torch.where((disc >= 0) & (t > 1e-6), t, torch.full_like(t, math.inf))
    normal = torch.nn.functional.normalize(o + t[..., None].nan_to_num(posinf=0) * d - c, dim=-1)
    return t, normal


def _hit_box(o: torch.Tensor, d: torch.Tensor, s: Shape) -> tuple[torch.Tensor, torch.Tensor]:
    lo = o.new_tensor(s.center) - o.new_tensor(s.size)
    hi = o.new_tensor(s.center) + o.new_tensor(s.size)
    inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    ta, tb = (lo - o) * inv, (hi - o) * inv
    tmin, tmax = torch.minimum(ta, tb), torch.maximum(ta, tb)
    t_near, axis = tmin.max(-1)
    t_far = tmax.min(-1).values
    hit = (t_near <= t_far) & (t_near > 1e-6)
    t = torch.where(hit, t_near, torch.full_like(t_near, math.inf))
    normal = torch.nn.functional.one_hot(axis, 3).to(o.dtype) * -torch.sign(d.gather(-1, axis[..., None]))
    return t, normal


def _hit_cylinder(o: torch.Tensor, d: torch.Tensor, s: Shape) -> tuple[torch.Tensor, torch.Tensor]:
    c = o.new_tensor(s.center)
    radius, half = s.size
    oc = o - c
    inf = torch.full(o.shape[:-1], math.inf, dtype=o.dtype)
    # side: |(oc + t d)_xy| = radius, accepted where |z| <= half
    a = d[..., 0] ** 2 + d[..., 1] ** 2
    b = oc[..., 0] * d[..., 0] + oc[..., 1] * d[..., 1]
    cc = oc[..., 0] ** 2 + oc[..., 1] ** 2 - radius**2
    disc = b**2 - a * cc
    a_safe = torch.where(a < 1e-12, torch.ones_like(a), a)
    t_side = (-b - disc.clamp_min(0).sqrt()) / a_safe
    z_side = oc[..., 2] + t_side * d[..., 2]
    side_ok = (disc >= 0) & (a >= 1e-12) & (t_side > 1e-6) & (z_side.abs() <= half)
    t_side = torch.where(side_ok, t_side, inf)
    # caps: z = +-half, accepted inside the disc
    dz = torch.where(d[..., 2].abs() < 1e-12, torch.full_like(d[..., 2], 1e-12), d[..., 2])
    t_cap = inf
    n_cap_sign = torch.zeros_like(inf)
    for sign in (-1.0, 1.0):
        t = (sign * half - oc[..., 2]) / dz
        p = oc + t[..., None] * d
        ok = (t > 1e-6) & (p[..., 0] ** 2 + p[..., 1] ** 2 <= radius**2) & (t < t_cap)
        t_cap = torch.where(ok, t, t_cap)
        n_cap_sign = torch.where(ok, torch.full_like(n_cap_sign, sign), n_cap_sign)
    use_side = t_side <= t_cap
    t = torch.where(use_side, t_side, t_cap)
    p = oc + t_side.nan_to_num(posinf=0)[..., None] * d
    n_side = torch.nn.functional.normalize(torch.stack([p[..., 0], p[..., 1], torch.zeros_like(p[..., 0])], -1), dim=-1)
    n_cap = torch.stack([torch.zeros_like(n_cap_sign), torch.zeros_like(n_cap_sign), n_cap_sign], -1)
    return t, torch.where(use_side[..., None], n_side, n_cap)


_HIT = {"sphere": _hit_sphere, "box": _hit_box, "cylinder": _hit_cylinder}


@dataclass(frozen=True)
class ProceduralScene:
    """Analytic shapes inside ``[-bound, bound]^3`` with a directional light; the offline scenes' ground truth.

    Attributes:
        shapes: The shapes.
        light_dir: Direction towards the light (normalised on use).
        ambient: Ambient term of the shading.
        specular: Weight of the white Blinn-Phong highlight (view-dependent colour).
        shininess: Blinn-Phong exponent.
        bound: Half-size of the scene box every shape lies in.
    """

    shapes: tuple[Shape, ...]
    light_dir: tuple[float, float, float] = (0.4, -0.3, 0.85)
    ambient: float = 0.3
    specular: float = 0.25
    shininess: float = 24.0
    bound: float = 1.0

    @classmethod
    def from_seed(cls, seed: int = 0, n_shapes: int = 5) -> ProceduralScene:
        """A random but reproducible arrangement of ``n_shapes`` shapes (cycling sphere, box, cylinder)."""
        rng = np.random.default_rng(seed)
        kinds = ["sphere", "box", "cylinder"]
        shapes: list[Shape] = []
        placed: list[tuple[np.ndarray, float]] = []
        for k in range(n_shapes):
            kind = kinds[k % 3]
            for _ in range(200):  # rejection sampling: shapes touch at most slightly
                extent = rng.uniform(0.22, 0.42)
                center = rng.uniform(-0.95 + extent, 0.95 - extent, size=3)
                if all(np.linalg.norm(center - c) > 0.8 * (extent + e) for c, e in placed):
                    break
            placed.append((center, extent))
            if kind == "sphere":
                size: tuple[float, ...] = (extent,)
            elif kind == "box":
                size = tuple(float(v) for v in extent * rng.uniform(0.6, 1.0, size=3))
            else:
                size = (0.7 * extent, extent)
            hue = (k / n_shapes + rng.uniform(0, 0.1)) % 1.0
            shapes.append(Shape(kind, tuple(float(v) for v in center), size, _hue_to_rgb(hue)))
        return cls(tuple(shapes))

    def cast(self, origins: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """First-hit colour, coverage and depth of rays (computed in float64).

        Args:
            origins: Ray origins ``[..., 3]``.
            dirs: Unit ray directions ``[..., 3]``.

        Returns:
            Shaded colour ``[..., 3]`` (0 where nothing is hit), alpha ``[...]`` in {0, 1}, depth ``[...]`` (inf on
            a miss), all float32.
        """
        o, d = origins.double(), torch.nn.functional.normalize(dirs.double(), dim=-1)
        best_t = torch.full(o.shape[:-1], math.inf, dtype=torch.float64)
        normal = torch.zeros_like(o)
        albedo = torch.zeros_like(o)
        for shape in self.shapes:
            t, n = _HIT[shape.kind](o, d, shape)
            closer = t < best_t
            best_t = torch.where(closer, t, best_t)
            normal = torch.where(closer[..., None], n, normal)
            albedo = torch.where(closer[..., None], o.new_tensor(shape.color).expand_as(o), albedo)
        hit = torch.isfinite(best_t)
        light = torch.nn.functional.normalize(o.new_tensor(self.light_dir), dim=0)
        diffuse = (normal @ light).clamp_min(0)
        half = torch.nn.functional.normalize(light - d, dim=-1)
        spec = self.specular * (normal * half).sum(-1).clamp_min(0) ** self.shininess
        rgb = (albedo * (self.ambient + (1 - self.ambient) * diffuse)[..., None] + spec[..., None]).clamp(0, 1)
        rgb = torch.where(hit[..., None], rgb, torch.zeros_like(rgb))
        return rgb.float(), hit.float(), best_t.float()

    def occupancy(self, points: torch.Tensor) -> torch.Tensor:
        """Whether each point ``[..., 3]`` lies inside a shape; bool ``[...]``."""
        p = points.double()
        inside = torch.zeros(p.shape[:-1], dtype=torch.bool)
        for s in self.shapes:
            q = p - p.new_tensor(s.center)
            if s.kind == "sphere":
                inside |= q.norm(dim=-1) <= s.size[0]
            elif s.kind == "box":
                inside |= (q.abs() <= q.new_tensor(s.size)).all(-1)
            else:
                inside |= (q[..., :2].norm(dim=-1) <= s.size[0]) & (q[..., 2].abs() <= s.size[1])
        return inside

    def render(
        self, height: int, width: int, focal: float, c2w: torch.Tensor, supersample: int = 2, chunk: int = 16
    ) -> torch.Tensor:
        """Straight-alpha RGBA views ``[N, H, W, 4]`` (float32), ``supersample^2`` rays per pixel."""
        views = []
        c2w = c2w.reshape(-1, 4, 4)
        for start in range(0, len(c2w), chunk):
            cams = c2w[start : start + chunk]
            acc_rgb = torch.zeros(len(cams), height, width, 3)
            acc_a = torch.zeros(len(cams), height, width)
            for i in range(supersample):
                for j in range(supersample):
                    off = ((i + 0.5) / supersample, (j + 0.5) / supersample)
                    o, d = camera_rays(height, width, focal, cams, offset=off)
                    rgb, alpha, _ = self.cast(o, d)
                    acc_rgb += rgb * alpha[..., None]
                    acc_a += alpha
            alpha = acc_a / supersample**2
            rgb = acc_rgb / acc_a.clamp_min(1)[..., None]  # straight (un-premultiplied) colour, as PNGs store it
            views.append(torch.cat([rgb, alpha[..., None]], -1))
        return torch.cat(views)


def _hue_to_rgb(hue: float, sat: float = 0.75, val: float = 0.9) -> tuple[float, float, float]:
    k = [(n + hue * 6) % 6 for n in (5, 3, 1)]
    return tuple(float(val - val * sat * max(0.0, min(x, 4 - x, 1.0))) for x in k)  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------- Blender format
@dataclass
class BlenderSplit:
    """One split of a Blender-format scene.

    Attributes:
        images: Straight-alpha RGBA ``[N, H, W, 4]`` float32 in [0, 1].
        c2w: Camera-to-world ``[N, 4, 4]`` float32 (OpenGL convention).
        camera_angle_x: Horizontal field of view (radians).
        file_paths: Frame paths as written in the JSON (relative, no extension).
    """

    images: torch.Tensor
    c2w: torch.Tensor
    camera_angle_x: float
    file_paths: list[str] = field(default_factory=list)

    @property
    def height(self) -> int:
        """Image height."""
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        """Image width."""
        return int(self.images.shape[2])

    @property
    def focal(self) -> float:
        """Focal length in pixels."""
        return focal_from_angle(self.width, self.camera_angle_x)

    def rgb(self, background: float | torch.Tensor = 1.0) -> torch.Tensor:
        """Colours composited on ``background`` (white by default, as in NeRF-Synthetic): ``[N, H, W, 3]``."""
        alpha = self.images[..., 3:]
        return self.images[..., :3] * alpha + torch.as_tensor(background, dtype=torch.float32) * (1 - alpha)


def write_blender_split(
    root: str | os.PathLike,
    split: str,
    images: torch.Tensor,
    c2w: torch.Tensor,
    camera_angle_x: float,
) -> Path:
    """Write RGBA views ``[N, H, W, 4]`` (float in [0, 1]) and poses ``[N, 4, 4]`` as ``root/transforms_<split>.json``.

    Images go to ``root/<split>/r_<i>.png`` (8-bit RGBA).
    """
    from PIL import Image

    root = Path(root)
    (root / split).mkdir(parents=True, exist_ok=True)
    frames = []
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    for i, (img, pose) in enumerate(zip(pixels, c2w, strict=True)):
        rel = f"./{split}/r_{i}"
        Image.fromarray(img, mode="RGBA").save(root / f"{rel}.png")
        frames.append({"file_path": rel, "rotation": 0.0, "transform_matrix": pose.double().tolist()})
    path = root / f"transforms_{split}.json"
    path.write_text(json.dumps({"camera_angle_x": camera_angle_x, "frames": frames}, indent=1))
    return path


def read_blender_split(
    root: str | os.PathLike, split: str, *, image_size: int | None = None, max_views: int | None = None
) -> BlenderSplit:
    """Read ``root/transforms_<split>.json`` and its PNGs (NeRF-Synthetic layout).

    Args:
        root: Scene folder.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: Resize square images to this many pixels (area filter on premultiplied colour); None keeps them.
        max_views: Read only the first ``max_views`` frames.

    Returns:
        The split. Raises FileNotFoundError when the JSON or a frame is missing.
    """
    from PIL import Image

    root = Path(root)
    meta = json.loads((root / f"transforms_{split}.json").read_text())
    frames = meta["frames"][:max_views]
    images, poses, paths = [], [], []
    for frame in frames:
        rel = frame["file_path"]
        path = root / rel
        if path.suffix.lower() != ".png":
            path = path.with_name(path.name + ".png")
        img = torch.from_numpy(np.asarray(Image.open(path).convert("RGBA"), dtype=np.float32) / 255.0)
        if image_size is not None and img.shape[0] != image_size:
            # Resize premultiplied colour so edges do not bleed the (undefined) colour of transparent pixels.
            prem = torch.cat([img[..., :3] * img[..., 3:], img[..., 3:]], -1).permute(2, 0, 1)[None]
            prem = torch.nn.functional.interpolate(prem, size=(image_size, image_size), mode="area")[0].permute(1, 2, 0)
            img = torch.cat([prem[..., :3] / prem[..., 3:].clamp_min(1e-8), prem[..., 3:]], -1).clamp(0, 1)
        images.append(img)
        poses.append(torch.tensor(frame["transform_matrix"], dtype=torch.float32))
        paths.append(rel)
    return BlenderSplit(torch.stack(images), torch.stack(poses), float(meta["camera_angle_x"]), paths)


@dataclass(frozen=True)
class SceneParams:
    """Everything that determines a generated scene (recorded in ``scene.json``)."""

    image_size: int = 64
    n_train: int = 100
    n_val: int = 8
    n_test: int = 16
    seed: int = 0
    n_shapes: int = 5
    supersample: int = 2
    camera_radius: float = 4.0
    camera_angle_x: float = BLENDER_CAMERA_ANGLE_X
    version: int = SCENE_VERSION


def scene_poses(params: SceneParams) -> dict[str, torch.Tensor]:
    """Camera-to-world matrices of each split: train over the upper hemisphere, val/test on interleaved orbits."""
    return {
        "train": hemisphere_poses(params.n_train, params.camera_radius, params.seed),
        "val": orbit_poses(params.n_val, params.camera_radius, 30.0, phase=0.1),
        "test": orbit_poses(params.n_test, params.camera_radius, 25.0, phase=0.1 + math.pi / max(params.n_test, 1)),
    }


def generate_blender_scene(
    root: str | os.PathLike,
    *,
    image_size: int = 64,
    n_train: int = 100,
    n_val: int = 8,
    n_test: int = 16,
    seed: int = 0,
    n_shapes: int = 5,
    supersample: int = 2,
    camera_radius: float = 4.0,
    camera_angle_x: float = BLENDER_CAMERA_ANGLE_X,
) -> Path:
    """Render the procedural scene of ``seed`` into ``root`` in the Blender layout (cached by parameters).

    Args:
        root: Output folder (the cache): reused when its ``scene.json`` records the same parameters.
        image_size: Square image size in pixels.
        n_train: Training views (upper hemisphere).
        n_val: Validation views (orbit at 30 degrees elevation).
        n_test: Test views (orbit at 25 degrees, azimuths between the validation ones).
        seed: Seed of the shapes and the training cameras.
        n_shapes: Number of shapes.
        supersample: Rays per pixel along each axis (anti-aliased edges, fractional alpha).
        camera_radius: Distance of every camera from the origin (the shapes lie in ``[-1, 1]^3``).
        camera_angle_x: Horizontal field of view (radians).

    Returns:
        ``root``.
    """
    params = SceneParams(image_size, n_train, n_val, n_test, seed, n_shapes, supersample, camera_radius, camera_angle_x)
    root = Path(root)
    record = {"generator": "reprokit.scenes", **asdict(params)}
    marker = root / "scene.json"
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == record:
                return root
        except ValueError:
            pass
    scene = ProceduralScene.from_seed(seed, n_shapes)
    focal = focal_from_angle(image_size, camera_angle_x)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    try:
        for split, c2w in scene_poses(params).items():
            images = scene.render(image_size, image_size, focal, c2w, supersample)
            write_blender_split(tmp, split, images, c2w, camera_angle_x)
        shapes = [asdict(s) for s in scene.shapes]
        (tmp / "scene.json").write_text(json.dumps(record, indent=1))
        (tmp / "shapes.json").write_text(json.dumps(shapes, indent=1))
        if root.exists():
            shutil.rmtree(root, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:
            # Another process (a DDP rank) finished the same scene first: keep its copy.
            if not (marker.is_file() and json.loads(marker.read_text()) == record):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


__all__ = [
    "BLENDER_CAMERA_ANGLE_X",
    "SPLITS",
    "BlenderSplit",
    "ProceduralScene",
    "SceneParams",
    "Shape",
    "camera_rays",
    "focal_from_angle",
    "generate_blender_scene",
    "hemisphere_poses",
    "look_at",
    "orbit_poses",
    "read_blender_split",
    "scene_poses",
    "write_blender_split",
]
