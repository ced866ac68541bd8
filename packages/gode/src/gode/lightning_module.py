"""Lightning wiring of GoDe: 3DGS-MCMC training, level assignment, LoD fine-tuning with QAT, per-level evaluation.

One ``fit`` runs the paper's pipeline: steps ``[0, lod_start)`` train the 3DGS-MCMC backbone (or, with
``densification: default``, 3DGS with its clone/split/prune density control, :mod:`gode.densify`); at ``lod_start`` the
levels are assigned by iterative gradient-importance masking; the remaining steps fine-tune all levels at once (one
sampled level per step, quantisation-aware, no relocation). ``num_levels=1, max_fraction=1`` is the same recipe
for a single non-scalable model (the paper's baseline), and ``num_levels=0`` is plain 3DGS-MCMC.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import pytorch_lightning as pl
import torch

from gode import densify, mcmc
from gode.gaussians import Gaussians, activate
from gode.levels import (
    assign_levels,
    fade_opacities,
    gradient_importance,
    level_mask,
    level_sizes,
    sample_level,
)
from gode.metrics import photometric_loss, psnr, ssim
from gode.quant import quantize_params
from gode.rasterizer import Render, rasterize


def _decay(step: int, total: int, final_ratio: float) -> float:
    return mcmc.means_lr(step, 1.0, final_ratio, total)


def _constant(step: int) -> float:
    return 1.0


class MeansSchedule:
    """Centres' learning-rate factor per step: exponential decay, restarted once for the LoD fine-tuning.

    A callable object rather than a closure: ``LambdaLR`` checkpoints the ``__dict__`` of such objects, so a run
    resumed after the restart keeps it.

    Args:
        total: Steps of the first decay (``schedule_steps``).
        final_ratio: Final / initial learning rate of each decay.
    """

    def __init__(self, total: int, final_ratio: float):
        self.total = total
        self.final_ratio = final_ratio
        self.restart_step: int | None = None
        self.restart_total = 1

    def restart(self, step: int, total: int) -> None:
        """Decay again from the initial rate, from ``step`` over ``total`` steps."""
        self.restart_step, self.restart_total = int(step), max(int(total), 1)

    def __call__(self, step: int) -> float:
        if self.restart_step is not None and step >= self.restart_step:
            return _decay(step - self.restart_step, self.restart_total, self.final_ratio)
        return _decay(step, self.total, self.final_ratio)


class GoDeModule(pl.LightningModule):
    """A 3DGS-MCMC (or default-densification 3DGS) scene with GoDe's progressive levels of detail.

    Args:
        num_gaussians: Gaussian budget (3DGS-MCMC's ``cap_max``; fixed for the whole run), or the initial count
            under ``densification: default`` (which grows and prunes it).
        sh_degree: Maximum SH degree.
        sh_degree_interval: Steps between SH degree increases (3DGS: 1000).
        init_extent: Half-width of the cube filled by the random initialisation (used without a point cloud).
        init_opacity: Initial opacity.
        init_scale: Initial scale relative to the mean spacing of the initial points.
        schedule_steps: Steps over which the centres' learning rate decays (usually ``trainer.max_steps``).
        scene_scale: Scene size; multiplies the centres' learning rate (None: the datamodule's camera extent).
        lr_means: Initial learning rate of the centres (times ``scene_scale``).
        lr_means_final_ratio: Final / initial centres learning rate.
        lr_quats: Rotation learning rate.
        lr_scales: Log-scale learning rate.
        lr_opacities: Opacity-logit learning rate.
        lr_sh0: DC colour learning rate.
        lr_shN: Higher-order SH learning rate.
        ssim_lambda: Weight of ``1 - SSIM`` in the photometric loss.
        refine_start: First step of MCMC relocation / default densification (3DGS's ``densify_from_iter``).
        refine_stop: Last step of MCMC relocation / default densification, exclusive (``densify_until_iter``).
        refine_every: Steps between relocations / densifications (``densification_interval``).
        min_opacity: Opacity under which a Gaussian is dead: relocated (MCMC) or pruned (default).
        noise_lr: Scale of the MCMC position noise (times the current centres learning rate; MCMC only).
        opacity_reg: L1 weight on opacities (MCMC only).
        scale_reg: L1 weight on scales (MCMC only).
        num_levels: Levels of detail ``L`` (0: no levels, the plain backbone).
        lod_start: Step at which levels are assigned and LoD fine-tuning starts.
        min_level_size: ``|G_0|``.
        max_fraction: ``|G_{L-1}| / num_gaussians`` (the rest is pruned; 0.75, 0.5 for Deep Blending).
        level_weighting: Level sampling during fine-tuning: ``uniform`` or ``linear`` (toward high LoDs).
        level_criterion: Ranking that builds the nested levels: ``gradient`` (GoDe's iterative gradient-importance
            masking), or the naive baselines ``opacity`` (most opaque first) and ``random`` (a fixed random order).
            The baselines go through the same nesting and the same LoD fine-tuning, so a ladder built with them
            costs exactly what GoDe's does and differs only in which Gaussians each level keeps.
        qat: Quantisation-aware fine-tuning (int8 SH, fp16 geometry) and quantised evaluation.
        sh_rest_l1: Weight of ``mean |SH_rest|`` over the sampled level's Gaussians during fine-tuning.
        lod_restart: Start the LoD fine-tuning with fresh Adam moments and the centres' learning rate decaying
            again from its initial value over ``schedule_steps``, as GoDe's reference code does (its fine-tuning
            is a new training run on the pre-trained model). False: continue the backbone's optimiser state and
            decayed rate.
        importance_views: Training views used for the importance scores (None: all).
        bg_color: Background colour (RGB) behind the Gaussians.
        tile_size: Tile edge of the CPU rasterizer.
        densification: ``mcmc`` (3DGS-MCMC: fixed count, relocation, noise, L1 regularisers; the paper's
            backbone) or ``default`` (3DGS's adaptive density control: clone / split / prune / opacity reset).
            Default densification is single-process: it resizes the parameters, which DDP cannot follow.
        densify_grad_threshold: Default densification: mean NDC view-space gradient norm that triggers growth.
        densify_dense_fraction: Default densification: clone if the largest scale is at most this times
            ``scene_scale``, split otherwise (3DGS's ``percent_dense``).
        prune_scale: Default densification: largest scale, times ``scene_scale``, above which a Gaussian is
            pruned after the first opacity reset.
        opacity_reset_every: Default densification: steps between opacity resets (0: never).
    """

    def __init__(
        self,
        num_gaussians: int = 2000,
        sh_degree: int = 3,
        sh_degree_interval: int = 1000,
        init_extent: float = 1.0,
        init_opacity: float = 0.5,
        init_scale: float = 0.5,
        schedule_steps: int = 30000,
        scene_scale: float | None = None,
        lr_means: float = 1.6e-4,
        lr_means_final_ratio: float = 0.01,
        lr_quats: float = 1e-3,
        lr_scales: float = 5e-3,
        lr_opacities: float = 5e-2,
        lr_sh0: float = 2.5e-3,
        lr_shN: float = 1.25e-4,
        ssim_lambda: float = 0.2,
        refine_start: int = 500,
        refine_stop: int = 25000,
        refine_every: int = 100,
        min_opacity: float = 0.005,
        noise_lr: float = 5e5,
        opacity_reg: float = 0.01,
        scale_reg: float = 0.01,
        num_levels: int = 0,
        lod_start: int = 30000,
        min_level_size: int = 100000,
        max_fraction: float = 0.75,
        level_weighting: Literal["uniform", "linear"] = "uniform",
        level_criterion: Literal["gradient", "opacity", "random"] = "gradient",
        qat: bool = True,
        sh_rest_l1: float = 0.05,
        lod_restart: bool = True,
        importance_views: int | None = None,
        bg_color: tuple[float, float, float] = (1.0, 1.0, 1.0),
        tile_size: int = 16,
        densification: Literal["mcmc", "default"] = "mcmc",
        densify_grad_threshold: float = 0.0002,
        densify_dense_fraction: float = 0.01,
        prune_scale: float = 0.1,
        opacity_reset_every: int = 3000,
    ):
        super().__init__()
        self.save_hyperparameters()
        # Drawn from the global RNG after seed_everything; saved in checkpoints, so a resumed run keeps it.
        self.register_buffer("base_seed", torch.randint(0, 2**31 - 1, ()))
        self.gaussians = Gaussians(
            num_gaussians, sh_degree, init_extent, init_opacity, init_scale, seed=int(self.base_seed)
        )
        self.register_buffer("level_of", torch.zeros(num_gaussians, dtype=torch.long))
        self.register_buffer("levels_assigned", torch.tensor(False))
        self.register_buffer("bg_color", torch.tensor(bg_color, dtype=torch.float))
        self.densifier: densify.DefaultDensification | None = None
        if densification == "default":
            self.densifier = densify.DefaultDensification(
                start=refine_start,
                stop=refine_stop,
                every=refine_every,
                grad_threshold=densify_grad_threshold,
                dense_fraction=densify_dense_fraction,
                prune_opacity=min_opacity,
                prune_scale=prune_scale,
                reset_every=opacity_reset_every,
            )
            # Its statistics are buffers: a resumed run continues them exactly.
            self.register_buffer("grad2d", torch.zeros(num_gaussians))
            self.register_buffer("vis_count", torch.zeros(num_gaussians))
        elif densification != "mcmc":
            raise ValueError(f"densification must be 'mcmc' or 'default', got {densification!r}")
        if level_criterion not in ("gradient", "opacity", "random"):
            raise ValueError(f"level_criterion must be 'gradient', 'opacity' or 'random', got {level_criterion!r}")
        self._view_grad: tuple[torch.Tensor, torch.Tensor, int, int] | None = None

    def setup(self, stage: str) -> None:
        scale = self.hparams.scene_scale
        if scale is None:
            datamodule = getattr(self.trainer, "datamodule", None)
            scale = datamodule.scene_extent() if datamodule is not None else 1.0
        self.scene_scale = float(scale)
        if self.densifier is not None and stage == "fit" and self.trainer.world_size > 1:
            raise ValueError(
                "densification: default resizes the Gaussians, which DDP cannot follow: train it on one device "
                "(or use densification: mcmc, whose count is fixed)"
            )

    # ------------------------------------------------------------------------------------------------- rendering
    @property
    def lod_active(self) -> bool:
        """Whether levels have been assigned (LoD fine-tuning / leveled evaluation)."""
        return bool(self.levels_assigned)

    @property
    def num_levels(self) -> int:
        """Number of renderable levels (1 for a model without levels)."""
        return max(self.hparams.num_levels, 1) if self.lod_active else 1

    def splats(self, level: int | None = None, quantize: bool = False, fade: float = 1.0) -> dict[str, torch.Tensor]:
        """Render-ready parameters of level ``level`` (None: every stored Gaussian), optionally quantised.

        ``fade`` in [0, 1] scales the opacity of the level's newest Gaussians (its enhancement set), so that a viewer
        stepping up a level can blend them in instead of popping (GoDe's fade-in).
        """
        raw = self.gaussians.raw()
        stored = self.level_of >= 0
        if quantize:
            raw, _ = quantize_params(raw, mask=stored)
        params = activate(raw)
        if fade != 1.0 and level is not None:
            params["opacities"] = fade_opacities(params["opacities"], self.level_of, level, fade)
        keep = stored if level is None else level_mask(self.level_of, level)
        if bool(keep.all()):
            return params
        idx = keep.nonzero().flatten()
        return {k: v[idx] for k, v in params.items()}

    def render_params(self, params: dict[str, torch.Tensor], batch: dict[str, Any], sh_degree: int | None = None):
        """Render ``params`` into the camera of ``batch`` (one view)."""
        image = batch["image"]
        height, width = image.shape[-3], image.shape[-2]
        return rasterize(
            **params,
            viewmat=batch["viewmat"].reshape(4, 4),
            K=batch["K"].reshape(3, 3),
            width=width,
            height=height,
            sh_degree=self.hparams.sh_degree if sh_degree is None else sh_degree,
            background=self.bg_color,
            tile_size=self.hparams.tile_size,
        )

    def render(
        self, batch: dict[str, Any], level: int | None = None, quantize: bool | None = None, fade: float = 1.0
    ) -> Render:
        """Render level ``level`` of the model into the view of ``batch``; quantised once QAT is on (default).

        ``fade`` < 1 renders the level with its enhancement set fading in (see :meth:`splats`).
        """
        if quantize is None:
            quantize = self.lod_active and self.hparams.qat
        return self.render_params(self.splats(level, quantize, fade), batch)

    def _sh_degree_now(self) -> int:
        return min(self.hparams.sh_degree, self.global_step // max(self.hparams.sh_degree_interval, 1))

    # -------------------------------------------------------------------------------------------------- training
    def _generator(self, salt: int) -> torch.Generator:
        # Per-step generators: the random choices of step s are the same in a resumed and an uninterrupted run.
        return torch.Generator().manual_seed(int(self.base_seed) * 1_000_003 + self.global_step * 7 + salt)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        target = batch["image"][0]
        if self.lod_active:
            level = sample_level(self.num_levels, self.hparams.level_weighting, self._generator(1))
            params = self.splats(level, quantize=self.hparams.qat)
            out = self.render_params(params, batch, sh_degree=self._sh_degree_now())
            loss = photometric_loss(out.rgb, target, self.hparams.ssim_lambda)
            # Only the rendered level's Gaussians: the others get no photometric gradient this step, and an L1 pull
            # on them alone would shrink the SH of rarely sampled enhancement sets toward zero between their steps.
            in_level = level_mask(self.level_of, level).nonzero().flatten()
            loss = loss + self.hparams.sh_rest_l1 * self.gaussians.shN[in_level].abs().mean()
            self.log("train/level", float(level))
        else:
            out = self.render_params(self.gaussians.activated(), batch, sh_degree=self._sh_degree_now())
            loss = photometric_loss(out.rgb, target, self.hparams.ssim_lambda)
            if self.densifier is None:
                regs = mcmc.regularisers(self.gaussians.raw(), self.hparams.opacity_reg, self.hparams.scale_reg)
                loss = loss + regs
            elif self.densifier.collecting(self.global_step):
                # The projected centres are an intermediate tensor: keep their gradient for the statistics.
                out.means2d.retain_grad()
                self._view_grad = (out.means2d, out.radii, target.shape[-2], target.shape[-3])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_fit_start(self) -> None:
        # A COLMAP scene starts from its sparse points (a fresh run only: a resumed one has its own state).
        points = getattr(self.trainer.datamodule, "points", None)
        if self.global_step == 0 and points is not None and not self.lod_active:
            colors = getattr(self.trainer.datamodule, "colors", None)
            self.gaussians.init_from_points(points, colors, seed=int(self.base_seed))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        hp = self.hparams
        if hp.num_levels > 0 and not self.lod_active and self.global_step >= hp.lod_start:
            self.assign_levels()
            if hp.lod_restart:
                self._restart_for_lod()

    def _restart_for_lod(self) -> None:
        """Fresh Adam moments and a restarted centres' schedule for the LoD fine-tuning (``lod_restart``)."""
        optimizer = self._torch_optimizer()
        optimizer.state.clear()  # Adam re-initialises moments and step counts on its next step
        scheduler = self.lr_schedulers()
        schedule = scheduler.lr_lambdas[0]
        # Over schedule_steps again (the reference re-uses its optimisation settings), not "the rest of this run":
        # a run stopped early and resumed must follow the same schedule as an uninterrupted one.
        schedule.restart(self.global_step, self.hparams.schedule_steps)
        # The rates of this step were set by the previous scheduler step: apply the restarted schedule now.
        for group, base_lr, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base_lr * factor(scheduler.last_epoch)

    def on_after_backward(self) -> None:
        if self._view_grad is not None:
            means2d, radii, width, height = self._view_grad
            self._view_grad = None
            self.densifier.update({"grad2d": self.grad2d, "count": self.vis_count}, means2d, radii, width, height)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        hp = self.hparams
        if self.lod_active:
            return  # no relocation or noise while fine-tuning the levels
        step = self.global_step
        if self.densifier is not None:
            self._densify(step)
            return
        params = {k: v.data for k, v in self.gaussians.raw().items()}
        if hp.refine_start <= step < hp.refine_stop and step % hp.refine_every == 0:
            changed = mcmc.relocate_dead(params, hp.min_opacity, self._generator(2))
            self._reset_optimizer_state(changed)
        lr = hp.lr_means * self.scene_scale * _decay(step, hp.schedule_steps, hp.lr_means_final_ratio)
        mcmc.add_position_noise(params, hp.noise_lr * lr, self._generator(3))

    def _torch_optimizer(self) -> torch.optim.Optimizer:
        optimizer = self.optimizers()
        return getattr(optimizer, "optimizer", optimizer)

    def _densify(self, step: int) -> None:
        stats = {"grad2d": self.grad2d, "count": self.vis_count}
        params = self.gaussians.raw()
        done = self.densifier.refine(params, self._torch_optimizer(), stats, step, self.scene_scale, self._generator(4))
        if done["densified"]:
            self._resize_per_gaussian(len(self.gaussians))
            self.log("train/num_gaussians", float(len(self.gaussians)))

    def _resize_per_gaussian(self, num: int) -> None:
        """Fresh (zero) per-Gaussian buffers for ``num`` Gaussians: statistics restart after each densification."""
        self.level_of = torch.zeros(num, dtype=torch.long, device=self.level_of.device)
        if self.densifier is not None:
            self.grad2d = torch.zeros(num, device=self.grad2d.device)
            self.vis_count = torch.zeros(num, device=self.vis_count.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A checkpoint's num_gaussians is the count it stores (the initial one may differ under the default
        # densification): LightningCLI and load_from_checkpoint rebuild the module from these hyperparameters, so
        # the model they build has the checkpoint's shapes.
        hparams = checkpoint.get("hyper_parameters")
        if hparams is not None:
            hparams["num_gaussians"] = len(self.gaussians)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Default densification changes the count: take the checkpoint's shapes before its weights are loaded.
        state = checkpoint.get("state_dict", {})
        means = state.get("gaussians.means")
        if means is None or means.shape[0] == len(self.gaussians):
            return
        for name, param in self.gaussians.raw().items():
            param.data = param.data.new_zeros(state[f"gaussians.{name}"].shape)
        self._resize_per_gaussian(means.shape[0])

    def _reset_optimizer_state(self, idx: torch.Tensor) -> None:
        if len(idx) == 0:
            return
        optimizer = self.optimizers()
        optimizer = getattr(optimizer, "optimizer", optimizer)
        for group in optimizer.param_groups:
            for p in group["params"]:
                state = optimizer.state.get(p, {})
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        state[key][idx] = 0

    # ------------------------------------------------------------------------------------------ level assignment
    def importance_scores(self, active: torch.Tensor, views: list[dict[str, Any]]) -> torch.Tensor:
        """GoDe's importance ``[N]``: per-Gaussian gradient norms of the photometric loss, accumulated over views.

        Only ``active`` Gaussians are rendered, so masked ones get zero gradient. Works on detached copies of the
        parameters (never the DDP-wrapped ones), so it can run inside a distributed fit on every rank alike.
        """
        raw = {k: v.detach().clone().requires_grad_(True) for k, v in self.gaussians.raw().items()}
        idx = active.to(self.device).nonzero().flatten()
        acc = {k: torch.zeros_like(v) for k, v in raw.items()}
        for view in views:
            params = {k: v[idx] for k, v in activate(raw).items()}
            out = self.render_params(params, view)
            loss = photometric_loss(out.rgb, view["image"].reshape(out.rgb.shape), 0.2)
            for k, g in zip(raw, torch.autograd.grad(loss, list(raw.values()), allow_unused=True)):
                if g is not None:
                    acc[k] += g
        return gradient_importance(acc)

    @torch.no_grad()
    def _views_for_importance(self) -> list[dict[str, Any]]:
        dataset = self.trainer.datamodule.train_set
        n = len(dataset) if self.hparams.importance_views is None else min(self.hparams.importance_views, len(dataset))
        return [{k: v.to(self.device) for k, v in dataset[i].items()} for i in range(n)]

    def assign_levels(self) -> None:
        """Assign every Gaussian its first level (``level_criterion``) and switch to LoD fine-tuning."""
        hp = self.hparams
        sizes = level_sizes(len(self.gaussians), hp.num_levels, hp.min_level_size, hp.max_fraction)
        num = len(self.gaussians)
        if hp.level_criterion == "opacity":
            # Static scores: the same nesting as GoDe's masking, but each level keeps its most opaque Gaussians.
            opacities = torch.sigmoid(self.gaussians.opacity_logits.detach()).cpu()
            level_of = assign_levels(lambda active: opacities, num, sizes)
        elif hp.level_criterion == "random":
            order = torch.rand(num, generator=self._generator(5))
            level_of = assign_levels(lambda active: order, num, sizes)
        else:
            views = self._views_for_importance()
            with torch.enable_grad():
                level_of = assign_levels(functools.partial(self.importance_scores, views=views), num, sizes)
        self.level_of.copy_(level_of.to(self.level_of.device))
        self.levels_assigned.fill_(True)

    # ------------------------------------------------------------------------------------------------ evaluation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.render(batch)
        self.log("val/psnr", psnr(out.rgb, batch["image"][0]), prog_bar=True, sync_dist=True, batch_size=1)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        target = batch["image"][0]
        for level in range(self.num_levels):
            out = self.render(batch, level if self.lod_active else None)
            suffix = f"_L{level}" if self.lod_active else ""
            self.log(f"test/psnr{suffix}", psnr(out.rgb, target), sync_dist=True, batch_size=1)
            self.log(f"test/ssim{suffix}", ssim(out.rgb, target), sync_dist=True, batch_size=1)

    def level_counts(self) -> list[int]:
        """``|G_l|`` per level (all stored Gaussians for a model without levels)."""
        if not self.lod_active:
            return [len(self.gaussians)]
        return [int(level_mask(self.level_of, lvl).sum()) for lvl in range(self.num_levels)]

    # ------------------------------------------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        hp = self.hparams
        g = self.gaussians
        groups = [
            {"params": [g.means], "lr": hp.lr_means * self.scene_scale, "name": "means"},
            {"params": [g.quats], "lr": hp.lr_quats, "name": "quats"},
            {"params": [g.log_scales], "lr": hp.lr_scales, "name": "log_scales"},
            {"params": [g.opacity_logits], "lr": hp.lr_opacities, "name": "opacity_logits"},
            {"params": [g.sh0], "lr": hp.lr_sh0, "name": "sh0"},
            {"params": [g.shN], "lr": hp.lr_shN, "name": "shN"},
        ]
        optimizer = torch.optim.Adam(groups, eps=1e-15)
        means_decay = MeansSchedule(hp.schedule_steps, hp.lr_means_final_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [means_decay] + [_constant] * 5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
