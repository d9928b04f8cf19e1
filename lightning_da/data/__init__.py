"""Domains, the DataModule that pairs them, transforms and samplers."""

from lightning_da.data.datamodule import DADataModule
from lightning_da.data.domain import DataError, Domain, TensorImages, WithIndex, check_same_classes
from lightning_da.data.features import FeatureTensors, feature_domain, shda_source_domain, shda_target_domain
from lightning_da.data.full_batch import FullBatchDataModule, sample_per_class
from lightning_da.data.multimodal import MultiSourceDataModule, amazon_review_domain, multimodal_domain

__all__ = ["DADataModule", "DataError", "Domain", "FeatureTensors", "FullBatchDataModule", "MultiSourceDataModule", "TensorImages", "WithIndex",
           "amazon_review_domain", "check_same_classes", "feature_domain", "multimodal_domain", "sample_per_class", "shda_source_domain", "shda_target_domain"]
