"""What a model does on one input: attention maps per layer and head, a logit lens (the top tokens
each layer's residual stream would predict through the final norm and head), per-layer activation
and gradient norms (`lmlab inspect`), and the same as scalars during training (`train.inspect_interval`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmlab.attn.base import CausalSelfAttention, attention_probs
from lmlab.errors import ConfigError


@dataclass
class Inspection:
    """One prompt through one model: per layer, attention probabilities, lens predictions and norms."""

    tokens: list[str]
    attention: dict[int, Tensor] = field(default_factory=dict)  # layer -> (n_head, T, T) probabilities
    no_attention: str | None = None  # why maps are missing (an attention that is not softmax(q k^T) per head)
    lens: list[list[list[tuple[str, float]]]] = field(default_factory=list)  # layer -> position -> top-k
    activation_rms: list[float] = field(default_factory=list)  # each block's output
    grad_norm: list[float] = field(default_factory=list)  # each block's parameters, for the prompt's LM loss


def _record_attention(attn: CausalSelfAttention, store: list) -> Callable[[], None]:
    """Make `attn` take its masked path and record its probabilities; returns the undo."""
    original = attn.attend

    def attend(q, k, v, mask, is_causal):
        store.append((attention_probs(q, k, mask, is_causal).detach(), v.detach(), original(q, k, v, mask, is_causal)))
        return store[-1][2]

    attn.attend = attend
    attn.attend_sequence = lambda *a, **kw: None  # the fused whole-sequence kernels hide the probabilities

    def undo() -> None:
        del attn.attend, attn.attend_sequence

    return undo


def _traced(model: nn.Module, ids: Tensor, *, backward: bool) -> tuple[list[Tensor], list[list] | None, str | None]:
    """Each block's output, each layer's recorded (probabilities, values, output) or None with the
    reason, for one forward (and, with `backward`, the LM loss's backward) of `ids` (B, T)."""
    if not hasattr(model, "blocks") or not hasattr(model, "lm_head") or getattr(model, "encoder", None) is not None:
        raise ConfigError("inspect: needs a causal language model run; an encoder-decoder run is not supported")
    outputs: list[Tensor] = []
    hooks = [b.register_forward_hook(lambda m, a, out: outputs.append(out)) for b in model.blocks]
    stores: list[list] = [[] for _ in model.blocks]
    plain = [isinstance(b.attn, CausalSelfAttention) for b in model.blocks]
    undo = [_record_attention(b.attn, s) for b, s, ok in zip(model.blocks, stores, plain, strict=True) if ok]
    try:
        if backward and ids.shape[1] > 1:
            with torch.enable_grad():
                model(ids[:, :-1], targets=ids[:, 1:]).loss.backward()
        else:
            with torch.no_grad():
                model(ids[:, :-1] if ids.shape[1] > 1 else ids)
    finally:
        for h in hooks:
            h.remove()
        for u in undo:
            u()
    if all(plain):
        return outputs, stores, None
    name = type(next(b.attn for b, ok in zip(model.blocks, plain, strict=True) if not ok)).__name__
    return outputs, None, f"{name} does not compute one softmax(q k^T) map per head"


def _grad_norms(model: nn.Module) -> list[float]:
    out = []
    for b in model.blocks:
        grads = [p.grad.float().pow(2).sum() for p in b.parameters() if p.grad is not None]
        out.append(float(torch.stack(grads).sum().sqrt()) if grads else 0.0)
    return out


def inspect_model(model: nn.Module, ids: Tensor, decode: Callable[[int], str], *, top: int = 5) -> Inspection:
    """Run `ids` (1, T) through a causal LM once forward and once backward and collect what it did."""
    model.eval()
    model.zero_grad(set_to_none=True)
    outputs, stores, missing = _traced(model, ids, backward=True)
    insp = Inspection([decode(int(t)) for t in ids[0, :-1]] if ids.shape[1] > 1 else [decode(int(ids[0, 0]))])
    insp.no_attention = missing
    if stores is not None:
        insp.attention = {i: s[0][0][0] for i, s in enumerate(stores)}
    with torch.no_grad():
        for h in outputs:
            probs = F.softmax(model.lm_head(model.norm_f(h)).float() * model.logit_mult, dim=-1)[0]  # (T, V)
            values, indices = probs.topk(min(top, probs.shape[-1]), dim=-1)
            insp.lens.append(
                [
                    [(decode(int(i)), float(p)) for p, i in zip(vs, ix, strict=True)]
                    for vs, ix in zip(values, indices, strict=True)
                ]
            )
            insp.activation_rms.append(float(h.float().pow(2).mean().sqrt()))
    insp.grad_norm = _grad_norms(model)
    model.zero_grad(set_to_none=True)
    return insp


def layer_stats(model: nn.Module, ids: Tensor) -> dict[str, float]:
    """Per layer: the RMS of the block's output and the mean entropy (nats) of its attention rows on
    `ids`, with no gradient, and the norm of the gradients its parameters hold now (the step's)."""
    stats: dict[str, float] = {}
    for i, g in enumerate(_grad_norms(model)):
        stats[f"layer{i}/grad_norm"] = g
    was_training = model.training
    model.eval()
    try:
        outputs, stores, _ = _traced(model, ids, backward=False)
    finally:
        model.train(was_training)
    for i, h in enumerate(outputs):
        stats[f"layer{i}/act_rms"] = float(h.float().pow(2).mean().sqrt())
    for i, s in enumerate(stores or []):
        p = s[0][0]
        stats[f"layer{i}/attn_entropy"] = float(-(p * p.clamp_min(1e-30).log()).sum(-1).mean())
    return stats
