"""A few steps of every CGDM experiment config: the digits ones on the real digits of ../shared/data,
the image ones on small stand-ins in each dataset's layout built from Office-Caltech10 images
(ResNets without their ImageNet weights, which cannot be fetched here, at 64 px)."""

import pytest

from conftest import QUICK, SHARED_DATA, make_cfg, needs_shared
from lightning_da.train import train

pytestmark = pytest.mark.slow
FEW = [*QUICK, "data.iters_per_epoch=2", "data.batch_size=4", "method.num_k=1", "method.pseudo.start_epoch=0",
       "trainer.max_epochs=1"]


@needs_shared(SHARED_DATA / "mnist_m")
@pytest.mark.parametrize("name,task", [("cgdm_digits", "m2u"), ("cgdm_digits", "u2m"), ("cgdm_digits", "mnistm"),
                                       ("mcd_digits", "m2u")])
def test_digits_experiments(tmp_path, name, task):
    few = [o for o in FEW if "pseudo" not in o] if name.startswith("mcd") else FEW
    res = train(make_cfg(tmp_path, [f"experiment={name}", f"task={task}", f"paths.data_dir={SHARED_DATA}", *few]))
    assert res["steps"] == 2 * 4 and 0 <= res["last"]["test/target_acc"] <= 1


@pytest.mark.parametrize("name,folder", [("cgdm_office31", "office31"), ("cgdm_visda", "visda2017"),
                                         ("cgdm_domainnet", "domainnet"), ("cgdm_imageclef", "image_CLEF")])
def test_image_experiments_on_standins(tmp_path, standins, name, folder):
    cfg = make_cfg(tmp_path, [f"experiment={name}", f"data.root={standins / folder}", "backbone.pretrained=false",
                              "data.domain_args.transform.resize=72", "data.domain_args.transform.crop=64",
                              "data.num_workers=0", "data.pin_memory=false", "data.persistent_workers=false", *FEW])
    res = train(cfg)
    assert res["steps"] == 2 * 4 and "best" not in res  # paper protocol: last checkpoint only
    assert 0 <= res["last"]["test/target_acc_mean_class"] <= 1
