"""``gode fit|validate|test|predict|reproduce`` (Lightning CLI via reprokit) and ``gode decode`` (the bitstream)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reprokit.cli import main as _main


def decode_parser() -> argparse.ArgumentParser:
    """The ``gode decode`` command line."""
    parser = argparse.ArgumentParser(
        prog="gode decode",
        description="Decode levels 0..LEVEL of an encoded GoDe model, print bytes per level and optionally render a "
        "view of a Blender-format scene.",
    )
    parser.add_argument("bitstream", type=Path, help="folder written by gode.compression.encode")
    parser.add_argument("--level", type=int, default=None, help="highest level to decode (default: all)")
    parser.add_argument("--scene", type=Path, default=None, help="Blender-format scene whose test camera to render")
    parser.add_argument("--view", type=int, default=0, help="test view index")
    parser.add_argument("--background", type=float, default=1.0, help="background grey level")
    parser.add_argument(
        "--fade", type=float, default=1.0, help="opacity scale of the highest decoded level's Gaussians (fade-in)"
    )
    parser.add_argument("--out", type=Path, default=None, help="PNG to write the render to")
    return parser


def decode_main(argv: list[str]) -> None:
    """Decode progressively, report sizes, render one view."""
    opts = decode_parser().parse_args(argv)
    if not (opts.bitstream / "header.json").is_file():
        print(f"gode decode: error: '{opts.bitstream}' holds no encoded model (header.json missing)", file=sys.stderr)
        raise SystemExit(2)
    from gode.compression import decode

    raw, levels, header = decode(opts.bitstream, opts.level)
    sizes = [(opts.bitstream / f"level_{lvl}.zst").stat().st_size for lvl in range(header["num_levels"])]
    print(json.dumps({"decoded_gaussians": len(levels), "counts": header["counts"], "level_file_bytes": sizes}))
    if opts.scene is None or opts.out is None:
        return
    import torch
    from PIL import Image

    from gode.data import blender_views
    from gode.gaussians import activate
    from gode.levels import fade_opacities
    from gode.rasterizer import rasterize

    view = blender_views(opts.scene, "test", None, opts.background, opts.view + 1)[opts.view]
    height, width = view["image"].shape[:2]
    params = activate(raw)
    top = int(levels.max())
    params["opacities"] = fade_opacities(params["opacities"], levels, top, opts.fade)
    out = rasterize(
        **params,
        viewmat=view["viewmat"],
        K=view["K"],
        width=width,
        height=height,
        sh_degree=header["sh_degree"],
        background=torch.full((3,), opts.background),
    )
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((out.rgb.clamp(0, 1) * 255).round().byte().numpy()).save(opts.out)
    print(f"wrote {opts.out}")


def main(args: list[str] | None = None) -> None:
    """Console entry point."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "decode":
        decode_main(argv[1:])
        return
    _main("gode", args)


if __name__ == "__main__":
    main()
