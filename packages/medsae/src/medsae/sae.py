"""Sparse autoencoders on embedding vectors (pure torch).

Shapes: ``x`` is ``[B, d]`` (the SAE input), ``f`` is ``[B, m]`` (latent activations), atoms are the rows of
``W_dec`` ``[m, d]`` (the decoder *columns* in the ``nn.Linear`` convention of the paper's code).

Variants (``make_sae(variant, ...)``):

- ``standard``: ``f = ReLU(W_enc (x - b_dec) + b_enc)``, loss = sum-over-dims MSE + ``l1 * |f|_1``; unit-norm atoms.
- ``april``: Anthropic's April-2024 update: ``f = ReLU(W_enc x + b_enc)``, the L1 term weighted by atom norms,
  atoms free to change norm.
- ``topk``: the ``k`` largest ReLU pre-activations per sample; AuxK loss on dead latents; unit-norm atoms.
- ``batchtopk``: the ``k * B`` largest over the whole batch; at inference a learned threshold (JumpReLU-like).
- ``matryoshka``: BatchTopK whose reconstruction loss is averaged over nested prefixes of the dictionary.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

VARIANTS = ("standard", "april", "topk", "batchtopk", "matryoshka")


def geometric_median(points: torch.Tensor, iters: int = 200, eps: float = 1e-8, tol: float = 1e-10) -> torch.Tensor:
    """Geometric median of ``points`` ``[N, d]`` by Weiszfeld's algorithm (float64 inside), returned as ``[d]``.

    The minimiser of ``sum_i |x_i - m|``. A point that coincides with an iterate gets weight ``1 / eps`` instead of
    infinity, which keeps the iteration defined when the median is a data point.
    """
    x = points.detach().double()
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(eps)
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - m).norm() <= tol * (1.0 + m.norm()):
            m = new
            break
        m = new
    return m.to(points.dtype)


def topk_mask(acts: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest entries of each row of ``acts`` ``[B, m]``, zero the rest."""
    vals, idx = acts.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(acts).scatter(-1, idx, vals)


def batch_topk_mask(acts: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k * B`` largest entries of the whole batch ``acts`` ``[B, m]`` (on average ``k`` per sample)."""
    flat = acts.flatten()
    vals, idx = flat.topk(min(k * acts.shape[0], flat.numel()), sorted=False)
    return torch.zeros_like(flat).scatter(0, idx, vals).view_as(acts)


def sq_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Sum-over-dimensions squared error averaged over the batch (the paper's "MSE")."""
    return (x - x_hat).pow(2).sum(-1).mean()


class SAE(nn.Module):
    """ReLU sparse autoencoder with tied-at-init weights and unit-norm atoms (the ``standard`` variant).

    Args:
        d_in: Input width ``d``.
        d_sae: Number of latents ``m``.
        l1_coeff: Weight of the L1 penalty.
        seed: Seed of the weight initialisation (independent of the global RNG).
    """

    unit_norm_atoms = True
    subtract_b_dec = True

    def __init__(self, d_in: int, d_sae: int, l1_coeff: float = 3e-5, seed: int = 0):
        super().__init__()
        self.d_in, self.d_sae, self.l1_coeff = d_in, d_sae, l1_coeff
        gen = torch.Generator().manual_seed(seed)
        atoms = torch.randn(d_sae, d_in, generator=gen)
        atoms = atoms / atoms.norm(dim=1, keepdim=True) * self.init_atom_norm()
        self.W_dec = nn.Parameter(atoms)
        self.W_enc = nn.Parameter(atoms.clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def init_atom_norm(self) -> float:
        """Norm of each atom at initialisation."""
        return 1.0

    # ------------------------------------------------------------------------------------------------ forward
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU'd encoder pre-activations ``[B, m]`` before any sparsity selection."""
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"expected inputs [B, {self.d_in}], got {tuple(x.shape)}")
        centred = x - self.b_dec if self.subtract_b_dec else x
        return F.relu(F.linear(centred, self.W_enc, self.b_enc))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations ``f`` ``[B, m]`` of inputs ``x`` ``[B, d]``."""
        return self.pre_acts(x)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[B, d]`` of latents ``f`` ``[B, m]``."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_hat [B, d], f [B, m])`` at inference."""
        f = self.encode(x)
        return self.decode(f), f

    # --------------------------------------------------------------------------------------------------- loss
    def sparsity_penalty(self, f: torch.Tensor) -> torch.Tensor:
        """``l1 * mean_b |f_b|_1``."""
        return self.l1_coeff * f.abs().sum(-1).mean()

    def loss(self, x: torch.Tensor, dead: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training loss of a batch ``x`` ``[B, d]``.

        Args:
            x: Inputs.
            dead: Bool mask ``[m]`` of latents considered dead (used by the AuxK variants only).

        Returns:
            ``loss`` (scalar to minimise), ``mse``, ``sparsity`` (penalty term or 0), ``aux`` (AuxK term or 0) and
            ``f`` (the latents used, ``[B, m]``).
        """
        f = self.encode(x)
        mse = sq_error(x, self.decode(f))
        sparsity = self.sparsity_penalty(f)
        zero = x.new_zeros(())
        return {"loss": mse + sparsity, "mse": mse, "sparsity": sparsity, "aux": zero, "f": f}

    # ------------------------------------------------------------------------------------- atom-norm constraint
    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Project out the component of each atom's gradient along the atom (call between backward and step)."""
        if not self.unit_norm_atoms or self.W_dec.grad is None:
            return
        w = self.W_dec / self.W_dec.norm(dim=1, keepdim=True)
        self.W_dec.grad -= (self.W_dec.grad * w).sum(1, keepdim=True) * w

    @torch.no_grad()
    def normalise_atoms(self) -> None:
        """Rescale every atom to unit norm (call after the optimiser step)."""
        if self.unit_norm_atoms:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)


class AprilSAE(SAE):
    """Anthropic's April-2024 update: no ``b_dec`` subtraction, norm-weighted L1, atoms of free norm (init 0.1)."""

    unit_norm_atoms = False
    subtract_b_dec = False

    def init_atom_norm(self) -> float:
        return 0.1

    def sparsity_penalty(self, f: torch.Tensor) -> torch.Tensor:
        """``l1 * mean_b sum_i f_bi |W_dec,i|``: the penalty a rescaling of an atom cannot dodge."""
        return self.l1_coeff * (f * self.W_dec.norm(dim=1)).sum(-1).mean()


class TopKSAE(SAE):
    """TopK SAE with the AuxK loss on dead latents.

    Args:
        d_in: Input width.
        d_sae: Number of latents.
        k: Active latents per sample.
        auxk_alpha: Weight of the AuxK loss.
        k_aux: Latents the AuxK loss may use (default ``d_in // 2``).
        seed: Initialisation seed.
    """

    def __init__(
        self, d_in: int, d_sae: int, k: int = 32, auxk_alpha: float = 1 / 32, k_aux: int | None = None, seed: int = 0
    ):
        super().__init__(d_in, d_sae, l1_coeff=0.0, seed=seed)
        if not 0 < k <= d_sae:
            raise ValueError(f"k must be in [1, d_sae={d_sae}], got {k}")
        self.k, self.auxk_alpha = k, auxk_alpha
        self.k_aux = k_aux or max(1, d_in // 2)

    def select(self, acts: torch.Tensor) -> torch.Tensor:
        """The sparsity selection applied to ReLU pre-activations during training."""
        return topk_mask(acts, self.k)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.select(self.pre_acts(x))

    def sparsity_penalty(self, f: torch.Tensor) -> torch.Tensor:
        return f.new_zeros(())

    def recon_loss(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction term of the loss."""
        return sq_error(x, self.decode(f))

    def aux_loss(self, x: torch.Tensor, acts: torch.Tensor, f: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        """AuxK: the top ``k_aux`` dead latents should reconstruct the residual, normalised by its variance."""
        n_dead = int(dead.sum())
        if n_dead == 0:
            return x.new_zeros(())
        residual = (x - self.decode(f)).detach()
        dead_acts = topk_mask(acts * dead, min(self.k_aux, n_dead))
        err = (residual - dead_acts @ self.W_dec).pow(2).sum(-1).mean()
        return err / (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)

    def loss(self, x: torch.Tensor, dead: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        acts = self.pre_acts(x)
        f = self.select(acts)
        mse = self.recon_loss(x, f)
        aux = self.aux_loss(x, acts, f, dead) if dead is not None else x.new_zeros(())
        zero = x.new_zeros(())
        return {"loss": mse + self.auxk_alpha * aux, "mse": mse, "sparsity": zero, "aux": aux, "f": f}


class BatchTopKSAE(TopKSAE):
    """BatchTopK: ``k * B`` activations over the batch in training; a threshold ``theta`` at inference.

    ``theta`` follows an exponential moving average of the smallest activation kept in each training batch, so that
    at inference ``f = acts * (acts > theta)`` keeps about ``k`` latents per sample without needing a batch.
    """

    def __init__(self, *args, theta_momentum: float = 0.99, **kwargs):
        super().__init__(*args, **kwargs)
        self.theta_momentum = theta_momentum
        self.register_buffer("theta", torch.full((), -1.0))  # < 0: not estimated yet

    def select(self, acts: torch.Tensor) -> torch.Tensor:
        if self.training:
            return batch_topk_mask(acts, self.k)
        if self.theta < 0:  # before the first update: fall back to per-sample top-k
            return topk_mask(acts, self.k)
        return acts * (acts > self.theta)

    @torch.no_grad()
    def update_theta(self, batch_min: torch.Tensor) -> None:
        """Fold the smallest kept activation of a batch into ``theta``."""
        if self.theta < 0:
            self.theta.copy_(batch_min)
        else:
            self.theta.mul_(self.theta_momentum).add_((1 - self.theta_momentum) * batch_min)


class MatryoshkaSAE(BatchTopKSAE):
    """Matryoshka BatchTopK: every nested prefix of the dictionary must reconstruct ``x`` on its own.

    Args:
        d_in: Input width.
        d_sae: Number of latents.
        k: Mean active latents per sample.
        group_fractions: Fractions of ``d_sae`` per nested group (summing to 1): prefix ``j`` uses the first
            ``sum(group sizes[:j+1])`` latents.
        **kwargs: Passed to :class:`BatchTopKSAE`.
    """

    def __init__(self, d_in: int, d_sae: int, k: int = 32, group_fractions: tuple[float, ...] = (0.25, 0.75), **kwargs):
        super().__init__(d_in, d_sae, k, **kwargs)
        if abs(sum(group_fractions) - 1) > 1e-6 or min(group_fractions) <= 0:
            raise ValueError(f"group_fractions must be positive and sum to 1, got {group_fractions}")
        sizes = [math.floor(g * d_sae) for g in group_fractions]
        sizes[-1] = d_sae - sum(sizes[:-1])
        self.prefix_ends = torch.tensor(sizes).cumsum(0).tolist()

    def recon_loss(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Mean over prefixes of the squared error using only that prefix's latents."""
        losses, x_hat, start = [], self.b_dec.expand_as(x), 0
        for end in self.prefix_ends:
            x_hat = x_hat + f[:, start:end] @ self.W_dec[start:end]
            losses.append(sq_error(x, x_hat))
            start = end
        return torch.stack(losses).mean()


def make_sae(
    variant: str,
    d_in: int,
    d_sae: int,
    *,
    k: int = 32,
    l1_coeff: float = 3e-5,
    auxk_alpha: float = 1 / 32,
    group_fractions: tuple[float, ...] = (0.25, 0.75),
    seed: int = 0,
) -> SAE:
    """Build one of :data:`VARIANTS` with its relevant hyperparameters (the others are ignored)."""
    if variant == "standard":
        return SAE(d_in, d_sae, l1_coeff=l1_coeff, seed=seed)
    if variant == "april":
        return AprilSAE(d_in, d_sae, l1_coeff=l1_coeff, seed=seed)
    if variant == "topk":
        return TopKSAE(d_in, d_sae, k=k, auxk_alpha=auxk_alpha, seed=seed)
    if variant == "batchtopk":
        return BatchTopKSAE(d_in, d_sae, k=k, auxk_alpha=auxk_alpha, seed=seed)
    if variant == "matryoshka":
        return MatryoshkaSAE(d_in, d_sae, k=k, auxk_alpha=auxk_alpha, group_fractions=tuple(group_fractions), seed=seed)
    raise ValueError(f"unknown SAE variant {variant!r}; choose one of {VARIANTS}")


@torch.no_grad()
def resample_dead(
    sae: SAE, dead: torch.Tensor, x: torch.Tensor, generator: torch.Generator, enc_scale: float = 0.2
) -> torch.Tensor:
    """Re-initialise dead latents on inputs the SAE reconstructs badly (Anthropic's resampling, L1 variants).

    Each dead latent gets an input drawn with probability proportional to its squared reconstruction error; its
    atom becomes that (centred) input's direction, its encoder row the same direction scaled to ``enc_scale`` times
    the mean norm of the alive encoder rows, its encoder bias 0.

    Args:
        sae: The autoencoder (modified in place).
        dead: Bool mask ``[m]``.
        x: Candidate inputs ``[N, d]``.
        generator: Source of randomness (seeded by the caller so that every process draws the same).
        enc_scale: Scale of the new encoder rows relative to the alive ones.

    Returns:
        Indices of the resampled latents.
    """
    idx = dead.nonzero().flatten()
    if len(idx) == 0:
        return idx
    x_hat, _ = sae(x)
    err = (x - x_hat).pow(2).sum(-1).double()
    probs = err / err.sum() if err.sum() > 0 else torch.full_like(err, 1 / len(err))
    # draws on the CPU generator the caller seeded, so every process picks the same inputs on any device
    picks = torch.multinomial(probs.cpu(), len(idx), replacement=True, generator=generator).to(x.device)
    directions = x[picks] - (sae.b_dec if sae.subtract_b_dec else 0)
    directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    alive = ~dead
    enc_norm = sae.W_enc[alive].norm(dim=1).mean() if alive.any() else torch.tensor(1.0)
    atom_norm = 1.0 if sae.unit_norm_atoms else sae.W_dec[alive].norm(dim=1).mean() if alive.any() else 0.1
    sae.W_dec[idx] = directions * atom_norm
    sae.W_enc[idx] = directions * enc_norm * enc_scale
    sae.b_enc[idx] = 0.0
    return idx
