"""``ca_diffusion_uad fit|validate|test|predict|reproduce``."""

from reprokit.cli import main as _main


def main(args: list[str] | None = None) -> None:
    """Console entry point."""
    _main("ca_diffusion_uad", args)


if __name__ == "__main__":
    main()
