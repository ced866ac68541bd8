"""Lightning wiring: one module for both stages (single-expert pretraining and the joint mixture-of-experts stage)."""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch.nn import functional as F

from boost_nerf.experts import make_expert
from boost_nerf.gate import NeRFGate
from boost_nerf.losses import PAPER_BALANCE_WEIGHT, PAPER_RESOLUTION_WEIGHTS, resolution_balancing_loss
from boost_nerf.metrics import psnr, ssim
from boost_nerf.moe import BoostNeRF


def _load_expert_state(path: str, index: int) -> dict[str, torch.Tensor]:
    """Weights of expert ``index`` from a checkpoint written by this module."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    prefix = f"model.experts.{index}."
    found = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not found:
        raise ValueError(f"checkpoint {path} holds no expert {index}")
    return found


class BoostNeRFModule(pl.LightningModule):
    """Train a single fast NeRF (``mode="single"``, stage 1) or the mixture of experts (stage 2).

    Args:
        backbone: Expert type: ``"dvgo"``, ``"tensorf"`` or ``"ngp"``.
        expert_resolutions: One resolution per expert (one entry in single mode), low to high.
        mode: ``"single"``, ``"topk"`` (the paper's Top-k) or ``"ensemble"`` (all experts, softmax weights).
        top_k: Experts per point in ``topk`` mode.
        renormalize_top1: With ``top_k=1``, blend the chosen expert with weight 1 instead of its gate probability
            (default False: the released code's raw top-1 probability, which scales colour and alpha by ``p``).
        expert_kwargs: Backbone-specific expert options (see :mod:`boost_nerf.experts`), the same for every expert.
        gate_resolution: Gate grid size (paper: 128).
        gate_hidden: Gate MLP width (paper: 64).
        expert_checkpoints: Stage-2 initialisation: one single-expert checkpoint per resolution (None: random).
        gate_checkpoint: Single-expert checkpoint at ``gate_resolution`` whose features initialise the gate grid.
        aabb: Scene box ``[x0, y0, z0, x1, y1, z1]``.
        step_ratio: Sampling step in voxels of the finest expert (DVGO: 0.5).
        alpha_init: Alpha of a zero density over one voxel (DVGO fine stage: 1e-2).
        fast_color_thres: Skip points whose alpha/weight under the finest expert is below this (paper: 1e-4).
        occupancy_resolution: Cells per side of the empty-space grid.
        occupancy_threshold: Alpha above which a cell counts as occupied.
        occupancy_every: Recompute the occupancy grid every this many training steps (0: never).
        background: Background colour (1 = white).
        balance_weight: ``a`` of the resolution-based routing loss (released code: 1e-3).
        resolution_weights: ``w_i`` per expert (released code, typo fixed: 1, 1.5, 2.23, 3.35, 5).
        lr_grid: Learning rate of the experts' grids/tables.
        lr_mlp: Learning rate of the experts' networks.
        lr_gate_grid: Learning rate of the gate grid (paper: 0.1).
        lr_gate_mlp: Learning rate of the gate MLP (paper: 1e-3).
        lr_decay_k: Decay: lr * 0.1^(step / (lr_decay_k * 1000)).
        render_chunk: Rays per chunk when rendering whole views.
    """

    def __init__(
        self,
        backbone: Literal["dvgo", "tensorf", "ngp"] = "dvgo",
        expert_resolutions: list[int] = (32,),
        mode: Literal["single", "topk", "ensemble"] = "single",
        top_k: int = 2,
        renormalize_top1: bool = False,
        expert_kwargs: dict[str, Any] | None = None,
        gate_resolution: int = 16,
        gate_hidden: int = 64,
        expert_checkpoints: list[str] | None = None,
        gate_checkpoint: str | None = None,
        aabb: list[float] = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0),
        step_ratio: float = 0.5,
        alpha_init: float = 1e-2,
        fast_color_thres: float = 1e-4,
        occupancy_resolution: int = 64,
        occupancy_threshold: float = 1e-3,
        occupancy_every: int = 100,
        background: float = 1.0,
        balance_weight: float = PAPER_BALANCE_WEIGHT,
        resolution_weights: list[float] | None = None,
        lr_grid: float = 0.1,
        lr_mlp: float = 1e-3,
        lr_gate_grid: float = 0.1,
        lr_gate_mlp: float = 1e-3,
        lr_decay_k: float = 20.0,
        render_chunk: int = 8192,
    ):
        super().__init__()
        self.save_hyperparameters()
        kwargs = dict(expert_kwargs or {})
        aabb = tuple(float(v) for v in aabb)
        experts = [make_expert(backbone, r, aabb, **kwargs) for r in expert_resolutions]
        gate = None
        if mode != "single":
            feature_dim = experts[0].feature_dim
            gate = NeRFGate(len(experts), gate_resolution, aabb, feature_dim, gate_hidden, experts[0].dir_freqs)
        self.model = BoostNeRF(
            experts,
            gate,
            mode,
            top_k,
            aabb,
            step_ratio,
            alpha_init,
            fast_color_thres,
            occupancy_resolution,
            occupancy_threshold,
            background,
            renormalize_top1=renormalize_top1,
        )
        weights = resolution_weights if resolution_weights is not None else PAPER_RESOLUTION_WEIGHTS
        if mode != "single" and len(weights) < len(experts):
            raise ValueError(f"resolution_weights needs {len(experts)} entries, got {len(weights)}")
        self.register_buffer("res_weights", torch.tensor(list(weights)[: len(experts)]), persistent=False)

    # ------------------------------------------------------------------------------------------ initialisation
    def setup(self, stage: str) -> None:
        # Stage-2 initialisation from the pretrained single experts. A resumed run loads its checkpoint on top.
        hp = self.hparams
        if stage != "fit" or self.global_step > 0:
            return
        if hp.expert_checkpoints:
            if len(hp.expert_checkpoints) != len(self.model.experts):
                raise ValueError(f"{len(self.model.experts)} experts but {len(hp.expert_checkpoints)} checkpoints")
            for expert, path in zip(self.model.experts, hp.expert_checkpoints, strict=True):
                expert.load_state_dict(_load_expert_state(path, 0))
        if hp.gate_checkpoint and self.model.gate is not None:
            donor = make_expert(hp.backbone, hp.gate_resolution, tuple(hp.aabb), **dict(hp.expert_kwargs or {}))
            donor.load_state_dict(_load_expert_state(hp.gate_checkpoint, 0))
            self.model.gate.init_from(donor)
        if hp.expert_checkpoints:
            self.model.update_occupancy()

    # --------------------------------------------------------------------------------------------------- train
    def _jitter(self, n: int) -> torch.Tensor:
        # Seeded by (step, rank), not the global RNG: a resumed run draws the same offsets.
        gen = torch.Generator().manual_seed(1_000_003 * self.global_step + self.global_rank)
        return torch.rand(n, generator=gen).to(self.device)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        if hp.occupancy_every and self.global_step > 0 and self.global_step % hp.occupancy_every == 0:
            self.model.update_occupancy()
        jitter = self._jitter(len(batch["origins"]))
        out = self.model.render_rays(batch["origins"], batch["dirs"], jitter, viewdirs=batch.get("viewdirs"))
        mse = F.mse_loss(out["rgb"], batch["rgb"])
        loss = mse
        if self.model.mode != "single" and len(out["probs"]) > 0:
            balance = resolution_balancing_loss(out["probs"], out["counts"], self.res_weights)
            loss = loss + hp.balance_weight * balance
            self.log("train/balance", balance)
            share = out["counts"].float() / out["counts"].sum().clamp_min(1)
            for i, s in enumerate(share):
                self.log(f"train/share_expert{i}", s)
        self.log("train/mse", mse)
        self.log("train/psnr", -10 * torch.log10(mse.detach().clamp_min(1e-10)), prog_bar=True)
        self.log("train/points_per_ray", out["points"].float() / len(batch["origins"]))
        return loss

    # ------------------------------------------------------------------------------------------------ evaluate
    def render_view(
        self, origins: torch.Tensor, dirs: torch.Tensor, viewdirs: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Render one view ``[H, W, 3]`` of rays (``viewdirs``: world view directions of NDC rays)."""
        return self.model.render_image(origins, dirs, self.hparams.render_chunk, viewdirs)

    @staticmethod
    def _viewdirs(batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return batch["viewdirs"][0] if "viewdirs" in batch else None

    def _evaluate(self, batch: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        out = self.render_view(batch["origins"][0], batch["dirs"][0], self._viewdirs(batch))
        target = batch["rgb"][0]
        metrics = {f"{prefix}/psnr": psnr(out["rgb"], target), f"{prefix}/ssim": ssim(out["rgb"], target)}
        self.log_dict(metrics, sync_dist=True, batch_size=1)
        return out

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.render_view(batch["origins"][0], batch["dirs"][0], self._viewdirs(batch))["rgb"]

    # ----------------------------------------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        hp = self.hparams
        groups = []
        for expert in self.model.experts:
            groups += [
                {"params": expert.grid_parameters(), "lr": hp.lr_grid},
                {"params": expert.mlp_parameters(), "lr": hp.lr_mlp},
            ]
        if self.model.gate is not None:
            gate = self.model.gate
            groups += [
                {"params": [gate.grid], "lr": hp.lr_gate_grid},
                {"params": list(gate.mlp.parameters()), "lr": hp.lr_gate_mlp},
            ]
        optimizer = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15 if hp.backbone == "ngp" else 1e-8)
        decay = hp.lr_decay_k * 1000
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.1 ** (step / decay))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
