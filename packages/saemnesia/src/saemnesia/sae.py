"""TopK sparse autoencoder with batch-TopK training and the AuxK dead-latent loss.

    z     = TopK(ReLU(W_enc (x - b_dec) + b_enc))          # per-token TopK at inference
    x_hat = z W_dec + b_dec                                  # rows of W_dec have unit norm

During training the TopK is taken over the whole batch (batch-TopK: the ``N * k`` largest activations of the batch
survive), which lets busy tokens use more latents than quiet ones while keeping ``k`` active latents per token on
average. Latents that have not fired for ``dead_after`` tokens are "dead"; AuxK reconstructs the residual with the
``aux_k`` largest dead pre-activations so they receive gradient again.
"""

from __future__ import annotations

import torch
from torch import nn


def topk_activation(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest ReLU'd pre-activations of each row.

    Args:
        pre: Pre-activations ``[N, n_latents]``.
        k: Active latents per row.

    Returns:
        Sparse codes ``[N, n_latents]`` with at most ``k`` non-zeros per row.
    """
    values, indices = pre.relu().topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values)


def batch_topk_activation(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``N * k`` largest ReLU'd pre-activations of the whole batch ``[N, n_latents]``."""
    flat = pre.relu().flatten()
    values, indices = flat.topk(min(pre.shape[0] * k, flat.numel()))
    return torch.zeros_like(flat).scatter(0, indices, values).view_as(pre)


class TopKSAE(nn.Module):
    """TopK sparse autoencoder (SAeUron's base SAE).

    Args:
        d_in: Activation width (1280 for SD1.5's ``up_blocks.1.attentions.1``).
        n_latents: Dictionary size (``expansion * d_in``).
        k: Active latents per token.
        aux_k: Dead latents used by the AuxK loss (default ``2 * k``).
        dead_after: Tokens without firing after which a latent counts as dead.
    """

    def __init__(self, d_in: int, n_latents: int, k: int, aux_k: int | None = None, dead_after: int = 100_000):
        super().__init__()
        if not 0 < k <= n_latents:
            raise ValueError(f"k must be in [1, n_latents={n_latents}], got {k}")
        self.d_in, self.n_latents, self.k = d_in, n_latents, k
        self.aux_k = aux_k if aux_k is not None else min(2 * k, n_latents)
        self.dead_after = dead_after
        w_dec = torch.randn(n_latents, d_in)
        w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.t().clone())  # tied initialisation
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("tokens_since_fired", torch.zeros(n_latents, dtype=torch.long))

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations ``[N, n_latents]`` of tokens ``x`` ``[N, d_in]``."""
        if x.shape[-1] != self.d_in:
            raise ValueError(f"expected tokens of width {self.d_in}, got shape {tuple(x.shape)}")
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor, batch_topk: bool = False) -> torch.Tensor:
        """Sparse codes ``[N, n_latents]``: per-token TopK, or batch-TopK when ``batch_topk``."""
        pre = self.pre_acts(x)
        return batch_topk_activation(pre, self.k) if batch_topk else topk_activation(pre, self.k)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[N, d_in]`` of codes ``z`` ``[N, n_latents]``."""
        return z @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor, batch_topk: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(x_hat, z, pre)`` for tokens ``x`` ``[N, d_in]``."""
        pre = self.pre_acts(x)
        z = batch_topk_activation(pre, self.k) if batch_topk else topk_activation(pre, self.k)
        return self.decode(z), z, pre

    @torch.no_grad()
    def update_dead(self, z: torch.Tensor) -> None:
        """Advance the firing counters with a batch of codes ``z`` ``[N, n_latents]``."""
        fired = (z > 0).any(dim=0)
        self.tokens_since_fired += z.shape[0]
        self.tokens_since_fired[fired] = 0

    @property
    def dead_mask(self) -> torch.Tensor:
        """Boolean ``[n_latents]``: latents that have not fired for ``dead_after`` tokens."""
        return self.tokens_since_fired >= self.dead_after

    def auxk_loss(self, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        """AuxK: how well the top dead latents reconstruct the residual, normalised by the residual's variance.

        Zero when no latent is dead.
        """
        dead = self.dead_mask
        if not bool(dead.any()):
            return x.new_zeros(())
        residual = (x - x_hat).detach()
        masked = pre.masked_fill(~dead, float("-inf"))
        k_aux = min(self.aux_k, int(dead.sum()))
        values, indices = masked.topk(k_aux, dim=-1)
        z_aux = torch.zeros_like(pre).scatter(-1, indices, values.relu())
        residual_hat = z_aux @ self.W_dec
        denom = (residual - residual.mean(dim=0)).pow(2).sum(-1).mean().clamp_min(1e-12)
        return (residual_hat - residual).pow(2).sum(-1).mean() / denom

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Project out the gradient component along each decoder row (keeps rows on the unit sphere to first order)."""
        if self.W_dec.grad is not None:
            w = self.W_dec
            self.W_dec.grad -= (self.W_dec.grad * w).sum(-1, keepdim=True) * w

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm (after each optimizer step)."""
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
