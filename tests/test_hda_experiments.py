"""The HDA experiment configs (SSAN and the HDA baselines) through run.py's config composition: on real
features (Office-Caltech10 SURF, DeCAF, GoogLeNet) and on generated files in the SHDA layout."""

import numpy as np
import pytest

from conftest import FEATURES, SHARED_DATA, make_cfg, needs_shared
from lightning_da.train import train


QUICK_HDA = ["data.steps_per_epoch=6", "trainer.log_every_n_steps=2", "logger=csv"]


@needs_shared(FEATURES)
@pytest.mark.parametrize("method", ["ssan", "hda_net", "target_only"])
def test_hda_methods_through_run_config(tmp_path, method):
    cfg = make_cfg(tmp_path, ["experiment=hda/ssan", "task=surf_decaf_d2d", f"method={method}", f"paths.data_dir={SHARED_DATA}",
                              "data.split=4", *QUICK_HDA])
    res = train(cfg)
    assert res["steps"] == 6 and res["task"] == "dslr_surf->dslr_decaf"
    assert 0.0 <= res["last"]["test/target_acc"] <= 1.0
    oracle = res["oracle"]
    assert "target labels" in oracle["note"] and oracle["val/target_acc"] >= res["last"]["test/target_acc"] - 1e-6
    assert 0 <= oracle["step"] <= 6
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0]
    names = {"ssan": ["train/loss_isc", "train/loss_domain", "train/loss_esa", "train/grl_coeff", "train/selected_fraction"],
             "hda_net": ["train/loss_cls", "train/loss_target_cls"], "target_only": ["train/loss_target_cls"]}[method]
    for name in ["train/loss", *names]:
        assert name in header, name


@needs_shared(FEATURES)
def test_surf_to_googlenet_with_random_split(tmp_path):
    cfg = make_cfg(tmp_path, ["experiment=hda/ssan_googlenet", "data.source=dslr_surf", "data.target=webcam_googlenet",
                              f"paths.data_dir={SHARED_DATA}", "data.split=2", *QUICK_HDA])
    res = train(cfg)
    assert res["task"] == "dslr_surf->webcam_googlenet" and 0.0 <= res["last"]["test/target_acc"] <= 1.0


def test_shda_config_runs_on_the_shda_layout(tmp_path):
    """The SHDA data is not available here: files in its layout, generated, check the config path
    (split index passed to the target file's cells through ${data.split})."""
    import scipy.io

    rng = np.random.default_rng(0)
    scipy.io.savemat(tmp_path / "src.mat", {"source_features": rng.random((24, 9)), "source_labels": np.arange(24)[:, None] % 3 + 1})
    cells = {k: np.empty((1, 2), dtype=object) for k in ("training_features", "training_labels", "testing_features", "testing_labels")}
    for i in range(2):
        cells["training_features"][0, i], cells["training_labels"][0, i] = rng.random((6, 5)), (np.arange(6) % 3 + 1)[:, None]
        cells["testing_features"][0, i], cells["testing_labels"][0, i] = rng.random((10 + i, 5)), (np.arange(10 + i) % 3 + 1)[:, None]
    scipy.io.savemat(tmp_path / "tgt.mat", cells)
    cfg = make_cfg(tmp_path / "run", ["experiment=hda/ssan_shda", f"data.root={tmp_path}", "data.domains.source.path=src.mat",
                                      "data.domains.target.path=tgt.mat", "data.split=1", *QUICK_HDA])
    from hydra.utils import instantiate

    dm = instantiate(cfg.data, _convert_="all")
    assert len(dm.labeled_index) == 6 and len(dm.eval_batch[1]) == 11  # split 1's cells
    assert dm.input_dims == {"source": 9, "target": 5}
    assert train(cfg)["steps"] == 6
