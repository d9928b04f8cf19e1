"""Feature-matrix domains (data/features.py): MATLAB v5 / v7.3, npz / npy / pt, the SHDA layout, the
pre-drawn splits, and the errors that name the problem."""

from functools import partial

import numpy as np
import pytest
import scipy.io
import torch

from conftest import FEATURES, feature_datamodule, needs_shared, write_npz
from lightning_da.data import DataError, FullBatchDataModule, feature_domain, shda_target_domain
from lightning_da.data.features import shda_source_domain


# ------------------------------------------------------------------------------------ readers
@needs_shared(FEATURES)
def test_mat_v5_surf_and_decaf_with_one_based_labels():
    d = feature_domain("dslr_surf", "surf/dslr_SURF_L10.mat", root=str(FEATURES), label_base=1)
    x, y = d.train.features, d.train.labels
    assert x.shape == (157, 800) and x.dtype == torch.float32 and d.info["dim"] == 800
    assert torch.allclose(x.norm(dim=1), torch.ones(157), atol=1e-5)
    raw = scipy.io.loadmat(FEATURES / "surf/dslr_SURF_L10.mat")
    assert torch.equal(y, torch.from_numpy(raw["labels"].ravel().astype(np.int64) - 1))
    assert d.classes == [str(i) for i in range(1, 11)]
    # GoogLeNet stores labels as 1 x n
    g = feature_domain("webcam_googlenet", "googlenet/webcam.mat", root=str(FEATURES), label_base=1, l2_normalize=False)
    assert g.train.features.shape == (295, 1024) and len(g.train.labels) == 295
    assert torch.allclose(g.train.features, torch.from_numpy(scipy.io.loadmat(FEATURES / "googlenet/webcam.mat")["fts"]))


def test_mat_v73_is_read_in_matlab_orientation(tmp_path):
    h5py = pytest.importorskip("h5py")
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    y = np.array([[1], [2], [1], [2]], dtype=np.uint8)
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:  # MATLAB v7.3: HDF5 after a 512-byte header
        f["fea"] = x.T  # MATLAB writes column-major: HDF5 sees the transpose
        f["gnd"] = y.T
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + b"\0" * 8 + b"\x00\x02IM")
    d = feature_domain("v73", str(path), features_key="fea", labels_key="gnd", label_base=1, l2_normalize=False)
    assert torch.equal(d.train.features, torch.from_numpy(x).float())
    assert d.train.labels.tolist() == [0, 1, 0, 1]


def test_npz_npy_pt_zero_based_and_l2(tmp_path):
    x, y = write_npz(tmp_path / "a.npz", label_base=0)
    d = feature_domain("a", "a.npz", root=str(tmp_path), l2_normalize=True)
    expected = torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True))
    assert torch.allclose(d.train.features, expected, atol=1e-6) and d.train.labels.tolist() == y.tolist()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    d = feature_domain("b", "x.npy", root=str(tmp_path), labels_path="y.npy", l2_normalize=False)
    assert torch.equal(d.train.features, torch.from_numpy(x)) and d.train.labels.tolist() == y.tolist()
    torch.save({"feats": torch.from_numpy(x), "targets": torch.from_numpy(y)}, tmp_path / "c.pt")
    d = feature_domain("c", "c.pt", root=str(tmp_path), features_key="feats", labels_key="targets", l2_normalize=False)
    assert torch.equal(d.train.features, torch.from_numpy(x))


def test_shda_layout(tmp_path):
    rng = np.random.default_rng(0)
    scipy.io.savemat(tmp_path / "src.mat", {"source_features": rng.normal(size=(20, 9)), "source_labels": np.arange(20)[:, None] % 4 + 1})
    train_cells, test_cells = np.empty((1, 2), dtype=object), np.empty((1, 2), dtype=object)
    train_labels, test_labels = np.empty((1, 2), dtype=object), np.empty((1, 2), dtype=object)
    for i in range(2):
        train_cells[0, i] = rng.normal(size=(8, 5)) + 10 * i
        train_labels[0, i] = (np.arange(8) % 4 + 1)[:, None]
        test_cells[0, i] = rng.normal(size=(12, 5))
        test_labels[0, i] = (np.arange(12) % 4 + 1)[:, None]
    scipy.io.savemat(tmp_path / "tgt.mat", {"training_features": train_cells, "training_labels": train_labels,
                                            "testing_features": test_cells, "testing_labels": test_labels})
    src = shda_source_domain("src", "src.mat", root=str(tmp_path))
    tgt = shda_target_domain("tgt", "tgt.mat", split=1, root=str(tmp_path), l2_normalize=False)
    assert src.info["dim"] == 9 and tgt.info["dim"] == 5 and len(tgt.train) == 20
    assert torch.allclose(tgt.train.features[:8], torch.from_numpy(train_cells[0, 1]).float())
    assert tgt.info["splits"][1].tolist() == list(range(8))
    domains = {"src": partial(shda_source_domain, name="src", path="src.mat"),
               "tgt": partial(shda_target_domain, name="tgt", path="tgt.mat", split=1)}
    dm = FullBatchDataModule(domains, "src", "tgt", root=str(tmp_path), labeled="file", split=1)
    assert len(dm.train_batch["target_labeled"][0]) == 8 and len(dm.eval_batch[0]) == 12
    with pytest.raises(DataError, match="split index 2 out of range"):
        shda_target_domain("tgt", "tgt.mat", split=2, root=str(tmp_path))


@needs_shared(FEATURES)
def test_predrawn_one_based_splits_of_decaf():
    raw = scipy.io.loadmat(FEATURES / "decaf6/dslr_decaf.mat")
    domains = {"src": partial(feature_domain, name="src", path="surf/dslr_SURF_L10.mat", label_base=1),
               "tgt": partial(feature_domain, name="tgt", path="decaf6/dslr_decaf.mat", features_key="fea",
                              labels_key="gnd", label_base=1, splits_key="target_idx", split_base=1)}
    for split in (0, 19):
        dm = FullBatchDataModule(domains, "src", "tgt", root=str(FEATURES), labeled="file", split=split)
        expected = torch.from_numpy(raw["target_idx"][:, split].astype(np.int64) - 1)
        assert torch.equal(dm.labeled_index, expected)
        assert dm.train_batch["target_labeled"][1].tolist() == (raw["target_label"].ravel().astype(int) - 1).tolist()
        assert len(dm.eval_batch[1]) == 157 - 30 and dm.input_dims == {"source": 800, "target": 4096}
    with pytest.raises(DataError, match="split index 20 out of range"):
        FullBatchDataModule(domains, "src", "tgt", root=str(FEATURES), labeled="file", split=20)


# ------------------------------------------------------------------------------------ bad input
def test_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="feature file not found: .*nope.mat"):
        feature_domain("x", str(tmp_path / "nope.mat"))
    write_npz(tmp_path / "a.npz")
    with pytest.raises(DataError, match=r"no features under \['fea'\]; its keys are \['features', 'labels'\]"):
        feature_domain("a", "a.npz", root=str(tmp_path), features_key="fea")
    np.savez(tmp_path / "empty.npz", features=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64))
    with pytest.raises(DataError, match="'e' is empty"):
        feature_domain("e", "empty.npz", root=str(tmp_path))
    with pytest.raises(DataError, match="below label_base=1"):
        feature_domain("a", "a.npz", root=str(tmp_path), label_base=1)
    # label sets that differ between domains
    write_npz(tmp_path / "s.npz", classes=4)
    write_npz(tmp_path / "t.npz", classes=3)
    domains = {"s": partial(feature_domain, name="s", path="s.npz"), "t": partial(feature_domain, name="t", path="t.npz")}
    with pytest.raises(DataError, match=r"class lists differ.*'t' lacks classes of 's': \['3'\]"):
        FullBatchDataModule(domains, "s", "t", root=str(tmp_path))
    # k larger than a class (10 samples per class)
    with pytest.raises(DataError, match="class 0 has 10 target samples, fewer than labeled_per_class=11"):
        feature_datamodule(tmp_path, labeled_per_class=11)
    with pytest.raises(DataError, match="has no pre-drawn splits"):
        feature_datamodule(tmp_path, labeled="file")
    np.savez(tmp_path / "split.npz", features=np.ones((8, 3), np.float32), labels=np.arange(8) % 4, idx=np.array([[1], [9]]))
    with pytest.raises(DataError, match=r"indices outside 0..7 after split_base=1 \(range 1..9\)"):
        feature_domain("p", "split.npz", root=str(tmp_path), splits_key="idx")
