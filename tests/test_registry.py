import pytest
from torch import nn

from lmlab.errors import UnknownComponentError
from lmlab.registry import ATTN, FFN, NORM, POS, Registry


def test_builtin_blocks_registered():
    assert set(ATTN.names()) == {"mha", "sdpa", "mla", "native_sparse", "native_sparse_reference", "sliding_window"}
    assert set(FFN.names()) == {"mlp", "swiglu", "geglu", "gated_mlp", "moe"}
    assert set(NORM.names()) == {"layernorm", "layernorm_nobias", "rmsnorm"}
    assert set(POS.names()) == {"learned", "rope", "none", "alibi", "sinusoidal"}


def test_lookup_is_case_insensitive():
    assert ATTN.get("SDPA") is ATTN.get("sdpa")
    assert NORM.canonical("RMSNorm") == "rmsnorm"


def test_unknown_name_lists_known_and_closest():
    with pytest.raises(UnknownComponentError) as exc:
        ATTN.get("SPDA")
    msg = str(exc.value)
    assert msg.startswith(
        "unknown attention 'SPDA'; known: mha, mla, native_sparse, native_sparse_reference, sdpa, sliding_window"
    )
    assert "did you mean 'sdpa'" in msg
    assert ATTN.get("NSA") is ATTN.get("native_sparse") and ATTN.get("swa") is ATTN.get("sliding_window")


def test_register_with_metadata_and_aliases():
    reg = Registry("widget")

    @reg.register("big_widget", tags=("x",), caps={"k": 1}, aliases=("bw",))
    class BigWidget(nn.Module):
        pass

    assert reg.get("BW") is BigWidget
    entry = reg.entry("big_widget")
    assert entry.tags == ("x",) and entry.caps == {"k": 1}
    assert BigWidget.registry_name == "big_widget"


def test_a_block_missing_part_of_its_contract_fails_when_it_registers():
    class Incomplete(nn.Module):
        def forward(self, x, *, pos, cache=None):
            return x

    with pytest.raises(TypeError, match="attention 'half' .* lacks new_cache, flops_per_token, kv_bytes_per_token"):
        ATTN.register("half")(Incomplete)
    assert "half" not in ATTN
