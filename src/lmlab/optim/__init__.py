"""Optimizers, registered in `lmlab.registry.OPTIM`: each file builds one from the model and the train settings."""

from lmlab.optim.groups import build_optimizer, param_groups

__all__ = ["build_optimizer", "param_groups"]
