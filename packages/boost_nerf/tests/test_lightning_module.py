"""Stage-2 initialisation: experts and gate come from the stage-1 checkpoints."""

from __future__ import annotations

import torch
from boost_nerf.lightning_module import BoostNeRFModule

KW = {"feature_dim": 4, "mlp_width": 8}


def _stage1(tmp_path, res: int, seed: int) -> str:
    torch.manual_seed(seed)
    single = BoostNeRFModule(expert_resolutions=[res], mode="single", expert_kwargs=KW, occupancy_resolution=8)
    with torch.no_grad():
        for p in single.parameters():
            p.normal_()
    path = tmp_path / f"expert{res}.ckpt"
    torch.save({"state_dict": single.state_dict()}, path)
    return str(path)


def test_stage2_loads_experts_and_initialises_the_gate_from_the_low_resolution_model(tmp_path):
    ckpts = [_stage1(tmp_path, r, seed) for seed, r in enumerate((6, 8))]
    gate_ckpt = _stage1(tmp_path, 5, 7)
    moe = BoostNeRFModule(
        expert_resolutions=[6, 8],
        mode="topk",
        expert_kwargs=KW,
        gate_resolution=5,
        expert_checkpoints=ckpts,
        gate_checkpoint=gate_ckpt,
        occupancy_resolution=8,
        resolution_weights=[1.0, 1.5],
    )
    moe.setup("fit")
    for expert, path in zip(moe.model.experts, ckpts, strict=True):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert torch.equal(expert.feature_grid, state["model.experts.0.feature_grid"])
        assert torch.equal(expert.rgbnet[0].weight, state["model.experts.0.rgbnet.0.weight"])
    donor = torch.load(gate_ckpt, weights_only=True)["state_dict"]["model.experts.0.feature_grid"]
    assert torch.allclose(moe.model.gate.grid, donor, atol=1e-6)  # same size: an exact copy
    # the occupancy grid was recomputed from the loaded finest expert (random densities: some cells empty)
    assert 0 < moe.model.occupancy.float().mean() < 1
