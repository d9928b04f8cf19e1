"""No silent NaN runs: non-finite features are refused at load (lightning_da.data.features), and a
training loss that becomes NaN or Inf stops the run with an error (lightning_da.callbacks.finite_loss),
for a UDA and an HDA method, one-loss and multi-step, through run.py's composition."""

import math

import lightning as L
import numpy as np
import pytest
import torch

from conftest import QUICK, make_cfg, save_features
from lightning_da.callbacks import FiniteLossCheck, NonFiniteLossError
from lightning_da.compat import batches_that_stepped
from lightning_da.train import build, train

FAST = [*(o for o in QUICK if not o.startswith("callbacks.")), "data.num_workers=0", "logger=none", "callbacks=none"]


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """12-d source and target feature files of 4 classes; copies of the source with NaN / Inf cells."""
    root = tmp_path_factory.mktemp("finite")
    xs, ys = save_features(root / "src.npz", 10, 12)
    save_features(root / "tgt.npz", 8, 12, seed=1)
    xs[3, 2], xs[17, 0], xs[17, 5] = np.nan, np.nan, np.inf
    np.savez(root / "src_nan.npz", features=xs, labels=ys)
    return root


def feature_run(root, source: str, *extra: str) -> list[str]:
    return ["data=features", f"data.source={root / source}", f"data.target={root / 'tgt.npz'}", "logger=none",
            "trainer.enable_progress_bar=false", "trainer.max_epochs=1", *extra]


@pytest.mark.parametrize("setting", [["method=ssan", "data.steps_per_epoch=5"],
                                     ["backbone=mlp", "data.labeled_per_class=null", "data.uda_loader.iters_per_epoch=3"]],
                         ids=["hda", "uda"])
def test_non_finite_features_are_refused_at_load_naming_file_domain_and_rows(features, tmp_path, setting):
    with pytest.raises(Exception) as err:  # the HDA DataModule reads its files when Hydra instantiates it
        build(make_cfg(tmp_path, feature_run(features, "src_nan.npz", *setting)))[0].num_classes
    msg = str(err.value)
    assert f"domain 'src_nan' ({features / 'src_nan.npz'}): 2 of 40 feature rows hold NaN and Inf values" in msg
    assert "3 value(s); first rows [3, 17]" in msg
    assert "remove those rows, or replace the values (e.g. numpy.nan_to_num" in msg


class PoisonWeights(L.Callback):
    """Make the model's weights NaN after step ``after`` (1-based), as a diverging run would."""

    def __init__(self, after: int):
        self.after = after

    def on_train_batch_end(self, trainer, pl_module, *args):
        if batches_that_stepped(trainer) + 1 == self.after:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


def fit_poisoned(cfg, after: int):
    dm, model, trainer = build(cfg)
    trainer.callbacks.append(PoisonWeights(after))
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit(model, datamodule=dm)
    return str(err.value)


@pytest.mark.parametrize("method", ["method=dann", "method=mcd method.num_k=1"], ids=["one-loss", "manual-optimisation"])
def test_loss_that_turns_nan_stops_the_run_naming_the_step_and_the_last_finite_loss(tmp_path, method):
    """Weights poisoned after step 3: the loss of step 4 is NaN; with logging every 3 steps the check
    at step 6 stops the run and names step 4 and the loss logged at step 3."""
    cfg = make_cfg(tmp_path, [*method.split(), *FAST, "data.iters_per_epoch=20", "trainer.log_every_n_steps=3"])
    msg = fit_poisoned(cfg, after=3)
    assert "the loss became non-finite (NaN or Inf) at step 4; the last finite train/loss was " in msg
    last = float(msg.split("the last finite train/loss was ")[1].split(" ")[0])
    assert math.isfinite(last) and "at step 3." in msg
    for fix in ("the input data for NaN or Inf values", "the learning rate, which may be too high", "optimizer.lr 10x lower",
                "mixed precision (trainer.precision=32-true", "bf16-mixed or 32"):
        assert fix in msg


def test_nan_before_the_first_logged_loss_says_so(tmp_path):
    cfg = make_cfg(tmp_path, ["method=dann", *FAST, "data.iters_per_epoch=20", "trainer.log_every_n_steps=4"])
    msg = fit_poisoned(cfg, after=2)
    assert "at step 3; no train/loss was logged before it (it is logged every 4 steps, trainer.log_every_n_steps)" in msg


def test_nan_in_the_last_steps_is_caught_at_the_end_of_training(tmp_path):
    """A NaN after the last logging step is still refused (the check at the end of training)."""
    cfg = make_cfg(tmp_path, ["method=source_only", *FAST, "data.iters_per_epoch=8", "trainer.log_every_n_steps=5",
                              "trainer.check_val_every_n_epoch=5"])
    assert "at step 7; the last finite train/loss was" in fit_poisoned(cfg, after=6)


def test_hda_run_with_a_learning_rate_too_high_stops_with_no_result(features, tmp_path):
    """SSAN at lr 1e6 diverges within a few full-batch steps: an error, no results.json, no accuracy."""
    cfg = make_cfg(tmp_path, feature_run(features, "src.npz", "method=ssan", "data.steps_per_epoch=30", "optimizer.lr=1e6",
                                         "trainer.log_every_n_steps=1"))
    with pytest.raises(NonFiniteLossError, match=r"at step \d+; the last finite train/loss was .* at step \d+\. .*"
                                                 r"current lr \d"):
        train(cfg)
    assert not (tmp_path / "results.json").exists()


def test_every_run_checks_its_loss(tmp_path):
    _, _, trainer = build(make_cfg(tmp_path, ["method=dann", *FAST]))
    assert sum(isinstance(c, FiniteLossCheck) for c in trainer.callbacks) == 1
