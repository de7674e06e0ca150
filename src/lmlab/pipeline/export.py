"""`lmlab export`: a run's final weights as safetensors, or as a transformers directory, each verified by logits.

`hf` writes what `transformers.AutoModelForCausalLM.from_pretrained(dir)` loads: the GPT-2,
Llama, Mistral or Qwen2 family when the blocks match one exactly, else lmlab's names and weights
with the self-contained `modeling_lmlab.py` (loaded with `trust_remote_code=True`), plus the run's
tokenizer for `AutoTokenizer`. It then loads the directory back in a separate Python process in
which `import lmlab` fails, runs the full context through it and through lmlab, checks the
tokenizer and `pipeline()`, and reports the largest logit difference; the export only counts as
done when that is within `atol`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import lmlab.export as export_package
from lmlab.errors import CheckpointError, ConfigError
from lmlab.infer.load import load_run
from lmlab.registry import BLOCK_REGISTRIES
from lmlab.runs.checkpoint import read_weights, write_model, write_weights
from lmlab.runs.lock import RunLock
from lmlab.text.words import BOS_ID, PAD_ID

_HF_CHECK = """
import json, sys
sys.modules["lmlab"] = None  # prove the export stands alone
import numpy as np, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
out, probe = sys.argv[1], json.load(open(sys.argv[2]))
model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=True).eval()
ids = torch.from_numpy(np.load(sys.argv[3]))
with torch.no_grad():
    np.save(sys.argv[4], model(ids).logits.float().numpy())
tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
encoded = [tok(t, add_special_tokens=False)["input_ids"] for t in probe["texts"]]
decoded = [tok.decode(i, skip_special_tokens=True) for i in probe["encoded"]]
generator = pipeline("text-generation", model=out, trust_remote_code=True)
text = generator(probe["texts"][0][:8] or "a", max_new_tokens=2, do_sample=False)[0]["generated_text"]
batch, mask, new = (torch.tensor(probe["decode"][k]) for k in ("ids", "mask", "new"))
model.generation_config.eos_token_id = None  # lmlab's decode runs on past an eos here; a min length would mask it
with torch.no_grad():  # greedy with the cache, left-padded rows, against lmlab's decode of each row alone
    rows = model.generate(batch, attention_mask=mask, max_new_tokens=int(new), do_sample=False, pad_token_id=0)
rows = rows[:, batch.shape[1]:].tolist()
json.dump({"encoded": encoded, "decoded": decoded, "pipeline": text, "decode": rows}, open(sys.argv[5], "w"))
"""
PROBE_ROWS = 3


def _probe(vocab: int, context: int, rows: int = PROBE_ROWS, seed: int = 0) -> torch.Tensor:
    """Random ids over the whole context: every window edge and position-scheme boundary is inside it."""
    return torch.randint(0, vocab, (rows, context), generator=torch.Generator().manual_seed(seed))


def _probe_inputs(cfg) -> tuple[torch.Tensor, ...]:
    """The model's inputs over its full context: ids, or for an encoder-decoder source and target ids."""
    if cfg.arch == "seq2seq":
        return _probe(cfg.src_vocab_size, cfg.max_seq_len), _probe(cfg.vocab_size, cfg.max_seq_len, seed=1)
    return (_probe(cfg.vocab_size, cfg.max_seq_len),)


def export_run(run: str | Path, fmt: str, out: str | Path | None = None, atol: float = 1e-4) -> dict:
    """Export `run` as `fmt` (safetensors | hf) into `out` (default RUN/artifacts/export_FMT); returns the parity report.

    The report (also written as `parity.json` beside the export) gives the largest logit
    difference over `PROBE_ROWS` rows of the full context and, for `hf`, the tokenizer check.
    """
    if fmt not in ("safetensors", "hf"):
        raise CheckpointError(f"export --format: '{fmt}'; allowed: safetensors, hf")
    loaded = load_run(run)
    loaded.model.float().eval()
    cfg = loaded.config.model
    if fmt == "hf" and cfg.arch == "seq2seq" and cfg.window is not None and cfg.window < cfg.max_seq_len:
        raise ConfigError(
            f"export --format hf: an encoder-decoder with model.window={cfg.window} has no transformers "
            "implementation; allowed: --format safetensors"
        )
    with RunLock(loaded.run.path).acquire("export"):  # not while a training process writes the run
        return _export(loaded, fmt, Path(out) if out else loaded.run.export_dir(fmt), atol)


def _export(loaded, fmt: str, out: Path, atol: float) -> dict:
    """Write the export under a temporary name, check its logits against the run's, then rename it into place."""
    model, cfg = loaded.model, loaded.config.model
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    inputs = _probe_inputs(cfg)
    with torch.no_grad():
        ours = model(*inputs).logits.float().numpy()
    report = {"format": fmt, "out": str(out), "probe_shape": list(inputs[-1].shape), "atol": atol}
    if fmt == "safetensors":
        write_model(tmp, model.state_dict(), cfg.model_dump(mode="json"))
        shutil.copy(loaded.run.tokenizer, tmp / "tokenizer.json")
        if loaded.src_tokenizer is not None:
            shutil.copy(loaded.run.src_tokenizer, tmp / "src_tokenizer.json")
        from lmlab.model.build import build_model
        from lmlab.runs.checkpoint import load_weights

        again = build_model(cfg).eval()
        load_weights(again, read_weights(tmp / "model.safetensors"), tmp)
        with torch.no_grad():
            theirs = again(*inputs).logits.float().numpy()
    elif cfg.arch == "seq2seq":
        theirs, report["layout"] = _export_hf_seq2seq(loaded, model, inputs, tmp)
    else:
        theirs, report["layout"] = _export_hf(loaded, model, inputs[0], tmp)
    diff = float(np.abs(theirs - ours).max())
    report["max_abs_logit_diff"] = diff
    if not diff <= atol:
        raise CheckpointError(f"export: logits differ by {diff:.2e} (> {atol:g}) over the full context; {tmp} kept")
    (tmp / "parity.json").write_text(json.dumps(report, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return report


def _export_hf(loaded, model, ids: torch.Tensor, tmp: Path) -> tuple[np.ndarray, str]:
    """Write the transformers directory; its logits on `ids`, computed in a process without lmlab, and its layout."""
    from lmlab.export.hf import target_family, to_hf
    from lmlab.export.hf_tokenizer import save_hf_tokenizer, tokenizer_probe

    cfg, tokenizer = model.config, loaded.tokenizer
    specials = save_hf_tokenizer(tokenizer, tmp, cfg.max_seq_len)
    try:
        layout = target_family(cfg)
        hf_model = to_hf(model)
        for config in (hf_model.config, hf_model.generation_config):
            for name, value in specials.items():
                setattr(config, name, value)  # the run tokenizer's ids, never a family's defaults
        hf_model.save_pretrained(tmp, safe_serialization=True)
    except ConfigError:
        layout = "remote code"
        _write_remote_code(model, tmp, specials)
    shutil.copy(loaded.run.tokenizer, tmp / "lmlab_tokenizer.json")
    gen = torch.Generator().manual_seed(1)
    rows = torch.randint(0, tokenizer.vocab_size, (PROBE_ROWS, min(64, cfg.max_seq_len)), generator=gen).tolist()
    probe = tokenizer_probe(tokenizer, rows) | {"decode": _decode_probe(model, ids)}
    files = {name: tmp / name for name in ("probe.json", "probe_ids.npy", "probe_logits.npy", "probe_out.json")}
    files["probe.json"].write_text(json.dumps(probe))
    np.save(files["probe_ids.npy"], ids.numpy())
    theirs, checked = _run_check(_HF_CHECK, tmp, files)
    _same_text(checked, probe, ("encoded", "decoded"))
    for i, (a, b) in enumerate(zip(checked["decode"], probe["decode"]["expected"], strict=True)):
        if a != b:
            raise CheckpointError(f"export: generate's greedy tokens for prompt {i} differ from lmlab's: {a} vs {b}")
    return theirs, layout


def _run_check(script: str, tmp: Path, files: dict[str, Path]) -> tuple[np.ndarray, dict]:
    """Run a check `script` on the export in a process where lmlab cannot be imported; its logits and answers."""
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp), *map(str, files.values())],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    if proc.returncode:
        raise CheckpointError(f"export: transformers could not load {tmp}: {proc.stderr.strip().splitlines()[-1]}")
    theirs, checked = np.load(files["probe_logits.npy"]), json.loads(files["probe_out.json"].read_text())
    for f in files.values():
        f.unlink()
    return theirs, checked


def _same_text(checked: dict, probe: dict, keys: tuple[str, ...]) -> None:
    """Refuse the export where the exported tokenizer's answer under any of `keys` differs from lmlab's."""
    for key in keys:
        for i, (a, b) in enumerate(zip(checked[key], probe[key], strict=True)):
            if a != b:
                raise CheckpointError(
                    f"export: the exported tokenizer gives probe {i} under '{key}' differently from lmlab: {a!r} vs {b!r}"
                )


_HF_SEQ2SEQ_CHECK = """
import json, sys
sys.modules["lmlab"] = None  # prove the export stands alone
import numpy as np, torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
out, probe = sys.argv[1], json.load(open(sys.argv[2]))
model = AutoModelForSeq2SeqLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=True).eval()
src, tgt = (torch.from_numpy(np.load(f)) for f in sys.argv[3:5])
with torch.no_grad():
    np.save(sys.argv[5], model(input_ids=src, decoder_input_ids=tgt).logits.float().numpy())
tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
answer = {"source": [tok(t)["input_ids"] for t in probe["texts"]]}
answer["target"] = [tok(text_target=t)["input_ids"] for t in probe["target_texts"]]
answer["decoded"] = [tok.decode(i, skip_special_tokens=True) for i in probe["target_ids"]]
batch = tok(probe["texts"], padding=True, return_tensors="pt")
with torch.no_grad():  # greedy with the cache on a padded batch, as lmlab's translate decodes
    rows = model.generate(**batch, do_sample=False)
answer["translations"] = tok.batch_decode(rows, skip_special_tokens=True)
answer["tokens"] = rows[:, 1:].tolist()
json.dump(answer, open(sys.argv[6], "w"))
"""


def _export_hf_seq2seq(loaded, model, inputs: tuple[torch.Tensor, ...], tmp: Path) -> tuple[np.ndarray, str]:
    """Write an encoder-decoder as remote code with its two vocabularies; check logits, tokenizer and
    greedy translations in a process without lmlab, and return its logits on `inputs`."""
    from lmlab.data.pairs import to_torch
    from lmlab.export.hf_tokenizer import save_seq2seq_tokenizer
    from lmlab.infer.decoding import greedy_decode, trim_at_eos
    from lmlab.text.pairs import make_batch

    cfg, source, target = model.config, loaded.src_tokenizer, loaded.tokenizer
    specials = save_seq2seq_tokenizer(source, target, tmp, cfg.max_seq_len)
    # `import` rebuilds the run's pair data from `lmlab_data`
    _write_remote_code(model, tmp, specials, {"lmlab_data": loaded.config.data.model_dump(mode="json")})
    shutil.copy(loaded.run.tokenizer, tmp / "lmlab_tokenizer.json")
    shutil.copy(loaded.run.src_tokenizer, tmp / "lmlab_src_tokenizer.json")
    gen = torch.Generator().manual_seed(1)
    length = max(1, min(12, cfg.max_seq_len // 2))

    def rows(tok) -> list[list[int]]:  # ordinary words only: a decoded <unk> is three tokens again
        return torch.randint(4, max(5, tok.vocab_size), (PROBE_ROWS, length), generator=gen).tolist()

    texts, target_texts = [source.decode(r) for r in rows(source)], [target.decode(r) for r in rows(target)]
    target_ids = torch.randint(0, target.vocab_size, (PROBE_ROWS, length), generator=gen).tolist()
    probe = {"texts": texts, "target_texts": target_texts, "target_ids": target_ids}
    sources = [source.encode(t, eos=True) for t in texts]
    batch = to_torch(make_batch([(ids, []) for ids in sources]))  # lmlab translate's greedy decode of the texts
    ours = greedy_decode(model, batch["X_ids"], batch["M_src"], max_len=cfg.max_seq_len - 1)
    expected = {
        "source": sources,
        "target": [target.encode(t, eos=True) for t in target_texts],
        "decoded": [target.decode(i) for i in target_ids],
        "translations": [target.decode(hyp) for hyp in ours],
    }
    names = ("probe.json", "probe_src.npy", "probe_tgt.npy", "probe_logits.npy", "probe_out.json")
    files = {name: tmp / name for name in names}
    files["probe.json"].write_text(json.dumps(probe))
    np.save(files["probe_src.npy"], inputs[0].numpy())
    np.save(files["probe_tgt.npy"], inputs[1].numpy())
    theirs, checked = _run_check(_HF_SEQ2SEQ_CHECK, tmp, files)
    _same_text(checked, expected, ("source", "target", "decoded", "translations"))
    for i, (row, hyp) in enumerate(zip(checked["tokens"], ours, strict=True)):
        if trim_at_eos(row) != hyp:
            raise CheckpointError(
                f"export: generate's greedy tokens for source {i} differ from lmlab's: {row} vs {hyp}"
            )
    return theirs, "remote code (encoder-decoder)"


def _decode_probe(model, ids: torch.Tensor) -> dict:
    """Two prompts of different lengths, left-padded as one batch, and the greedy tokens lmlab gives each alone."""
    from lmlab.model.generate import generate, left_pad

    context = model.config.max_seq_len
    short, long = max(1, min(3, context // 4)), max(2, min(9, context // 2))
    new = max(1, min(16, context - long))
    prompts = [ids[0, :short].tolist(), ids[1 % len(ids), :long].tolist()]
    batch, pad = left_pad(prompts)
    mask = (torch.arange(batch.shape[1])[None] >= pad[:, None]).long()
    expected = [generate(model, torch.tensor([p]), new, temperature=0)[0, len(p) :].tolist() for p in prompts]
    return {"ids": torch.where(mask.bool(), batch, 0).tolist(), "mask": mask.tolist(), "new": new, "expected": expected}


def _write_remote_code(
    model, out: Path, specials: dict[str, int | None] | None = None, extra: dict | None = None
) -> None:
    """config.json (with `extra` entries) with an auto_map to the copied `modeling_lmlab.py`, and lmlab-named
    safetensors weights."""
    cfg = model.config
    for field, reg in BLOCK_REGISTRIES.items():  # blocks `modeling_lmlab.py` implements carry the cap remote_code
        if not reg.entry(getattr(cfg, field)).caps.get("remote_code"):
            allowed = [e.name for e in reg.entries() if e.caps.get("remote_code")]
            raise CheckpointError(
                f"export --format hf: model.{field}='{getattr(cfg, field)}' has neither a transformers family nor "
                f"a remote-code implementation (allowed: {', '.join(allowed)}); use --format safetensors"
            )
    shutil.copy(Path(export_package.__file__).with_name("modeling_lmlab.py"), out / "modeling_lmlab.py")
    seq2seq = cfg.arch == "seq2seq"
    auto, cls = (
        ("AutoModelForSeq2SeqLM", "LmlabForSeq2SeqLM") if seq2seq else ("AutoModelForCausalLM", "LmlabForCausalLM")
    )
    generation = dict(specials or {})
    if seq2seq:  # lmlab's greedy decode: from <bos>, never emitting <pad> or <bos>, up to the context
        generation |= {"decoder_start_token_id": BOS_ID, "suppress_tokens": [PAD_ID, BOS_ID]}
        generation |= {"max_length": cfg.max_seq_len}
    config = {
        "model_type": "lmlab",
        "architectures": [cls],
        "auto_map": {"AutoConfig": "modeling_lmlab.LmlabConfig", auto: f"modeling_lmlab.{cls}"},
        "lmlab": cfg.model_dump(mode="json"),
        "tie_word_embeddings": False,
        "dtype": "float32",
        **({"is_encoder_decoder": True, "decoder_start_token_id": BOS_ID} if seq2seq else {}),
        **(specials or {}),
        **(extra or {}),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    # A tied head is stored once, under tok_emb.weight: the remote model reads the embedding table.
    write_weights(out / "model.safetensors", model.state_dict(), metadata={"format": "pt"})


def import_hf(directory: str | Path, save_dir: str | Path = "runs", tag: str = "imported") -> Path:
    """A run directory holding a local transformers GPT-2, Llama, Mistral or Qwen2 checkpoint and its tokenizer.

    An lmlab `hf` export imports exactly: its remote-code layout is read as lmlab weights, and the run
    tokenizer it carries (`lmlab_tokenizer.json`, with `lmlab_src_tokenizer.json` and the pair data of an
    encoder-decoder) is used instead of its transformers rendering.
    Fine-tune it with `lmlab train --train.init_from RUN --data ...`; generate, eval and serve read it as is.
    """
    from lmlab.config import RunConfig
    from lmlab.data.tokenizers.base import build_tokenizer, load_tokenizer, save_tokenizer
    from lmlab.model.cost import param_counts
    from lmlab.runs.run_dir import RunDir

    directory = Path(directory).expanduser()
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"import: {directory} is not a transformers checkpoint (missing config.json)")
    model, family = _imported_model(directory)
    own = directory / "lmlab_tokenizer.json"
    tokenizer = load_tokenizer(own) if own.is_file() else build_tokenizer(f"hf:{directory}", "")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(
            f"import: the tokenizer in {directory} has {tokenizer.vocab_size} ids but the model {model.config.vocab_size}"
        )
    spec = tokenizer.name if own.is_file() else f"hf:{directory}"
    data = json.loads((directory / "config.json").read_text()).get("lmlab_data") or {"tokenizer": spec}
    cfg = RunConfig.model_validate({"model": model.config.model_dump(), "data": data})
    run = RunDir.create(save_dir, tag)
    save_tokenizer(tokenizer, run.tokenizer)
    if model.config.arch == "seq2seq":  # an lmlab encoder-decoder export carries its source vocabulary too
        save_tokenizer(load_tokenizer(directory / "lmlab_src_tokenizer.json"), run.src_tokenizer)
    run.write_final(model.state_dict(), cfg.model.model_dump(mode="json"))
    source = {"imported_from": str(directory), "family": family}
    run.write_meta(cfg, {"data.json": source, "params.json": param_counts(cfg.model)})
    return run.path


def _imported_model(directory: Path) -> tuple[torch.nn.Module, str]:
    """The lmlab model a transformers directory holds, and its family (`lmlab` for a remote-code export)."""
    from lmlab.config import ModelConfig
    from lmlab.errors import require
    from lmlab.export.hf import from_hf
    from lmlab.model.build import build_model
    from lmlab.runs.checkpoint import load_weights

    config = json.loads((directory / "config.json").read_text())
    if config.get("model_type") == "lmlab":  # lmlab's own names and weights; no code from the directory runs
        model = build_model(ModelConfig.model_validate(config["lmlab"])).eval()
        load_weights(model, read_weights(directory / "model.safetensors"), directory)
        return model, "lmlab"
    transformers = require("transformers", "hf")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).eval()
    return from_hf(hf_model).float(), hf_model.config.model_type
