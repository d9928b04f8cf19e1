"""Train and evaluate a domain-adaptation method: ``python run.py [group=option ...] [key=value ...]``.

Composes ``conf/train.yaml`` with Hydra, fits, tests the last and the best checkpoint, prints a
summary, writes ``results.json`` into the run directory and returns ``optimized_metric`` (for
sweeps with ``-m``). ``python run.py --help`` lists the config groups.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from lightning_da.train import lookup, train

    results = train(cfg)
    return lookup(results, cfg.optimized_metric) if cfg.get("optimized_metric") else None


if __name__ == "__main__":
    main()
