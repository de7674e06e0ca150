"""Python names users of other projects reach for, imported as they write them."""

import re
import tomllib
from pathlib import Path


def test_familiar_imports_and_subscriptable_registries():
    from lmlab import SimpleCharacterTokenizer
    from lmlab.attn import MHA, MLA, SDPA, NativeSparse
    from lmlab.data.tokenizers.char import CharTokenizer
    from lmlab.registry import ATTN, FFN
    from lmlab.trainer import Callback, MiniTrainer

    assert ATTN["mla"] is MLA and ATTN["MLA"] is MLA and ATTN["flash"] is SDPA and ATTN["manual"] is MHA
    assert ATTN["nsa"] is NativeSparse and FFN["SwiGLU"].__name__ == "SwiGLU"
    assert SimpleCharacterTokenizer is CharTokenizer and MiniTrainer.__name__ == "MiniTrainer"
    assert Callback.__name__ == "Callback"
    tok = SimpleCharacterTokenizer.train("hello", vocab_size=None, source=None)
    assert tok.decode(tok.encode("hello")) == "hello"


def test_the_license_is_the_one_the_package_declares():
    repo = Path(__file__).resolve().parents[2]
    declared = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["license"]
    assert declared == "MIT" and re.match(r"MIT License\n", (repo / "LICENSE").read_text())
