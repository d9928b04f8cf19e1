"""Checks before anything trains (lightning_da.run_checks, called by train.build): the method fits the
data's setting, features fit the backbone, the run has a length, and monitor=auto on feature data;
every error is checked for the words that point to the fix."""

import logging

import pytest

from conftest import QUICK, make_cfg, save_features
from lightning_da.train import build, train

FAST = [*(o for o in QUICK if not o.startswith("callbacks.")), "data.num_workers=0", "logger=none", "callbacks=none"]


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """4-class feature files: a 12-d source, a 12-d target and a 7-d target."""
    root = tmp_path_factory.mktemp("run_checks")
    save_features(root / "src.npz", 10, 12)
    save_features(root / "tgt.npz", 8, 12, seed=1)
    save_features(root / "tgt7.npz", 8, 7, seed=2)
    return root


def features_cfg(tmp_path, root, *extra, target="tgt.npz"):
    return make_cfg(tmp_path, ["data=features", f"data.source={root / 'src.npz'}", f"data.target={root / target}",
                               "logger=none", "trainer.enable_progress_bar=false", "trainer.max_epochs=1",
                               "data.steps_per_epoch=3", "data.uda_loader.iters_per_epoch=3", "data.uda_loader.batch_size=8",
                               *extra])


def test_uda_method_on_the_default_feature_setting_says_how_to_ask_for_uda(features, tmp_path):
    with pytest.raises(ValueError) as err:
        build(features_cfg(tmp_path, features, "backbone=mlp"))
    msg = str(err.value)
    assert "input_dims" not in msg
    assert "DANN is an unsupervised DA method, but data=features defaults to the semi-supervised heterogeneous setting" in msg
    assert "needs a heterogeneous DA method: method=ssan, hda_net or target_only" in msg
    assert "for unsupervised DA with any UDA method on feature files of one width, set data.labeled_per_class=null" in msg


def test_hda_method_on_unsupervised_feature_data_is_named(features, tmp_path):
    with pytest.raises(ValueError, match=r"SSAN is a semi-supervised heterogeneous DA method: it needs feature data with "
                                         r"labelled target samples per class \(data=features: data.labeled_per_class=3"):
        build(features_cfg(tmp_path, features, "method=ssan", "data.labeled_per_class=null"))


def test_features_of_different_widths_need_the_heterogeneous_setting(features, tmp_path):
    with pytest.raises(ValueError) as err:
        build(features_cfg(tmp_path, features, "backbone=mlp", "data.labeled_per_class=null", target="tgt7.npz"))
    msg = str(err.value)
    assert "set backbone.in_features" not in msg
    assert "different widths {'src': 12, 'tgt7': 7}" in msg
    assert "need the heterogeneous setting: an HDA method (method=ssan, hda_net or target_only) with labelled target" in msg


def test_backbone_and_data_kinds_must_match(features, tmp_path):
    with pytest.raises(ValueError, match=r"gives feature vectors .* but backbone=lenet takes images: use backbone=mlp"):
        build(features_cfg(tmp_path, features, "data.labeled_per_class=null", "backbone=lenet"))
    with pytest.raises(ValueError, match=r"backbone=mlp takes feature vectors, but this data gives images: use an image backbone"):
        build(make_cfg(tmp_path, ["backbone=mlp", *FAST]))


@pytest.mark.parametrize("key", ["max_steps", "max_epochs"])
def test_a_run_of_zero_steps_is_refused(tmp_path, key):
    with pytest.raises(ValueError, match=rf"trainer.{key}=0 trains nothing, and the run would report an untrained model's "
                                         r"accuracy as its result: set a positive run length \(trainer.max_epochs=N"):
        build(make_cfg(tmp_path, ["method=source_only", *FAST, f"trainer.{key}=0"]))


def test_max_steps_beyond_max_epochs_warns(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        build(make_cfg(tmp_path, ["method=source_only", *FAST, "trainer.max_steps=10"]))  # 1 epoch of 4 steps
    assert ("trainer.max_steps=10 is more than trainer.max_epochs=1 epochs of 4 steps: the run stops after 4 steps "
            "(the earlier limit); set trainer.max_epochs=-1 to run 10 steps") in caplog.text


def test_feature_uda_holds_out_source_and_selects_by_source_accuracy(features, tmp_path):
    cfg = features_cfg(tmp_path, features, "backbone=mlp", "data.labeled_per_class=null")
    dm, _, _ = build(cfg)
    assert cfg.monitor == "val/source_acc" and dm.eval_names == ["target", "source"]
    assert len(dm.source_splits[0][1]) == 4  # 10% of 40 source rows
    res = train(features_cfg(tmp_path, features, "backbone=mlp", "data.labeled_per_class=null", "data.source_holdout=0.25"))
    assert res["best"]["monitor"] == "val/source_acc" and "test/source_acc" in res["best"]


def test_hda_features_report_the_last_checkpoint_and_refuse_a_source_holdout(features, tmp_path):
    cfg = features_cfg(tmp_path, features, "method=ssan")
    build(cfg)
    assert cfg.monitor is None
    with pytest.raises(Exception, match=r"data.source_holdout=0.2 applies to unsupervised DA on features "
                                        r"\(data.labeled_per_class=null\).*remove data.source_holdout"):
        build(features_cfg(tmp_path, features, "method=ssan", "data.source_holdout=0.2"))
    with pytest.raises(ValueError, match=r"the semi-supervised heterogeneous setting holds out no source data: use monitor=null"):
        build(features_cfg(tmp_path, features, "method=ssan", "monitor=val/source_acc"))
