"""``boost_nerf fit|validate|test|predict|reproduce``."""

from reprokit.cli import main as _main


def main(args: list[str] | None = None) -> None:
    """Console entry point."""
    _main("boost_nerf", args)


if __name__ == "__main__":
    main()
