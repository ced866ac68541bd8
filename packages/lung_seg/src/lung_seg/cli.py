"""``lung_seg fit|validate|test|predict|reproduce``, and ``lung_seg segment`` (whole-scan inference to NIfTI)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from reprokit.cli import ReproCLI
from reprokit.cli import main as _main


def segment(args: Sequence[str]) -> Path:
    """Segment every slice of one DICOM series with a trained checkpoint; write the 3D mask as NIfTI.

    The network, its normalisation and the window come from the training config; the mask gets the CT's geometry
    (spacing, orientation, origin), and components smaller than ``--min_diameter_mm`` are removed.

    Returns:
        The written NIfTI path.
    """
    import torch

    from lung_seg.inference import segment_series

    parser = argparse.ArgumentParser(
        prog="lung_seg segment",
        description="Segment a CT series (folder of *.dcm) with a trained checkpoint; write the nodule mask as NIfTI.",
    )
    parser.add_argument("--config", required=True, help="the YAML the checkpoint was trained with")
    parser.add_argument("--ckpt_path", required=True, help="Lightning checkpoint (.ckpt)")
    parser.add_argument("--series", required=True, help="folder holding the series' *.dcm files")
    parser.add_argument("--out", required=True, help="output NIfTI path, e.g. mask.nii.gz")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold (the paper: 0.5)")
    parser.add_argument("--min_diameter_mm", type=float, default=2.0, help="drop smaller components (0: keep all)")
    opts = parser.parse_args(list(args))
    cli = ReproCLI("lung_seg", args=["--config", opts.config], run=False)
    state = torch.load(opts.ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    cli.model.load_state_dict(state)
    data = cli.datamodule.hparams
    segment_series(
        cli.model.eval(),
        opts.series,
        opts.out,
        threshold=opts.threshold,
        min_diameter_mm=opts.min_diameter_mm or None,
        center=data.window_center,
        width=data.window_width,
    )
    print(f"wrote {opts.out}")
    return Path(opts.out)


def main(args: list[str] | None = None) -> None:
    """Console entry point."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["segment"]:
        segment(argv[1:])
        return
    _main("lung_seg", args)


if __name__ == "__main__":
    main()
