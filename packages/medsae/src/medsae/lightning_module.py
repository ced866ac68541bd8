"""Lightning wiring: the SAE trainer (variant chosen in YAML) and the offline image encoder's trainer."""

from __future__ import annotations

from typing import Literal

import pytorch_lightning as pl
import torch
from torch.nn import functional as F

from medsae.encoder import SmallCXREncoder
from medsae.metrics import L0, DeadLatents, FractionVarianceUnexplained, LabelCorrelation, Monosemanticity
from medsae.sae import BatchTopKSAE, TopKSAE, geometric_median, make_sae, resample_dead


class SAEModule(pl.LightningModule):
    """Trains one sparse autoencoder on embedding batches ``{"x": [B, d], "y": [B, C]}``.

    Args:
        variant: ``standard``, ``april``, ``topk``, ``batchtopk`` or ``matryoshka``.
        d_in: Embedding width ``d``.
        d_sae: Number of latents ``m`` (the paper's final SAE: 16 x 512 = 8192).
        k: Active latents per sample (TopK family).
        l1_coeff: L1 weight (``standard``/``april``).
        auxk_alpha: AuxK loss weight (TopK family).
        group_fractions: Matryoshka nested-group fractions of ``d_sae``.
        lr: Adam learning rate.
        warmup_steps: Linear learning-rate warm-up steps.
        dead_steps: A latent that has not fired for this many steps counts as dead (AuxK, resampling).
        resample_every: Resample dead latents every this many steps (``standard``/``april``; 0 = never).
        geometric_median_init: Initialise ``b_dec`` at the geometric median of (up to 4096) training embeddings.
        num_labels: Labels ``C`` the test metrics correlate latents with.
        sae_seed: Seed of the SAE's weight initialisation.
    """

    def __init__(
        self,
        variant: Literal["standard", "april", "topk", "batchtopk", "matryoshka"] = "topk",
        d_in: int = 64,
        d_sae: int = 512,
        k: int = 16,
        l1_coeff: float = 3e-5,
        auxk_alpha: float = 1 / 32,
        group_fractions: tuple[float, ...] = (0.25, 0.75),
        lr: float = 3e-4,
        warmup_steps: int = 0,
        dead_steps: int = 200,
        resample_every: int = 0,
        geometric_median_init: bool = True,
        num_labels: int = 8,
        sae_seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.sae = make_sae(
            variant,
            d_in,
            d_sae,
            k=k,
            l1_coeff=l1_coeff,
            auxk_alpha=auxk_alpha,
            group_fractions=group_fractions,
            seed=sae_seed,
        )
        # Training state that must survive a resume: steps since each latent last fired, and whether b_dec is set.
        self.register_buffer("steps_since_fired", torch.zeros(d_sae, dtype=torch.long))
        self.register_buffer("b_dec_initialised", torch.zeros((), dtype=torch.bool))
        self.val_metrics = self._sae_metrics()
        self.test_metrics = self._sae_metrics()
        self.test_mono = Monosemanticity(d_sae, d_in)
        self.test_corr = LabelCorrelation(d_sae, num_labels)

    def _sae_metrics(self) -> torch.nn.ModuleDict:
        return torch.nn.ModuleDict(
            {"l0": L0(), "fvu": FractionVarianceUnexplained(self.hparams.d_in), "dead": DeadLatents(self.hparams.d_sae)}
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sae(x)

    # -------------------------------------------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        # Runs on every process before DDP wraps the model and before a checkpoint is restored, from the same
        # deterministic sample on every process, so all ranks start equal and a resumed run keeps its trained b_dec.
        dm = getattr(self.trainer, "datamodule", None)
        if stage != "fit" or not self.hparams.geometric_median_init or self.b_dec_initialised or dm is None:
            return
        if not self.sae.subtract_b_dec:  # the April update starts from b_dec = 0
            return
        train = dm.train_set
        sample = train.__getitems__(list(range(min(4096, len(train)))))["x"]
        with torch.no_grad():
            self.sae.b_dec.copy_(geometric_median(sample))
        self.b_dec_initialised.fill_(True)

    # ----------------------------------------------------------------------------------------------- training
    def training_step(self, batch, batch_idx):
        x = batch["x"]
        dead = self.steps_since_fired >= self.hparams.dead_steps
        out = self.sae.loss(x, dead=dead if isinstance(self.sae, TopKSAE) else None)
        self._track_firing(out["f"])
        logs = {"train/loss": out["loss"], "train/mse": out["mse"], "train/aux": out["aux"]}
        self.log_dict({**logs, "train/dead": dead.float().mean()})
        self.log("train/l0", (out["f"] != 0).float().sum(-1).mean(), prog_bar=True)
        self._batch_x = x.detach()
        return out["loss"]

    @torch.no_grad()
    def _track_firing(self, f: torch.Tensor) -> None:
        fired = (f != 0).any(0)
        if self.trainer.world_size > 1:
            fired = self.all_gather(fired.to(torch.uint8)).reshape(-1, f.shape[1]).any(0).bool()
        self.steps_since_fired.add_(1).masked_fill_(fired, 0)
        if isinstance(self.sae, BatchTopKSAE) and (f > 0).any():
            low = f[f > 0].min()
            if self.trainer.world_size > 1:
                low = self.all_gather(low).min()
            self.sae.update_theta(low)

    def on_after_backward(self) -> None:
        self.sae.remove_parallel_grad()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.sae.normalise_atoms()
        every = self.hparams.resample_every
        step = self.global_step
        if every and not isinstance(self.sae, TopKSAE) and step > 0 and step % every == 0:
            self._resample(step)

    @torch.no_grad()
    def _resample(self, step: int) -> None:
        dead = self.steps_since_fired >= self.hparams.dead_steps
        if not dead.any():
            return
        x = self._batch_x
        if self.trainer.world_size > 1:
            x = self.all_gather(x).reshape(-1, x.shape[-1])
        gen = torch.Generator().manual_seed(1_000_003 * self.hparams.sae_seed + step)
        idx = resample_dead(self.sae, dead, x, gen)
        self.steps_since_fired[idx] = 0
        # Adam's running moments of the re-initialised rows would drag them back: reset them.
        opt = self.optimizers().optimizer
        for p in (self.sae.W_enc, self.sae.W_dec, self.sae.b_enc):
            state = opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][idx] = 0.0
        self.log("train/resampled", float(len(idx)))

    # ------------------------------------------------------------------------------------------------- eval
    def _eval(self, batch, metrics: torch.nn.ModuleDict, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch["x"]
        x_hat, f = self.sae(x)
        metrics["l0"].update(f)
        metrics["fvu"].update(x, x_hat)
        metrics["dead"].update(f)
        self.log_dict({f"{prefix}/{k}": m for k, m in metrics.items()})
        return x_hat, f

    def validation_step(self, batch, batch_idx):
        self._eval(batch, self.val_metrics, "val")

    def test_step(self, batch, batch_idx):
        _, f = self._eval(batch, self.test_metrics, "test")
        self.test_mono.update(f, batch["x"])
        self.test_corr.update(f, batch["y"])

    def on_test_epoch_end(self) -> None:
        ms = self.test_mono.compute()
        corr = self.test_corr.compute().nan_to_num(0.0).abs()
        defined = ms[~ms.isnan()]
        self.log("test/mono_mean", defined.mean().float() if len(defined) else torch.tensor(float("nan")))
        self.log("test/mono_defined", torch.tensor(float(len(defined))))
        self.log("test/max_abs_corr_mean", corr.max(0).values.mean().float())
        self.test_mono.reset()
        self.test_corr.reset()

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.sae.parameters(), lr=self.hparams.lr, betas=(0.9, 0.999))
        warm = max(1, self.hparams.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def semantic_matching_loss(
    img: torch.Tensor, txt: torch.Tensor, labels: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """MedCLIP-style contrastive loss whose targets come from label similarity.

    Two images that share findings are not treated as negatives of each other (MedCLIP's semantic matching).

    Args:
        img: L2-normalised image embeddings ``[B, d]``.
        txt: L2-normalised "report" embeddings ``[B, d]``.
        labels: Binary labels ``[B, C]``; an extra "no finding" column makes healthy images similar to each other.
        logit_scale: Log inverse temperature (scalar).
    """
    y = torch.cat([labels, (labels.sum(1, keepdim=True) == 0).float()], dim=1)
    y = F.normalize(y, dim=1)
    target = y @ y.T
    target = target / target.sum(1, keepdim=True)
    logits = logit_scale.exp().clamp(max=100) * img @ txt.T
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T))


class EncoderModule(pl.LightningModule):
    """Offline stand-in for MedCLIP pre-training: a small CNN image tower aligned with a label "text" tower.

    The text tower embeds the multi-hot finding vector (the offline analogue of a report) linearly; the two towers
    are trained with :func:`semantic_matching_loss`, so the image embedding space organises around the findings
    without any axis being tied to one finding.

    Args:
        embed_dim: Embedding width ``d``.
        width: First-stage channels of the CNN.
        num_labels: Findings ``C``.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
    """

    def __init__(self, embed_dim: int = 64, width: int = 16, num_labels: int = 8, lr: float = 2e-3, weight_decay=1e-4):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = SmallCXREncoder(embed_dim, width)
        self.text = torch.nn.Linear(num_labels + 1, embed_dim, bias=False)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), as in CLIP

    def _step(self, batch, prefix: str) -> torch.Tensor:
        images, labels = batch
        img = self.encoder(images)
        y = torch.cat([labels, (labels.sum(1, keepdim=True) == 0).float()], dim=1)
        txt = F.normalize(self.text(y), dim=1)
        loss = semantic_matching_loss(img, txt, labels, self.logit_scale)
        # Retrieval accuracy: is the best-matching "report" one with the image's exact findings?
        best = (img @ txt.T).argmax(1)
        acc = (labels[best] == labels).all(1).float().mean()
        sync = prefix != "train"
        self.log(f"{prefix}/loss", loss, sync_dist=sync, prog_bar=True)
        self.log(f"{prefix}/match_acc", acc, sync_dist=sync)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
