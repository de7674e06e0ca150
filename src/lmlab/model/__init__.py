"""Model wiring: blocks into a CausalLM; FLOPs and KV cache helpers."""

from lmlab.model.kv_cache import KVCache

__all__ = ["Block", "CausalLM", "CausalLMOutput", "KVCache", "build_model", "build_transformer"]


def __getattr__(name: str):
    # transformer.py imports the block registries, which import lmlab.model.kv_cache: keep this lazy.
    from lmlab.model import block, transformer

    table = {
        "Block": block.Block,
        "CausalLM": transformer.CausalLM,
        "CausalLMOutput": transformer.CausalLMOutput,
        "build_model": transformer.build_model,
        "build_transformer": transformer.build_transformer,
    }
    if name in table:
        return table[name]
    raise AttributeError(name)
