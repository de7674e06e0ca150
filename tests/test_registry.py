import pytest
from torch import nn

from lmlab.errors import UnknownComponentError
from lmlab.registry import ATTN, FFN, NORM, POS, Registry


def test_builtin_blocks_registered():
    assert {"mha", "sdpa"} <= set(ATTN.names())
    assert {"mlp", "swiglu"} <= set(FFN.names())
    assert {"layernorm", "layernorm_nobias", "rmsnorm"} <= set(NORM.names())
    assert {"learned", "rope", "none"} <= set(POS.names())


def test_lookup_is_case_insensitive():
    assert ATTN.get("SDPA") is ATTN.get("sdpa")
    assert NORM.canonical("RMSNorm") == "rmsnorm"


def test_unknown_name_lists_known_and_closest():
    with pytest.raises(UnknownComponentError) as exc:
        ATTN.get("MLA")
    msg = str(exc.value)
    assert msg.startswith("unknown attention 'MLA'; known: ")
    assert "mha" in msg and "sdpa" in msg and "did you mean 'mha'" in msg


def test_register_with_metadata_and_aliases():
    reg = Registry("widget")

    @reg.register("big_widget", tags=("x",), caps={"k": 1}, aliases=("bw",))
    class BigWidget(nn.Module):
        pass

    assert reg.get("BW") is BigWidget
    entry = reg.entry("big_widget")
    assert entry.tags == ("x",) and entry.caps == {"k": 1}
    assert BigWidget.registry_name == "big_widget"
