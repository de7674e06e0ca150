"""Model wiring: blocks into a CausalLM or Seq2Seq; generation, FLOPs, cost card."""

__all__ = ["Block", "CausalLM", "ModelOutput", "build_model", "build_transformer"]


def __getattr__(name: str):
    # The block registries import torch-heavy modules: load them on first use.
    from lmlab.model import block, build, output, transformer

    table = {
        "Block": block.Block,
        "CausalLM": transformer.CausalLM,
        "ModelOutput": output.ModelOutput,
        "build_model": build.build_model,
        "build_transformer": build.build_transformer,
    }
    if name in table:
        return table[name]
    raise AttributeError(name)
