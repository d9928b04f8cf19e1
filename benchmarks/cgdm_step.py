"""Time per training batch of CGDM against MCD, and of the gradient discrepancy against a naive
per-parameter implementation.

    python -m benchmarks.cgdm_step [--batches 30] [--threads 2] [--channels-last]

Both methods use the digits setting of ``conf/experiment/digits/cgdm.yaml`` (LeNetBN at 32 px,
heads 100-100, num_k 4, batch 32 + 32) on random inputs, with CGDM's pseudo labels filled so that
every term (entropy, weighted CE, L_GD) is active. One batch = steps A, B and num_k C steps.
The L_GD timing compares ``losses.bi_classifier.gradient_discrepancy`` (one ``autograd.grad`` per
loss over all tensors) with a loop that calls ``autograd.grad`` per tensor (the original's form),
forward and backward included.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch
import torch.nn.functional as F

from lightning_da.losses.bi_classifier import gradient_discrepancy, weighted_cross_entropy
from lightning_da.methods import CGDM, MCD
from lightning_da.models import build_backbone
from lightning_da.pseudo_labels import PseudoLabelStore

HEAD = {"hidden": [100, 100], "dropout": 0.5, "dropout_last": True}


def make(cls, channels_last: bool = False, **kw):
    torch.manual_seed(0)
    model = cls(build_backbone("lenet_bn", input_size=32), 10, optimizer=partial(torch.optim.SGD, lr=1e-3, momentum=0.9),
                bottleneck={"dim": 0}, head=HEAD, num_k=4, channels_last=channels_last, **kw)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.manual_backward = lambda loss: loss.backward()
    if isinstance(model, CGDM):
        model.pseudo_labels = PseudoLabelStore(64, 10)
        model.pseudo_labels.replace_all(torch.randint(0, 10, (64,)))
        model.pseudo_cfg["start_epoch"] = 0
        model._pseudo_ready = True
    return model


def time_batches(model, batches: int) -> float:
    opt_g, opt_f = model.configure_optimizers()
    batch = {"source": (torch.randn(32, 1, 32, 32), torch.randint(0, 10, (32,))),
             "target": (torch.randn(32, 1, 32, 32), torch.arange(32))}
    for i in range(batches + 3):
        if i == 3:
            t0 = time.perf_counter()
        model.step_a(batch, opt_g, opt_f)
        model.step_b(batch, opt_f)
        model.step_c(batch, opt_g)
    return (time.perf_counter() - t0) / batches


def naive_gradient_discrepancy(source_loss, target_loss, params):
    terms = []
    for p in params:
        gs = torch.autograd.grad(source_loss, p, create_graph=True, retain_graph=True)[0]
        gt = torch.autograd.grad(target_loss, p, create_graph=True, retain_graph=True)[0]
        if gs.dim() >= 2:
            terms.append(1 - F.cosine_similarity(gt.flatten(1), gs.flatten(1), dim=1).mean())
        else:
            terms.append(1 - F.cosine_similarity(gt, gs, dim=0))
    return torch.stack(terms).mean()


def time_gd(fn, repeats: int) -> float:
    model = make(CGDM)
    x = torch.randn(64, 1, 32, 32)
    ys, yt = torch.randint(0, 10, (32,)), torch.randint(0, 10, (32,))
    for i in range(repeats + 3):
        if i == 3:
            t0 = time.perf_counter()
        f = model.features(x)
        loss = 0
        for head in (model.classifier, model.classifier2):
            z = head(f)
            loss = loss + fn(F.cross_entropy(z[:32], ys), weighted_cross_entropy(z[32:], yt), list(head.parameters()))
        model.zero_grad()
        loss.backward()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true", help="model and batches in channels_last memory format")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cl = args.channels_last
    mcd, cgdm = time_batches(make(MCD, cl), args.batches), time_batches(make(CGDM, cl), args.batches)
    print(f"MCD:  {1000 * mcd:.1f} ms per batch (A + B + 4 x C)")
    print(f"CGDM: {1000 * cgdm:.1f} ms per batch  -> {cgdm / mcd:.2f}x MCD")
    ours, naive = time_gd(gradient_discrepancy, args.batches), time_gd(naive_gradient_discrepancy, args.batches)
    print(f"L_GD forward+backward, both heads: one autograd.grad per loss {1000 * ours:.1f} ms, "
          f"per-tensor autograd.grad {1000 * naive:.1f} ms -> {naive / ours:.2f}x")


if __name__ == "__main__":
    main()
