"""The stepwise oracle (callbacks/stepwise.py) of a run through the config on real features."""

import numpy as np
import torch

from conftest import FEATURES, SHARED_DATA, make_cfg, needs_shared


@needs_shared(FEATURES)
def test_stepwise_oracle_is_the_best_step_accuracy(tmp_path):
    """The oracle equals the maximum of the per-step accuracies recomputed from the weights."""
    import lightning as L

    from lightning_da.train import build

    cfg = make_cfg(tmp_path, ["experiment=hda/ssan", "task=surf_decaf_d2d", "method=hda_net", f"paths.data_dir={SHARED_DATA}",
                              "data.steps_per_epoch=5", "logger=none", "callbacks=none", "optimizer.lr=1.0"])
    dm, model, trainer = build(cfg)
    accs = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            with torch.no_grad():
                accs.append(float((pl_module(dm.eval_batch[0]).argmax(1) == dm.eval_batch[1]).float().mean()))

    trainer.callbacks.append(Record())
    trainer.fit(model, datamodule=dm)
    with torch.no_grad():
        accs.append(float((model(dm.eval_batch[0]).argmax(1) == dm.eval_batch[1]).float().mean()))
    stepwise = next(c for c in trainer.callbacks if type(c).__name__ == "StepwiseTargetAccuracy").result()
    assert np.isclose(stepwise["val/target_acc"], max(accs)) and accs[stepwise["step"]] == max(accs)
