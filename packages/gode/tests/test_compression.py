"""Quantisation (QAT vs real), Morton codes, and the scalable bitstream round trip."""

import torch
from gode.compression import decode, encode, morton_codes, morton_order, raw_float32_ply_bytes
from gode.gaussians import Gaussians, activate
from gode.quant import (
    dequantize_int8,
    fake_quant_fp16,
    fake_quant_int8,
    int8_range,
    quantize_int8,
    quantize_params,
)
from gode.rasterizer import rasterize


def test_morton_codes_of_known_points():
    cells = torch.tensor(
        [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [2, 0, 0], [3, 5, 6], [1023, 1023, 1023]]
    )
    # x -> bit 0, y -> bit 1, z -> bit 2 of each triple; (3,5,6): x=011 y=101 z=110
    # bit0: x1 y1 z0 -> 0b011; bit1: x1 y0 z1 -> 0b101; bit2: x0 y1 z1 -> 0b110 => 0b110_101_011
    expected = [0, 1, 2, 4, 7, 8, 0b110101011, 2**30 - 1]
    assert morton_codes(cells).tolist() == expected


def test_morton_order_groups_nearby_points():
    pts = torch.tensor([[0.9, 0.9, 0.9], [0.0, 0.0, 0.0], [0.91, 0.9, 0.9], [0.01, 0.0, 0.0]])
    order = morton_order(pts).tolist()
    assert {frozenset(order[:2]), frozenset(order[2:])} == {frozenset({1, 3}), frozenset({0, 2})}


def test_int8_quantisation_by_hand():
    x = torch.tensor([[0.0], [0.2], [1.0], [0.26]])
    lo, hi = int8_range(x)
    codes = quantize_int8(x, lo, hi)
    assert codes.dtype == torch.uint8 and codes.flatten().tolist() == [0, 51, 255, 66]  # 0.26 * 255 = 66.3 -> 66
    torch.testing.assert_close(dequantize_int8(codes, lo, hi).flatten(), torch.tensor([0.0, 51, 255, 66]) / 255)


def test_fake_quant_equals_real_quantisation_and_passes_gradients_straight_through():
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(100, 15, 3, generator=gen) * 0.3).requires_grad_(True)
    lo, hi = int8_range(x)
    fq = fake_quant_int8(x, lo, hi)
    assert torch.equal(fq.detach(), dequantize_int8(quantize_int8(x, lo, hi), lo, hi))
    assert (fq.detach() - x.detach()).abs().max() <= ((hi - lo) / 255 / 2).max() + 1e-7
    w = torch.randn(fq.shape, generator=gen)
    (fq * w).sum().backward()
    assert torch.equal(x.grad, w)
    y = torch.randn(10, 3, generator=gen).requires_grad_(True)
    half = fake_quant_fp16(y)
    assert torch.equal(half.detach(), y.detach().half().float())
    half.sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))


def _leveled_model(n=400, seed=0):
    g = Gaussians(n, sh_degree=2, extent=0.8, init_scale=0.3, seed=seed)
    with torch.no_grad():
        g.shN.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed))
        g.opacity_logits.normal_(0, 1, generator=torch.Generator().manual_seed(seed + 1))
    level_of = torch.randint(-1, 3, (n,), generator=torch.Generator().manual_seed(seed + 2))
    return g, level_of


def test_bitstream_round_trip_is_lossless_relative_to_the_quantised_model(tmp_path):
    g, level_of = _leveled_model()
    raw = {k: v.detach() for k, v in g.raw().items()}
    sizes = encode(raw, level_of, 3, 2, tmp_path, dictionaries="auto")
    assert len(sizes) == 3 and sizes[0] < sizes[1] < sizes[2]
    quantised, _ = quantize_params(raw, mask=level_of >= 0, fake=False)
    for level in range(3):
        decoded, levels, header = decode(tmp_path, level)
        members = ((level_of >= 0) & (level_of <= level)).nonzero().flatten()
        assert len(levels) == len(members) and header["counts"][: level + 1] == [
            int((level_of == lvl).sum()) for lvl in range(level + 1)
        ]
        # Match decoded rows to model rows through their (unique) fp16 means.
        key_model = {tuple(quantised["means"][i].tolist()): int(i) for i in members}
        rows = [key_model[tuple(m.tolist())] for m in decoded["means"]]
        assert sorted(rows) == sorted(members.tolist())
        for name in raw:
            assert torch.equal(decoded[name], quantised[name][rows]), name
        assert torch.equal(levels, level_of[rows])


def test_decoded_level_renders_like_the_quantised_model(tmp_path):
    g, level_of = _leveled_model(n=300, seed=4)
    raw = {k: v.detach() for k, v in g.raw().items()}
    encode(raw, level_of, 3, 2, tmp_path, dictionaries="off")
    decoded, _, _ = decode(tmp_path, 1)
    quantised, _ = quantize_params(raw, mask=level_of >= 0, fake=False)
    keep = (level_of >= 0) & (level_of <= 1)
    viewmat = torch.eye(4)
    viewmat[2, 3] = 3.0
    K = torch.tensor([[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]])
    a = rasterize(**activate({k: v[keep] for k, v in quantised.items()}), viewmat=viewmat, K=K, width=32, height=32)
    b = rasterize(**activate(decoded), viewmat=viewmat, K=K, width=32, height=32)
    assert a.alpha.max() > 0.5
    torch.testing.assert_close(b.rgb, a.rgb, atol=1e-6, rtol=0)


def test_dictionaries_on_round_trip(tmp_path):
    g, level_of = _leveled_model(n=3000, seed=5)
    raw = {k: v.detach() for k, v in g.raw().items()}
    encode(raw, level_of, 3, 2, tmp_path, dictionaries="on", dict_size=2048)
    decoded, _, header = decode(tmp_path)
    assert header["dictionaries"]["geometry"] and header["dictionaries"]["features"]
    assert len(decoded["means"]) == int((level_of >= 0).sum())


def test_compressed_is_smaller_than_float32_ply(tmp_path):
    g, _ = _leveled_model(n=2000)
    raw = {k: v.detach() for k, v in g.raw().items()}
    sizes = encode(raw, torch.zeros(2000, dtype=torch.long), 1, 2, tmp_path)
    assert sizes[-1] < raw_float32_ply_bytes(2000, 2) / 3


def test_decode_cli_reports_and_renders(tmp_path, capsys):
    import json

    import pytest
    from gode.cli import main
    from reprokit.scenes import BLENDER_CAMERA_ANGLE_X, orbit_poses, write_blender_split

    g, level_of = _leveled_model(n=200, seed=7)
    encode({k: v.detach() for k, v in g.raw().items()}, level_of, 3, 2, tmp_path / "bits", dictionaries="off")
    write_blender_split(
        tmp_path / "scene", "test", torch.rand(1, 16, 16, 4), orbit_poses(1, 4.0), BLENDER_CAMERA_ANGLE_X
    )
    main(
        [
            "decode",
            str(tmp_path / "bits"),
            "--level",
            "1",
            "--scene",
            str(tmp_path / "scene"),
            "--out",
            str(tmp_path / "r.png"),
        ]
    )
    report = json.loads(capsys.readouterr().out.splitlines()[0])
    assert report["decoded_gaussians"] == int(((level_of >= 0) & (level_of <= 1)).sum())
    assert (tmp_path / "r.png").is_file()
    # --fade 0 hides the highest decoded level's enhancement set: level 1 faded out renders as level 0.
    import numpy as np
    from PIL import Image

    def png(level: int, fade: float) -> np.ndarray:
        out = tmp_path / f"l{level}_{fade}.png"
        args = ["decode", str(tmp_path / "bits"), "--level", str(level), "--fade", str(fade)]
        main([*args, "--scene", str(tmp_path / "scene"), "--out", str(out)])
        return np.asarray(Image.open(out)).astype(int)

    level0, level1, faded = png(0, 1.0), png(1, 1.0), png(1, 0.0)
    assert np.abs(level1 - level0).max() > 0  # the test would be empty if level 1 added nothing visible
    assert np.abs(faded - level0).max() <= 1  # one 8-bit step of float rounding at most
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["decode", str(tmp_path / "nothing")])
    assert exc.value.code == 2
