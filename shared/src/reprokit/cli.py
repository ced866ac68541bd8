"""One command line for every package.

``<paper> fit|validate|test|predict --config X.yaml`` is LightningCLI (jsonargparse YAML with class_path/init_args);
``<paper> reproduce --scale {paper,cpu} [--quick]`` runs the paper's protocol. A package's ``cli.py`` is two lines::

    def main(args=None):
        reprokit.cli.main("capsnet_rem", args)   # `reproduce` runs capsnet_rem.reproduce.run

Runs land in ``runs/<paper>/<experiment>/version_N`` (``$REPROKIT_RUNS`` moves ``runs/``), where ``<experiment>`` is
``--experiment`` or the config file's stem. The CSV logger is the default; wandb is opt-in with
``--trainer.logger=pytorch_lightning.loggers.WandbLogger``. User mistakes (missing dataset, bad checkpoint, bad value)
end in one line on stderr and exit status 2, and a run that fails before writing a checkpoint leaves no run folder.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from jsonargparse import Namespace
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from reprokit.callbacks import RNGStateCallback
from reprokit.data import DatasetNotFoundError

RUNS_ENV = "REPROKIT_RUNS"
# Lightning 2.6 on torch 2.14 warns about its own pytree use on every step; it is not the user's concern.
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
# Lightning advertises its cloud services at every run; keep the console for the run's own messages.
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(lambda rec: "💡 Tip" not in str(rec.msg))
DEFAULT_EXPERIMENT = "default"
_SPECIAL_CKPT = {"last", "best", "hpc", "registry"}


class ReproError(RuntimeError):
    """A mistake the user can fix; printed as one line without a traceback."""


def runs_root() -> Path:
    """The folder holding every run: ``$REPROKIT_RUNS`` or ``./runs``."""
    return Path(os.environ.get(RUNS_ENV, "runs"))


class ReproCLI(LightningCLI):
    """LightningCLI with the repository's defaults, run-folder naming and checks on bad input."""

    def __init__(self, paper: str, **kwargs: Any) -> None:
        self.paper = paper
        root = runs_root() / paper
        trainer_defaults = {
            "default_root_dir": str(root),
            "logger": {
                "class_path": "pytorch_lightning.loggers.CSVLogger",
                "init_args": {"save_dir": str(root), "name": DEFAULT_EXPERIMENT},
            },
            "callbacks": [RNGStateCallback()],
            **kwargs.pop("trainer_defaults", {}),
        }
        super().__init__(
            pl.LightningModule,
            pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            trainer_defaults=trainer_defaults,
            parser_kwargs={
                "description": f"{paper}: Lightning CLI (fit/validate/test/predict). "
                f"The paper's protocol: `{paper} reproduce --help`.",
                # A short usage line: on a bad value the error is not buried under 60 lines of options.
                **{
                    sub: {
                        "usage": f"{paper} {sub} --config CONFIG.yaml [--key value ...]"
                        f"  (all keys: {paper} {sub} --help)"
                    }
                    for sub in ("fit", "validate", "test", "predict")
                },
            },
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--experiment",
            type=str | None,
            default=None,
            help="Run name: runs go to runs/<paper>/<experiment>/version_N (default: the config file's stem).",
        )

    # ------------------------------------------------------------------------------------------- run-folder naming
    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        name = cfg.get("experiment") or _config_stem(cfg)
        logger = cfg.get("trainer", {}).get("logger")
        init = logger.get("init_args") if isinstance(logger, Namespace) else None
        # An explicit --experiment always names the run; otherwise only the default name is replaced.
        if (
            name
            and init is not None
            and "name" in init
            and (cfg.get("experiment") or init["name"] == DEFAULT_EXPERIMENT)
        ):
            init["name"] = name

    # --------------------------------------------------------------------------------------------- bad checkpoints
    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads hyperparameters from --ckpt_path while parsing; a broken file must fail here, clearly.
        sub = self.config.get("subcommand")
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if ckpt is not None and str(ckpt) not in _SPECIAL_CKPT:
            _load_checkpoint(Path(str(ckpt)))
        super()._parse_ckpt_path()

    def _check_checkpoint(self) -> None:
        ckpt = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt is None or str(ckpt) in _SPECIAL_CKPT:
            return
        path = Path(str(ckpt))
        obj = _load_checkpoint(path)
        expected = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        if not expected:  # model builds its layers lazily; Lightning reports any mismatch itself
            return
        found = {k: tuple(v.shape) for k, v in obj["state_dict"].items() if hasattr(v, "shape")}
        missing = sorted(set(expected) - set(found))
        unexpected = sorted(set(found) - set(expected))
        shapes = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        if missing or unexpected or shapes:
            parts = []
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
                if keys:
                    more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                    parts.append(f"{label}: {', '.join(keys[:3])}{more}")
                    if label == "shape mismatch":
                        parts[-1] += f" [model {expected[keys[0]]} vs checkpoint {found[keys[0]]}]"
            raise ReproError(
                f"checkpoint '{path}' does not match {type(self.model).__name__} ({'; '.join(parts)}): "
                "was it written with another config?"
            )

    def before_fit(self) -> None:
        self._check_checkpoint()

    def before_validate(self) -> None:
        self._check_checkpoint()

    def before_test(self) -> None:
        self._check_checkpoint()

    def before_predict(self) -> None:
        self._check_checkpoint()

    # --------------------------------------------------------------------------------- nothing left half-written
    def _run_subcommand(self, subcommand: str) -> None:
        existing = {p for p in _run_dirs(self.trainer)}
        try:
            super()._run_subcommand(subcommand)
        except Exception:
            if self.trainer.is_global_zero:
                for log_dir in _run_dirs(self.trainer):
                    if log_dir not in existing and log_dir.is_dir() and not any(log_dir.rglob("*.ckpt")):
                        shutil.rmtree(log_dir, ignore_errors=True)
            raise


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a Lightning checkpoint on CPU, or raise a one-line :class:`ReproError` saying what is wrong with it."""
    if not path.is_file():
        raise ReproError(f"checkpoint '{path}' does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise ReproError(
            f"checkpoint '{path}' cannot be read ({type(err).__name__}): it is corrupt, truncated or not a "
            "Lightning checkpoint"
        ) from None
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise ReproError(f"checkpoint '{path}' has no 'state_dict': it is not a Lightning checkpoint")
    return obj


def _run_dirs(trainer: pl.Trainer) -> list[Path]:
    """Folders this trainer's loggers write into (those that exist)."""
    dirs = []
    for logger in trainer.loggers:
        log_dir = getattr(logger, "log_dir", None)
        if log_dir:
            dirs.append(Path(log_dir))
    return [d for d in dirs if d.exists()]


def _config_stem(cfg: Namespace) -> str | None:
    configs = cfg.get("config") or []
    if not configs:
        return None
    return Path(str(configs[-1])).stem


# ------------------------------------------------------------------------------------------------------ reproduce
def _resolve(fn: Callable | str) -> Callable:
    if callable(fn):
        return fn
    module, _, attr = fn.partition(":")
    return getattr(importlib.import_module(module), attr)


def reproduce_parser(paper: str) -> argparse.ArgumentParser:
    """The ``<paper> reproduce`` command line."""
    parser = argparse.ArgumentParser(
        prog=f"{paper} reproduce",
        description=f"Run the {paper} paper's protocol and write results (JSON, Markdown, PNG) to --out.",
    )
    parser.add_argument(
        "--scale",
        choices=["paper", "cpu"],
        default="paper",
        help="paper: the paper's settings and real datasets (GPU); cpu: the offline CPU-scale analogue",
    )
    parser.add_argument("--quick", action="store_true", help="a short version of the chosen scale (smoke run)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: results/<paper>)")
    parser.add_argument("--data_dir", type=Path, default=None, help="root folder of the real datasets (scale=paper)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the protocol's seeds")
    return parser


def run_cli(
    paper: str, args: Sequence[str] | None = None, *, reproduce: Callable | str | None = None
) -> ReproCLI | None:
    """Run the CLI in-process and return the LightningCLI object (None for ``reproduce``); errors propagate."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "reproduce":
        if reproduce is None:
            # Convention: <paper>.reproduce.run(scale, quick, out, data_dir, seeds)
            if importlib.util.find_spec(f"{paper}.reproduce") is None:
                raise ReproError(f"{paper} has no reproduce protocol yet")
            reproduce = f"{paper}.reproduce:run"
        opts = reproduce_parser(paper).parse_args(argv[1:])
        out = opts.out or Path("results") / paper
        _resolve(reproduce)(scale=opts.scale, quick=opts.quick, out=out, data_dir=opts.data_dir, seeds=opts.seeds)
        return None
    # args=None lets LightningCLI read sys.argv itself (passing both makes it warn)
    return ReproCLI(paper, args=None if args is None else argv)


def main(paper: str, args: Sequence[str] | None = None, *, reproduce: Callable | str | None = None) -> None:
    """Console-script entry: like :func:`run_cli`, with user errors as one line on stderr and exit status 2."""
    try:
        run_cli(paper, args, reproduce=reproduce)
    except Exception as exc:
        err = user_error(exc)
        if err is None:
            raise
        print(f"{paper}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def user_error(exc: BaseException) -> ReproError | DatasetNotFoundError | None:
    """The user-facing error behind ``exc`` (jsonargparse and Lightning wrap exceptions), or None."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, ReproError | DatasetNotFoundError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


# ---------------------------------------------------------------------------------------- helpers for reproduce.py
def package_path(paper: str, sub: str) -> Path:
    """A package's ``configs`` or ``expected`` folder, in a source checkout or an installed wheel.

    Source checkout (editable install): ``packages/<paper>/<sub>``. Wheel: ``<site-packages>/<paper>/<sub>``
    (copied there by the package's ``force-include``).
    """
    base = Path(importlib.import_module(paper).__file__).resolve().parent
    for candidate in (base.parent.parent / sub, base / sub):
        if candidate.is_dir():
            return candidate
    raise ReproError(f"{paper}: cannot find its '{sub}' folder next to {base}")


def fit_test(
    paper: str,
    config: str | os.PathLike,
    *,
    experiment: str,
    overrides: Sequence[str] = (),
    test: bool = True,
) -> dict[str, Any]:
    """One ``fit`` (and ``test`` on its last checkpoint) through the real CLI, in-process.

    Args:
        paper: Package name.
        config: YAML config path.
        experiment: Run name under ``runs/<paper>/``.
        overrides: Extra CLI arguments (``--seed_everything=43``, ``--trainer.max_epochs=2`` ...).
        test: Also run ``test`` from the checkpoint written by ``fit``.

    Returns:
        ``{"fit": {...last logged metrics...}, "test": {...}, "ckpt": path, "log_dir": path, "cli": fit CLI}``.
    """
    import time

    start = time.perf_counter()
    fit_cli = run_cli(paper, ["fit", "--config", str(config), "--experiment", experiment, *overrides])
    assert fit_cli is not None
    trainer = fit_cli.trainer
    ckpt_cb = trainer.checkpoint_callback
    ckpt = (ckpt_cb.best_model_path or ckpt_cb.last_model_path) if ckpt_cb is not None else ""
    out: dict[str, Any] = {
        "fit": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "ckpt": ckpt,
        "log_dir": trainer.log_dir,
        "cli": fit_cli,
        "fit_time_s": time.perf_counter() - start,
    }
    if test:
        args = ["test", "--config", str(config), "--experiment", f"{experiment}-test", *overrides]
        if ckpt:
            args += ["--ckpt_path", ckpt]
        test_cli = run_cli(paper, args)
        assert test_cli is not None
        out["test"] = {k: float(v) for k, v in test_cli.trainer.callback_metrics.items()}
    return out
