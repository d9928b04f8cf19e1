"""lightning-da: domain-adaptation methods as PyTorch Lightning modules, composed with Hydra."""

__version__ = "0.1.0"
