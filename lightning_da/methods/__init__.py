"""One LightningModule per method, each a small subclass of :class:`~lightning_da.methods.base.DAMethod`
(one-loss methods: of :class:`~lightning_da.methods.base.SingleStepMethod`)."""

from lightning_da.methods.adda import ADDA
from lightning_da.methods.afn import AFN
from lightning_da.methods.base import DAMethod, Needs, SingleStepMethod
from lightning_da.methods.bnm import BNM
from lightning_da.methods.bsp import BSP
from lightning_da.methods.cc_loss import CCLoss
from lightning_da.methods.cdan import CDAN
from lightning_da.methods.cgdm import CGDM
from lightning_da.methods.cmkd import CMKD
from lightning_da.methods.coral import DeepCORAL
from lightning_da.methods.dan import DAN
from lightning_da.methods.dann import DANN
from lightning_da.methods.fixmatch import FixMatch
from lightning_da.methods.hda import HDANet, TargetOnly
from lightning_da.methods.jan import JAN
from lightning_da.methods.m2can import M2CAN
from lightning_da.methods.mcc import MCC
from lightning_da.methods.mcd import MCD
from lightning_da.methods.mdd import MDD
from lightning_da.methods.self_ensemble import SelfEnsemble
from lightning_da.methods.shot import SHOT
from lightning_da.methods.source_only import SourceOnly
from lightning_da.methods.ssan import SSAN
from lightning_da.methods.zeroshot import ZeroShotCLIP

__all__ = ["ADDA", "AFN", "BNM", "BSP", "CCLoss", "CDAN", "CGDM", "CMKD", "DAMethod", "DAN", "DANN", "DeepCORAL",
           "FixMatch", "HDANet", "JAN", "M2CAN", "MCC", "MCD", "MDD", "Needs", "SHOT", "SSAN", "SelfEnsemble",
           "SingleStepMethod", "SourceOnly", "TargetOnly", "ZeroShotCLIP"]
