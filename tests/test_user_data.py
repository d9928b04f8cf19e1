"""A user's own data in one ``data=`` choice and two paths (data=image_folder, data=features), built
here in a tmp dir from the bundled real digits, through run.py's composition; and the bad inputs
that used to run silently wrong."""

import logging
import os

import numpy as np
import pytest

from conftest import QUICK, make_cfg
from lightning_da.data.examples import write_examples
from lightning_da.data.domain import DataError
from lightning_da.train import build, train

FAST = [*QUICK, "data.num_workers=0", "data.batch_size=8", "logger=none"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The README's example (lightning_da.data.examples): MNIST as one ImageFolder; USPS as train/ +
    test/ sub-folders (a held-out evaluation split); two feature files."""
    return write_examples(tmp_path_factory.mktemp("user_data"))


def test_readme_commands_run_as_written(folders, tmp_path):
    """The two commands of the README's "Your own data" section, on the example it writes."""
    for data in (["data=image_folder", f"data.source={folders / 'mnist'}", f"data.target={folders / 'usps'}", *FAST],
                 ["data=features", "method=ssan", f"data.source={folders / 'features' / 'source.npz'}",
                  f"data.target={folders / 'features' / 'target.npz'}", "data.steps_per_epoch=5", "trainer.max_epochs=1",
                  "logger=none"]):
        res = train(make_cfg(tmp_path / data[0].split("=")[1], data))
        assert "last" in res


def test_two_image_folders_train_dann_through_run_py(folders, tmp_path):
    cfg = make_cfg(tmp_path, ["data=image_folder", f"data.source={folders / 'mnist'}", f"data.target={folders / 'usps'}", *FAST])
    res = train(cfg)
    assert res["task"] == "mnist->usps" and 0.0 <= res["last"]["test/target_acc"] <= 1.0
    dm, model, _ = build(cfg)
    assert len(dm.target_eval_set) == 20  # the test/ sub-folder, not the 40 training images
    x, _ = dm.target_train[0]
    assert tuple(x.shape) == (1, 28, 28)  # LeNet's input: grey at 28 px, no channels override needed
    assert dm.classes == [str(c) for c in range(10)]


def test_image_list_file_and_several_sources(folders, tmp_path):
    lst = tmp_path / "usps.txt"
    lst.write_text("".join(f"{folders / 'usps' / 'train' / c / f} {c}\n"
                           for c in sorted(os.listdir(folders / "usps" / "train"))
                           for f in sorted(os.listdir(folders / "usps" / "train" / c))))
    cfg = make_cfg(tmp_path, ["data=image_folder", f"data.sources=[{folders / 'mnist'},{folders / 'usps' / 'test'}]",
                              f"data.target={lst}", "data.combine_sources=true", "monitor=val/source_mnist_acc", *FAST])
    dm, _, _ = build(cfg)
    assert dm.source_names == ["mnist", "test"] and dm.target_name == "usps"
    assert len(dm.target_eval_set) == 40  # no test split next to the list: transductive
    train(cfg)


def test_imagenet_backbone_gets_rgb_at_its_resolution(folders, tmp_path):
    cfg = make_cfg(tmp_path, ["data=image_folder", f"data.source={folders / 'mnist'}", f"data.target={folders / 'usps'}",
                              "backbone=resnet18", "backbone.pretrained=false", *FAST])
    dm, _, _ = build(cfg)
    assert tuple(dm.target_train[0][0].shape) == (3, 224, 224)


def test_forced_size_or_channel_mismatch_names_both_sides(folders, tmp_path):
    base = ["data=image_folder", f"data.source={folders / 'mnist'}", f"data.target={folders / 'usps'}", *FAST]
    with pytest.raises(DataError, match=r"32-px images \(data.domain_args.image_size=32\).*28-px inputs only \(backbone.input_size=28\)"):
        build(make_cfg(tmp_path, [*base, "+data.domain_args.image_size=32", "backbone.input_size=28"]))
    with pytest.raises(DataError, match=r"3-channel images \(data.domain_args.channels=3\).*1-channel inputs"):
        build(make_cfg(tmp_path, [*base, "+data.domain_args.channels=3", "backbone.in_channels=1"]))
    with pytest.raises(DataError, match=r"transform.*takes 28-px inputs only"):
        build(make_cfg(tmp_path, [*base, "data.domain_args.transform.crop=224"]))


def test_lenet_on_an_image_config_just_works(office_subset, tmp_path):
    """backbone=lenet on data=office_caltech10 (whose transform is for ImageNet networks): the images
    follow LeNet (grey, 28 px) instead of an interpolation error."""
    cfg = make_cfg(tmp_path, ["data=office_caltech10", f"data.root={office_subset}", "backbone=lenet", *FAST])
    dm, _, _ = build(cfg)
    assert tuple(dm.target_train[0][0].shape) == (1, 28, 28)


def test_digits_domain_mixed_with_an_image_folder(folders, tmp_path):
    cfg = make_cfg(tmp_path, ["data=digits_bundled", "data.target=mine",
                              f"+data.domains.mine={{_target_: lightning_da.data.images.image_domain, _partial_: true, "
                              f"name: mine, path: '{folders / 'usps' / 'train'}'}}", *FAST])
    res = train(cfg)
    assert res["task"] == "mnist->mine"


def test_empty_class_folder_is_an_error_naming_it(folders, tmp_path, caplog):
    src = tmp_path / "src"
    for c in sorted(os.listdir(folders / "mnist")):
        (src / c).mkdir(parents=True)
        if c != "3":
            for f in os.listdir(folders / "mnist" / c):
                os.symlink(folders / "mnist" / c / f, src / c / f)
    base = ["data=image_folder", f"data.source={src}", f"data.target={folders / 'usps'}", *FAST]
    with pytest.raises(DataError, match=rf"class folder\(s\) without images: \['{src / '3'}'\].*allow_empty_classes"):
        build(make_cfg(tmp_path, base))[0].num_classes
    with caplog.at_level(logging.WARNING):
        dm = build(make_cfg(tmp_path, [*base, "data.domain_args.allow_empty_classes=true"]))[0]
    assert dm.num_classes == 10 and f"{src / '3'} has no images" in caplog.text


def test_missing_path_is_named(tmp_path):
    with pytest.raises(Exception, match=r"data path .*nope' does not exist; give an image folder"):
        build(make_cfg(tmp_path, ["data=image_folder", f"data.source={tmp_path / 'nope'}", f"data.target={tmp_path}", *FAST]))


# ---------------------------------------------------------------------------------------------- features
@pytest.fixture(scope="module")
def feature_files(tmp_path_factory):
    """Heterogeneous features with MATLAB-style 1-based labels (4 classes): 12-d source, 7-d and 12-d targets."""
    root = tmp_path_factory.mktemp("user_features")
    rng = np.random.default_rng(0)
    ys, yt = np.repeat(np.arange(1, 5), 10), np.repeat(np.arange(1, 5), 8)
    np.savez(root / "src.npz", features=rng.normal(size=(40, 12)) + ys[:, None], labels=ys)
    np.savez(root / "tgt.npz", features=rng.normal(size=(32, 7)) + yt[:, None], labels=yt)
    np.save(root / "tgt12.npy", rng.normal(size=(32, 12)) + yt[:, None])
    np.save(root / "tgt12_labels.npy", yt)
    return root


def test_two_feature_files_train_ssan_through_run_py(feature_files, tmp_path):
    """HDA with one data= choice and two paths: no backbone override, class names from the data."""
    cfg = make_cfg(tmp_path, ["data=features", "method=ssan", f"data.source={feature_files / 'src.npz'}",
                              f"data.target={feature_files / 'tgt.npz'}", "data.steps_per_epoch=5", "data.labeled_per_class=2",
                              "trainer.max_epochs=1", "logger=none", "trainer.enable_progress_bar=false"])
    res = train(cfg)
    assert res["task"] == "src->tgt" and res["steps"] == 5 and "oracle" in res
    dm, model, _ = build(cfg)
    assert dm.classes == ["0", "1", "2", "3"]  # 1-based labels detected; never another dataset's names
    assert model.input_dims == {"source": 12, "target": 7} and len(dm.labeled_index) == 8


def test_feature_files_uda_with_an_mlp(feature_files, tmp_path):
    cfg = make_cfg(tmp_path, ["data=features", "backbone=mlp", "data.labeled_per_class=null",
                              f"data.source={feature_files / 'src.npz'}", f"data.target={feature_files / 'tgt12.npy'}",
                              f"data.target_labels={feature_files / 'tgt12_labels.npy'}", "data.uda_loader.batch_size=8",
                              "data.uda_loader.iters_per_epoch=3", "trainer.max_epochs=1", "logger=none",
                              "trainer.enable_progress_bar=false"])
    res = train(cfg)
    assert res["method"] == "DANN" and res["task"] == "src->tgt12"


def test_hda_method_refuses_an_explicit_backbone(feature_files, tmp_path):
    cfg = make_cfg(tmp_path, ["data=features", "method=ssan", "backbone=resnet18", f"data.source={feature_files / 'src.npz'}",
                              f"data.target={feature_files / 'tgt.npz'}"])
    with pytest.raises(ValueError, match="SSAN builds one projector per domain.*takes no backbone"):
        build(cfg)


def test_office_hda_config_names_only_its_own_domains():
    """A domain a user adds to data=office_caltech10_hda gets its own class names, not Office-Caltech's."""
    import yaml

    from conftest import CONF

    cfg = yaml.safe_load((CONF / "data" / "office_caltech10_hda.yaml").read_text())
    assert "class_names" not in (cfg.get("domain_args") or {})


# ---------------------------------------------------------------------------------------------- interrupts
def test_interrupt_in_epoch_0_saves_a_checkpoint_and_says_how_to_resume(tmp_path, capsys):
    import lightning as L

    class CtrlC(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 2:
                raise KeyboardInterrupt

    cfg = make_cfg(tmp_path, ["method=source_only", *QUICK, "data.iters_per_epoch=6", "logger=none"])
    dm, model, trainer = build(cfg)
    trainer.callbacks.append(CtrlC())
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown exits with status 1
        trainer.fit(model, datamodule=dm)
    err = capsys.readouterr().err
    ckpt = tmp_path / "checkpoints" / "interrupted.ckpt"
    assert ckpt.exists() and f"interrupted at epoch 0, step 2: saved the weights, optimiser and loop state to {ckpt}" in err
    assert "resume with: python run.py " in err and f"ckpt_path={ckpt}" in err and f"hydra.run.dir={tmp_path}" in err
    res = train(make_cfg(tmp_path, ["method=source_only", *QUICK, "data.iters_per_epoch=6", "logger=none", f"ckpt_path={ckpt}"]))
    assert res["steps"] == 6


def test_report_names_unfinished_runs_and_reports_hda_splits(feature_files, tmp_path, capsys, monkeypatch):
    import sys

    from lightning_da import report

    for split in (0, 1):
        train(make_cfg(tmp_path / f"split{split}", ["data=features", "method=hda_net", f"data.source={feature_files / 'src.npz'}",
                                                     f"data.target={feature_files / 'tgt.npz'}", "data.steps_per_epoch=3",
                                                     f"data.split={split}", "trainer.max_epochs=1", "logger=none",
                                                     "trainer.enable_progress_bar=false"]))
    (tmp_path / "crashed" / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(sys, "argv", ["report", str(tmp_path)])
    report.main()
    out = capsys.readouterr()
    assert f"skipped 1 run folder(s) without results.json (crashed, interrupted or unfinished): {tmp_path / 'crashed'}" in out.err
    assert "| HDANet | src->tgt | 2 splits |" in out.out


def test_hda_run_logs_progress_and_says_why_validators_are_skipped(feature_files, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        train(make_cfg(tmp_path, ["data=features", "method=ssan", f"data.source={feature_files / 'src.npz'}",
                                  f"data.target={feature_files / 'tgt.npz'}", "data.steps_per_epoch=20", "trainer.max_epochs=1",
                                  "logger=none", "trainer.enable_progress_bar=false"]))
    assert "step 20/20 (100%)" in caplog.text and "step 2/20 (10%)" in caplog.text
    assert "full-batch HDA data has no per-sample target loader: ValidatorScores, EmbeddingVisuals skipped" in caplog.text
