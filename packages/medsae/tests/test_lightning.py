import pytorch_lightning as pl
import torch
from medsae import lightning_module
from medsae.data import EmbeddingDataModule
from medsae.lightning_module import SAEModule


def test_module_resamples_dead_latents_and_resets_their_adam_moments(tmp_path, monkeypatch):
    resampled = []
    real = lightning_module.resample_dead

    def spy(sae, dead, x, gen):
        idx = real(sae, dead, x, gen)
        resampled.append((dead.clone(), idx.clone()))
        return idx

    monkeypatch.setattr(lightning_module, "resample_dead", spy)
    checks = []

    class Probe(SAEModule):
        def on_train_start(self):
            with torch.no_grad():  # latents 0-7 can never fire: dead after dead_steps steps
                self.sae.b_enc[:8] = -1e3

        def _resample(self, step):
            before = len(resampled)
            super()._resample(step)
            if len(resampled) == before:  # nothing was dead
                return
            dead, idx = resampled[-1]
            state = self.optimizers().optimizer.state
            p = self.sae
            checks.append(
                torch.equal(idx, dead.nonzero().flatten())
                and all(state[w]["exp_avg"][idx].abs().max() == 0 for w in (p.W_enc, p.W_dec, p.b_enc))
                and all(state[w]["exp_avg_sq"][idx].abs().max() == 0 for w in (p.W_enc, p.W_dec, p.b_enc))
                and torch.allclose(p.W_dec[idx].norm(dim=1), torch.ones(len(idx)))
                and bool((p.b_enc[idx] == 0).all())
                and bool((self.steps_since_fired[idx] == 0).all())
            )

    module = Probe(variant="standard", d_in=16, d_sae=32, l1_coeff=1.0, dead_steps=2, resample_every=3)
    dm = EmbeddingDataModule(embed_dim=16, n_images=256, image_size=32, store_dir=str(tmp_path / "s"), batch_size=32)
    trainer = pl.Trainer(
        max_steps=9,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, dm)
    assert checks and all(checks), checks
    # the first resampling (step 3) re-initialised exactly the 8 latents that were switched off
    assert resampled[0][1].tolist() == list(range(8))
