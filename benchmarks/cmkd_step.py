"""Throughput of CMKD training steps (the library's ``CMKD.training_step`` + SGD step) on a CLIP
architecture with random weights (``pretrained=None``: no download), in fp32 or under autocast.

    python -m benchmarks.cmkd_step [--model RN50] [--size 224] [--batch 32] [--steps 20]
        [--precision 32|bf16|16] [--device cuda|cpu] [--fixmatch] [--rst] [--tiny]

``--batch`` is per domain (source and target; FixMatch adds the strong target view). ``--tiny``
uses a small architecture (64 px), for a quick check on a CPU. Prints the median step time and the
images per second (source + target images, strong views included).
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from lightning_da.methods.cmkd import CMKD
from lightning_da.models.clip import CLIPImageEncoder

TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="RN50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--classes", type=int, default=65)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precision", default="32", choices=["32", "bf16", "16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--fixmatch", action="store_true")
    ap.add_argument("--rst", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    size = 64 if args.tiny else args.size
    backbone = CLIPImageEncoder(args.model, pretrained=None, model_cfg=TINY if args.tiny else None)
    model = CMKD(backbone, args.classes, optimizer=partial(torch.optim.SGD, lr=3e-7, momentum=0.9, nesterov=True, weight_decay=5e-4),
                 class_names=[f"class {i}" for i in range(args.classes)],
                 lr_mult={"backbone": 1.0, "classifier": 10000.0}, fixmatch={"enabled": args.fixmatch},
                 rst={"enabled": args.rst, "tau": 1e-6}).to(args.device).train()
    opt = model.configure_optimizers()
    if args.rst:
        opt.register_step_post_hook(lambda *_: model.rst.reset_small_changes(model.backbone))
    b = args.batch
    x = lambda: torch.randn(b, 3, size, size, device=args.device)
    target = (x(), x()) if args.fixmatch else x()
    batch = {"source": (x(), torch.randint(0, args.classes, (b,), device=args.device)), "target": (target, torch.arange(b))}
    dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler(args.device, enabled=args.precision == "16")
    times = []
    for i in range(args.warmup + args.steps):
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(args.device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model.training_step(batch, i)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if args.device == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    images = b * (3 if args.fixmatch else 2)
    mem = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if args.device == "cuda" else ""
    print(f"CMKD {args.model}{' (tiny)' if args.tiny else ''} {size}px batch {b}+{b}{' +strong' if args.fixmatch else ''}"
          f"{' +RST' if args.rst else ''}, precision {args.precision}, {args.device}: {1000 * step:.1f} ms/step, "
          f"{images / step:.1f} images/s, loss {loss.item():.4f}{mem}")


if __name__ == "__main__":
    main()
