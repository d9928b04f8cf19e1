"""Training-step time of each norm against BatchNorm on a backbone (forward + backward, same batch).

    python -m benchmarks.norm_step [--arch resnet50] [--batch 8] [--size 224] [--repeats 5]
        [--norms bn rn dsbn transnorm] [--device cpu|cuda] [--threads 2] [--channels-last]

``--batch`` is per domain: every step forwards ``[source (b); target (b)]`` in one call inside the
domain split, then backpropagates a sum of the outputs. Networks are converted from the same BN
network with random weights: ``--arch`` is a torchvision model (``resnet50``) or a library backbone
(``efficientnet_lite0``, the Office-Caltech10 normalization experiment's). Steps of the different
norms alternate, so that machine noise hits them alike; the median time per step over ``--repeats``
rounds is reported with its ratio to BN.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torchvision

from lightning_da.norm import convert_norm, domain_split


def step(net, x, n_source: int, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with domain_split(net, n_source):
        net(x).float().sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--norms", nargs="+", default=["bn", "rn", "dsbn", "transnorm"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if hasattr(torchvision.models, args.arch):
        base = getattr(torchvision.models, args.arch)()
    else:
        from lightning_da.models import build_backbone

        base = build_backbone(args.arch, pretrained=False)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    nets = {k: convert_norm(copy.deepcopy(base), k).to(args.device, memory_format=fmt).train() for k in args.norms}
    x = torch.randn(2 * args.batch, 3, args.size, args.size, device=args.device).contiguous(memory_format=fmt)
    times = {k: [] for k in nets}
    for i in range(args.warmup + args.repeats):
        for k, net in nets.items():
            t = step(net, x, args.batch, args.device)
            net.zero_grad(set_to_none=True)
            if i >= args.warmup:
                times[k].append(t)
    ref = statistics.median(times["bn"]) if "bn" in times else None
    print(f"{args.arch}, batch {args.batch}+{args.batch} at {args.size}px, {args.device}"
          f"{' channels_last' if args.channels_last else ''}, median of {args.repeats}:")
    for k, ts in times.items():
        med = statistics.median(ts)
        ratio = f"  {med / ref:.2f}x bn" if ref else ""
        print(f"  {k:10s} {1000 * med:9.1f} ms/step{ratio}")


if __name__ == "__main__":
    main()
