"""Lightning wiring: the toy diffusion model, the toy classifiers, and the SAE (base or supervised)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pytorch_lightning as pl
import torch
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from saemnesia.classifiers import ToyClassifier
from saemnesia.erasure import feature_scores
from saemnesia.sae import TopKSAE
from saemnesia.supervised import concept_targets, greedy_assignment, pool_tokens, random_assignment, supervised_loss
from saemnesia.tiny_diffusion import TinyTextToImage, make_prompt, noise_schedulers
from saemnesia.toyworld import OBJECTS, STYLE_NAMES


class ClassifierModule(pl.LightningModule):
    """Object + style classification (cross-entropy on both heads).

    Args:
        n_objects: Object classes.
        n_styles: Style classes.
        width: Trunk width.
        lr: Peak Adam learning rate of the one-cycle schedule (warm-up, then cosine decay to ~0).
    """

    def __init__(self, n_objects: int = 6, n_styles: int = 4, width: int = 32, lr: float = 2e-3):
        super().__init__()
        self.save_hyperparameters()
        self.model = ToyClassifier(n_objects, n_styles, width)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(images)

    def _step(self, batch, stage: str):
        images, objects, styles = batch
        obj_logits, sty_logits = self(images)
        loss = F.cross_entropy(obj_logits, objects) + F.cross_entropy(sty_logits, styles)
        self.log(f"{stage}/loss", loss, sync_dist=True, prog_bar=stage == "train")
        if stage != "train":
            self.log(f"{stage}/object_acc", (obj_logits.argmax(1) == objects).float().mean(), sync_dist=True)
            self.log(f"{stage}/style_acc", (sty_logits.argmax(1) == styles).float().mean(), sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        # one cycle over the whole run: the short CPU schedules end at a low lr instead of bouncing around
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, self.hparams.lr, total_steps=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class TinyDiffusionModule(pl.LightningModule):
    """Epsilon-prediction training of :class:`TinyTextToImage` with condition dropout and an EMA copy.

    Args:
        sample_size: Image side.
        channels: UNet block widths.
        attention_levels: Resolution levels with cross-attention (see :func:`saemnesia.tiny_diffusion.build_unet`).
        dim: Text/cross-attention width.
        lr: AdamW learning rate.
        ema_decay: EMA decay of the weights used for sampling.
        cond_dropout: Probability of training on the empty prompt (enables classifier-free guidance).
        style_dropout: Probability of the unstyled prompt ``"An image of {obj}."``.
        lr_schedule: ``"constant"`` or ``"onecycle"`` (warm-up, then cosine decay to ~0 over the whole run: a
            short CPU schedule ends at a low lr instead of stopping mid-plateau).
        min_snr_gamma: Min-SNR loss weighting ``min(SNR(t), gamma) / SNR(t)`` of the epsilon loss (Hang et al.,
            2023); it down-weights the low-noise timesteps whose tiny denoising gradients otherwise dominate and
            slow convergence. 0 disables (plain MSE).
    """

    def __init__(
        self,
        sample_size: int = 16,
        channels: Sequence[int] = (32, 64),
        dim: int = 64,
        attention_levels: Sequence[int] = (0,),
        lr: float = 2e-3,
        ema_decay: float = 0.995,
        cond_dropout: float = 0.1,
        style_dropout: float = 0.1,
        lr_schedule: Literal["constant", "onecycle"] = "constant",
        min_snr_gamma: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model = TinyTextToImage(sample_size, channels, dim, attention_levels)
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        self.ema.requires_grad_(False)
        self.train_sched, _ = noise_schedulers()
        # token ids of every prompt: [n_obj, n_style + 1 (unstyled), L], and the empty prompt
        tok = self.model.tokenizer
        table = [tok([make_prompt(o, s) for s in (*STYLE_NAMES, None)]) for o in OBJECTS]
        self.register_buffer("prompt_ids", torch.stack(table), persistent=False)
        self.register_buffer("null_ids", tok([""])[0], persistent=False)

    def prompt_batch(self, objects: torch.Tensor, styles: torch.Tensor, drop: bool) -> torch.Tensor:
        """Token ids ``[B, L]``; with ``drop``, random unstyled and empty prompts (global RNG: restored on resume)."""
        styles = styles.clone()
        if drop:
            styles[torch.rand(styles.shape, device=styles.device) < self.hparams.style_dropout] = len(STYLE_NAMES)
        ids = self.prompt_ids[objects, styles]
        if drop:
            empty = torch.rand(objects.shape, device=objects.device) < self.hparams.cond_dropout
            ids = torch.where(empty[:, None], self.null_ids, ids)
        return ids

    def _loss(self, batch, generator: torch.Generator | None = None, drop: bool = True) -> torch.Tensor:
        images, objects, styles = batch
        x0 = images * 2 - 1
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        t = torch.randint(0, self.train_sched.config.num_train_timesteps, (x0.shape[0],), generator=generator)
        x_t = self.train_sched.add_noise(x0, noise, t.to(x0.device))
        err = (self.model(x_t, t.to(x0.device), self.prompt_batch(objects, styles, drop)) - noise).pow(2)
        return (err.mean((1, 2, 3)) * self.loss_weights(t).to(err)).mean()

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample weights ``[B]`` of the epsilon loss at timesteps ``t`` ``[B]`` (all 1 without min-SNR)."""
        gamma = self.hparams.min_snr_gamma
        if gamma <= 0:
            return torch.ones(t.shape)
        abar = self.train_sched.alphas_cumprod[t.cpu()].double()
        snr = abar / (1 - abar)
        return torch.where(snr > gamma, gamma / snr, torch.ones_like(snr)).float()  # min(snr, gamma) / snr, 0-safe

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.ema.update_parameters(self.model)

    def _eval(self, batch, batch_idx: int, stage: str) -> None:
        gen = torch.Generator().manual_seed(10_000 + batch_idx)  # same noise every evaluation: comparable losses
        self.log(f"{stage}/loss", self._loss(batch, gen, drop=False), sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self._eval(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        self._eval(batch, batch_idx, "test")

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.hparams.lr, weight_decay=0.0)
        if self.hparams.lr_schedule == "constant":
            return opt
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, self.hparams.lr, total_steps=total, pct_start=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class SAEModule(pl.LightningModule):
    """TopK SAE on cached block activations: the base SAE (``mode="base"``) or SAEmnesia's supervised fine-tuning.

    Args:
        d_in: Activation width.
        expansion: Latents per input dimension.
        k: Active latents per token.
        aux_k: Dead latents in the AuxK loss (default ``2 * k``).
        aux_coef: AuxK weight (1/32).
        dead_after: Tokens without firing before a latent counts as dead.
        lr: Adam learning rate (linearly decayed to 0 over training).
        mode: ``"base"`` (MSE + AuxK, batch-TopK) or ``"supervised"`` (SAEmnesia's loss).
        init_from: Checkpoint of a base SAE to fine-tune (supervised mode).
        n_objects: Object concepts.
        n_styles: Style concepts.
        assignment: ``"greedy"`` (by feature score, objects first) or ``"random"``.
        loss_weights: ``(mse, concept, l1, decorrelation)``.
        grad_clip: Max gradient norm (the paper's supervised stage clips at 1.0; 0 disables).
        concept_pooling: ``"relu"`` (the paper) or ``"pre"``; see :func:`saemnesia.supervised.supervised_loss`.
        min_activity: Activity filter of the assignment scores (0: the paper's rule); see
            :func:`saemnesia.erasure.feature_scores`.
        init_b_dec: Start the base SAE's ``b_dec`` at the mean training token instead of 0 (the tokens of this
            block have a mean as large as their spread; from 0 the decoder spends its first epochs learning it).
    """

    def __init__(
        self,
        d_in: int = 64,
        expansion: int = 16,
        k: int = 8,
        aux_k: int | None = None,
        aux_coef: float = 1 / 32,
        dead_after: int = 20_000,
        lr: float = 4e-4,
        mode: Literal["base", "supervised"] = "base",
        init_from: str | None = None,
        n_objects: int = 6,
        n_styles: int = 4,
        assignment: Literal["greedy", "random"] = "greedy",
        loss_weights: tuple[float, float, float, float] = (1.0, 3.0, 0.01, 0.1),
        grad_clip: float = 0.0,
        concept_pooling: Literal["relu", "pre"] = "relu",
        min_activity: float = 0.0,
        init_b_dec: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.sae = TopKSAE(d_in, expansion * d_in, k, aux_k, dead_after)
        if init_from:
            state = torch.load(init_from, map_location="cpu", weights_only=True)["state_dict"]
            self.sae.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("sae.")})
        self.register_buffer("object_latents", torch.full((n_objects,), -1, dtype=torch.long))
        self.register_buffer("style_latents", torch.full((n_styles,), -1, dtype=torch.long))

    # -------------------------------------------------------------------------------------- concept assignment
    @torch.no_grad()
    def concept_means(self, loader) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean activation of every latent on each object's and each style's tokens: ``[n_obj, n]``, ``[n_sty, n]``."""
        h = self.hparams
        n = self.sae.n_latents
        obj_sum, sty_sum = torch.zeros(h.n_objects, n), torch.zeros(h.n_styles, n)
        obj_cnt, sty_cnt = torch.zeros(h.n_objects, 1), torch.zeros(h.n_styles, 1)
        for acts, labels in loader:
            z = pool_tokens(self.sae.encode(acts.flatten(0, 1).to(self.device)), acts.shape[1]).cpu()
            obj_sum.index_add_(0, labels[:, 0], z)
            obj_cnt.index_add_(0, labels[:, 0], torch.ones(len(z), 1))
            styled = labels[:, 1] >= 0
            sty_sum.index_add_(0, labels[styled, 1], z[styled])
            sty_cnt.index_add_(0, labels[styled, 1], torch.ones(int(styled.sum()), 1))
        return obj_sum / obj_cnt.clamp_min(1), sty_sum / sty_cnt.clamp_min(1)

    @torch.no_grad()
    def mean_token(self, loader, max_batches: int = 32) -> torch.Tensor:
        """Mean token ``[d_in]`` over the first ``max_batches`` batches of ``loader``."""
        total, count = torch.zeros(self.sae.d_in, dtype=torch.float64), 0
        for i, (acts, _) in enumerate(loader):
            if i >= max_batches:
                break
            x = acts.flatten(0, 1).double()
            total += x.sum(0)
            count += x.shape[0]
        return (total / max(count, 1)).float()

    def on_fit_start(self) -> None:
        h = self.hparams
        fresh = self.trainer.ckpt_path is None and not h.init_from
        if h.mode == "base" and h.init_b_dec and fresh:
            self.sae.b_dec.data.copy_(self.mean_token(self.trainer.datamodule.train_dataloader()).to(self.device))
        if h.mode != "supervised" or bool((self.object_latents >= 0).all()):
            return  # base SAE, or assignment restored from a checkpoint
        if h.assignment == "random":
            latents = random_assignment(h.n_objects + h.n_styles, self.sae.n_latents, seed=0)
        else:
            obj_means, sty_means = self.concept_means(self.trainer.datamodule.train_dataloader())
            scores = torch.cat([feature_scores(obj_means, h.min_activity), feature_scores(sty_means, h.min_activity)])
            latents = greedy_assignment(scores)  # objects come first in the score matrix, so they choose first
        self.object_latents.copy_(latents[: h.n_objects])
        self.style_latents.copy_(latents[h.n_objects :])

    # ------------------------------------------------------------------------------------------------ training
    def _losses(self, batch, train: bool) -> dict[str, torch.Tensor]:
        acts, labels = batch
        x = acts.flatten(0, 1)
        h = self.hparams
        if h.mode == "base":
            x_hat, z, pre = self.sae(x, batch_topk=train)
            if train:
                self.sae.update_dead(z)
            parts = {"mse": F.mse_loss(x_hat, x), "auxk": self.sae.auxk_loss(x, x_hat, pre)}
            parts["loss"] = parts["mse"] + h.aux_coef * parts["auxk"]
        else:
            x_hat, z, pre = self.sae(x, batch_topk=False)
            targets, mask = concept_targets(
                labels[:, 0], labels[:, 1], self.object_latents, self.style_latents, self.sae.n_latents
            )
            parts = supervised_loss(
                x,
                x_hat,
                pre,
                acts.shape[1],
                targets,
                mask,
                self.object_latents,
                self.style_latents,
                tuple(h.loss_weights),
                h.concept_pooling,
            )
            pooled = pool_tokens(pre.relu() if h.concept_pooling == "relu" else pre, acts.shape[1])
            parts["concept_acc"] = (pooled[:, self.object_latents].argmax(1) == labels[:, 0]).float().mean()
        parts["fvu"] = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
        parts["l0"] = (z > 0).float().sum(-1).mean()
        return parts

    def training_step(self, batch, batch_idx):
        parts = self._losses(batch, train=True)
        self.log_dict({f"train/{k}": v for k, v in parts.items()}, prog_bar=False)
        self.log("train/dead_frac", self.sae.dead_mask.float().mean())
        return parts["loss"]

    def on_before_optimizer_step(self, optimizer) -> None:
        self.sae.remove_parallel_grad()
        if self.hparams.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters(), self.hparams.grad_clip)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.sae.normalize_decoder()

    def validation_step(self, batch, batch_idx):
        parts = self._losses(batch, train=False)
        self.log_dict({f"val/{k}": v for k, v in parts.items()}, sync_dist=True)

    def test_step(self, batch, batch_idx):
        parts = self._losses(batch, train=False)
        self.log_dict({f"test/{k}": v for k, v in parts.items()}, sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.sae.parameters(), lr=self.hparams.lr)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1 - step / total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
