"""A block with its own option, registered from a module outside the package, appears everywhere with no other edit."""

import os
import subprocess
import sys
import textwrap

PLUGIN = textwrap.dedent(
    '''
    """Scaled-score attention: SDPA on queries divided by a temperature (a test block)."""

    from pydantic import BaseModel, ConfigDict, Field

    from lmlab.attn.sdpa import SDPA
    from lmlab.registry import ATTN


    class TemperedOptions(BaseModel):
        """Settings of the tempered attention."""

        model_config = ConfigDict(extra="forbid")
        temperature: float = Field(1.0, gt=0, description="divides every attention score")


    @ATTN.register("tempered", options=TemperedOptions, caps={"kv_cache": True}, paper="a test block")
    class TemperedAttention(SDPA):
        """SDPA whose scores are divided by model.tempered.temperature."""

        def __init__(self, cfg):
            super().__init__(cfg)
            self.temperature = cfg.tempered.temperature

        def attend(self, q, k, v, mask, is_causal):
            return super().attend(q / self.temperature, k, v, mask, is_causal)
    '''
)

CHECK = textwrap.dedent(
    """
    import torch
    from click.testing import CliRunner
    from lmlab.cli.app import cli
    from lmlab.config import ModelConfig
    from lmlab.docgen import block_catalogue, combination_matrix, config_reference
    from lmlab.errors import ConfigError
    from lmlab.model.build import build_model

    help_text = CliRunner().invoke(cli, ["train", "--help"]).output
    assert "--model.tempered.temperature" in help_text, help_text
    assert "model.tempered: temperature" in CliRunner().invoke(cli, ["list"]).output
    assert "tempered" in block_catalogue() and "model.tempered.temperature" in config_reference()
    assert "tempered" in combination_matrix("attn", "pos")
    cfg = ModelConfig(attn="tempered", pos="rope", n_layer=1, d_model=16, n_head=2, vocab_size=11, tempered={"temperature": 2})
    assert cfg.tempered.temperature == 2.0 and cfg.model_dump()["tempered"] == {"temperature": 2.0}
    try:
        ModelConfig(attn="tempered", tempered={"temperature": -1})
        raise SystemExit("a negative temperature was accepted")
    except ConfigError as exc:
        assert "model.tempered.temperature" in str(exc), exc
    torch.manual_seed(0)
    hot = build_model(cfg).eval()
    cold = build_model(cfg.model_copy(update={"block_options": {**cfg.block_options, "tempered": type(cfg.tempered)(temperature=1.0)}})).eval()
    cold.load_state_dict(hot.state_dict())
    x = torch.randint(0, 11, (1, 6))
    assert not torch.allclose(hot(x).logits, cold(x).logits)  # the option reaches the block
    ids = hot.generate(x[:, :2], 3, temperature=0)
    assert ids.shape == (1, 5)
    env_cfg = CliRunner().invoke(cli, ["arch", "--attn", "tempered", "--layers", "1", "--dim", "16", "--heads", "2"], env={"LMLAB_MODEL__TEMPERED__TEMPERATURE": "0.5"})
    assert env_cfg.exit_code == 0, env_cfg.output
    print("ok")
    """
)


def test_a_block_from_outside_the_package_with_its_own_option_appears_everywhere(tmp_path):
    (tmp_path / "tempered_block.py").write_text(PLUGIN)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env["LMLAB_PLUGINS"] = "tempered_block"
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
