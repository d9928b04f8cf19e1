"""Labels of feature files (lightning_da.data.features.encode_labels, lightning_da.data.user.feature_files):
class names (strings, as feature files often carry them) become indices in sorted order over both
domains and stay the class names; labels of neither kind get an error that says what labels may be."""

import numpy as np
import pytest
import scipy.io

from conftest import make_cfg, save_features
from lightning_da.data.domain import DataError
from lightning_da.data.features import encode_labels
from lightning_da.train import build, train

NAMES = np.array(["cat", "dog", "emu", "fox"])


@pytest.fixture(scope="module")
def named(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    save_features(root / "src.npz", 10, 12, labels=NAMES)
    x, y = save_features(root / "tgt.npz", 8, 12, seed=1, labels=NAMES)
    # MATLAB: a cell array of strings (loadmat gives an object array of 1-element string arrays)
    scipy.io.savemat(root / "tgt.mat", {"features": x[:, :7], "labels": np.array(NAMES[y], dtype=object).reshape(-1, 1)})
    save_features(root / "tgt_numbers.npz", 8, 12, seed=1)
    return root


def cfg(tmp_path, root, target, *extra):
    return make_cfg(tmp_path, ["data=features", f"data.source={root / 'src.npz'}", f"data.target={root / target}",
                               "logger=none", "trainer.enable_progress_bar=false", "trainer.max_epochs=1",
                               "data.steps_per_epoch=3", "data.uda_loader.iters_per_epoch=3", "data.uda_loader.batch_size=8",
                               *extra])


def test_string_labels_train_uda_with_names_kept(named, tmp_path):
    c = cfg(tmp_path, named, "tgt.npz", "backbone=mlp", "data.labeled_per_class=null")
    dm, _, _ = build(c)
    assert dm.classes == ["cat", "dog", "emu", "fox"]
    x, y = dm.domains["tgt"].train[9]
    assert int(y) == 1  # row 9 is a dog
    assert train(c)["task"] == "src->tgt"


def test_matlab_cellstr_labels_train_hda(named, tmp_path):
    c = cfg(tmp_path, named, "tgt.mat", "method=ssan", "data.labeled_per_class=2")
    dm, _, _ = build(c)
    assert dm.classes == ["cat", "dog", "emu", "fox"] and dm.input_dims == {"source": 12, "target": 7}
    assert train(c)["steps"] == 3


def test_class_names_fix_the_order_of_named_labels(named, tmp_path):
    dm, _, _ = build(cfg(tmp_path, named, "tgt.npz", "backbone=mlp", "data.labeled_per_class=null",
                         "data.class_names=[fox,emu,dog,cat,gnu]"))
    assert dm.domains["tgt"].classes == ["fox", "emu", "dog", "cat"] and int(dm.domains["tgt"].train[9][1]) == 2
    with pytest.raises(DataError, match=r"label name\(s\) \['emu', 'fox'\] are not in data.class_names \['cat', 'dog'\]"):
        encode_labels(NAMES[[0, 1, 2, 3]], 4, 0, "x.npz", ["cat", "dog"])


def test_names_in_one_file_and_numbers_in_the_other_are_refused(named, tmp_path):
    with pytest.raises(Exception, match="the source labels are names but the target labels are numbers: give both domains "
                                        "the same kind of labels"):
        build(cfg(tmp_path, named, "tgt_numbers.npz", "backbone=mlp", "data.labeled_per_class=null"))


def test_fractional_labels_say_what_labels_may_be(named, tmp_path):
    np.savez(tmp_path / "src_float.npz", features=np.ones((4, 3)), labels=np.array([0.5, 1, 2, 3]))
    np.savez(tmp_path / "tgt_int.npz", features=np.ones((4, 3)), labels=np.array([0, 1, 2, 3]))
    with pytest.raises(Exception, match=r"labels must be integers \(0..C-1 or 1..C\) or class names \(strings\), not float64"):
        build(make_cfg(tmp_path, ["data=features", f"data.source={tmp_path / 'src_float.npz'}",
                                  f"data.target={tmp_path / 'tgt_int.npz'}", "method=ssan"]))
    with pytest.raises(DataError, match=r"labels must be integers \(0..C-1 or 1..C\) or class names \(strings\), not "
                                        r"float64 values such as 0.5"):
        encode_labels(np.array([0.5, 1.0]), 2, 0, "x.npz")
