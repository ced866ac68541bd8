from pathlib import Path

import pytest
import yaml
from ca_diffusion_uad.reproduce import METHODS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("prefix", ["cpu/", "paper/brats21_", "paper/mslub_"])
def test_every_config_the_protocol_runs_exists_and_matches_its_method(prefix):
    for method, stem, _ in METHODS:
        cfg = yaml.safe_load((CONFIGS / f"{prefix}{stem}.yaml").read_text())
        args = cfg["model"]["init_args"]
        if method == "autoencoder":
            assert cfg["model"]["class_path"].endswith("AutoencoderUAD")
            continue
        assert args["condition"] == ("none" if method in ("ddpm_uncond", "anoddpm") else "encoder")
        assert args["inference"] == "multi_t"  # anoddpm switches the same weights to the chain at test time
        if method == "contrastive_cond":
            assert args["freeze_encoder"] is True
        if method == "cddpm":
            assert args["freeze_encoder"] is False and args["encoder_ckpt"] is None


def test_paper_configs_carry_the_papers_settings():
    enc = yaml.safe_load((CONFIGS / "paper/ixi_encoder.yaml").read_text())["model"]["init_args"]
    assert (enc["mask_ratio"], enc["tau"], enc["eps"], enc["lr"], enc["weight_decay"]) == (0.65, 0.07, 0.5, 1e-4, 0.05)
    for ds in ("brats21", "mslub"):
        cfg = yaml.safe_load((CONFIGS / f"paper/{ds}_contrastive_cond.yaml").read_text())
        m, d = cfg["model"]["init_args"], cfg["data"]["init_args"]
        assert (m["image_size"], m["timesteps"], m["cond_dim"], m["t_eval"]) == (96, 1000, 128, [250, 500, 750])
        assert (m["channels"], m["layers_per_block"], m["lr"], d["batch_size"]) == ([128, 256, 256], 3, 1e-4, 32)
