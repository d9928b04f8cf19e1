"""One LightningModule per method, each a small subclass of :class:`~lightning_da.methods.base.DAMethod`."""

from lightning_da.methods.base import DAMethod
from lightning_da.methods.cdan import CDAN
from lightning_da.methods.cgdm import CGDM
from lightning_da.methods.cmkd import CMKD
from lightning_da.methods.dann import DANN
from lightning_da.methods.fixmatch import FixMatch
from lightning_da.methods.hda import HDANet, TargetOnly
from lightning_da.methods.m2can import M2CAN
from lightning_da.methods.mcd import MCD
from lightning_da.methods.source_only import SourceOnly
from lightning_da.methods.ssan import SSAN
from lightning_da.methods.zeroshot import ZeroShotCLIP

__all__ = ["DAMethod", "CDAN", "CGDM", "CMKD", "DANN", "FixMatch", "HDANet", "M2CAN", "MCD", "SourceOnly", "SSAN", "TargetOnly",
           "ZeroShotCLIP"]
