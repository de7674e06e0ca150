"""Parameter groups shared by every optimizer, and the one entry point the trainer calls."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmlab.config import TrainConfig
from lmlab.registry import EMBED, OPTIM


def _embedding_params(model: nn.Module) -> set[int]:
    # Token tables are registered embedding blocks; learned positions are torch embeddings inside a position block.
    tables = (*{e.cls for e in EMBED.entries()}, nn.Embedding)
    return {id(p) for m in model.modules() if isinstance(m, tables) for p in m.parameters(recurse=False)}


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    decay_embeddings: bool = True,
    skip: list[nn.Parameter] = (),
    lr: float | None = None,
) -> list[dict[str, Any]]:
    """[decaying, non-decaying]: matrices decay; biases, norms and gains (fewer than 2 dims) never do,
    and embedding tables only when `decay_embeddings`. Tied weights appear once; `skip` is left out
    (another group of the optimizer holds it). With `lr`, parameters that carry an `lr_scale` (a muP
    model's hidden matrices, `model/mup.py`) form a third group at lr x that scale."""
    skipped = {id(p) for p in skip}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in skipped]
    exempt = set() if decay_embeddings else _embedding_params(model)
    decay = [p for p in params if p.dim() >= 2 and id(p) not in exempt]
    no_decay = [p for p in params if p.dim() < 2 or id(p) in exempt]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    scaled = [p for p in decay if getattr(p, "lr_scale", 1.0) != 1.0]
    if lr is not None and scaled:
        if len({p.lr_scale for p in scaled}) > 1:
            raise ValueError("param_groups: parameters with different lr_scale values; one scale per model")
        groups[0]["params"] = [p for p in decay if getattr(p, "lr_scale", 1.0) == 1.0]
        groups.append({"params": scaled, "weight_decay": weight_decay, "lr": lr * scaled[0].lr_scale})
    return groups


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The matrices inside the blocks: not the embeddings, the output head, norms or biases (Muon's
    authors keep those on AdamW). Tied weights appear once."""
    head = getattr(model, "lm_head", None)
    outside = _embedding_params(model) | ({id(head.weight)} if isinstance(head, nn.Linear) else set())
    return [p for p in model.parameters() if p.requires_grad and p.dim() >= 2 and id(p) not in outside]


class GroupStepOptimizer(torch.optim.Optimizer):
    """An optimizer written here: `step` evaluates the closure, then `step_group` updates each group."""

    @torch.no_grad()
    def step(self, closure=None):
        """One step of every parameter group; the closure's loss, if one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self.step_group(group)
        return loss

    def step_group(self, group: dict[str, Any]) -> None:
        """Update the parameters of one group from their gradients."""
        raise NotImplementedError


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer `train.optim` names, over `model`'s parameters, with its own `train.<name>` settings."""
    entry = OPTIM.entry(train.optim)
    options = train.block_options.get(entry.options_key) if entry.options_key else None
    return entry.cls.build(model, train, options)
