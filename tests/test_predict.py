"""The prediction pass (eval_pass.py) over indexed and positional loaders, into the pseudo-label store."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_da.data.domain import WithIndex
from lightning_da.pseudo_labels import PseudoLabelStore, cluster_pseudo_labels, predict_dataset


def test_predict_dataset_indexed_and_positional():
    x = torch.arange(12, dtype=torch.float).view(6, 2)
    ds = TensorDataset(x, torch.zeros(6, dtype=torch.long))

    def forward(inp):
        return inp * 2, torch.softmax(inp, 1)

    loader = DataLoader(WithIndex(ds), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    feats, probs, idx = predict_dataset(forward, loader, "cpu", indexed=True)
    assert sorted(idx.tolist()) == list(range(6)) and idx.dtype == torch.long
    assert torch.equal(feats, x[idx] * 2) and torch.allclose(probs, torch.softmax(x[idx], 1))

    feats, probs, idx = predict_dataset(forward, DataLoader(ds, batch_size=4), "cpu")
    assert idx.tolist() == list(range(6)) and torch.equal(feats, x * 2)

    bare = DataLoader(x, batch_size=4)  # batches are bare tensors: no indices
    with pytest.raises(ValueError, match=r"must yield \(x, idx\)"):
        predict_dataset(forward, bare, "cpu", indexed=True)

    # end to end into the store
    store = PseudoLabelStore(6, 2)
    feats, probs, idx = predict_dataset(forward, loader, "cpu", indexed=True)
    store.update(idx, cluster_pseudo_labels(feats, probs))
    assert store.valid.all()
