"""Write the fully resolved configs under configs/paper and configs/cpu (run after changing a default here).

Paper scale: NeRF-Synthetic (Blender) x {DVGO, TensoRF, Instant-NGP} x {one single expert per resolution, Top-1,
Top-2, Ensemble}, plus Top-2 on Synthetic-NSVF, plus LLFF (forward-facing, NDC) x {one expert per resolution, Top-2}.
CPU scale: the offline procedural scene, small grids.
Values marked "backbone default" come from the public DVGO/TensoRF/Instant-NGP defaults, not from the paper.
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1] / "configs"

PAPER_RES = [160, 200, 256, 300, 350]  # experts; 128 initialises the gate
PAPER_GATE = 128
PAPER_W = [1.0, 1.5, 2.23, 3.35, 5.0]  # released [1, 1.5, 2.23, 3,35, 5] with the 3.35 typo fixed
LLFF_STEPS = 30000  # the paper's joint stage on LLFF (20k elsewhere)
LLFF_FACTOR = 4  # DVGO's LLFF setting: images_4/ (1008 x 756)
LLFF_BATCH = 4096  # DVGO's rays per step on LLFF (backbone default)

# backbone default hyperparameters at paper scale (expert kwargs, lrs, steps, batch of rays, decay in k-steps)
PAPER_BACKBONE = {
    "dvgo": dict(
        kwargs={"feature_dim": 12, "mlp_width": 128, "dir_freqs": 4},
        lr_grid=0.1,
        lr_mlp=1e-3,
        steps=20000,
        batch=8192,
        decay=20.0,
    ),
    "tensorf": dict(
        kwargs={
            "density_components": 16,
            "appearance_components": 48,
            "feature_dim": 27,
            "mlp_width": 128,
            "dir_freqs": 4,
            "init_scale": 0.1,
        },
        lr_grid=0.02,
        lr_mlp=1e-3,
        steps=30000,
        batch=4096,
        decay=30.0,
    ),
    "ngp": dict(
        kwargs={
            "levels": 16,
            "features_per_level": 2,
            "log2_table_size": 19,
            "base_resolution": 16,
            "geo_feature_dim": 15,
            "mlp_width": 64,
            "dir_freqs": 4,
        },
        lr_grid=1e-2,
        lr_mlp=1e-2,
        steps=20000,
        batch=8192,
        decay=20.0,
    ),
}

CPU_RES = [24, 32, 48]
CPU_GATE = 16
CPU_W = [1.0, 1.5, 2.23]
CPU_BACKBONE = {
    "dvgo": dict(
        kwargs={"feature_dim": 12, "mlp_width": 32, "dir_freqs": 4},
        lr_grid=0.1,
        lr_mlp=3e-3,
        steps=400,
        batch=1024,
        decay=2.0,
    ),
    "tensorf": dict(
        kwargs={
            "density_components": 8,
            "appearance_components": 12,
            "feature_dim": 12,
            "mlp_width": 32,
            "dir_freqs": 4,
            "init_scale": 0.1,
        },
        lr_grid=0.02,
        lr_mlp=3e-3,
        steps=400,
        batch=1024,
        decay=2.0,
    ),
    "ngp": dict(
        kwargs={
            "levels": 8,
            "features_per_level": 2,
            "log2_table_size": 14,
            "base_resolution": 8,
            "geo_feature_dim": 15,
            "mlp_width": 32,
            "dir_freqs": 4,
        },
        # Stage 1 (single experts): Instant-NGP's 1e-2 is tuned for tens of thousands of steps; in 300 CPU steps it
        # left the single 48^3 expert ~3 dB behind DVGO and TensoRF (25.3 dB on the test views: an under-trained
        # baseline). Of 3e-2 and 5e-2, 5e-2 was better on the validation views (26.9 / 28.2 dB after 300 steps).
        lr_grid=5e-2,
        lr_mlp=5e-2,
        # Joint stage: the experts at Instant-NGP's own 1e-2. At 5e-2 the mixtures trained worse (validation views:
        # Top-1 22.6 vs 25.6 dB, Top-2 28.1 vs 30.0 dB, from the same stage-1 checkpoints).
        stage2_lr=1e-2,
        steps=400,
        batch=1024,
        decay=2.0,
    ),
}


def model(backbone, table, resolutions, mode, top_k, gate_res, weights, aabb, occ_res, paper, background=1.0):
    """The model section."""
    b = table[backbone]
    return {
        "class_path": "boost_nerf.lightning_module.BoostNeRFModule",
        "init_args": {
            "backbone": backbone,
            "expert_resolutions": resolutions,
            "mode": mode,
            "top_k": top_k,
            "expert_kwargs": b["kwargs"],
            "gate_resolution": gate_res,
            "gate_hidden": 64,
            "expert_checkpoints": None,
            "gate_checkpoint": None,
            "aabb": aabb,
            "step_ratio": 0.5,
            "alpha_init": 0.01,
            "fast_color_thres": 1e-4,
            "occupancy_resolution": occ_res,
            "occupancy_threshold": 1e-3,
            "occupancy_every": 16 if paper else 25,
            "background": background,
            "balance_weight": 1e-3,
            "resolution_weights": weights,
            "lr_grid": b.get("stage2_lr", b["lr_grid"]) if mode != "single" else b["lr_grid"],
            "lr_mlp": b.get("stage2_lr", b["lr_mlp"]) if mode != "single" else b["lr_mlp"],
            "lr_gate_grid": 0.1,
            "lr_gate_mlp": 1e-3,
            "lr_decay_k": b["decay"],
            "render_chunk": 8192,
        },
    }


def trainer(steps, paper):
    """The trainer section."""
    return {
        "accelerator": "auto" if paper else "cpu",
        "devices": 1,
        "max_epochs": 1000,
        "max_steps": steps,
        "deterministic": not paper,
        "log_every_n_steps": 50 if paper else 25,
        "val_check_interval": None,
        "check_val_every_n_epoch": 1,
        "limit_val_batches": 4 if paper else 2,
        "num_sanity_val_steps": 0,
        "enable_model_summary": False,
    }


def data(source, data_dir, image_size, batch, paper, background=1.0):
    """The data section."""
    return {
        "class_path": "boost_nerf.data.SceneDataModule",
        "init_args": {
            "source": source,
            "data_dir": data_dir,
            "image_size": image_size,
            "llff_factor": LLFF_FACTOR,
            "batch_size": batch,
            "background": background,
            "max_test_views": None if paper else 8,
            "offline_views": 60,
            "offline_val_views": 4,
            "offline_test_views": 8,
            "offline_seed": 0,
            "offline_supersample": 2,
            "cache_dir": None,
            "shuffle_seed": 0,
            "num_workers": 4 if paper else 0,
        },
    }


def write(path: Path, header: str, cfg: dict) -> None:
    """Write one YAML with a header comment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {header}\n" + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None, width=118))


def main() -> None:
    """Rewrite every generated config."""
    for old in [*ROOT.glob("paper/*.yaml"), *ROOT.glob("cpu/[!c]*.yaml")]:
        old.unlink()
    for backbone, b in PAPER_BACKBONE.items():
        for source, data_dir, aabb, tag in (
            ("blender", "data/nerf_synthetic/lego", [-1.5, -1.5, -1.5, 1.5, 1.5, 1.5], "blender"),
            ("nsvf", "data/Synthetic_NSVF/Wineholder", [-1.5, -1.5, -1.5, 1.5, 1.5, 1.5], "nsvf"),
        ):
            runs = (
                [("top2", "topk", 2)]
                if source == "nsvf"
                else [("top1", "topk", 1), ("top2", "topk", 2), ("ensemble", "ensemble", 2)]
            )
            if source == "blender":
                for res in [PAPER_GATE, *PAPER_RES]:
                    cfg = {
                        "seed_everything": 0,
                        "trainer": trainer(b["steps"], True),
                        "model": model(
                            backbone, PAPER_BACKBONE, [res], "single", 1, PAPER_GATE, [1.0], aabb, 128, True
                        ),
                        "data": data(source, data_dir, 800, b["batch"], True),
                    }
                    write(
                        ROOT / "paper" / f"{tag}_{backbone}_expert{res}.yaml",
                        f"Stage 1: one {backbone} expert at {res}^3 on NeRF-Synthetic (paper scale; "
                        f"{res}^3 = {'gate initialisation' if res == PAPER_GATE else 'expert'}).",
                        cfg,
                    )
            for name, mode, k in runs:
                steps = 20000  # the paper's joint stage (30k on LLFF)
                cfg = {
                    "seed_everything": 0,
                    "trainer": trainer(steps, True),
                    "model": model(backbone, PAPER_BACKBONE, PAPER_RES, mode, k, PAPER_GATE, PAPER_W, aabb, 128, True),
                    "data": data(source, data_dir, 800, b["batch"], True),
                }
                write(
                    ROOT / "paper" / f"{tag}_{backbone}_{name}.yaml",
                    f"Stage 2 ({name}): mixture of {backbone} experts {PAPER_RES} with a {PAPER_GATE}^3 gate on "
                    f"{source}. reproduce fills expert_checkpoints/gate_checkpoint from stage 1.",
                    cfg,
                )
        # LLFF: NDC rays, so the box is the NDC cube, and real photos have no background colour (0 adds nothing).
        ndc_box = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
        llff_dir = "data/nerf_llff_data/fern"
        for res in [PAPER_GATE, *PAPER_RES]:
            cfg = {
                "seed_everything": 0,
                "trainer": trainer(b["steps"], True),
                "model": model(
                    backbone, PAPER_BACKBONE, [res], "single", 1, PAPER_GATE, [1.0], ndc_box, 128, True, 0.0
                ),
                "data": data("llff", llff_dir, None, LLFF_BATCH, True, 0.0),
            }
            write(
                ROOT / "paper" / f"llff_{backbone}_expert{res}.yaml",
                f"Stage 1: one {backbone} expert at {res}^3 on an LLFF scene (NDC, images_{LLFF_FACTOR}; paper scale).",
                cfg,
            )
        cfg = {
            "seed_everything": 0,
            "trainer": trainer(LLFF_STEPS, True),
            "model": model(
                backbone, PAPER_BACKBONE, PAPER_RES, "topk", 2, PAPER_GATE, PAPER_W, ndc_box, 128, True, 0.0
            ),
            "data": data("llff", llff_dir, None, LLFF_BATCH, True, 0.0),
        }
        write(
            ROOT / "paper" / f"llff_{backbone}_top2.yaml",
            f"Stage 2 (top2): mixture of {backbone} experts {PAPER_RES} with a {PAPER_GATE}^3 gate on LLFF "
            f"({LLFF_STEPS} steps). reproduce fills expert_checkpoints/gate_checkpoint from stage 1.",
            cfg,
        )
    for backbone, b in CPU_BACKBONE.items():
        aabb = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
        for res in [CPU_GATE, *CPU_RES]:
            cfg = {
                "seed_everything": 0,
                "trainer": trainer(b["steps"], False),
                "model": model(backbone, CPU_BACKBONE, [res], "single", 1, CPU_GATE, [1.0], aabb, 32, False),
                "data": data("offline", None, 40, b["batch"], False),
            }
            write(
                ROOT / "cpu" / f"{backbone}_expert{res}.yaml",
                f"Offline CPU-scale analogue, stage 1: one {backbone} expert at {res}^3 on the procedural scene.",
                cfg,
            )
        for name, mode, k in (("top1", "topk", 1), ("top2", "topk", 2), ("ensemble", "ensemble", 2)):
            cfg = {
                "seed_everything": 0,
                "trainer": trainer(300, False),
                "model": model(backbone, CPU_BACKBONE, CPU_RES, mode, k, CPU_GATE, CPU_W, aabb, 32, False),
                "data": data("offline", None, 40, b["batch"], False),
            }
            write(
                ROOT / "cpu" / f"{backbone}_{name}.yaml",
                f"Offline CPU-scale analogue, stage 2 ({name}): {backbone} experts {CPU_RES}, gate {CPU_GATE}^3.",
                cfg,
            )


if __name__ == "__main__":
    main()
