"""Feature-matrix domains, semi-supervised target splits and the full-batch DataModule (HDA)."""

from functools import partial

import numpy as np
import pytest
import scipy.io
import torch

from conftest import SHARED_DATA, needs_shared
from lightning_da.data import DataError, FullBatchDataModule, feature_domain, sample_per_class, shda_target_domain
from lightning_da.data.features import shda_source_domain

FEATURES = SHARED_DATA / "office_caltech10" / "features"


def write_npz(path, n=40, d=6, classes=4, label_base=0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.arange(n) % classes + label_base
    np.savez(path, features=x, labels=y)
    return x, y


def datamodule(tmp_path, **kwargs):
    write_npz(tmp_path / "s.npz", d=5)
    write_npz(tmp_path / "t.npz", d=7, seed=1)
    domains = {"s": partial(feature_domain, name="s", path="s.npz"), "t": partial(feature_domain, name="t", path="t.npz")}
    return FullBatchDataModule(domains, "s", "t", root=str(tmp_path), **kwargs)


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


# ------------------------------------------------------------------------------------ splits
def test_sample_per_class_k_each_reproducible():
    labels = torch.arange(50) % 5
    a, b, c = sample_per_class(labels, 3, seed=7), sample_per_class(labels, 3, seed=7), sample_per_class(labels, 3, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(a.unique()) == 15 and torch.bincount(labels[a]).tolist() == [3] * 5


def test_random_split_in_datamodule_is_disjoint_and_seeded(tmp_path):
    dm = datamodule(tmp_path, labeled="random", labeled_per_class=2, split=3, seed=1)
    labeled, unlabeled = dm.labeled_index, dm.unlabeled_index
    assert set(labeled.tolist()).isdisjoint(unlabeled.tolist()) and len(labeled) + len(unlabeled) == 40
    assert torch.bincount(dm.train_batch["target_labeled"][1]).tolist() == [2, 2, 2, 2]
    assert torch.equal(dm.train_batch["target"][1], unlabeled) and torch.equal(dm.eval_batch[1], dm.target_domain.train.labels[unlabeled])
    assert torch.equal(datamodule(tmp_path, labeled="random", labeled_per_class=2, split=3, seed=1).labeled_index, labeled)
    assert not torch.equal(datamodule(tmp_path, labeled="random", labeled_per_class=2, split=4, seed=1).labeled_index, labeled)
    assert dm.input_dims == {"source": 5, "target": 7} and dm.model_kwargs == {"input_dims": {"source": 5, "target": 7}}


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


def test_full_batch_loader_moves_once(tmp_path):
    dm = datamodule(tmp_path, steps_per_epoch=4)
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 and all(b is batches[0] for b in batches)
    moved = dm.transfer_batch_to_device(batches[0], torch.device("cpu"), 0)
    assert dm.transfer_batch_to_device(batches[1], torch.device("cpu"), 0) is moved


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
        datamodule(tmp_path, labeled_per_class=11)
    with pytest.raises(DataError, match="has no pre-drawn splits"):
        datamodule(tmp_path, labeled="file")
    np.savez(tmp_path / "split.npz", features=np.ones((8, 3), np.float32), labels=np.arange(8) % 4, idx=np.array([[1], [9]]))
    with pytest.raises(DataError, match=r"indices outside 0..7 after split_base=1 \(range 1..9\)"):
        feature_domain("p", "split.npz", root=str(tmp_path), splits_key="idx")


# ------------------------------------------------------------------------------------ row space
def test_row_space_coordinates_keep_inner_products_and_skip_tall_matrices():
    from lightning_da.data.full_batch import row_space_coordinates
    x = torch.randn(6, 20)
    z, q = row_space_coordinates(x)
    assert z.shape == (6, 6) and q.shape == (20, 6)
    assert torch.allclose(z @ z.T, x @ x.T, atol=1e-5)
    assert torch.allclose(q.T @ q, torch.eye(6), atol=1e-6) and torch.allclose(x @ q, z, atol=1e-6)
    assert row_space_coordinates(torch.randn(9, 4)) is None and row_space_coordinates(torch.randn(0, 4)) is None


def test_row_space_sgd_trajectory_equals_the_full_width_layer():
    """A linear first layer trained by nesterov, weight-decayed SGD on rows x gives the same outputs
    as the layer W Q on the row-space coordinates x Q (the claim of data.row_space)."""
    from lightning_da.data.full_batch import row_space_coordinates
    torch.manual_seed(0)
    x, y = torch.randn(7, 30, dtype=torch.float64), torch.arange(7) % 3
    z, q = row_space_coordinates(x)

    def net(first):
        return torch.nn.Sequential(first, torch.nn.LeakyReLU(0.2), torch.nn.Linear(5, 3)).double()
    full = net(torch.nn.Linear(30, 5))
    reduced = net(torch.nn.Linear(7, 5))
    with torch.no_grad():
        reduced[0].weight.copy_(full[0].weight @ q)
        reduced[0].bias.copy_(full[0].bias)
        reduced[2].load_state_dict(full[2].state_dict())
    assert torch.allclose(full(x), reduced(z), atol=1e-12)
    opts = [torch.optim.SGD(m.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-2, nesterov=True) for m in (full, reduced)]
    start = full(x).detach()
    for _ in range(25):
        for m, inp, opt in ((full, x, opts[0]), (reduced, z, opts[1])):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(inp), y).backward()
            opt.step()
    assert torch.allclose(full(x), reduced(z), atol=1e-10)
    assert not torch.allclose(full(x), start, atol=1e-2)  # it trained


def wide_domains(tmp_path):
    write_npz(tmp_path / "s.npz", n=40, d=5)
    write_npz(tmp_path / "wide.npz", n=12, d=50, classes=4, seed=2)
    return {"s": partial(feature_domain, name="s", path="s.npz"), "t": partial(feature_domain, name="t", path="wide.npz")}


def test_datamodule_row_space_shrinks_only_wide_domains(tmp_path):
    narrow = [datamodule(tmp_path, labeled_per_class=2, row_space=rs) for rs in (False, True)]
    assert narrow[1].model_kwargs == {"input_dims": {"source": 5, "target": 7}} == narrow[0].model_kwargs  # 40 rows: unchanged
    domains = wide_domains(tmp_path)
    plain, wide = [FullBatchDataModule(domains, "s", "t", root=str(tmp_path), labeled_per_class=1, row_space=rs) for rs in (False, True)]
    assert wide.input_dims == {"source": 5, "target": 50} == plain.input_dims  # the feature widths
    assert set(wide.model_kwargs["input_bases"]) == {"target"} and wide.model_kwargs["input_bases"]["target"].shape == (50, 12)
    q = wide.model_kwargs["input_bases"]["target"]
    for part in ("target_labeled", "target"):  # labelled and unlabelled rows share one basis: x = (x Q) Q^T
        assert torch.allclose(wide.train_batch[part][0] @ q.T, plain.train_batch[part][0], atol=1e-5)
        assert torch.equal(wide.train_batch[part][1], plain.train_batch[part][1])
    assert torch.equal(wide.eval_batch[0], wide.train_batch["target"][0]) and torch.equal(wide.eval_batch[1], plain.eval_batch[1])
    assert torch.equal(wide.train_batch["source"][0], plain.train_batch["source"][0])


@pytest.mark.parametrize("init_std", [0.01, None])
def test_ssan_with_row_space_is_the_same_network_and_training(tmp_path, init_std):
    """SSAN built from the same seed on plain and row-space data: the same initial outputs (every
    layer drawn at full width, hidden widths unchanged) and the same outputs after 6 Lightning steps
    of nesterov SGD; the checkpoint rebuilds from the stored widths."""
    import lightning as L
    from lightning_da.methods import SSAN
    domains = wide_domains(tmp_path)
    runs = []
    for rs in (False, True):
        dm = FullBatchDataModule(domains, "s", "t", root=str(tmp_path), labeled_per_class=1, row_space=rs, steps_per_epoch=6)
        L.seed_everything(3, verbose=False)
        model = SSAN(num_classes=dm.num_classes, init_std=init_std, d_common=8, stepwise_oracle=False,
                     optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True), **dm.model_kwargs)
        runs.append((dm, model))
    (dm0, m0), (dm1, m1) = runs
    assert m0.backbone.projectors["target"][0].out_features == m1.backbone.projectors["target"][0].out_features == (50 + 8) // 2
    assert m1.backbone.projectors["target"][0].in_features == 12

    def outputs():
        with torch.no_grad():
            return [m.classify(m.backbone(dm.eval_batch[0], "target")) for dm, m in runs]
    a, b = outputs()
    assert torch.allclose(a, b, atol=1e-6)
    for dm, m in runs:
        L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0).fit(m, datamodule=dm)
    a2, b2 = outputs()
    assert not torch.allclose(a2, a, atol=1e-4) and torch.allclose(a2, b2, atol=1e-5)
    rebuilt = SSAN(num_classes=dm1.num_classes, optimizer=partial(torch.optim.SGD, lr=0.1),
                   **{k: v for k, v in m1.hparams.items() if k in ("input_dims", "input_bases", "d_common", "init_std")})
    rebuilt.load_state_dict(m1.state_dict())
    assert m1.hparams["input_bases"] == {"target": 12}
