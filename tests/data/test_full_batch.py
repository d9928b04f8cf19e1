"""The full-batch DataModule of HDA (data/full_batch.py): semi-supervised target splits, the loader that
moves once, and the row-space coordinates of wide feature matrices."""

from functools import partial

import pytest
import torch

from conftest import feature_datamodule, write_npz
from lightning_da.data import FullBatchDataModule, feature_domain, sample_per_class


# ------------------------------------------------------------------------------------ splits
def test_sample_per_class_k_each_reproducible():
    labels = torch.arange(50) % 5
    a, b, c = sample_per_class(labels, 3, seed=7), sample_per_class(labels, 3, seed=7), sample_per_class(labels, 3, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(a.unique()) == 15 and torch.bincount(labels[a]).tolist() == [3] * 5


def test_random_split_in_datamodule_is_disjoint_and_seeded(tmp_path):
    dm = feature_datamodule(tmp_path, labeled="random", labeled_per_class=2, split=3, seed=1)
    labeled, unlabeled = dm.labeled_index, dm.unlabeled_index
    assert set(labeled.tolist()).isdisjoint(unlabeled.tolist()) and len(labeled) + len(unlabeled) == 40
    assert torch.bincount(dm.train_batch["target_labeled"][1]).tolist() == [2, 2, 2, 2]
    assert torch.equal(dm.train_batch["target"][1], unlabeled) and torch.equal(dm.eval_batch[1], dm.target_domain.train.labels[unlabeled])
    assert torch.equal(feature_datamodule(tmp_path, labeled="random", labeled_per_class=2, split=3, seed=1).labeled_index, labeled)
    assert not torch.equal(feature_datamodule(tmp_path, labeled="random", labeled_per_class=2, split=4, seed=1).labeled_index, labeled)
    assert dm.input_dims == {"source": 5, "target": 7} and dm.model_kwargs == {"input_dims": {"source": 5, "target": 7}}


def test_full_batch_loader_moves_once(tmp_path):
    dm = feature_datamodule(tmp_path, steps_per_epoch=4)
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 and all(b is batches[0] for b in batches)
    moved = dm.transfer_batch_to_device(batches[0], torch.device("cpu"), 0)
    assert dm.transfer_batch_to_device(batches[1], torch.device("cpu"), 0) is moved


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
    narrow = [feature_datamodule(tmp_path, labeled_per_class=2, row_space=rs) for rs in (False, True)]
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
