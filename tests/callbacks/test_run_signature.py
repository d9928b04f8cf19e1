"""Resuming a checkpoint under other settings (lightning_da.callbacks.run_signature): an error naming
both methods and every setting that differs, instead of raw state-dict errors; the same run resumes."""

import pytest
import torch
import yaml

from conftest import QUICK, make_cfg
from lightning_da.callbacks import ResumeMismatchError
from lightning_da.callbacks.run_signature import KEY
from lightning_da.train import train

FAST = [*(o for o in QUICK if not o.startswith("callbacks.")), "data.num_workers=0", "logger=none", "callbacks=none"]
FIRST = ["method=dann", *FAST]


@pytest.fixture(scope="module")
def dann_run(tmp_path_factory):
    """A finished 4-step DANN run on the bundled digits, with the overrides file Hydra writes."""
    run = tmp_path_factory.mktemp("dann_run")
    train(make_cfg(run, FIRST))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["method=dann", "trainer.max_epochs=1"]))
    return run


def test_the_same_run_resumes(dann_run, tmp_path):
    res = train(make_cfg(tmp_path, [*FIRST, "trainer.max_epochs=2", f"ckpt_path={dann_run / 'checkpoints' / 'final.ckpt'}"]))
    assert res["steps"] == 8 and torch.load(dann_run / "checkpoints" / "final.ckpt", weights_only=False)[KEY]["method"] == "DANN"


def test_another_method_names_both_and_every_difference(dann_run, tmp_path):
    ckpt = dann_run / "checkpoints" / "final.ckpt"
    with pytest.raises(ResumeMismatchError) as err:
        train(make_cfg(tmp_path, ["method=cdan", *FAST, "backbone=lenet_bn", "norm=dsbn", f"ckpt_path={ckpt}"]))
    msg = str(err.value)
    assert f"ckpt_path={ckpt} was saved by a DANN run and cannot resume this CDAN run" in msg
    assert "method: DANN in the checkpoint, CDAN in this run; backbone: lenet in the checkpoint, lenet_bn in this run; norm: bn in the checkpoint, dsbn in this run" in msg
    assert "size mismatch" not in msg and "Unexpected key" not in msg
    assert ("a checkpoint resumes only the run that made it: resume with that run's settings (that run's overrides: "
            "method=dann trainer.max_epochs=1), or drop ckpt_path to start a new run") in msg


def test_a_checkpoint_without_signature_still_gets_an_explained_error(dann_run, tmp_path):
    """Checkpoints saved before the signature existed: the state-dict error is explained."""
    old = torch.load(dann_run / "checkpoints" / "final.ckpt", weights_only=False)
    del old[KEY]
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    ckpt = tmp_path / "run" / "checkpoints" / "old.ckpt"
    torch.save(old, ckpt)
    with pytest.raises(ResumeMismatchError) as err:
        train(make_cfg(tmp_path / "out", ["method=cdan", *FAST, f"ckpt_path={ckpt}"]))
    msg = str(err.value)
    assert f"ckpt_path={ckpt} does not fit this CDAN run (backbone lenet, norm bn, 10 classes)" in msg
    assert "its weights have other shapes or names (Error(s) in loading state_dict for CDAN" in msg
    assert "resume with that run's settings, or drop ckpt_path to start a new run" in msg
