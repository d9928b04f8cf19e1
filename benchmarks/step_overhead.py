"""Lightning's training step against a plain PyTorch loop doing the same work.

    python -m benchmarks.step_overhead [--steps 300] [--repeats 3] [--threads 2]

Both train the same DANN (LeNet, bottleneck 500, discriminator 500, batch 32 + 32 on the bundled
MNIST -> USPS digits) from the same initial weights, on the same DataModule loaders, with the same
SGD + inv schedule and GRL schedule. The plain loop does forward, loss, backward, optimiser and
scheduler steps; Lightning runs ``DANN.training_step`` through ``Trainer.fit`` with logging every 50
steps (as configured by default) but without checkpoints, validation or a progress bar. The time per
step is measured after ``warmup`` steps; the median over ``repeats`` alternating runs is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F

from lightning_da.data import DADataModule
from lightning_da.data.digits import bundled
from lightning_da.losses import dann_loss
from lightning_da.methods import DANN
from lightning_da.models import build_backbone
from lightning_da.optim import inv_schedule


def make(seed: int = 0):
    L.seed_everything(seed, workers=True, verbose=False)
    dm = DADataModule({"mnist": partial(bundled, "mnist"), "usps": partial(bundled, "usps")}, "mnist", "usps",
                      batch_size=32, iters_per_epoch=10_000, seed=seed)
    model = DANN(build_backbone("lenet"), dm.num_classes,
                 optimizer=partial(torch.optim.SGD, lr=0.01, momentum=0.9, weight_decay=1e-3, nesterov=True),
                 scheduler=partial(inv_schedule, gamma=0.001, power=0.75),
                 bottleneck={"dim": 500, "batch_norm": False, "dropout": 0.5}, discriminator={"hidden": 500})
    return dm, model


class StepTimer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.t0 = warmup, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.t1 = time.perf_counter()


def time_lightning(steps: int, warmup: int) -> float:
    dm, model = make()
    timer = StepTimer(warmup)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=L.pytorch.loggers.CSVLogger("/tmp/step_overhead"),
                        log_every_n_steps=50, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        callbacks=[timer], use_distributed_sampler=False)
    trainer.fit(model, datamodule=dm)
    return (timer.t1 - timer.t0) / (steps - warmup)


def time_plain(steps: int, warmup: int) -> float:
    dm, model = make()
    dm.setup("fit")
    loader = dm.train_dataloader()
    opt = torch.optim.SGD([{"params": m.parameters(), "lr": 0.01} for m in
                           (model.backbone, model.bottleneck, model.classifier, model.discriminator)],
                          lr=0.01, momentum=0.9, weight_decay=1e-3, nesterov=True)
    sched = inv_schedule(opt)
    model.grl.max_iters = steps
    model.train()
    t0 = None
    for step, (batch, *_) in enumerate(loader):
        if step == warmup:
            t0 = time.perf_counter()
        if step == steps:
            break
        (xs, ys), (xt, _) = batch["source"], batch["target"]
        model.grl.step = step
        f = model.bottleneck(model.backbone(torch.cat([xs, xt])))
        z = model.classifier(f)
        d = model.discriminator(model.grl(f))
        loss = F.cross_entropy(z[:32], ys) + dann_loss(d[:32], d[32:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return (time.perf_counter() - t0) / (steps - warmup)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    plain, lightning = [], []
    for _ in range(args.repeats):
        plain.append(time_plain(args.steps, args.warmup))
        lightning.append(time_lightning(args.steps, args.warmup))
    p, l = statistics.median(plain), statistics.median(lightning)
    print(f"plain PyTorch loop: {1000 * p:.2f} ms/step  (runs: {', '.join(f'{1000 * v:.2f}' for v in plain)})")
    print(f"Lightning fit:      {1000 * l:.2f} ms/step  (runs: {', '.join(f'{1000 * v:.2f}' for v in lightning)})")
    print(f"overhead: {100 * (l / p - 1):+.1f}%  ({args.steps - args.warmup} timed steps, {args.threads} threads)")


if __name__ == "__main__":
    main()
