"""A small text-conditioned pixel-space diffusion model (the CPU-scale stand-in for Stable Diffusion 1.5).

A diffusers ``UNet2DConditionModel`` whose ``up_blocks.1.attentions.1`` exists (the block SAEmnesia reads in SD1.5),
a word-level tokenizer over a local vocabulary and a one-layer transformer text encoder. Cosine noise schedule,
epsilon prediction, DDIM sampling with classifier-free guidance (batch order ``[unconditional; conditional]``, as in
diffusers' pipelines).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from torch import nn

from saemnesia.toyworld import OBJECTS, STYLE_NAMES

TEMPLATE_WORDS = ("<pad>", "an", "image", "of", "in", "style", ".")
SD_BLOCK = "up_blocks.1.attentions.1"


def make_prompt(obj: str, style: str | None = None) -> str:
    """UnlearnCanvas's prompt: ``"An image of {obj} in {style} style."`` or ``"An image of {obj}."``."""
    return f"An image of {obj} in {style} style." if style else f"An image of {obj}."


class LocalTokenizer:
    """Word-level tokenizer over a fixed vocabulary (no hub download).

    Args:
        words: Vocabulary; index 0 must be ``"<pad>"``.
        length: Every prompt is padded/cut to this many tokens.
    """

    def __init__(self, words: Sequence[str] = TEMPLATE_WORDS + OBJECTS + STYLE_NAMES, length: int = 8):
        if words[0] != "<pad>":
            raise ValueError("the first word of the vocabulary must be '<pad>'")
        self.words, self.length = list(words), length
        self.ids = {w: i for i, w in enumerate(self.words)}

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        """Token ids ``[B, length]`` of ``prompts`` (the empty prompt is all padding)."""
        out = torch.zeros(len(prompts), self.length, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            words = prompt.lower().replace(".", " .").split()
            unknown = [w for w in words if w not in self.ids]
            if unknown:
                raise ValueError(f"words {unknown} are not in the local vocabulary")
            ids = [self.ids[w] for w in words][: self.length]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


class TinyTextEncoder(nn.Module):
    """Token embeddings + positions + one transformer layer: ids ``[B, L]`` -> states ``[B, L, dim]``."""

    def __init__(self, vocab_size: int, length: int = 8, dim: int = 64, heads: int = 4):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Parameter(torch.zeros(length, dim))
        self.layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.layer(self.tokens(ids) + self.positions))


def build_unet(
    sample_size: int = 16,
    channels: Sequence[int] = (32, 64),
    cross_attention_dim: int = 64,
    in_channels: int = 3,
    attention_levels: Sequence[int] = (0,),
) -> UNet2DConditionModel:
    """A small UNet2DConditionModel whose ``up_blocks.1`` has cross-attention (like SD's read-out block).

    Args:
        sample_size: Image side.
        channels: Block widths, one per resolution level (level 0 is full resolution).
        cross_attention_dim: Text-state width.
        in_channels: Image channels.
        attention_levels: Resolution levels with cross-attention blocks (down block ``i`` and up block
            ``len(channels) - 1 - i``). ``(0,)`` with two levels puts ``up_blocks.1`` at full resolution (one token
            per pixel); ``(1,)`` with three levels puts it at half resolution, nearer SD1.5, whose
            ``up_blocks.1`` runs at a quarter of the latent side.
    """
    n = len(channels)
    if n - 2 not in attention_levels:
        raise ValueError(
            f"up_blocks.1 (resolution level {n - 2}) needs cross-attention: attention_levels {tuple(attention_levels)}"
        )
    down = tuple("CrossAttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in range(n))
    up = tuple("CrossAttnUpBlock2D" if n - 1 - j in attention_levels else "UpBlock2D" for j in range(n))
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=tuple(channels),
        layers_per_block=1,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def noise_schedulers(steps: int = 1000) -> tuple[DDPMScheduler, DDIMScheduler]:
    """Training (DDPM) and sampling (DDIM) schedulers sharing one cosine schedule with epsilon prediction."""
    kwargs = {"num_train_timesteps": steps, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon"}
    return DDPMScheduler(**kwargs), DDIMScheduler(**kwargs, clip_sample=True, set_alpha_to_one=True)


class TinyTextToImage(nn.Module):
    """Text encoder + UNet: predicts the noise ``[B, 3, H, W]`` of ``x_t`` at timesteps ``t`` given token ids."""

    def __init__(
        self,
        sample_size: int = 16,
        channels: Sequence[int] = (32, 64),
        dim: int = 64,
        attention_levels: Sequence[int] = (0,),
    ):
        super().__init__()
        self.tokenizer = LocalTokenizer()
        self.text = TinyTextEncoder(len(self.tokenizer.words), self.tokenizer.length, dim)
        self.unet = build_unet(sample_size, channels, dim, attention_levels=attention_levels)
        self.sample_size = sample_size

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t, encoder_hidden_states=self.text(ids)).sample

    @torch.no_grad()
    def sample(
        self, prompts: Sequence[str], scheduler: DDIMScheduler, steps: int = 25, guidance: float = 2.0, seed: int = 0
    ) -> torch.Tensor:
        """DDIM sampling with classifier-free guidance; images ``[B, 3, H, W]`` in [0, 1].

        The UNet sees the batch ``[unconditional; conditional]`` at every step, so hooks on its blocks see both
        halves in that order.
        """
        ids = self.tokenizer(list(prompts))
        null = self.tokenizer([""] * len(prompts))
        context = self.text(torch.cat([null, ids]))
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(len(prompts), 3, self.sample_size, self.sample_size, generator=gen)
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            eps = self.unet(torch.cat([x, x]), t, encoder_hidden_states=context).sample
            uncond, cond = eps.chunk(2)
            x = scheduler.step(uncond + guidance * (cond - uncond), t, x).prev_sample
        return ((x + 1) / 2).clamp(0, 1)
