from lmlab.config import ModelConfig
from lmlab.model.build import build_model
from lmlab.model.cost import cost_card, params_by_component


def test_params_by_component_sum_to_model_total():
    cfg = ModelConfig.from_preset("llama", n_layer=2, d_model=64, n_head=4, n_kv_head=2, vocab_size=100)
    parts = params_by_component(cfg)
    assert sum(parts.values()) == build_model(cfg).num_params()
    hs = 16
    assert parts["attn"] == 2 * (64 * (4 + 2 + 2) * hs + 4 * hs * 64)
    assert parts["lm_head"] == parts["embedding"] == 100 * 64


def test_cost_card_mentions_everything():
    card = cost_card(ModelConfig.from_preset("gpt2"), 1024)
    assert "124,439,808" in card and "attn_scores" in card and "KV cache" in card
