"""The DataModule that pairs domains for domain adaptation.

Batch contract (one dict per training step):

* single source:  ``{"source": (x, y), "target": (x, idx)}``
* multi-source:   ``{"sources": [(x, y), ...], "target": (x, idx)}``
* ``strong_target_view=true``: the target entry is ``((x_weak, x_strong), idx)`` (``data.views``);
  methods that need it (FixMatch, CMKD + FixMatch) switch it on themselves.

``idx`` is the target sample's index in the target train split, so pseudo labels can be stored per
sample. An epoch is ``iters_per_epoch`` steps: every loader draws from its own
:class:`CycleSampler`, so the smaller domain cycles and none decides the epoch length. Train
loaders always give full batches (``drop_last``), so source and target halves have fixed sizes.

Evaluation loaders, in order (see ``eval_names``): the target evaluation split (the target's
test split when it has one and ``target_eval="auto"``, else its train split: the transductive
protocol), then each source's held-out split where one exists.
"""

from __future__ import annotations

from functools import cached_property
from typing import Callable, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_da.data.batches import cat_inputs
from lightning_da.data.domain import DataError, Domain, WithIndex, check_same_classes
from lightning_da.data.samplers import CycleSampler, ShardSampler


class DADataModule(L.LightningDataModule):
    """Pairs one or more labelled source domains with an unlabelled target domain.

    Args:
        domains: name -> callable building a :class:`Domain` (Hydra ``_partial_`` configs).
        source: the source domain name, or a list of names (multi-source).
        target: the target domain name.
        root: the folder the domains are read from (given to every builder as ``root``).
        domain_args: further keyword arguments given to every domain builder (image size, ...).
        batch_size: source batch size per process (each source in multi-source).
        target_batch_size: target batch size (default: ``batch_size``).
        iters_per_epoch: training steps per epoch.
        drop_last: must stay true for training (RN needs equal halves); false raises.
        target_eval: ``auto`` (test split if any, else train), ``test`` or ``train``.
        source_holdout: fraction of each source's train split held out for validation when the
            source has no test split (0 = none).
        strong_target_view: target training samples as (weak, strong) view pairs (see ``data.views``).
        combine_sources: with several sources, give single-source methods one combined source: each
            training batch ``{"sources": [(x1, y1), ...]}`` becomes ``{"source": (cat x, cat y)}``
            (the combined-source baselines of multi-source DA, e.g. cDANN in the MDAN paper).
        eval_batch_size, num_workers, pin_memory, persistent_workers: loader settings.
        seed: seeds the training samplers and the hold-out split.
    """

    def __init__(self, domains: dict[str, Callable[..., Domain]], source: str | Sequence[str], target: str,
                 root: str | None = None, domain_args: dict | None = None, batch_size: int = 32, target_batch_size: int | None = None,
                 iters_per_epoch: int = 500, drop_last: bool = True, target_eval: str = "auto", source_holdout: float = 0.0,
                 strong_target_view: bool = False, eval_batch_size: int = 256, num_workers: int = 0, pin_memory: bool = False,
                 persistent_workers: bool = False, seed: int = 0, combine_sources: bool = False):
        super().__init__()
        if not drop_last:
            raise ValueError("data.drop_last=false is not supported: training batches must have a fixed size per domain")
        if target_eval not in ("auto", "test", "train"):
            raise ValueError(f"data.target_eval must be auto, test or train, not {target_eval!r}")
        self.builders = dict(domains)
        self.multi_source = not isinstance(source, str)
        self.source_names = [source] if isinstance(source, str) else list(source)
        self.target_name = target
        for n in [*self.source_names, target]:
            if n not in self.builders:
                raise DataError(f"unknown domain {n!r}; this data config has: {sorted(self.builders)}")
        if not self.source_names:
            raise DataError("no source domain given")
        self.domain_args = dict(domain_args or {})
        if root is not None:
            self.domain_args["root"] = root
        self.batch_size, self.target_batch_size = batch_size, target_batch_size or batch_size
        self.iters_per_epoch, self.target_eval, self.source_holdout = iters_per_epoch, target_eval, source_holdout
        self.strong_target_view = strong_target_view
        self.combine_sources = combine_sources
        self.eval_batch_size, self.num_workers = eval_batch_size, num_workers
        self.pin_memory, self.persistent_workers, self.seed = pin_memory, persistent_workers and num_workers > 0, seed

    # ------------------------------------------------------------------ domains
    def fit_inputs_to(self, spec: dict | None, backbone: str = "the backbone") -> None:
        """Shape image inputs to what the backbone takes (before the domains are built): its
        channels, and for fixed-size networks (LeNet, DTN) its input size. The domain builders get
        them as ``channels`` / ``image_size``; values the data config forces that disagree are an
        error naming both sides. ``spec``: the backbone's ``input_spec`` (None: nothing to fit)."""
        if not spec:
            return
        args = self.domain_args
        channels = args.get("channels")
        if channels is not None and channels != spec["channels"]:
            raise DataError(f"the data makes {channels}-channel images (data.domain_args.channels={channels}) but "
                            f"{backbone} takes {spec['channels']}-channel inputs (backbone.in_channels); set one to "
                            "match the other")
        args["channels"] = spec["channels"]
        if not spec["fixed_size"]:
            return
        size = args.get("image_size")
        transform = {k: v for k, v in (args.get("transform") or {}).items() if v is not None}
        if size is not None and size != spec["size"]:
            raise DataError(f"the data makes {size}-px images (data.domain_args.image_size={size}) but {backbone} "
                            f"takes {spec['size']}-px inputs only (backbone.input_size={spec['size']}); set one to "
                            "match the other")
        if transform:
            raise DataError(f"data.domain_args.transform={dict(transform)} crops images for ImageNet networks, but "
                            f"{backbone} takes {spec['size']}-px inputs only: set data.domain_args.transform=null "
                            "(images are then resized to the backbone's input)")
        args["image_size"] = spec["size"]

    @cached_property
    def domains(self) -> dict[str, Domain]:
        built = {}
        for n in dict.fromkeys([*self.source_names, self.target_name]):
            built[n] = self.builders[n](**self.domain_args)
        self.classes = check_same_classes(list(built.values()))
        return built

    @property
    def num_classes(self) -> int:
        return len(self.domains[self.target_name].classes)

    @property
    def input_dims(self) -> dict[str, int]:
        """Feature widths of feature-matrix domains (``{}`` for images)."""
        return {n: d.info["dim"] for n, d in self.domains.items() if "dim" in d.info}

    @cached_property
    def source_splits(self) -> list[tuple[Dataset, Dataset | None]]:
        """(train, held-out) per source."""
        splits = []
        for n in self.source_names:
            d = self.domains[n]
            if d.test is not None or self.source_holdout <= 0:
                splits.append((d.train, d.test))
                continue
            g = torch.Generator().manual_seed(self.seed)
            perm = torch.randperm(len(d.train), generator=g).tolist()
            k = max(1, int(round(self.source_holdout * len(perm))))
            if k >= len(perm):
                raise DataError(f"source_holdout={self.source_holdout} leaves no training samples in {n!r}")
            splits.append((Subset(d.train, perm[k:]), Subset(d.train_eval, perm[:k])))
        return splits

    @property
    def target_train(self) -> Dataset:
        d = self.domains[self.target_name]
        if not self.strong_target_view:
            return d.train
        if d.train_strong is None:
            raise DataError(f"target domain {d.name!r} has no strong augmentation view (feature domains have none); "
                            "a method that needs (weak, strong) target views cannot train on it")
        return d.train_strong

    @property
    def target_eval_set(self) -> Dataset:
        d = self.domains[self.target_name]
        if self.target_eval == "test" and d.test is None:
            raise DataError(f"data.target_eval=test but target domain {d.name!r} has no test split")
        use_test = d.test is not None and self.target_eval in ("auto", "test")
        return d.test if use_test else d.train_eval

    @property
    def target_eval_description(self) -> str:
        """What the target accuracy is measured on (for the run's summary)."""
        d = self.domains[self.target_name]
        if self.target_eval_set is d.test:
            return f"the target's held-out test split ({len(d.test)} samples)"
        return f"the target's own training samples ({len(d.train_eval)}; transductive, no test split used)"

    @property
    def eval_names(self) -> list[str]:
        """Names of the evaluation loaders, in order: ``target`` then ``source`` / ``source_<name>``."""
        names = ["target"]
        for n, (_, held_out) in zip(self.source_names, self.source_splits):
            if held_out is not None:
                names.append(f"source_{n}" if self.multi_source else "source")
        return names

    def setup(self, stage: str | None = None) -> None:
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1 and trainer._accelerator_connector.use_distributed_sampler:
            raise ValueError("DADataModule shards its own samplers across processes: set trainer.use_distributed_sampler=false")
        for n, (train, _) in zip(self.source_names, self.source_splits):
            if len(train) < self.batch_size:
                raise DataError(f"source {n!r} has {len(train)} training samples, fewer than batch_size={self.batch_size}")
        if len(self.target_train) < self.target_batch_size:
            raise DataError(f"target {self.target_name!r} has {len(self.target_train)} samples, fewer than the batch size")

    # ------------------------------------------------------------------ loaders
    def _dist(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, dataset: Dataset, batch_size: int, sampler, drop_last: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers)

    def _train_loader(self, dataset: Dataset, batch_size: int, seed: int) -> DataLoader:
        rank, world = self._dist()
        sampler = CycleSampler(len(dataset), self.iters_per_epoch * batch_size, seed=seed, rank=rank, world_size=world)
        return self._loader(dataset, batch_size, sampler, drop_last=True)

    def train_dataloader(self):
        from lightning.pytorch.utilities import CombinedLoader

        sources = [self._train_loader(train, self.batch_size, self.seed + 17 * i)
                   for i, (train, _) in enumerate(self.source_splits)]
        target = self._train_loader(WithIndex(self.target_train), self.target_batch_size, self.seed + 7919)
        self.target_sampler = target.sampler
        if getattr(self, "_target_pool", None) is not None:
            self.target_sampler.set_pool(self._target_pool)
        loaders = {"sources": sources} if self.multi_source else {"source": sources[0]}
        loaders["target"] = target
        return CombinedLoader(loaders, mode="min_size")

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """``combine_sources``: the sources of a training batch merged into one source batch."""
        if self.combine_sources and isinstance(batch, dict) and "sources" in batch:
            batch = dict(batch)
            sources = batch.pop("sources")
            batch["source"] = (cat_inputs([x for x, _ in sources]), torch.cat([y for _, y in sources]))
        return batch

    def set_target_pool(self, indices) -> None:
        """Train on the target samples ``indices`` only (None: all), resampled with repetition to the
        epoch length (M2CAN's selected pseudo-labelled target); applies from the next epoch."""
        self._target_pool = None if indices is None else torch.as_tensor(indices).long().cpu()
        if getattr(self, "target_sampler", None) is not None:
            self.target_sampler.set_pool(self._target_pool)

    def target_pass_loader(self, eval_transform: bool = True, batch_size: int | None = None) -> DataLoader:
        """Every target training sample once, in dataset order, as ``(x, index)`` batches (pseudo
        labelling, AdaBN statistics); ``eval_transform`` picks the deterministic test-time transform."""
        d = self.domains[self.target_name]
        dataset = d.train_eval if eval_transform else d.train
        return DataLoader(WithIndex(dataset), batch_size=batch_size or self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers, pin_memory=self.pin_memory)

    def eval_sets(self) -> list[Dataset]:
        return [self.target_eval_set] + [held for _, held in self.source_splits if held is not None]

    def _eval_loaders(self) -> list[DataLoader]:
        rank, world = self._dist()
        return [self._loader(ds, self.eval_batch_size, ShardSampler(len(ds), rank, world), drop_last=False)
                for ds in self.eval_sets()]

    def val_dataloader(self):
        return self._eval_loaders()

    def test_dataloader(self):
        return self._eval_loaders()
