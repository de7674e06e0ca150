"""`lmlab export`: a run's final weights as safetensors, or as a transformers directory, each verified by logits.

`hf` writes what `transformers.AutoModelForCausalLM.from_pretrained(dir)` loads: the GPT-2 or
Llama family when the blocks match one, else lmlab's names and weights with the self-contained
`modeling_lmlab.py` (loaded with `trust_remote_code=True`). It then loads the directory back in a
separate Python process in which `import lmlab` fails, runs the same input through it and through
lmlab, and reports the largest logit difference; the export only counts as done when that is
within `atol`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from lmlab.errors import CheckpointError
from lmlab.infer.load import load_run
from lmlab.trainer.checkpoint import read_weights, write_weights

# Blocks `modeling_lmlab.py` implements; anything else exports as safetensors only.
REMOTE_CODE_BLOCKS = {
    "attn": ("mha", "sdpa", "sliding_window", "mla"),
    "ffn": ("mlp", "gated_mlp", "swiglu", "geglu"),
    "norm": ("layernorm", "layernorm_nobias", "rmsnorm"),
    "pos": ("learned", "sinusoidal", "rope", "alibi", "none"),
    "embed": ("token",),
}

_HF_CHECK = """
import sys
sys.modules["lmlab"] = None  # prove the export stands alone
import numpy as np, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32, trust_remote_code=True).eval()
ids = torch.from_numpy(np.load(sys.argv[2]))
with torch.no_grad():
    np.save(sys.argv[3], model(ids).logits.float().numpy())
"""


def _probe(vocab: int, context: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, min(context, 32)), generator=torch.Generator().manual_seed(0))


def export_run(run: str | Path, fmt: str, out: str | Path | None = None, atol: float = 1e-4) -> dict:
    """Export `run` as `fmt` (safetensors | hf) into `out` (default RUN/artifacts/export_FMT); returns the parity report."""
    if fmt not in ("safetensors", "hf"):
        raise CheckpointError(f"export --format: '{fmt}'; allowed: safetensors, hf")
    loaded = load_run(run)
    model, cfg = loaded.model.float().eval(), loaded.config.model
    out = Path(out) if out else loaded.run.path / "artifacts" / f"export_{fmt}"
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ids = _probe(cfg.vocab_size, cfg.max_seq_len)
    with torch.no_grad():
        ours = model(ids).logits.float().numpy()
    if fmt == "safetensors":
        write_weights(tmp / "model.safetensors", model.state_dict())
        (tmp / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
        shutil.copy(loaded.run.tokenizer, tmp / "tokenizer.json")
        from lmlab.model.transformer import build_model
        from lmlab.trainer.checkpoint import load_weights

        again = build_model(cfg).eval()
        load_weights(again, read_weights(tmp / "model.safetensors"), tmp)
        with torch.no_grad():
            theirs = again(ids).logits.float().numpy()
    else:
        from lmlab.errors import ConfigError
        from lmlab.export.hf import target_family, to_hf

        try:
            layout = target_family(cfg)
            to_hf(model).save_pretrained(tmp, safe_serialization=True)
        except ConfigError:
            layout = "remote code"
            _write_remote_code(model, tmp)
        shutil.copy(loaded.run.tokenizer, tmp / "lmlab_tokenizer.json")
        np.save(tmp / "probe_ids.npy", ids.numpy())
        proc = subprocess.run(
            [sys.executable, "-c", _HF_CHECK, str(tmp), str(tmp / "probe_ids.npy"), str(tmp / "probe_logits.npy")],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode:
            raise CheckpointError(f"export: transformers could not load {tmp}: {proc.stderr.strip().splitlines()[-1]}")
        theirs = np.load(tmp / "probe_logits.npy")
        for f in ("probe_ids.npy", "probe_logits.npy"):
            (tmp / f).unlink()
    diff = float(np.abs(theirs - ours).max())
    if not diff <= atol:
        raise CheckpointError(f"export: logits differ by {diff:.2e} (> {atol:g}); {tmp} kept for inspection")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    report = {"format": fmt, "out": str(out), "max_abs_logit_diff": diff, "probe_shape": list(ids.shape)}
    if fmt == "hf":
        report["layout"] = layout
    return report


def _write_remote_code(model, out: Path) -> None:
    """config.json with an auto_map to the copied `modeling_lmlab.py`, and lmlab-named safetensors weights."""
    cfg = model.config
    for field, allowed in REMOTE_CODE_BLOCKS.items():
        if getattr(cfg, field) not in allowed:
            raise CheckpointError(
                f"export --format hf: model.{field}='{getattr(cfg, field)}' has neither a transformers family nor "
                f"a remote-code implementation (allowed: {', '.join(allowed)}); use --format safetensors"
            )
    if cfg.arch != "decoder":
        raise CheckpointError("export --format hf: only decoder models; use --format safetensors for seq2seq")
    shutil.copy(Path(__file__).with_name("modeling_lmlab.py"), out / "modeling_lmlab.py")
    config = {
        "model_type": "lmlab",
        "architectures": ["LmlabForCausalLM"],
        "auto_map": {
            "AutoConfig": "modeling_lmlab.LmlabConfig",
            "AutoModelForCausalLM": "modeling_lmlab.LmlabForCausalLM",
        },
        "lmlab": cfg.model_dump(mode="json"),
        "tie_word_embeddings": False,
        "dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    # A tied head is stored once, under tok_emb.weight: the remote model reads the embedding table.
    write_weights(out / "model.safetensors", model.state_dict(), metadata={"format": "pt"})


def import_hf(directory: str | Path, save_dir: str | Path = "runs", tag: str = "imported") -> Path:
    """A run directory holding a local transformers GPT-2 or Llama checkpoint (weights, config, tokenizer).

    Fine-tune it with `lmlab train --train.init_from RUN --data ...`; generate, eval and serve read it as is.
    """
    from lmlab.config import RunConfig
    from lmlab.data.tokenizers.base import build_tokenizer, save_tokenizer
    from lmlab.errors import require
    from lmlab.export.hf import from_hf
    from lmlab.model.cost import params_by_component
    from lmlab.track.run_dir import RunDir

    transformers = require("transformers", "hf")
    directory = Path(directory).expanduser()
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"import: {directory} is not a transformers checkpoint (missing config.json)")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).eval()
    model = from_hf(hf_model).float()
    tokenizer = build_tokenizer(f"hf:{directory}", "")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(
            f"import: the tokenizer in {directory} has {tokenizer.vocab_size} ids but the model {model.config.vocab_size}"
        )
    cfg = RunConfig.model_validate({"model": model.config.model_dump(), "data": {"tokenizer": f"hf:{directory}"}})
    run = RunDir.create(save_dir, tag)
    save_tokenizer(tokenizer, run.tokenizer)
    write_weights(run.export / "model.safetensors", model.state_dict())
    (run.export / "config.json").write_text(json.dumps(cfg.model.model_dump(mode="json"), indent=2))
    parts = params_by_component(cfg.model)
    source = {"imported_from": str(directory), "family": hf_model.config.model_type}
    run.write_meta(cfg, {"data.json": source, "params.json": {"total": sum(parts.values()), "by_component": parts}})
    return run.path
