"""GoDe's scalable bitstream: quantise, Morton-order, zstd (level 22, long-distance matching, trained dictionaries).

Layout of an encoded model (a folder)::

    header.json            # counts per level, SH degree, int8 ranges, which dictionaries are used
    dict_geometry.zdict    # zstd dictionary for fp16 geometry (optional)
    dict_features.zdict    # zstd dictionary for int8 SH features (optional)
    level_0.zst ... level_{L-1}.zst   # the enhancement set of each level: [u32 geometry size][geometry][features]

Each level file holds only its enhancement set, Gaussians sorted by Morton code, attributes stored planar (one
attribute column after another) so that zstd sees long runs of similar bytes. Decoding levels ``0..l`` concatenates
them; the result equals the quantised model restricted to ``G_l``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import zstandard as zstd

from gode.quant import dequantize_int8, int8_range, quantize_int8

GEOMETRY = ("means", "quats", "log_scales", "opacity_logits")
FEATURES = ("sh0", "shN")
FORMAT_VERSION = 1


def morton_codes(cells: torch.Tensor, bits: int = 10) -> torch.Tensor:
    """Interleave the bits of integer cells ``[N, 3]`` into codes ``[N]`` (x, y, z -> bits 0, 1, 2 of each triple)."""
    if bits > 21:
        raise ValueError("at most 21 bits per axis fit in int64")
    cells = cells.to(torch.long)
    code = torch.zeros(cells.shape[0], dtype=torch.long, device=cells.device)
    for b in range(bits):
        for axis in range(3):
            code |= ((cells[:, axis] >> b) & 1) << (3 * b + axis)
    return code


def morton_order(means: torch.Tensor, bits: int = 10) -> torch.Tensor:
    """Permutation ``[N]`` sorting ``means [N, 3]`` along a Z-order curve over their bounding box."""
    if means.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long)
    lo, hi = means.amin(0), means.amax(0)
    cells = ((means - lo) / (hi - lo).clamp_min(1e-12) * (2**bits - 1)).round().long()
    return torch.argsort(morton_codes(cells, bits), stable=True)


def _compressor_params() -> zstd.ZstdCompressionParameters:
    return zstd.ZstdCompressionParameters.from_level(22, enable_ldm=True)


def _planar(arrays: Sequence[np.ndarray]) -> bytes:
    # Column-major per attribute: all x, then all y, ... so that similar bytes sit together.
    return b"".join(np.ascontiguousarray(a.reshape(a.shape[0], -1).T).tobytes() for a in arrays)


def _streams(q: dict[str, torch.Tensor], ranges: dict, idx: torch.Tensor) -> tuple[bytes, bytes]:
    geom = _planar([q[n][idx].detach().cpu().half().numpy() for n in GEOMETRY])
    feat = _planar([quantize_int8(q[n][idx], *ranges[n]).cpu().numpy() for n in FEATURES])
    return geom, feat


def _train_dict(buffers: Sequence[bytes], size: int) -> zstd.ZstdCompressionDict | None:
    # Dictionaries are trained on small chunks of every level's stream; tiny models may not yield one.
    chunk = 1024
    samples = [b[i : i + chunk] for b in buffers for i in range(0, len(b), chunk) if len(b[i : i + chunk]) > 8]
    if len(samples) < 8:
        return None
    try:
        return zstd.train_dictionary(size, samples)
    except zstd.ZstdError:
        return None


def _compress(data: bytes, dictionary: zstd.ZstdCompressionDict | None) -> bytes:
    return zstd.ZstdCompressor(compression_params=_compressor_params(), dict_data=dictionary).compress(data)


def encode(
    raw: dict[str, torch.Tensor],
    level_of: torch.Tensor,
    num_levels: int,
    sh_degree: int,
    out_dir: str | Path,
    dictionaries: str = "auto",
    dict_size: int = 4096,
) -> list[int]:
    """Quantise and compress a leveled model into ``out_dir``.

    Args:
        raw: Raw parameters (``means [N, 3]``, ``quats``, ``log_scales``, ``opacity_logits``, ``sh0``, ``shN``).
        level_of: First level of each Gaussian ``[N]`` (``-1`` pruned); a non-scalable model is all zeros.
        num_levels: ``L``.
        sh_degree: SH degree (recorded for decoding).
        out_dir: Folder to write.
        dictionaries: ``"on"``, ``"off"`` or ``"auto"`` (use trained dictionaries only if the total gets smaller).
        dict_size: Dictionary size in bytes.

    Returns:
        Bytes on disk needed to decode each level ``0..l`` (cumulative, header and dictionaries included).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    level_of = level_of.cpu()
    q = {n: v.detach().cpu().float() for n, v in raw.items()}
    ranges = {n: int8_range(q[n], level_of >= 0) for n in FEATURES}
    orders, streams = [], []
    for lvl in range(num_levels):
        idx = (level_of == lvl).nonzero().flatten()
        idx = idx[morton_order(q["means"][idx].half().float())]
        orders.append(idx)
        streams.append(_streams(q, ranges, idx))

    def frames(dicts: tuple) -> list[tuple[bytes, bytes]]:
        return [(_compress(g, dicts[0]), _compress(f, dicts[1])) for g, f in streams]

    plain = frames((None, None))
    chosen, dicts = plain, (None, None)
    if dictionaries != "off":
        trained = (_train_dict([g for g, _ in streams], dict_size), _train_dict([f for _, f in streams], dict_size))
        with_dicts = frames(trained)
        dict_bytes = sum(len(d.as_bytes()) for d in trained if d is not None)
        total = sum(len(g) + len(f) for g, f in with_dicts) + dict_bytes
        if dictionaries == "on" or total < sum(len(g) + len(f) for g, f in plain):
            chosen, dicts = with_dicts, trained

    for name, d in zip(("geometry", "features"), dicts):
        path = out / f"dict_{name}.zdict"
        if d is not None:
            path.write_bytes(d.as_bytes())
        elif path.exists():
            path.unlink()
    header = {
        "format": FORMAT_VERSION,
        "sh_degree": sh_degree,
        "num_levels": num_levels,
        "counts": [len(o) for o in orders],
        "rest_coeffs": int(q["shN"].shape[1]),
        "ranges": {n: [ranges[n][0].tolist(), ranges[n][1].tolist()] for n in FEATURES},
        "dictionaries": {"geometry": dicts[0] is not None, "features": dicts[1] is not None},
    }
    (out / "header.json").write_text(json.dumps(header))
    for lvl, (g, f) in enumerate(chosen):
        (out / f"level_{lvl}.zst").write_bytes(struct.pack("<I", len(g)) + g + f)
    base = len((out / "header.json").read_bytes()) + sum(len(d.as_bytes()) for d in dicts if d is not None)
    sizes, running = [], base
    for lvl in range(num_levels):
        running += (out / f"level_{lvl}.zst").stat().st_size
        sizes.append(running)
    return sizes


def _unplanar(buf: bytes, dtype: np.dtype, n: int, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    arrays, offset = [], 0
    flat = np.frombuffer(buf, dtype=dtype)
    for shape in shapes:
        width = int(np.prod(shape))
        arrays.append(flat[offset : offset + n * width].reshape(width, n).T.reshape(n, *shape).copy())
        offset += n * width
    if offset != flat.size:
        raise ValueError("corrupt level stream: size does not match the header's counts")
    return arrays


def decode(in_dir: str | Path, level: int | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict]:
    """Decode levels ``0..level`` (default: all) of an encoded model.

    Returns:
        Raw float32 parameters of ``G_level`` (level-major, Morton order inside a level), the level of each decoded
        Gaussian ``[M]``, and the header.
    """
    root = Path(in_dir)
    header = json.loads((root / "header.json").read_text())
    level = header["num_levels"] - 1 if level is None else level
    if not 0 <= level < header["num_levels"]:
        raise ValueError(f"level {level} out of range: the model has {header['num_levels']} levels")
    dicts = [
        zstd.ZstdCompressionDict((root / f"dict_{name}.zdict").read_bytes()) if header["dictionaries"][name] else None
        for name in ("geometry", "features")
    ]
    rest = header["rest_coeffs"]
    geom_shapes = [(3,), (4,), (3,), ()]
    feat_shapes = [(1, 3), (rest, 3)]
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in (*GEOMETRY, *FEATURES)}
    levels = []
    ranges = {n: (torch.tensor(lo), torch.tensor(hi)) for n, (lo, hi) in header["ranges"].items()}
    for lvl in range(level + 1):
        blob = (root / f"level_{lvl}.zst").read_bytes()
        (geom_len,) = struct.unpack("<I", blob[:4])
        geom = zstd.ZstdDecompressor(dict_data=dicts[0]).decompress(blob[4 : 4 + geom_len])
        feat = zstd.ZstdDecompressor(dict_data=dicts[1]).decompress(blob[4 + geom_len :])
        n = header["counts"][lvl]
        for name, arr in zip(GEOMETRY, _unplanar(geom, np.float16, n, geom_shapes)):
            parts[name].append(torch.from_numpy(arr).float())
        for name, arr in zip(FEATURES, _unplanar(feat, np.uint8, n, feat_shapes)):
            parts[name].append(dequantize_int8(torch.from_numpy(arr), *ranges[name]))
        levels.append(torch.full((n,), lvl, dtype=torch.long))
    raw = {n: torch.cat(v) for n, v in parts.items()}
    return raw, torch.cat(levels), header


def raw_float32_ply_bytes(num: int, sh_degree: int) -> int:
    """Size of the standard uncompressed 3DGS PLY (float32: xyz, normals, SH, opacity, scale, rotation), no header."""
    floats = 3 + 3 + 3 * (sh_degree + 1) ** 2 + 1 + 3 + 4
    return 4 * floats * num
