"""Float64 oracle for P-pooling, written the obvious way (gather every window, softmax).

Independent of the package's kernels: it gathers the k*k window elements by index,
masks positions outside the input, and evaluates y = sum softmax(alpha * log max(x, EPS)) * x
with plain autograd-able ops. Gradients of this function (via autograd) are the reference
for the analytic backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-6  # the documented floor (lit_ppool.functional.EPS); restated here on purpose


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def expected_p_pool2d(
    x: Tensor,
    alpha,
    kernel_size,
    stride=None,
    padding=0,
    dilation=1,
    ceil_mode: bool = False,
) -> Tensor:
    """P-pooling in float64. ``x`` is (N, C, H, W) or (C, H, W); alpha a float, a (1,)/(C,) tensor or a per-window map."""
    unbatched = x.dim() == 3
    x = (x.unsqueeze(0) if unbatched else x).double()
    (kh, kw), (ph, pw), (dh, dw) = _pair(kernel_size), _pair(padding), _pair(dilation)
    sh, sw = _pair(stride) if stride is not None else (kh, kw)
    n, c, h, w = x.shape
    # torch's own pooling decides the output size: the oracle borrows nothing from the package
    ho, wo = F.max_pool2d(torch.zeros(1, 1, h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode).shape[-2:]
    rows = torch.arange(ho)[:, None] * sh - ph + torch.arange(kh)[None, :] * dh  # (ho, kh)
    cols = torch.arange(wo)[:, None] * sw - pw + torch.arange(kw)[None, :] * dw  # (wo, kw)
    row_ok = (rows >= 0) & (rows < h)
    col_ok = (cols >= 0) & (cols < w)
    gathered = x[:, :, rows.clamp(0, h - 1)[:, None, :, None], cols.clamp(0, w - 1)[None, :, None, :]]
    gathered = gathered.reshape(n, c, ho, wo, kh * kw)  # (N, C, ho, wo, k*k)
    valid = (row_ok[:, None, :, None] & col_ok[None, :, None, :]).reshape(ho, wo, kh * kw)

    a = alpha if torch.is_tensor(alpha) else torch.tensor(float(alpha))
    if a.dim() >= 3:  # one alpha per window: (N, C, ho, wo), or (C, ho, wo) unbatched, or what broadcasts to it
        a = a.double().unsqueeze(-1)
        a = a.unsqueeze(0) if a.dim() == 4 else a
    else:
        a = a.double().reshape(-1)
        a = a.view(1, -1, 1, 1, 1) if a.numel() > 1 else a.view(())
    logits = a * torch.log(gathered.clamp_min(EPS))
    logits = logits.masked_fill(~valid, float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    out = (weights * gathered.masked_fill(~valid, 0.0)).sum(-1)
    return out.squeeze(0) if unbatched else out
