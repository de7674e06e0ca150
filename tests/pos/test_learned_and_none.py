import pytest
import torch

from lmlab.model.build import build_model
from lmlab.pos.learned import LearnedPositions
from tests.conftest import tiny_cfg


def test_learned_adds_rows_at_offset():
    cfg = tiny_cfg("gpt2")
    pos = LearnedPositions(cfg)
    x = torch.zeros(1, 3, cfg.d_model)
    torch.testing.assert_close(pos.embed(x, 5)[0], pos.wpe.weight[5:8])


def test_learned_refuses_positions_past_table():
    cfg = tiny_cfg("gpt2", max_seq_len=8)
    with pytest.raises(ValueError, match="max_seq_len=8"):
        LearnedPositions(cfg).embed(torch.zeros(1, 9, cfg.d_model), 0)


def test_nope_model_is_permutation_equivariant_without_mask_effects_at_first_token():
    """With no positions, the first token's logits depend only on that token."""
    cfg = tiny_cfg("llama", pos="none")
    model = build_model(cfg).eval()
    a = model(torch.tensor([[5, 1, 2]])).logits[0, 0]
    b = model(torch.tensor([[5, 9, 9]])).logits[0, 0]
    torch.testing.assert_close(a, b)
    assert sum(p.numel() for p in model.pos.parameters()) == 0
