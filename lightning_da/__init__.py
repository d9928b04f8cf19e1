"""lightning-da: domain-adaptation methods as PyTorch Lightning modules, composed with Hydra.

``lightning_da.load_model(run folder or checkpoint)`` gives a trained model back for use
(:mod:`lightning_da.load`); ``python -m lightning_da.predict`` and ``python -m lightning_da.export``
apply and export it.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # imported on first use: importing a submodule (e.g. lightning_da.data) stays light
    if name in ("load_model", "LoadedModel"):
        from lightning_da import load

        return getattr(load, name)
    raise AttributeError(f"module 'lightning_da' has no attribute {name!r}")
