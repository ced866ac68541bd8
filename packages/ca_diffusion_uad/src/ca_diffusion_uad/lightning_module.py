"""Lightning wiring: encoder pretraining, the (conditional) diffusion model, the autoencoder baseline.

The evaluation protocol is shared (:class:`ReconstructionUAD`): ``test`` sees anomalous validation volumes (the
threshold is the best-Dice one there), anomalous test volumes (scored at that threshold) and healthy test volumes
(reconstruction error), in that order. Box-annotated images (NOVA, batches with ``boxes``) are scored by box
detection at the fixed threshold of their data module.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Literal

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.detection import MeanAveragePrecision

from ca_diffusion_uad.anomaly import anomaly_map, best_dice_threshold, erode
from ca_diffusion_uad.boxes import box_iou, components_to_boxes
from ca_diffusion_uad.diffusion import cosine_alphas_cumprod, q_sample, reconstruct_chain, reconstruct_multi_t
from ca_diffusion_uad.metrics import VolumeMaps, detection_scores, segmentation_scores
from ca_diffusion_uad.networks import ConditionalUNet, ConvAutoencoder, EncoderArch, SparKDecoder, build_encoder
from ca_diffusion_uad.noise import sample_noise
from ca_diffusion_uad.ssl import eps_infonce, masked_l2, random_patch_mask


def _check_images(x: torch.Tensor, size: int) -> None:
    if x.ndim != 4 or x.shape[1] != 1 or tuple(x.shape[-2:]) != (size, size):
        raise ValueError(f"expected 1-channel images [B, 1, {size}, {size}], got {tuple(x.shape)}")


# ------------------------------------------------------------------------------------------------ encoder (stage 1)
class EncoderPretraining(pl.LightningModule):
    """SparK-style masked image modelling plus ε-InfoNCE between the masked and the full view, on healthy slices.

    Args:
        image_size: Slice side.
        arch: ``"basic"`` (small pre-activation ResNet, the CPU configs) or ``"bottleneck"`` (the paper's
            ResNet-50 with ``widths=(64, 128, 256, 512)``, ``blocks=(3, 4, 6, 3)``).
        widths: Encoder channels per stage (bottleneck: the blocks' inner widths; outputs are 4x).
        blocks: Residual blocks per stage (one count, or one per stage).
        decoder_widths: SparK decoder channels per level (``None``: the encoder's feature widths).
        embed_dim: Encoder output (conditioning) width (paper: 128).
        mask_ratio: Share of hidden patches (paper: 0.65).
        patch_size: Mask patch side in pixels; a multiple of the encoder's deepest downsampling (SparK: the patch
            is one cell of the deepest feature map, 32 px for ResNet-50), so a cell is never half hidden.
        tau: ε-InfoNCE temperature (paper: 0.07).
        eps: ε-InfoNCE margin (paper: 0.5).
        contrastive_weight: Weight of the contrastive term.
        lr: AdamW learning rate (paper: 1e-4).
        weight_decay: AdamW weight decay (paper: 0.05).
        betas: AdamW betas (paper: (0.9, 0.95)).
    """

    def __init__(
        self,
        image_size: int = 48,
        arch: EncoderArch = "basic",
        widths: Sequence[int] = (16, 32, 64, 128),
        blocks: int | Sequence[int] = 1,
        decoder_widths: Sequence[int] | None = None,
        embed_dim: int = 128,
        mask_ratio: float = 0.65,
        patch_size: int = 8,
        tau: float = 0.07,
        eps: float = 0.5,
        contrastive_weight: float = 1.0,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
    ):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = build_encoder(arch, widths, blocks, embed_dim)
        deepest = self.encoder.feature_strides[-1]
        if patch_size % deepest or image_size % patch_size:
            raise ValueError(
                f"patch_size {patch_size} must be a multiple of the encoder's deepest downsampling ({deepest}) and "
                f"divide image_size {image_size}"
            )
        self.decoder = SparKDecoder(self.encoder.feature_widths, 1, self.encoder.feature_strides[0], decoder_widths)

    def losses(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Masked-reconstruction, contrastive and total loss of a batch ``[B, 1, H, W]``."""
        hp = self.hparams
        _check_images(x, hp.image_size)
        keep = random_patch_mask(x.shape[0], x.shape[-2:], hp.patch_size, hp.mask_ratio, generator, x.device)
        feats = self.encoder.features(x, keep)
        rec = masked_l2(self.decoder(feats, keep), x, keep)
        con = eps_infonce(self.encoder.proj(self.encoder.pooled(feats)), self.encoder(x), hp.tau, hp.eps)
        return {"rec": rec, "con": con, "loss": rec + hp.contrastive_weight * con}

    def training_step(self, batch, batch_idx):
        out = self.losses(batch["image"])
        self.log_dict({f"train/{k}": v for k, v in out.items()}, prog_bar=True)
        return out["loss"]

    def validation_step(self, batch, batch_idx):
        # A fixed mask per batch: comparable across epochs, and the global RNG (training's stream) is left alone.
        out = self.losses(batch["image"], torch.Generator().manual_seed(batch_idx))
        self.log_dict({f"val/{k}": v for k, v in out.items()}, sync_dist=True)

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        out = self.losses(batch["image"][0], torch.Generator().manual_seed(batch_idx))
        self.log("test/loss", out["loss"], sync_dist=True, add_dataloader_idx=False)

    def configure_optimizers(self):
        hp = self.hparams
        return torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, betas=tuple(hp.betas))


# -------------------------------------------------------------------------------------------- shared evaluation
class ReconstructionUAD(pl.LightningModule):
    """Evaluation shared by every reconstruction-based detector; subclasses implement :meth:`reconstruct`."""

    def __init__(self, image_size: int, erode_size: int, median_size: int, median_dims: int, eval_seed: int):
        super().__init__()
        self.image_size, self.erode_size = image_size, erode_size
        self.median_size, self.median_dims, self.eval_seed = median_size, median_dims, eval_seed
        self.val_maps, self.test_maps = VolumeMaps(), VolumeMaps()
        self.healthy_l1 = MeanMetric()
        # NOVA-style box detection on box-annotated images (COCO mAP over IoU .5:.95, mAP@0.3, ACC@50).
        self.box_map = MeanAveragePrecision(iou_type="bbox")
        self.box_map30 = MeanAveragePrecision(iou_type="bbox", iou_thresholds=[0.3])
        self.box_acc50 = MeanMetric()
        self.examples: dict[str, torch.Tensor] = {}
        self.scores: dict[str, float] = {}

    def reconstruct(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Healthy reconstruction ``[B, 1, H, W]`` of ``x``; ``generator`` drives any noise."""
        raise NotImplementedError

    def _box_protocol(self) -> tuple[float, int]:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "box_threshold"):
            raise ValueError("box-annotated test data needs its data module's box_threshold and max_boxes (NOVA)")
        return float(dm.box_threshold), int(dm.max_boxes)

    def _update_boxes(self, amap: torch.Tensor, gt: torch.Tensor) -> None:
        """Score one image: boxes of ``amap [H, W] > threshold`` (largest ``max_boxes`` kept) vs gold ``gt [K, 4]``."""
        threshold, max_boxes = self._box_protocol()
        boxes, scores = components_to_boxes(amap > threshold, amap)
        order = (boxes[:, 2:] - boxes[:, :2]).prod(1).argsort(descending=True)[:max_boxes]
        boxes, scores = boxes[order].to(amap.device), scores[order].to(amap.device)
        gt = gt.float().to(amap.device)
        labels = torch.zeros(len(boxes), dtype=torch.long, device=amap.device)
        pred = [{"boxes": boxes, "scores": scores, "labels": labels}]
        target = [{"boxes": gt, "labels": torch.zeros(len(gt), dtype=torch.long, device=amap.device)}]
        self.box_map.update(pred, target)
        self.box_map30.update(pred, target)
        if len(gt):
            hit = bool(len(boxes)) and bool((box_iou(boxes, gt) >= 0.5).any())
            self.box_acc50.update(torch.tensor(float(hit), device=amap.device))

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        x, brain, lesion = batch["image"][0], batch["brain"][0], batch["lesion"][0]  # one volume [Z, 1, H, W]
        _check_images(x, self.image_size)
        gen = torch.Generator().manual_seed(self.eval_seed * 1_000_003 + dataloader_idx * 10_007 + batch_idx)
        x_hat = self.reconstruct(x, gen)
        amap = anomaly_map(
            x, x_hat, brain, erode_size=self.erode_size, median_size=self.median_size, median_dims=self.median_dims
        )
        region = erode(brain, self.erode_size)
        if "boxes" in batch:  # one box-annotated 2D image (NOVA): Z = 1
            self._update_boxes(amap[0, 0], batch["boxes"][0])
            if not self.examples:
                self.examples = {
                    k: v[0, 0].detach().cpu() for k, v in dict(x=x, x_hat=x_hat, map=amap, lesion=lesion).items()
                }
        elif dataloader_idx == 0:
            self.val_maps.update(amap, lesion, region)
        elif dataloader_idx == 1:
            self.test_maps.update(amap, lesion, region)
            if not self.examples:
                z = int(lesion.flatten(1).sum(1).argmax())  # the slice with the most lesion
                self.examples = {
                    k: v[z, 0].detach().cpu() for k, v in dict(x=x, x_hat=x_hat, map=amap, lesion=lesion).items()
                }
        else:
            inside = brain > 0.5
            self.healthy_l1.update((x - x_hat).abs()[inside])

    def on_test_epoch_end(self) -> None:
        scores: dict[str, float] = {}
        if self.val_maps.update_count and self.test_maps.update_count:
            val_maps, val_les, val_reg = self.val_maps.compute()
            threshold, val_dice = best_dice_threshold(val_maps[val_reg], val_les[val_reg])
            maps, les, reg = self.test_maps.compute()
            scores = {"threshold": threshold, "val_dice": val_dice}
            scores.update(segmentation_scores(maps, les, reg, threshold))
            scores.update(detection_scores(maps, les, threshold))
        if self.healthy_l1.update_count:
            scores["l1_healthy"] = float(self.healthy_l1.compute())
        if self.box_map.update_count:
            res, res30 = self.box_map.compute(), self.box_map30.compute()
            scores.update(
                map_30=float(res30["map"]),
                map_50=float(res["map_50"]),
                map=float(res["map"]),
                acc_50=float(self.box_acc50.compute()) if self.box_acc50.update_count else math.nan,
            )
        self.scores = scores
        # Every rank holds the gathered maps, so these are already global; sync_dist only keeps Lightning quiet.
        # Undefined scores (no lesion in the volumes seen) stay NaN in ``self.scores`` and are not logged.
        for k, v in scores.items():
            if math.isfinite(v):
                self.log(f"test/{k}", v, sync_dist=True)
        for metric in (self.val_maps, self.test_maps, self.healthy_l1, self.box_map, self.box_map30, self.box_acc50):
            metric.reset()


# ------------------------------------------------------------------------------------------ diffusion (stage 2)
class DiffusionUAD(ReconstructionUAD):
    """x0-predicting diffusion model on healthy slices, optionally conditioned on an encoder of the clean input.

    ``condition="encoder"`` with ``encoder_ckpt`` is the paper's model (contrastive encoder, frozen or fine-tuned);
    without a checkpoint the encoder trains from scratch with the UNet (cDDPM-style); ``condition="none"`` with
    ``inference="chain"`` and simplex noise is AnoDDPM.

    Args:
        image_size: Slice side.
        channels: UNet channels per level (paper: 128, 256, 256).
        layers_per_block: UNet residual blocks per level (paper: 3).
        attention: Self-attention per UNet level.
        condition: ``"encoder"`` or ``"none"``.
        encoder_arch: ``"basic"`` or ``"bottleneck"`` (ResNet-50); must match the pretraining run.
        encoder_widths: Encoder channels per stage (must match the pretraining run).
        encoder_blocks: Encoder blocks per stage (one count, or one per stage).
        cond_dim: Conditioning vector width (paper: 128).
        encoder_ckpt: ``EncoderPretraining`` checkpoint loaded at the start of ``fit`` (``None``: random init).
        freeze_encoder: Keep the encoder fixed (otherwise it is fine-tuned with the UNet).
        timesteps: Diffusion steps ``T`` (paper: 1000).
        noise: ``"simplex"`` or ``"gaussian"``.
        simplex_octaves: Simplex octaves (AnoDDPM: 6).
        simplex_persistence: Simplex persistence (AnoDDPM: 0.8).
        simplex_frequency: Simplex coarsest feature size at 256 px (AnoDDPM: 64).
        inference: ``"multi_t"`` (the paper: one-step x0 at each ``t_eval``, averaged) or ``"chain"`` (AnoDDPM).
        t_eval: Noise levels of ``multi_t`` (paper: 250, 500, 750).
        chain_start: Start of the partial reverse chain.
        chain_steps: Network calls of the chain (``chain_start + 1``: every step).
        ema_decay: Decay of the weight average used for evaluation (``None``: raw weights).
        lr: Adam learning rate (paper: 1e-4).
        erode_size: Brain-mask erosion square.
        median_size: Median filter window (paper: 5).
        median_dims: 3 (volume) or 2 (slice) median filter.
        eval_seed: Seed of the evaluation noise.
    """

    def __init__(
        self,
        image_size: int = 48,
        channels: Sequence[int] = (32, 64, 64),
        layers_per_block: int = 1,
        attention: Sequence[bool] = (False, False, True),
        condition: Literal["encoder", "none"] = "encoder",
        encoder_arch: EncoderArch = "basic",
        encoder_widths: Sequence[int] = (16, 32, 64, 128),
        encoder_blocks: int | Sequence[int] = 1,
        cond_dim: int = 128,
        encoder_ckpt: str | None = None,
        freeze_encoder: bool = True,
        timesteps: int = 1000,
        noise: Literal["simplex", "gaussian"] = "simplex",
        simplex_octaves: int = 6,
        simplex_persistence: float = 0.8,
        simplex_frequency: float = 64.0,
        inference: Literal["multi_t", "chain"] = "multi_t",
        t_eval: Sequence[int] = (250, 500, 750),
        chain_start: int = 250,
        chain_steps: int = 251,
        ema_decay: float | None = 0.999,
        lr: float = 1e-4,
        erode_size: int = 3,
        median_size: int = 5,
        median_dims: int = 3,
        eval_seed: int = 0,
    ):
        super().__init__(image_size, erode_size, median_size, median_dims, eval_seed)
        self.save_hyperparameters()
        conditioned = condition == "encoder"
        self.unet = ConditionalUNet(
            image_size, channels, layers_per_block, attention, cond_dim if conditioned else None
        )
        self.encoder = build_encoder(encoder_arch, encoder_widths, encoder_blocks, cond_dim) if conditioned else None
        if self.encoder is not None and freeze_encoder:
            self.encoder.requires_grad_(False)
        self.ema_unet = self.ema_encoder = None
        if ema_decay is not None:
            self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
            self.ema_encoder = copy.deepcopy(self.encoder).requires_grad_(False) if conditioned else None
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(timesteps), persistent=False)

    # --------------------------------------------------------------------------------------------- pieces
    def setup(self, stage: str) -> None:
        # At fit start, not in __init__: a missing data folder must be reported first, and test/resume restore
        # the encoder from the run's own checkpoint anyway.
        ckpt = self.hparams.encoder_ckpt
        if stage == "fit" and ckpt and self.encoder is not None:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
            enc = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
            self.encoder.load_state_dict(enc)
            if self.ema_encoder is not None:
                self.ema_encoder.load_state_dict(enc)

    def _noise(self, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        hp = self.hparams
        kwargs = {}
        if hp.noise == "simplex":
            kwargs = dict(
                octaves=hp.simplex_octaves, persistence=hp.simplex_persistence, frequency=hp.simplex_frequency
            )
        return sample_noise(like, hp.noise, generator, **kwargs)

    def _condition(self, x: torch.Tensor, encoder: nn.Module | None) -> torch.Tensor | None:
        if encoder is None:
            return None
        if self.hparams.freeze_encoder:
            with torch.no_grad():
                return encoder(x)
        return encoder(x)

    def denoise_loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """L1 between ``x [B, 1, H, W]`` and its x0 prediction at uniformly drawn steps."""
        _check_images(x, self.image_size)
        t = torch.randint(0, self.hparams.timesteps, (x.shape[0],), generator=generator).to(x.device)
        x_t = q_sample(x, t, self._noise(x, generator), self.alphas_cumprod)
        return (self.unet(x_t, t, self._condition(x, self.encoder)) - x).abs().mean()

    def reconstruct(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        hp = self.hparams
        unet = self.ema_unet if self.ema_unet is not None else self.unet
        encoder = self.ema_encoder if self.ema_encoder is not None else self.encoder
        with torch.no_grad():
            cond = self._condition(x, encoder)

        def noise_fn(like: torch.Tensor) -> torch.Tensor:
            return self._noise(like, generator)

        if hp.inference == "multi_t":
            return reconstruct_multi_t(unet, x, self.alphas_cumprod, hp.t_eval, noise_fn, cond)
        return reconstruct_chain(unet, x, self.alphas_cumprod, hp.chain_start, hp.chain_steps, noise_fn, cond)

    # ----------------------------------------------------------------------------------------------- hooks
    def training_step(self, batch, batch_idx):
        loss = self.denoise_loss(batch["image"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema_unet is None:
            return
        pairs = [(self.ema_unet, self.unet)]
        if self.ema_encoder is not None:
            pairs.append((self.ema_encoder, self.encoder))
        with torch.no_grad():
            for ema, live in pairs:
                ema_p, live_p = list(ema.parameters()), list(live.parameters())
                torch._foreach_lerp_(ema_p, live_p, 1 - self.hparams.ema_decay)

    def validation_step(self, batch, batch_idx):
        # Fixed steps and noise per batch so the curve is comparable and the training RNG stream is untouched.
        loss = self.denoise_loss(batch["image"], torch.Generator().manual_seed(batch_idx))
        self.log("val/loss", loss, sync_dist=True, prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.hparams.lr)


# ----------------------------------------------------------------------------------------------- AE baseline
class AutoencoderUAD(ReconstructionUAD):
    """Convolutional autoencoder baseline, L1 reconstruction loss.

    Args:
        image_size: Slice side.
        widths: Channels of the downsampling convolutions.
        latent: Bottleneck channels.
        lr: Adam learning rate.
        erode_size: Brain-mask erosion square.
        median_size: Median filter window.
        median_dims: 3 (volume) or 2 (slice) median filter.
        eval_seed: Unused (no noise); kept for a uniform evaluation interface.
    """

    def __init__(
        self,
        image_size: int = 48,
        widths: Sequence[int] = (16, 32, 64),
        latent: int = 16,
        lr: float = 1e-3,
        erode_size: int = 3,
        median_size: int = 5,
        median_dims: int = 3,
        eval_seed: int = 0,
    ):
        super().__init__(image_size, erode_size, median_size, median_dims, eval_seed)
        self.save_hyperparameters()
        self.model = ConvAutoencoder(1, widths, latent)

    def reconstruct(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)

    def training_step(self, batch, batch_idx):
        x = batch["image"]
        _check_images(x, self.image_size)
        loss = (self.model(x) - x).abs().mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x = batch["image"]
        self.log("val/loss", (self.model(x) - x).abs().mean(), sync_dist=True, prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
