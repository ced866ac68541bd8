"""``medsae fit|validate|test|predict|reproduce|sweep``.

``sweep`` is this package's addition to the shared command line (:mod:`reprokit.cli`): it trains every point of a
sweep config as its own ``fit`` (see :mod:`medsae.sweep`); user mistakes end in one line, as for the other commands.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from reprokit.cli import main as _main
from reprokit.cli import user_error


def main(args: Sequence[str] | None = None) -> None:
    """Console entry point."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "sweep":
        from medsae import sweep

        try:
            sweep.main(argv[1:])
        except Exception as exc:
            err = user_error(exc)
            if err is None:
                raise
            print(f"medsae: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        return
    _main("medsae", args)


if __name__ == "__main__":
    main()
