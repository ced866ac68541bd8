"""Concept erasure at generation time, and the unsupervised latent selection it is compared with.

On every token (spatial position) of the hooked block's output ``x`` the SAE code ``z = TopK(...)`` is computed;
on the tokens where a concept latent exceeds its threshold (its mean activation over all concepts) that latent is
scaled, and the change is decoded and added to the block output:

    x' = x + (z'_L - z_L) W_dec[L]      ==   D(z') + (x - D(z))

which keeps the SAE's reconstruction error, so a multiplier that changes nothing returns ``x`` exactly. The
reference code adds ``D(z) - x`` instead (``D(z') + D(z) - x``), which looks like a sign slip; it is available as
``reference_sign_slip=True`` for comparison only.
"""

from __future__ import annotations

import torch

from saemnesia.sae import TopKSAE, topk_activation


def feature_scores(mean_acts: torch.Tensor, min_activity: float = 0.0) -> torch.Tensor:
    """SAeUron's feature score per concept and latent.

    ``p[c, j] = mean_acts[c, j] / sum_c' mean_acts[c', j]`` (a latent's share of its activation that concept ``c``
    causes); the score is ``p[c, j]`` minus the mean of ``p[c', j]`` over the other concepts.

    The score is a ratio, so a latent that fired once, on one concept, scores the maximum 1. With thousands of busy
    latents (SD1.5) that rarely matters; on a small SAE the top scores all went to such near-silent latents (mean
    activation ~1e-4 against ~2 for the busiest ones). ``min_activity > 0`` gives the floor score -1 (below any
    real score) to latents whose mean activation on concept ``c`` is under ``min_activity`` times that concept's
    largest one; 0 is the paper's rule.

    Args:
        mean_acts: ``[n_concepts, n_latents]`` mean activation of each latent on each concept's tokens.
        min_activity: Relative activity a latent needs on a concept to score for it.

    Returns:
        ``[n_concepts, n_latents]`` scores (0 for latents that never fire, -1 for filtered ones).
    """
    n = mean_acts.shape[0]
    total = mean_acts.sum(0, keepdim=True)
    p = torch.where(total > 0, mean_acts / total.clamp_min(1e-12), torch.zeros_like(mean_acts))
    others = (p.sum(0, keepdim=True) - p) / max(n - 1, 1)
    scores = p - others
    if min_activity > 0:
        quiet = mean_acts < min_activity * mean_acts.amax(1, keepdim=True)
        scores = scores.masked_fill(quiet, -1.0)
    return scores


def select_by_quantile(scores: torch.Tensor, quantile: float) -> torch.Tensor:
    """Latents whose score is at or above the ``quantile`` of ``scores`` ``[n_latents]`` (SAeUron's selection)."""
    threshold = torch.quantile(scores.float(), quantile)
    return (scores >= threshold).nonzero().flatten()


class ConceptEraser:
    """A forward hook that erases concepts through an SAE; edits every row of the batch (both CFG halves).

    Args:
        sae: The trained SAE reading this block.
        latents: ``[m]`` latents to scale.
        concept_means: ``[m]`` mean activation of each latent on its concept's tokens.
        thresholds: ``[m]`` a token is edited where the latent exceeds this (its mean over all concepts).
        multiplier: Scale applied on the selected tokens (negative values push the concept away).
        scale_by_mean: Multiply by ``concept_means`` as well (the paper's rule ``z * mean_concept * multiplier``).
        reference_sign_slip: Reproduce the reference code's ``D(z') + D(z) - x``.
    """

    def __init__(
        self,
        sae: TopKSAE,
        latents: torch.Tensor,
        concept_means: torch.Tensor,
        thresholds: torch.Tensor,
        multiplier: float,
        scale_by_mean: bool = True,
        reference_sign_slip: bool = False,
    ):
        self.sae, self.latents = sae, latents.long()
        self.concept_means, self.thresholds = concept_means.float(), thresholds.float()
        self.multiplier, self.scale_by_mean, self.sign_slip = multiplier, scale_by_mean, reference_sign_slip
        self.edited_tokens = 0

    @torch.no_grad()
    def edit(self, x: torch.Tensor) -> torch.Tensor:
        """Erase in tokens ``x`` ``[N, d]``; returns ``[N, d]``.

        Fast path, exact: with ``z' = z`` off the erased latents ``L``, ``D(z') + (x - D(z)) = x + (z'_L - z_L)
        W_dec[L]``, so no full decode is needed, and ``z_L`` needs no full TopK either: ``z_l`` is ``relu(pre_l)``
        when fewer than ``k`` latents of the token score strictly higher, else 0. Thresholds are means of
        activations (>= 0), so only tokens with ``pre_l`` above the threshold can change; the full encoder runs on
        those candidates only and every other token is returned bit for bit. (Ties with the k-th pre-activation,
        where TopK's choice is arbitrary anyway, have probability zero for real-valued activations.)
        """
        sae = self.sae
        if self.sign_slip:  # D(z') + D(z) - x == x' + 2 (D(z) - x): touches every token
            z = topk_activation(sae.pre_acts(x), sae.k)
            return self._apply(x, z[:, self.latents]) + 2 * (sae.decode(z) - x)
        thresholds = self.thresholds.to(x.dtype)
        # (x - b_dec) W_enc + b_enc == x W_enc + (b_enc - b_dec W_enc): one fused multiply-add, no [N, d] copy
        bias = sae.b_enc - sae.b_dec @ sae.W_enc  # [n_latents]
        pre_l = torch.addmm(bias[self.latents], x, sae.W_enc[:, self.latents])  # [N, m]
        rows = (pre_l > thresholds.clamp_min(0)).any(dim=1).nonzero().flatten()
        out = x.clone()
        if len(rows):
            pre = torch.addmm(bias, x[rows], sae.W_enc)  # [n, n_latents]
            # re-read pre_l from the full product: the one-column product can round differently, and then a
            # latent could outrank itself in the count below
            cand_l = pre[:, self.latents]  # [n, m]
            if len(self.latents) <= 2:  # counting (int32) is ~3x cheaper than a TopK for one or two latents
                in_topk = torch.gt(pre.unsqueeze(1), cand_l.unsqueeze(2)).sum(-1, dtype=torch.int32) < sae.k
            else:
                in_topk = cand_l >= pre.topk(sae.k, dim=-1).values[:, -1:]
            z_l = torch.where(in_topk, cand_l.relu(), torch.zeros_like(cand_l))
            out[rows] += self._delta(z_l)
        return out

    def _delta(self, z_l: torch.Tensor) -> torch.Tensor:
        """``(z'_L - z_L) W_dec[L]`` ``[n, d]`` for codes ``z_l`` ``[n, m]`` on the erased latents."""
        selected = z_l > self.thresholds.to(z_l.dtype)
        means = self.concept_means.to(z_l.dtype)
        factor = self.multiplier * (means if self.scale_by_mean else torch.ones_like(means))
        self.edited_tokens += int(selected.any(dim=1).sum())
        return torch.where(selected, z_l * (factor - 1), torch.zeros_like(z_l)) @ self.sae.W_dec[self.latents]

    def _apply(self, x: torch.Tensor, z_l: torch.Tensor) -> torch.Tensor:
        """``x + (z'_L - z_L) W_dec[L]`` for tokens ``x`` ``[n, d]`` with codes ``z_l`` ``[n, m]`` on the latents."""
        return x + self._delta(z_l)

    def __call__(self, module: torch.nn.Module, inputs: tuple, output):
        hidden = output[0] if isinstance(output, tuple) else output
        b, c, h, w = hidden.shape
        tokens = hidden.permute(0, 2, 3, 1).reshape(-1, c)
        edited = self.edit(tokens).view(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        return (edited, *output[1:]) if isinstance(output, tuple) else edited


class ErasureStack:
    """Several :class:`ConceptEraser` applied in turn by one hook (sequential unlearning)."""

    def __init__(self, erasers: list[ConceptEraser]):
        self.erasers = erasers

    def __call__(self, module: torch.nn.Module, inputs: tuple, output):
        for eraser in self.erasers:
            output = eraser(module, inputs, output)
        return output
