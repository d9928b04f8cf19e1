"""Export an adapted model for serving: ``python -m lightning_da.export <run or ckpt> --format torchscript|onnx --out FILE``.

What is exported is the evaluation path, preprocessed input -> logits (the method's ``forward`` in
evaluation mode; norms with their target statistics; parts only training uses, such as domain
discriminators, left out), with a free batch dimension. The
preprocessing itself (resizing, normalisation) stays outside: the checkpoint's record describes it
(``lightning_da.load_model(...).preprocess``, docs/using_the_model.md).

* ``torchscript``: traced (``LightningModule.to_torchscript``), saved with ``torch.jit.save`` (``.pt``);
* ``onnx``: ``torch.onnx.export`` (opset 18), the batch dimension dynamic; needs the ``export`` extra
  (``pip install -e ".[export]"``: onnx, onnxscript, and onnxruntime for the check).

At the end the exported model is loaded back and run on a real batch (``--input``: any input
``lightning_da.predict`` reads; by default the first samples of the run's target evaluation split,
rebuilt from the run's data config), and the largest difference to the PyTorch model's logits is
printed against the tolerance (absolute ``1e-4`` plus relative ``1e-4`` of the logit's size, float32
on the CPU) with whether every predicted class agrees. Models whose input includes text cannot be
exported (their tokenizer runs in Python).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from lightning_da.data.preprocess import InputError, MultiModalInput
from lightning_da.load import add_load_arguments, load_model

FORMATS = ("torchscript", "onnx")
ATOL, RTOL = 1e-4, 1e-4


class EvalPath(nn.Module):
    """The method's evaluation path as a plain module: ``forward(x) = method(x)`` (logits)."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method(x)


def without_training_parts(method: nn.Module, x: torch.Tensor) -> nn.Module:
    """A copy of ``method`` without the top-level parts its evaluation forward on ``x`` does not run
    (domain discriminators, training-only heads, metrics), so the export holds the evaluation path only."""
    used: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda *_, top=name.split(".")[0]: used.add(top))
             for name, m in method.named_modules() if name]
    try:
        with torch.no_grad():
            method(x)
    finally:
        for h in hooks:
            h.remove()
    pruned = copy.deepcopy(method)
    for name in [n for n, _ in pruned.named_children() if n not in used]:
        delattr(pruned, name)
    return pruned


def run_eval_batch(loaded, n: int = 8) -> torch.Tensor:
    """The first ``n`` preprocessed samples of the run's target evaluation split, rebuilt from the stored
    data config (its ``_target_``s were checked when the model loaded)."""
    from hydra.utils import instantiate
    from torch.utils.data import default_collate

    try:
        dm = instantiate(loaded.config.data, _convert_="all")
        spec = loaded.record.get("input") or {}
        if spec.get("kind") == "image" and hasattr(dm, "fit_inputs_to"):
            dm.fit_inputs_to({"channels": spec["shape"][0], "size": spec["shape"][1], "fixed_size": spec["fixed_size"]})
        if hasattr(dm, "target_domain"):  # full-batch HDA: the unlabelled target rows, at their full width
            return dm.target_domain.train.features[dm.unlabeled_index[:n]]
        dataset = dm.target_eval_set
        return default_collate([dataset[i][0] for i in range(min(n, len(dataset)))])
    except Exception as err:  # noqa: BLE001 - the data of another machine: say what to do instead
        raise InputError(f"no --input given, and the run's target data cannot be read here ({type(err).__name__}: "
                         f"{err}); pass --input with a few samples the model takes") from err


def example_batch(loaded, input_path: str | None, n: int = 8, image_root: str | None = None) -> torch.Tensor:
    """A real batch of preprocessed inputs: the first ``n`` samples of ``input_path``, else of the run's data."""
    from torch.utils.data import default_collate

    if isinstance(loaded.preprocess, MultiModalInput):
        raise InputError("this model's input includes text; its tokenizer runs in Python, so it cannot be exported "
                         "to TorchScript or ONNX (use lightning_da.load_model in Python instead)")
    if input_path is None:
        x = run_eval_batch(loaded, n)
    else:
        from lightning_da.predict import read_inputs

        inputs = read_inputs(input_path, loaded.preprocess, loaded.classes, image_root)
        x = default_collate([inputs.dataset[i][0] for i in range(min(n, len(inputs.dataset)))])
    if loaded.preprocess is not None:
        loaded.preprocess.check(x)
    return x.float()


def export_torchscript(module: EvalPath, x: torch.Tensor, out: str | os.PathLike):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings for shape checks that are constant in a trace
        # Lightning's own tracing (it keeps the module's trainer property quiet while tracing)
        traced = module.method.to_torchscript(method="trace", example_inputs=x, check_trace=False)
        torch.jit.save(traced, str(out))
        loaded = torch.jit.load(str(out), map_location="cpu")
    return lambda batch: loaded(batch)


def export_onnx(module: nn.Module, x: torch.Tensor, out: str | os.PathLike):
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError("ONNX export needs the export extra: pip install -e \".[export]\" (onnx, onnxscript, "
                          "onnxruntime)") from err
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(out), input_names=["input"], output_names=["logits"], opset_version=18,
                          dynamo=True, dynamic_shapes={"x": {0: batch}}, external_data=False)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return lambda batch_: torch.from_numpy(session.run(["logits"], {"input": batch_.numpy()})[0])


def export_model(loaded, fmt: str, out: str | os.PathLike, x: torch.Tensor) -> dict[str, Any]:
    """Export ``loaded``'s evaluation path to ``out`` and compare it with PyTorch on the batch ``x``:
    ``{"max_abs_diff", "tolerance_ok", "same_predictions", "batch"}``."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    x = x.cpu()
    module = EvalPath(without_training_parts(loaded.model.cpu().eval(), x))
    with torch.no_grad():
        reference = loaded.model(x).float()
        run = (export_torchscript if fmt == "torchscript" else export_onnx)(module, x, out)
        got = run(x).float()
    loaded.model.to(loaded.device)
    diff = (got - reference).abs()
    return {"format": fmt, "out": str(out), "batch": len(x), "max_abs_diff": float(diff.max()),
            "tolerance_ok": bool(torch.allclose(got, reference, atol=ATOL, rtol=RTOL)),
            "same_predictions": bool(torch.equal(got.argmax(1), reference.argmax(1)))}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m lightning_da.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_arguments(ap)
    ap.add_argument("--format", choices=FORMATS, required=True)
    ap.add_argument("--out", default=None, help="default: model.pt (torchscript) or model.onnx")
    ap.add_argument("--input", default=None, help="samples for the check (default: the run's target evaluation data)")
    ap.add_argument("--image-root", default=None, help="folder that relative image paths of --input start from")
    ap.add_argument("--batch", type=int, default=8, help="samples in the check's batch (default 8)")
    args = ap.parse_args(argv)
    out = Path(args.out or ("model.pt" if args.format == "torchscript" else "model.onnx"))
    loaded = load_model(args.model, device="cpu", checkpoint=args.checkpoint, trust=args.trust)
    print(f"model: {loaded.describe()}", file=sys.stderr)
    x = example_batch(loaded, args.input, args.batch, args.image_root)
    result = export_model(loaded, args.format, out, x)
    print(f"exported the evaluation path (preprocessed input {tuple(x.shape[1:])} -> {len(loaded.classes)} logits) "
          f"to {out} ({args.format})")
    verdict = "OK" if result["tolerance_ok"] and result["same_predictions"] else "MISMATCH"
    print(f"check on a real batch of {result['batch']}: max |logit difference| {result['max_abs_diff']:.3g} "
          f"(tolerance {ATOL:g} + {RTOL:g} x |logit|), same predicted classes: {result['same_predictions']}: {verdict}")
    if verdict != "OK":
        sys.exit(1)
    return result


if __name__ == "__main__":
    from lightning_da.load import run_cli

    run_cli(main)
