from pathlib import Path

import pytest
import yaml
from ca_diffusion_uad.reproduce import METHODS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("prefix", ["cpu/", "paper/brats21_", "paper/mslub_", "paper/nova_"])
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


def test_nova_configs_test_the_brats21_models_on_nova_data():
    for method, stem, _ in METHODS:
        nova = yaml.safe_load((CONFIGS / f"paper/nova_{stem}.yaml").read_text())
        brats = yaml.safe_load((CONFIGS / f"paper/brats21_{stem}.yaml").read_text())
        assert nova["model"] == brats["model"], method
        d = nova["data"]
        assert d["class_path"].endswith("NovaDataModule")
        assert (d["init_args"]["box_threshold"], d["init_args"]["max_boxes"], d["init_args"]["image_size"]) == (
            0.5,
            5,
            96,
        )


def test_paper_configs_carry_the_papers_settings():
    enc = yaml.safe_load((CONFIGS / "paper/ixi_encoder.yaml").read_text())["model"]["init_args"]
    assert (enc["mask_ratio"], enc["tau"], enc["eps"], enc["lr"], enc["weight_decay"]) == (0.65, 0.07, 0.5, 1e-4, 0.05)
    for ds in ("brats21", "mslub"):
        cfg = yaml.safe_load((CONFIGS / f"paper/{ds}_contrastive_cond.yaml").read_text())
        m, d = cfg["model"]["init_args"], cfg["data"]["init_args"]
        assert (m["image_size"], m["timesteps"], m["cond_dim"], m["t_eval"]) == (96, 1000, 128, [250, 500, 750])
        assert (m["channels"], m["layers_per_block"], m["lr"], d["batch_size"]) == ([128, 256, 256], 3, 1e-4, 32)
        # The paper's encoder: the bottleneck ResNet-50, as pretrained by ixi_encoder.yaml.
        assert (m["encoder_arch"], m["encoder_widths"], m["encoder_blocks"]) == (
            enc["arch"],
            enc["widths"],
            enc["blocks"],
        )
    assert (enc["arch"], enc["widths"], enc["blocks"], enc["patch_size"]) == (
        "bottleneck",
        [64, 128, 256, 512],
        [3, 4, 6, 3],
        32,
    )


def test_paper_protocol_tests_the_brats21_models_on_nova(tmp_path, monkeypatch):
    """The wiring of ``reproduce --scale paper``: NOVA reuses the IXI-trained BraTS21 fits, tested with nova_*."""
    import torch
    from ca_diffusion_uad import reproduce

    fits, tests = [], []

    def fake_fit(config, experiment, overrides):
        fits.append((config.name, experiment, tuple(overrides)))
        return str(tmp_path / f"{experiment}.ckpt")

    def fake_test(config, experiment, overrides, ckpt):
        tests.append((config.name, experiment, tuple(overrides), Path(ckpt).name))
        ex = {k: torch.zeros(8, 8) for k in ("x", "x_hat", "map", "lesion")}
        return {"scores": {"map_30": 0.5, "map_50": 0.25, "map": 0.1, "acc_50": 0.5}, "examples": ex}

    monkeypatch.setattr(reproduce, "_cached_fit", fake_fit)
    monkeypatch.setattr(reproduce, "_cached_test", fake_test)
    monkeypatch.setattr(reproduce, "_retarget", lambda ckpt, suffix, **hp: ckpt.replace(".ckpt", f"-{suffix}.ckpt"))
    reproduce.run("paper", quick=False, out=tmp_path / "out", data_dir=tmp_path / "data", seeds=[0])

    nova_tests = [t for t in tests if t[1].endswith("-uad_nova")]
    stems = ["contrastive_cond", "cddpm", "ddpm_uncond", "ddpm_uncond", "autoencoder"]
    assert sorted(t[0] for t in nova_tests) == sorted(f"nova_{s}.yaml" for s in stems)
    for _, _, overrides, _ in nova_tests:
        assert f"--data.init_args.data_dir={tmp_path / 'data' / 'nova'}" in overrides
        assert not any("split_seed" in o for o in overrides)  # NovaDataModule has no split
    # The NOVA run asks for exactly the BraTS21 run's fits (same configs, same overrides): the cache reuses them.
    brats_fits = [f for f in fits if "ixi_brats21" in " ".join(f[2])]
    assert len(brats_fits) == 2 * 5  # encoder + 4 trained models, once for BraTS21 and once for NOVA
    assert len(set(brats_fits)) == 5
    anoddpm = [t for t in nova_tests if "-anoddpm-" in t[1]]
    assert anoddpm[0][3].endswith("-chain.ckpt")
    assert (tmp_path / "out" / "uad_nova.json").is_file() and (tmp_path / "out" / "uad_nova_scores.png").is_file()
