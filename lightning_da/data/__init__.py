"""Domains, the DataModule that pairs them, transforms and samplers."""

from lightning_da.data.datamodule import DADataModule
from lightning_da.data.domain import DataError, Domain, TensorImages, WithIndex, check_same_classes

__all__ = ["DADataModule", "DataError", "Domain", "TensorImages", "WithIndex", "check_same_classes"]
