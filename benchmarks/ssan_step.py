"""One SSAN split through the library (Lightning ``Trainer.fit`` on the full-batch DataModule)
against a plain PyTorch loop doing the same computation.

    python -m benchmarks.ssan_step [--task c2d] [--steps 3000] [--repeats 1] [--threads 1] \
        [--data ../shared/data] [--device cpu] [--row-space] [--fused]

Both paths start from the same initial weights and the same tensors (SURF of the source, DeCAF6
of the target, pre-drawn split 0) and run ``--steps`` full-batch steps of SSAN: the three
projector forwards, the classifier, L_S + L_ISC + gamma L_D + beta L_ESA with the DANN GRL
schedule, backward, nesterov SGD, and the per-step unlabelled-target accuracy for the
best-over-training report. The library path is configured as ``experiment=hda/ssan task=surf_decaf_<task>``
(logging every 100 steps, no logger, no checkpoints, no progress bar; one validation at the end).
The plain loop computes the same losses with the same functions. ``--row-space`` gives each
domain in its row-space coordinates (``data.row_space=true``, as ``experiment=hda/_protocol`` does);
``--fused`` uses the fused SGD kernel (``optimizer.fused=true``), in both paths. Reported: total wall time of
each path (median over ``--repeats`` alternating runs), seconds per step, and the ratio.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F

from benchmarks.hda_partitions import LETTER
from lightning_da.data import FullBatchDataModule, feature_domain
from lightning_da.losses.semantic import agreement_mask, centroid_alignment_loss, implicit_semantic_correlation_loss
from lightning_da.methods import SSAN
from lightning_da.models.grl import grl_coefficient, reverse_grad


def make(task: str, data: str, steps: int, row_space: bool = False, fused: bool = False):
    surf = {"amazon": "amazon", "caltech": "Caltech10", "dslr": "dslr", "webcam": "webcam"}
    decaf = {"dslr": "dslr_decaf", "webcam": "Webcam_decaf"}
    s, t = LETTER[task[0]], LETTER[task[2]]
    root = f"{data}/office_caltech10/features"
    domains = {"source": partial(feature_domain, name="source", path=f"surf/{surf[s]}_SURF_L10.mat", label_base=1),
               "target": partial(feature_domain, name="target", path=f"decaf6/{decaf[t]}.mat", features_key="fea",
                                 labels_key="gnd", label_base=1, splits_key="target_idx")}
    dm = FullBatchDataModule(domains, "source", "target", root=root, labeled="file", split=0, steps_per_epoch=steps,
                             row_space=row_space)
    L.seed_everything(2020, verbose=False)
    model = SSAN(num_classes=dm.num_classes, **dm.model_kwargs,
                 optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True,
                                   fused=fused or None))
    return dm, model


def run_library(dm, model, steps: int, device: str) -> float:
    trainer = L.Trainer(accelerator=device, devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=100,
                        num_sanity_val_steps=0)
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    if device == "gpu":
        torch.cuda.synchronize()
    assert trainer.global_step == steps
    return time.perf_counter() - t0


def run_plain(dm, model, steps: int, device: str, fused: bool = False) -> float:
    dev = torch.device("cuda" if device == "gpu" else "cpu")
    model = model.to(dev)
    proj, clf, disc = model.backbone.projectors, model.classifier, model.discriminator
    params = [p for m in (proj, clf, disc) for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True, fused=fused or None)
    (xs, ys), (xl, yl), (xu, _) = [tuple(t.to(dev) for t in v) for v in dm.train_batch.values()]
    yu = dm.eval_batch[1].to(dev)
    C = dm.num_classes
    best = torch.zeros((), device=dev)
    t0 = time.perf_counter()
    for step in range(steps):
        f_s, f_l, f_u = proj["source"](xs), proj["target"](xl), proj["target"](xu)
        z_s, z_l, z_u = clf(torch.cat([f_s, f_l, f_u])).split([len(xs), len(xl), len(xu)])
        loss = F.cross_entropy(z_s, ys) + implicit_semantic_correlation_loss(z_s, ys, z_l, yl, 0.1, 5.0)[0]
        d = disc(reverse_grad(torch.cat([f_s, f_l, f_u]), grl_coefficient(step, steps, 10.0)))
        domain = torch.cat([d.new_ones(len(xs)), d.new_zeros(len(xl) + len(xu))])
        loss = loss + 0.1 * F.binary_cross_entropy_with_logits(d, domain)
        y_u, keep = agreement_mask(z_u, f_u, torch.cat([f_s, f_l]), torch.cat([ys, yl]), C, "Cosine", step)
        loss = loss + 0.004 * centroid_alignment_loss(f_s, ys, torch.cat([f_l, f_u]), torch.cat([yl, y_u]), C, "three",
                                                      torch.cat([keep.new_ones(len(xl)), keep]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        best = torch.maximum(best, (z_u.detach().argmax(1) == yu).float().mean())
    with torch.no_grad():  # the final weights, as the library's closing validation
        best = torch.maximum(best, (clf(proj["target"](xu)).argmax(1) == yu).float().mean())
    float(best)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="c2d", help="SURF -> DeCAF6 task, e.g. c2d, a2w")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--row-space", action="store_true", help="row-space coordinates (data.row_space=true)")
    ap.add_argument("--fused", action="store_true", help="fused SGD (optimizer.fused=true)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dm, model = make(args.task, args.data, args.steps, args.row_space, args.fused)
    lib, plain = [], []
    for _ in range(args.repeats):
        plain.append(run_plain(dm, copy.deepcopy(model), args.steps, args.device, args.fused))
        lib.append(run_library(dm, copy.deepcopy(model), args.steps, args.device))
    lib_t, plain_t = statistics.median(lib), statistics.median(plain)
    print(f"SSAN {args.task}, {args.steps} full-batch steps, {args.threads} thread(s), {args.device}, "
          f"row space {args.row_space}, fused SGD {args.fused}: input dims {dm.input_dims}, "
          f"n_s={len(dm.train_batch['source'][1])} n_l={len(dm.labeled_index)} n_u={len(dm.unlabeled_index)}")
    print(f"plain PyTorch loop: {plain_t:.1f} s ({1000 * plain_t / args.steps:.1f} ms/step)  runs {[round(t, 1) for t in plain]}")
    print(f"library (Trainer):  {lib_t:.1f} s ({1000 * lib_t / args.steps:.1f} ms/step)  runs {[round(t, 1) for t in lib]}")
    print(f"library / plain = {lib_t / plain_t:.3f}")


if __name__ == "__main__":
    main()
