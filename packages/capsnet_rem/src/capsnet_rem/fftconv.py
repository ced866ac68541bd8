"""Strided valid 2-D convolution (cross-correlation, as ``F.conv2d``) in the frequency domain, explicit backward.

Why: the primary-capsule convolution of Sabour's CapsNet (256 -> 256 channels, 9x9, stride 2, 20x20 -> 6x6) is
most of a CPU training step, and oneDNN runs it at about half of the CPU's GEMM rate. Written as below it is a
few large batched matrix products per pass with a third of the direct method's multiply-adds.

**Polyphase.** Per spatial axis (the second is the same), a stride-``s`` valid correlation with ``k`` taps,

    y[i] = sum_{u < k} x[s i + u] w[u],      i < n_out = (n - k) // s + 1,

splits ``u = s a + p`` (phase ``p < s``, tap ``a < k' = ceil(k / s)``; taps past ``k`` are zero) into ``s``
stride-1 correlations of the polyphase components ``x_p[m] = x[s m + p]`` and ``w_p[a] = w[s a + p]``:

    y[i] = sum_p sum_{a < k'} x_p[i + a] w_p[a].

Over both axes that is one stride-1 correlation with ``K = C s_h s_w`` input channels and a ``k'_h x k'_w``
kernel on phase images of ``n' = n_out + k' - 1`` samples (input samples no output reads are dropped, missing ones
are zero).

**DFT.** A stride-1 correlation of ``n'`` samples equals the circular correlation of length ``n'`` at
``i < n_out`` (``i + a <= n' - 1`` never wraps around), and circular correlation is a product of DFTs (size
``n'_h x n'_w``; the signals are real, so the half spectrum without its conjugate duplicates suffices:
``F`` frequencies, see :func:`unique_frequencies`):

    Y_bo[f] = sum_k X_bk[f] conj(W_ok[f]).

The backward passes are the same kind of product. With ``G`` the DFT of the output gradient zero-padded to
``n'``, the input gradient is a full convolution (length ``n_out + k' - 1 = n'``: no wrap-around either) and the
weight gradient a correlation whose first ``k'`` lags do not wrap:

    dX_bk[f] = sum_o G_bo[f] W_ok[f],      dW_ok[f] = sum_b conj(G_bo[f]) X_bk[f].

For the CapsNet primary convolution: ``n' = 10 x 10``, ``F = 52``, ``K = 1024``; each pass is 52 complex
``[128, 1024] x [1024, 256]`` products = 14 GFLOP, against 49 GFLOP for the direct forward.

**Layout.** Spectra are stored as real tensors ``[2, F, rows, cols]`` (real part, imaginary part), so every
complex product is four real batched matrix products over the frequency axis (a conjugate is a sign, a transpose
is free in BLAS), accumulated in place. The DFT itself is applied as a dense real matrix ``[2F, n'_h n'_w]``
(built once per size from ``torch.fft``, so its conventions are torch's), and its inverse (``[n'_h n'_w, 2F]``,
``irfft2`` for spectra of real images) likewise; only the rows/columns of the valid outputs, the kernel
taps or the gradient's nonzero samples are used. On phase images of about 10 x 10 one matrix product over all
``B K`` images is faster than an FFT call and writes the spectrum directly in the ``[2, F, B, K]`` layout the
products need, so spectra are never permuted. Its cost grows as ``(n'_h n'_w)^2`` per image: this is an
algorithm for many channels on small feature maps (capsule layers), not for large images.

Shapes, with ``K = C s_h s_w``: phase images ``[B K, n'_h n'_w]`` and ``[O K, k'_h k'_w]`` (copies of the input
and kernel), spectra ``X`` ``[2, F, B, K]``, ``W`` ``[2, F, O, K]``, ``Y`` and ``G`` ``[2, F, B, O]``. Only ``x``
and ``weight`` are saved for the backward, as ``F.conv2d`` does; each gradient recomputes the one spectrum it needs.

Pure torch (CPU or CUDA), float32 or float64; padding 0, dilation 1, groups 1. The backward is not itself
differentiable (no double backward). Under ``torch.compile`` the (cached) DFT matrices are fetched outside the
graph: one graph break per call.
"""

from __future__ import annotations

import functools

import torch
from torch.nn import functional as F


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def unique_frequencies(size: tuple[int, int]) -> torch.Tensor:
    """Flat indices into the ``rfft2`` half spectrum ``[n_h, n_w // 2 + 1]`` of a real image, minus conjugate pairs.

    In the columns ``k_w = 0`` and ``k_w = n_w / 2`` (even ``n_w``) the half spectrum still holds both ``X[k_h]`` and
    ``X[-k_h] = conj(X[k_h])``; keeping ``k_h <= n_h / 2`` there drops 8 of the 60 frequencies of a 10 x 10 image.
    Products of such spectra keep the symmetry, so the dropped entries are never needed.
    """
    nh, nw = size
    kh = torch.arange(nh)[:, None].expand(nh, nw // 2 + 1)
    kw = torch.arange(nw // 2 + 1)[None, :].expand(nh, nw // 2 + 1)
    self_paired_column = (kw == 0) | (2 * kw == nw)
    return ((~self_paired_column) | (2 * kh <= nh)).flatten().nonzero().flatten()


@torch.compiler.disable  # constants: torch.compile should call the cache, not trace the construction
@functools.lru_cache(maxsize=32)
def dft_matrices(size: tuple[int, int], dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Real forms of the 2-D DFT of real ``size = (n_h, n_w)`` images and of its inverse.

    Returns:
        ``forward`` ``[2F, n_h n_w]``: ``forward @ x.flatten()`` = real parts then imaginary parts of
        ``torch.fft.rfft2(x).flatten()[unique_frequencies(size)]`` (``F`` of them); ``inverse`` ``[n_h n_w, 2F]``
        with ``inverse @ forward = I`` (the pseudo-inverse: the imaginary rows of the real-valued frequencies are
        zero, the other ``n_h n_w`` rows are an invertible square system), i.e. ``irfft2`` of a spectrum of a real
        image given as ``[real; imag]``.
    """
    pixels = size[0] * size[1]
    spec = torch.fft.rfft2(torch.eye(pixels, dtype=torch.float64).view(pixels, *size)).flatten(1)
    spec = spec[:, unique_frequencies(size)]  # [P, F]
    forward = torch.cat([spec.real, spec.imag], 1).T
    inverse = torch.linalg.pinv(forward)
    return forward.to(device, dtype).contiguous(), inverse.to(device, dtype).contiguous()


def _to_phases(t: torch.Tensor, size: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """``[N, C, H, W]`` -> polyphase images ``[N * C * s_h * s_w, size_h * size_w]`` (a copy).

    ``out[(b, c, p, q), m * size_w + n] = t[b, c, s_h m + p, s_w n + q]`` (zero where that is outside ``t``).
    Pixels last: the copy reads runs of ``size_w`` samples, and the DFT matrix product reads it transposed.
    """
    (nh, nw), (sh, sw) = size, stride
    n, c = t.shape[:2]
    t = t[..., : nh * sh, : nw * sw]
    if t.shape[-2:] != (nh * sh, nw * sw):  # F.pad would copy even when there is nothing to pad
        t = F.pad(t, (0, nw * sw - t.shape[-1], 0, nh * sh - t.shape[-2]))
    return t.reshape(n, c, nh, sh, nw, sw).permute(0, 1, 3, 5, 2, 4).reshape(n * c * sh * sw, nh * nw)


def _from_phases(p: torch.Tensor, size: tuple[int, int], n: int, c: int, stride, shape) -> torch.Tensor:
    """Inverse of :func:`_to_phases`: ``[N * C * s_h * s_w, size_h * size_w]`` -> ``[N, C, *shape]``.

    Samples past ``shape`` are dropped, missing ones are zero (no output depends on them).
    """
    (nh, nw), (sh, sw), (h, w) = size, stride, shape
    t = p.view(n, c, sh, sw, nh, nw).permute(0, 1, 4, 2, 5, 3).reshape(n, c, nh * sh, nw * sw)
    if nh * sh >= h and nw * sw >= w:
        return t[..., :h, :w].contiguous()
    out = t.new_zeros(n, c, h, w)
    out[..., : nh * sh, : nw * sw] = t[..., :h, :w]
    return out


def _complex_bmm(a: torch.Tensor, b: torch.Tensor, conj_a: bool = False, conj_b: bool = False) -> torch.Tensor:
    """Per-frequency complex products of spectra in real form: ``a`` ``[2, F, n, k]``, ``b`` ``[2, F, k, m]``.

    Returns ``[2, F, n, m]``: ``op(a)[f] @ op(b)[f]`` with ``op`` the complex conjugate where asked. Four real
    batched matrix products accumulated in place; ``a`` and ``b`` may be transposed views (BLAS reads them as
    they are). (Gauss's three-product form was slower here: its elementwise sums cost more than the product saved.)
    """
    (ar, ai), (br, bi) = a, b
    sa, sb = (-1 if conj_a else 1), (-1 if conj_b else 1)
    out = ar.new_empty(2, ar.shape[0], ar.shape[1], br.shape[2])
    re, im = out
    # (ar + i sa ai)(br + i sb bi) = ar br - sa sb ai bi + i (sb ar bi + sa ai br); beta=0 ignores the empty memory
    re.baddbmm_(ar, br, beta=0).baddbmm_(ai, bi, alpha=-sa * sb)
    im.baddbmm_(ar, bi, beta=0, alpha=sb).baddbmm_(ai, br, alpha=sa)
    return out


def _spectrum(t: torch.Tensor, fwd: torch.Tensor, size: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """Spectra ``[2, F, N, K]`` (``K = (c, p, q)``) of the polyphase images of ``t`` ``[N, C, H, W]``.

    ``fwd`` is the DFT matrix restricted to the ``size`` pixels the phase images occupy (all of them for the input,
    the kernel taps for the weights); it multiplies the transposed phase images, so the result is already in the
    layout of the per-frequency products.
    """
    n, c = t.shape[:2]
    return (fwd @ _to_phases(t, size, stride).T).view(2, -1, n, c * stride[0] * stride[1])


def _pixels(size: tuple[int, int], crop: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Flat indices of the top-left ``crop`` pixels of a ``size`` image (valid outputs, kernel taps)."""
    return torch.arange(size[0] * size[1], device=device).view(size)[: crop[0], : crop[1]].flatten()


class _FFTConv2d(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, stride)`` (valid padding) in the frequency domain; see the module docstring.

    Saves only ``x`` and ``weight``, as ``F.conv2d`` does: the backward recomputes the one spectrum each gradient
    needs (one matrix product and a copy), which costs less time than keeping both spectra costs memory (for the
    CapsNet primary convolution they are 189 MB against 74 MB of input and kernel).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, taps, fwd, inv):
        o, kh, kw = weight.shape[0], *weight.shape[-2:]
        b, (h, w) = x.shape[0], x.shape[-2:]
        out_size = ((h - kh) // stride[0] + 1, (w - kw) // stride[1] + 1)
        size = (out_size[0] + taps[0] - 1, out_size[1] + taps[1] - 1)
        xs = _spectrum(x, fwd, size, stride)  # [2, F, B, K]
        ws = _spectrum(weight, fwd[:, _pixels(size, taps, x.device)], taps, stride)  # [2, F, O, K]
        ys = _complex_bmm(xs, ws.transpose(2, 3), conj_b=True)  # [2, F, B, O]: sum_k X conj(W)
        del xs, ws
        y = ys.view(2 * ys.shape[1], b * o).T @ inv[_pixels(size, out_size, x.device)].T  # [B * O, outputs]
        y = y.view(b, o, *out_size)
        if bias is not None:
            y.add_(bias.view(1, o, 1, 1))
        ctx.save_for_backward(x, weight, fwd, inv)
        ctx.geometry = (stride, size, taps, bias is not None)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight, fwd, inv = ctx.saved_tensors
        stride, size, taps, has_bias = ctx.geometry
        (b, c, h, w), (o, kh, kw) = x.shape, (weight.shape[0], *weight.shape[-2:])
        tap_pix, out_pix = _pixels(size, taps, x.device), _pixels(size, grad.shape[-2:], x.device)
        grad_x = grad_w = grad_b = None
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if need_x or need_w:
            # the DFT of the gradient zero-padded to the phase size reads only its nonzero samples
            gs = (fwd[:, out_pix] @ grad.reshape(b * o, -1).T).view(2, -1, b, o)  # [2, F, B, O]
        if need_w:
            dws = _complex_bmm(gs.transpose(2, 3), _spectrum(x, fwd, size, stride), conj_a=True)  # sum_b conj(G) X
            dw = dws.view(2 * dws.shape[1], -1).T @ inv[tap_pix].T  # [O * K, taps]
            del dws
            grad_w = _from_phases(dw, taps, o, c, stride, (kh, kw))
            del dw
        if need_x:
            dxs = _complex_bmm(gs, _spectrum(weight, fwd[:, tap_pix], taps, stride))  # full convolution sum_o G W
            dx = dxs.view(2 * dxs.shape[1], -1).T @ inv.T  # [B * K, pixels]
            del dxs
            grad_x = _from_phases(dx, size, b, c, stride, (h, w))
        if need_b and has_bias:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None


def fft_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
) -> torch.Tensor:
    """Valid 2-D cross-correlation ``F.conv2d(x, weight, bias, stride)`` computed in the frequency domain.

    Pays off with many channels on small maps (the per-frequency products cost ``B O C`` per frequency, the
    transforms ``(B C + O C + B O) (n'_h n'_w)^2``); see the module docstring for the identity and the layout.

    Args:
        x: Input ``[B, C, H, W]`` (float32 or float64).
        weight: Kernel ``[O, C, k_h, k_w]``, same dtype and device.
        bias: Optional ``[O]``.
        stride: ``s`` or ``(s_h, s_w)``, each >= 1.

    Returns:
        ``[B, O, (H - k_h) // s_h + 1, (W - k_w) // s_w + 1]``; gradients reach ``x``, ``weight`` and ``bias``.
    """
    stride = _pair(stride)
    if min(stride) < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if x.ndim != 4 or weight.ndim != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"expected x [B, C, H, W], weight [O, C, kh, kw]; got {tuple(x.shape)}, {tuple(weight.shape)}")
    (kh, kw), (h, w), (sh, sw) = weight.shape[-2:], x.shape[-2:], stride
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"kernel {(kh, kw)} larger than the input {(h, w)}")
    taps = (-(-kh // sh), -(-kw // sw))  # kernel taps per phase
    fwd, inv = dft_matrices((ho + taps[0] - 1, wo + taps[1] - 1), x.dtype, x.device)  # phase image = DFT size
    return _FFTConv2d.apply(x, weight, bias, stride, taps, fwd, inv)


CONV_ALGORITHMS = ("direct", "fft")
