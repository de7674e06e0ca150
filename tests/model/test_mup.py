"""muP width scaling: the init, learning rates and logit multiplier of Tensor Programs V (Adam, Table 3), the
identity at the base width, the refusals, and the learning rate that transfers across widths."""

import pytest
import torch
from pydantic import ValidationError

from lmlab.config import RunConfig, TrainConfig
from lmlab.errors import ConfigError
from lmlab.export.hf import target_family
from lmlab.model.build import build_model
from lmlab.model.cost import meta_model
from lmlab.model.mup import at_width, base_config, infinite_dims
from lmlab.optim.groups import build_optimizer
from tests.conftest import tiny_cfg

LLAMA = {"n_head": 2, "n_layer": 2}  # head width 16 at d_model 32


def _pair(width: int, base: int, **overrides):
    """The standard model and the muP one at `width`, from the same random numbers."""
    cfg = at_width(tiny_cfg("llama", **LLAMA, **overrides), width)
    torch.manual_seed(0)
    sp = build_model(cfg)
    torch.manual_seed(0)
    mup = build_model(cfg.model_copy(update={"mup_base_width": base}))
    return sp, mup


def test_at_the_base_width_mup_is_the_standard_model():
    sp, mup = _pair(32, 32)
    for (name, a), b in zip(sp.state_dict().items(), mup.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    ids = torch.randint(0, 61, (2, 12))
    assert torch.equal(sp(ids).logits, mup(ids).logits)
    groups = build_optimizer(mup, TrainConfig(lr=1e-3)).param_groups
    assert [g["lr"] for g in groups] == [1e-3, 1e-3]  # no third group: every factor is 1


@pytest.mark.parametrize("tied", [True, False])
def test_init_learning_rates_and_logits_follow_the_width_multiplier(tied):
    sp, mup = _pair(64, 16, tie_weights=tied)  # m = 4
    dims = infinite_dims(mup, meta_model(base_config(mup.config)))
    hidden = {n for n, p in mup.named_parameters() if sum(dims[id(p)]) == 2 and n.startswith("blocks")}
    assert hidden == {n for n, p in mup.named_parameters() if n.startswith("blocks") and p.dim() == 2}
    for (name, a), b in zip(sp.named_parameters(), mup.parameters(), strict=True):
        expected = a / 2 if name in hidden else a  # std / sqrt(m); embeddings, head and norms as they were
        torch.testing.assert_close(b, expected, rtol=0, atol=0)
        assert getattr(b, "lr_scale", 1.0) == (0.25 if name in hidden else 1.0)
    groups = build_optimizer(mup, TrainConfig(lr=1e-3, weight_decay=0.1)).param_groups
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    for name, p in mup.named_parameters():
        lr, decay = by_id[id(p)]
        assert lr == (2.5e-4 if name in hidden else 1e-3), name
        assert decay == (0.1 if p.dim() == 2 else 0.0), name
    with torch.no_grad():  # the same weights without muP give logits m times larger
        sp.load_state_dict(mup.state_dict())
        ids = torch.randint(0, 61, (2, 12))
        torch.testing.assert_close(mup(ids).logits, sp(ids).logits / 4, rtol=1e-6, atol=1e-7)


def test_refusals_name_the_field():
    with pytest.raises(ValidationError, match="allowed: adamw, lion"):
        RunConfig.model_validate({"model": {"mup_base_width": 64}, "train": {"optim": "sgd"}})
    with pytest.raises(ValidationError, match="not a multiple of the head width 32"):
        RunConfig.model_validate({"model": {"mup_base_width": 48}})
    with pytest.raises(ConfigError, match="scale --widths: 40 is not a multiple of the head width 16"):
        at_width(tiny_cfg("llama", **LLAMA), 40)
    with pytest.raises(ConfigError, match="no transformers family"):
        target_family(tiny_cfg("llama", **LLAMA, mup_base_width=16))  # exported through remote code instead


# The toy task: a random Markov chain over 32 tokens, its transitions peaked enough to learn in 30 steps.
V, T, B, STEPS = 32, 16, 16, 30
LRS = [2.0**k * 1e-3 for k in range(-1, 5)]  # a grid of factor-2 steps, 0.5e-3 .. 16e-3


@pytest.fixture(scope="module")
def chain() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    trans = torch.softmax(3 * torch.randn(V, V, generator=g), -1)
    x = torch.empty(B * STEPS, T + 1, dtype=torch.long)
    x[:, 0] = torch.randint(0, V, (len(x),), generator=g)
    for t in range(T):
        x[:, t + 1] = torch.multinomial(trans[x[:, t]], 1, generator=g).squeeze(1)
    return x


def _final_loss(chain: torch.Tensor, width: int, lr: float, mup: bool) -> float:
    """Mean loss of the last 5 of 30 Adam steps at a constant lr (no schedule, no decay)."""
    cfg = at_width(tiny_cfg("llama", **LLAMA, vocab_size=V, max_seq_len=T), width)
    torch.manual_seed(0)
    model = build_model(cfg.model_copy(update={"mup_base_width": 32 if mup else None}))
    optimizer = build_optimizer(model, TrainConfig(lr=lr, weight_decay=0.0))
    losses = []
    for step in range(STEPS):
        rows = chain[step * B : (step + 1) * B]
        loss = model(rows[:, :-1], rows[:, 1:]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses[-5:]) / 5


def _best(chain, width: int, mup: bool) -> int:
    losses = [_final_loss(chain, width, lr, mup) for lr in LRS]
    return min(range(len(LRS)), key=losses.__getitem__)


def test_the_best_learning_rate_transfers_across_widths_with_mup_and_moves_without(chain):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same sums on every machine
    try:
        base = _best(chain, 32, mup=False)  # at the base width muP is the standard model
        standard, scaled = _best(chain, 128, mup=False), _best(chain, 128, mup=True)
    finally:
        torch.set_num_threads(threads)
    assert abs(scaled - base) <= 1, (LRS[base], LRS[scaled])  # muP: within one grid step
    assert base - standard >= 2, (LRS[base], LRS[standard])  # standard: at least two steps smaller at 4x width
