"""Discovery of the packages the contract tests run over."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPERS = (
    "capsnet_rem",
    "boost_nerf",
    "gode",
    "medsae",
    "saemnesia",
    "pruning_vision",
    "corsa",
    "lung_seg",
    "ca_diffusion_uad",
)


@dataclass(frozen=True)
class Package:
    """A package under test: its import name, folder and contract settings from ``[tool.reprokit]``."""

    name: str
    root: Path
    contract_config: Path
    missing_data_config: Path | None
    ddp_fast: bool

    @property
    def configs(self) -> list[Path]:
        """Every YAML under configs/."""
        return sorted((self.root / "configs").rglob("*.yaml"))


def discover() -> list[Package]:
    """The example package under tests/ and every package under packages/ that has a pyproject."""
    roots = [ROOT / "tests" / "example_paper", *sorted(p.parent for p in (ROOT / "packages").glob("*/pyproject.toml"))]
    found = []
    for root in roots:
        meta = tomllib.loads((root / "pyproject.toml").read_text())
        settings = meta.get("tool", {}).get("reprokit", {})
        name = root.name
        missing = settings.get("missing-data-config")
        found.append(
            Package(
                name=name,
                root=root,
                contract_config=root / settings.get("contract-config", "configs/cpu/contract.yaml"),
                missing_data_config=root / missing if missing else None,
                ddp_fast=name == "example_paper",
            )
        )
    return found
