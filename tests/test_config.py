import json

import pytest

from lmlab.config import ModelConfig, RunConfig, list_presets, resolve_config
from lmlab.errors import ConfigError


def test_presets_are_listed_and_valid():
    assert {"gpt2", "llama", "team", "hybrid", "tiny"} <= set(list_presets())
    for name in list_presets():
        ModelConfig.from_preset(name)


def test_gpt2_preset_is_gpt2():
    cfg = ModelConfig.from_preset("gpt2")
    assert (cfg.pos, cfg.norm, cfg.ffn, cfg.activation) == ("learned", "layernorm", "mlp", "gelu_tanh")
    assert cfg.bias and cfg.tie_weights and cfg.norm_position == "pre" and cfg.d_ff == 4 * cfg.d_model


def test_llama_preset_is_llama():
    cfg = ModelConfig.from_preset("llama", d_model=96, n_head=6, n_kv_head=2)
    assert (cfg.pos, cfg.norm, cfg.ffn) == ("rope", "rmsnorm", "swiglu")
    assert not cfg.bias and not cfg.tie_weights and cfg.n_kv_head == 2
    assert cfg.d_ff == 256  # 8/3 * 96 = 256
    assert ModelConfig.from_preset("team").model_dump() == ModelConfig.from_preset("llama").model_dump()


def test_hybrid_preset():
    cfg = ModelConfig.from_preset("hybrid")
    assert (cfg.pos, cfg.norm, cfg.ffn, cfg.d_ff) == ("rope", "layernorm", "mlp", 4 * cfg.d_model)


def test_arch_name():
    cfg = ModelConfig.from_preset("tiny")
    assert cfg.arch_name() == "4L-4H-128D-RoPE-RMS-SwiGLU-PreNorm"
    post = ModelConfig.from_preset("gpt2", n_layer=2, norm_position="post", n_kv_head=4)
    assert post.arch_name() == "2L-12H-4KV-768D-Learned-LN-GELU-PostNorm"


def test_aliases_are_accepted():
    cfg = ModelConfig(n_embd=64, block_size=32, num_layers=3, num_attention_heads=8)
    assert (cfg.d_model, cfg.max_seq_len, cfg.n_layer, cfg.n_head) == (64, 32, 3, 8)
    cfg = ModelConfig(hidden_size=48, n_head=4)
    assert cfg.d_model == 48


def test_alias_given_twice_is_error():
    with pytest.raises(ConfigError, match="given twice"):
        ModelConfig(n_embd=64, d_model=64)


def test_precedence_cli_env_file_preset_default(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model:\n  n_embd: 64\n  n_layer: 3\n  n_head: 2\ntrain:\n  lr: 0.01\n")
    env = {"LMLAB_MODEL__N_LAYER": "5", "LMLAB_TRAIN__BATCH_SIZE": "7"}
    cfg = resolve_config(preset="llama", config_file=cfg_file, environ=env, cli={"model": {"n_layer": 6}})
    assert cfg.model.n_layer == 6  # CLI beats env
    assert cfg.train.batch_size == 7  # env beats default
    assert cfg.model.d_model == 64  # file (alias) beats preset's canonical d_model
    assert cfg.train.lr == 0.01
    assert cfg.model.norm == "rmsnorm"  # from preset
    assert cfg.model.dropout == 0.0  # default
    assert cfg.preset == "llama"
    cfg = resolve_config(preset="llama", config_file=cfg_file, environ=env)
    assert cfg.model.n_layer == 5  # env beats file


def test_env_nested_field():
    cfg = resolve_config(preset="llama", environ={"LMLAB_MODEL__ROPE__THETA": "500000"})
    assert cfg.model.rope.theta == 500000.0


def test_json_config_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": {"attn": "MHA", "n_layer": 1}}))
    assert resolve_config(config_file=path, environ={}).model.attn == "mha"


def test_save_load_round_trip(tmp_path):
    cfg = resolve_config(preset="llama", cli={"model": {"n_kv_head": 2}}, environ={})
    for name in ("c.json", "c.yaml"):
        cfg.save(tmp_path / name)
        again = RunConfig.load(tmp_path / name)
        assert again == cfg
        assert again.model_dump() == cfg.model_dump()


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (
            {"attn": "Linformer"},
            [
                "model.attn",
                "unknown attention 'Linformer'; known: mha, mla, native_sparse, native_sparse_reference, sdpa",
            ],
        ),
        ({"d_model": 130, "n_head": 4}, ["model.d_model", "130", "multiple of n_head"]),
        ({"n_head": 4, "n_kv_head": 3}, ["model.n_kv_head", "allowed: 1, 2, 4"]),
        ({"norm_position": "middle"}, ["model.norm_position", "'pre' or 'post'"]),
        ({"n_layr": 2}, ["model.n_layr", "unknown field", "did you mean 'n_layer'"]),
        ({"dropout": 1.5}, ["model.dropout", "less than 1"]),
    ],
)
def test_bad_model_values_name_field_and_allowed(overrides, needles):
    with pytest.raises(ConfigError) as exc:
        resolve_config(cli={"model": overrides}, environ={})
    for needle in needles:
        assert needle in str(exc.value)


def test_negative_lr_and_unknown_preset():
    with pytest.raises(ConfigError, match=r"train.lr: Input should be greater than 0"):
        resolve_config(cli={"train": {"lr": -1}}, environ={})
    with pytest.raises(ConfigError, match=r"unknown preset 'gtp2'; known: .*gpt2.*did you mean 'gpt2'"):
        resolve_config(preset="gtp2", environ={})


def test_typo_in_config_file_and_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  n_layr: 2\n")
    with pytest.raises(ConfigError, match=r"model.n_layr: unknown field; did you mean 'n_layer'"):
        resolve_config(config_file=path, environ={})
    path.write_text("modle:\n  n_layer: 2\n")
    with pytest.raises(ConfigError, match=r"modle: unknown section .*did you mean 'model'"):
        resolve_config(config_file=path, environ={})


def test_seq_len_beyond_context_is_refused():
    with pytest.raises(ConfigError, match="train.seq_len"):
        resolve_config(cli={"model": {"max_seq_len": 16}, "train": {"seq_len": 32}}, environ={})


def test_combination_rules_from_registry_caps():
    from lmlab.registry import ATTN

    entry = ATTN.entry("mha")
    entry.caps["supports"] = {"pos": ["learned", "none"]}
    try:
        with pytest.raises(ConfigError, match=r"model.pos: attention 'mha' does not support pos='rope'"):
            ModelConfig(attn="mha", pos="rope")
        ModelConfig(attn="mha", pos="learned")
    finally:
        del entry.caps["supports"]


def test_trackers_are_chosen_by_registered_name_and_old_switches_still_load():
    from lmlab.config import TrackConfig

    assert TrackConfig(trackers="tensorboard, aim").trackers == ["jsonl", "tensorboard", "aim"]
    assert TrackConfig(tensorboard=True, wandb=False).trackers == ["jsonl", "tensorboard"]  # a config saved earlier
    with pytest.raises(ConfigError, match="track.trackers: unknown tracker 'mlflow'; known: aim, jsonl, tensorboard"):
        TrackConfig(trackers=["mlflow"])
    with pytest.raises(ConfigError, match="track.aim: not a boolean; allowed: true, false"):
        TrackConfig(aim="maybe")
