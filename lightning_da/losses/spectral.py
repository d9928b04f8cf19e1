"""Batch spectral penalization (Chen et al., "Transferability vs. Discriminability: Batch Spectral
Penalization for Adversarial Domain Adaptation", ICML 2019).

With ``sigma_i(F)`` the i-th largest singular value of a batch's feature matrix ``F`` (``N x d``):

    L_BSP(F_s, F_t) = sum_{i=1..k} sigma_i(F_s)^2 + sigma_i(F_t)^2

k = 1 in the paper, its code (``BSP+CDAN.py``) and TLlib's ``BatchSpectralPenalizationLoss``.
"""

from __future__ import annotations

import torch


def batch_spectral_penalty(source: torch.Tensor, target: torch.Tensor, k: int = 1) -> torch.Tensor:
    """``sum_{i<=k} sigma_i(source)^2 + sigma_i(target)^2`` over the ``k`` largest singular values.

    The SVD runs in float32 (``svdvals`` has no half-precision kernels), so the penalty works under
    bf16/fp16 autocast too. The domains may have different batch sizes.
    """
    if k < 1:
        raise ValueError(f"the number of penalised singular values k must be >= 1, got {k}")
    s_s = torch.linalg.svdvals(source.float())[:k]
    s_t = torch.linalg.svdvals(target.float())[:k]
    return (s_s ** 2).sum() + (s_t ** 2).sum()
