"""Every experiment composes, alone and with every task it lists; every old experiment name forwards to
its new name with the same configuration and a deprecation warning that names the new one."""

import logging

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import CONF, make_cfg
from lightning_da.train import warn_renamed_experiment

EXPERIMENTS = CONF / "experiment"


def experiment_names() -> tuple[list[str], dict[str, str]]:
    """Runnable experiments (``<benchmark>/<name>``) and the renamed ones (old name -> new name)."""
    runnable, renamed = [], {}
    for path in sorted(EXPERIMENTS.rglob("*.yaml")):
        name = path.relative_to(EXPERIMENTS).with_suffix("").as_posix()
        if any(part.startswith("_") for part in name.split("/")):
            continue  # a benchmark's protocol or a shared base, composed into experiments
        forward = (yaml.safe_load(path.read_text()) or {}).get("renamed_experiment")
        if forward:
            renamed[name] = forward["new"]
        else:
            runnable.append(name)
    return runnable, renamed


RUNNABLE, RENAMED = experiment_names()


@pytest.fixture(scope="module")
def compose_train():
    """Compose ``conf/train.yaml`` with overrides (one Hydra initialisation for the module)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield lambda overrides: compose("train", overrides=overrides)
    GlobalHydra.instance().clear()


def plain(cfg) -> dict:
    out = OmegaConf.to_container(cfg, resolve=False)
    for key in ("hydra", "renamed_experiment"):
        out.pop(key, None)
    return out


def test_one_scheme():
    assert len(RUNNABLE) >= 50 and all(name.count("/") == 1 for name in RUNNABLE), RUNNABLE
    assert all("/" not in old for old in RENAMED) and set(RENAMED.values()) <= set(RUNNABLE)


@pytest.mark.parametrize("name", RUNNABLE)
def test_experiment_composes_with_every_task_it_lists(compose_train, name):
    cfg = compose_train([f"experiment={name}"])
    bench = cfg.get("benchmark")
    assert bench is not None and bench.name == name.split("/")[0], f"{name}: benchmark {bench}"
    OmegaConf.to_container(cfg.method, resolve=True)  # the method config resolves
    for task in bench.tasks:
        task_cfg = yaml.safe_load((CONF / "task" / f"{task}.yaml").read_text())
        cfg = compose_train([f"experiment={name}", f"task={task}"])
        assert (cfg.data.source, cfg.data.target) == (task_cfg["data"]["source"], task_cfg["data"]["target"]), task


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_an_old_name_is_the_new_experiment(compose_train, old):
    assert plain(compose_train([f"experiment={old}"])) == plain(compose_train([f"experiment={RENAMED[old]}"]))


def test_an_old_name_warns_with_the_new_one(tmp_path, caplog):
    cfg = make_cfg(tmp_path, ["experiment=digits_dann"])  # the name of earlier releases
    with caplog.at_level(logging.WARNING):
        message = warn_renamed_experiment(cfg)
    assert "experiment=digits_dann is deprecated" in message and "use experiment=digits/dann" in message
    assert message in caplog.text
    assert warn_renamed_experiment(make_cfg(tmp_path, ["experiment=digits/dann"])) is None
