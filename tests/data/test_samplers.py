"""The samplers (data/samplers.py): the cycle sampler's shards and the shard sampler."""

from lightning_da.data.samplers import CycleSampler, ShardSampler


def test_cycle_sampler_shards_are_disjoint_and_reshuffle_per_epoch():
    a, b = CycleSampler(100, 40, seed=1, rank=0, world_size=2), CycleSampler(100, 40, seed=1, rank=1, world_size=2)
    ia, ib = list(a), list(b)
    assert len(ia) == len(ib) == 40 and not set(ia) & set(ib)
    a.set_epoch(1)
    assert list(a) != ia
    assert sorted(ShardSampler(10, 1, 3)) == [1, 4, 7]
