"""Residual Sparse Training (RST, Zhou & Zhou, TCSVT 2024, eq. 15-17 and Alg. 1-2).

After every optimiser step each weight of the encoder that moved no further than ``tau`` from its
pretrained value goes back to it (elementwise, recomputed every step; optimiser state untouched):

    w <- w        if |w - w0| > tau
    w <- w0       otherwise

so only a sparse residual ``w - w0`` has to be stored next to the (dense) task head. The number of
downstream parameters is ``DSP = nnz(w - w0) + numel(head)``.

The sparse checkpoint (:func:`save_sparse_checkpoint`) holds each encoder parameter's residual as a
sparse COO tensor plus the head's state dict; :func:`load_sparse_checkpoint` rebuilds the encoder as
``w0 + residual``. Where floating point makes ``w0 + (w - w0)`` differ from ``w`` in the last bit, the
exact values are stored as well (``exact``), so the rebuilt model equals the trained one bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualSparseTraining:
    """The RST mask of ``encoder`` against its weights at construction (the pretrained ``w0``)."""

    def __init__(self, encoder: nn.Module, tau: float = 1e-6):
        if tau < 0:
            raise ValueError(f"rst.tau must be >= 0, got {tau}")
        self.tau = float(tau)
        self.reference = {n: p.detach().clone() for n, p in encoder.named_parameters()}
        if not self.reference:
            raise ValueError("RST needs an encoder with parameters")

    def _ref(self, name: str, like: torch.Tensor) -> torch.Tensor:
        w0 = self.reference[name]
        if w0.device != like.device:  # moved once, with the model
            w0 = self.reference[name] = w0.to(like.device)
        return w0

    @torch.no_grad()
    def reset_small_changes(self, encoder: nn.Module) -> None:
        """``w <- w0`` wherever ``|w - w0| <= tau`` (after an optimiser step)."""
        for name, p in encoder.named_parameters():
            w0 = self._ref(name, p)
            p.copy_(torch.where((p - w0).abs() > self.tau, p, w0))

    @torch.no_grad()
    def changed(self, encoder: nn.Module) -> int:
        """``nnz(w - w0)`` over the encoder."""
        return sum(int((p != self._ref(n, p)).sum()) for n, p in encoder.named_parameters())

    def dsp(self, encoder: nn.Module, head: nn.Module) -> float:
        """Downstream parameters in millions: changed encoder weights plus every head parameter."""
        return (self.changed(encoder) + sum(p.numel() for p in head.parameters())) / 1e6

    @torch.no_grad()
    def sparse_residuals(self, encoder: nn.Module) -> dict:
        """``{name: {"residual": sparse (w - w0), "exact": None | (indices, values)}}``."""
        out = {}
        for name, p in encoder.named_parameters():
            w, w0 = p.detach().cpu(), self.reference[name].cpu()
            residual = (w - w0).to_sparse()
            rebuilt = w0 + residual.to_dense()
            off = (rebuilt != w).nonzero(as_tuple=False)
            exact = None if len(off) == 0 else (off, w[tuple(off.t())])
            out[name] = {"residual": residual, "exact": exact}
        return out


def save_sparse_checkpoint(path: str, rst: ResidualSparseTraining, encoder: nn.Module, head: nn.Module, **meta) -> None:
    """Write the encoder's sparse residuals and the head's state dict to ``path``."""
    torch.save({"format": "lightning_da.rst/1", "tau": rst.tau, "encoder_residuals": rst.sparse_residuals(encoder),
                "head_state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()}, "meta": meta}, path)


@torch.no_grad()
def load_sparse_checkpoint(path: str, encoder: nn.Module, head: nn.Module) -> dict:
    """Rebuild ``encoder`` (holding the pretrained weights ``w0``) as ``w0 + residual`` and load the
    head; returns the checkpoint's metadata. Raises if the parameter names do not match."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("format") != "lightning_da.rst/1":
        raise ValueError(f"{path} is not an RST sparse checkpoint (no 'lightning_da.rst/1' format tag)")
    residuals = ckpt["encoder_residuals"]
    params = dict(encoder.named_parameters())
    if set(params) != set(residuals):
        missing, extra = sorted(set(params) - set(residuals)), sorted(set(residuals) - set(params))
        raise ValueError(f"{path} does not fit this encoder: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, p in params.items():
        entry = residuals[name]
        w = p.detach().cpu() + entry["residual"].to_dense()
        if entry["exact"] is not None:
            idx, values = entry["exact"]
            w[tuple(idx.t())] = values
        p.copy_(w.to(p.device))
    head.load_state_dict(ckpt["head_state_dict"])
    return ckpt.get("meta", {})
