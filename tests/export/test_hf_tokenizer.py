"""Exported tokenizers load with `AutoTokenizer` and encode/decode exactly as lmlab; special ids are the run's."""

import collections
import itertools
import json
import random
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from lmlab.cli.app import cli
from lmlab.data.tokenizers.base import build_tokenizer
from lmlab.export.hf_tokenizer import save_hf_tokenizer
from lmlab.infer.load import load_run
from lmlab.runs.run_dir import RunDir
from tests.helpers import small_train_args

transformers = pytest.importorskip("transformers")

TEXT = (
    "First Citizen: Before we proceed any further, hear me speak!\n"
    "All: Speak, speak. (Softly) don't you know; it's 50% of km/h -- «quoted» ¿que? Ünïcode 漢字 😀\n\ttab\n"
) * 5


def _samples(tokenizer, n=200):
    rng = random.Random(0)
    out = []
    for _ in range(n):
        start = rng.randrange(len(TEXT))
        out.append(TEXT[start : start + rng.randint(0, 60)])
    if tokenizer.name != "char":  # unseen text only for vocabularies that can say it
        out += ["Zebra xylophone!", "  spaced   out  ", ""]
    return out


@pytest.mark.parametrize("kind", ["char", "byte", "word", "bpe"])
def test_exported_tokenizer_encodes_and_decodes_like_lmlab(tmp_path, kind):
    tokenizer = build_tokenizer(kind, TEXT, vocab_size=300 if kind == "bpe" else None)
    ids = save_hf_tokenizer(tokenizer, tmp_path, 64)
    fast = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert ids["eos_token_id"] == tokenizer.eos_id and ids["bos_token_id"] == tokenizer.bos_id
    for text in _samples(tokenizer):
        ours = tokenizer.encode(text)
        assert fast(text, add_special_tokens=False)["input_ids"] == ours, text
        assert fast.decode(ours, skip_special_tokens=True) == tokenizer.decode(ours), text


# The probe text plus what no vocabulary above has seen: letters, a combining accent, control and
# separator characters (Python and the tokenizers library disagree on some of them), a ligature, an emoji.
UNSEEN = TEXT + "Zxq~^€\u0301\x00\x1c\x7f🐍ß\r\u00a0\u2028\u3000ﬁ"


def _encoded(encode, text):
    try:
        return encode(text)
    except Exception:  # lmlab's DataError, the tokenizers library's exception: a refusal either way
        return "refused"


@pytest.mark.parametrize("kind", ["char", "byte", "word", "bpe"])
def test_lmlab_and_the_exported_tokenizer_agree_on_any_text_and_any_ids(tmp_path, kind):
    """Random texts with unseen characters encode alike (or are refused by both); random ids, specials among
    them, decode alike; the special tokens are the same."""
    tokenizer = build_tokenizer(kind, TEXT, vocab_size=300 if kind == "bpe" else None)
    save_hf_tokenizer(tokenizer, tmp_path, 64)
    fast = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert (fast.eos_token_id, fast.bos_token_id) == (tokenizer.eos_id, tokenizer.bos_id)
    rng = random.Random(0)
    refused = 0
    for _ in range(300):
        text = "".join(rng.choice(UNSEEN) for _ in range(rng.randint(0, 30)))
        ours = _encoded(tokenizer.encode, text)
        assert _encoded(lambda t: fast(t, add_special_tokens=False)["input_ids"], text) == ours, repr(text)
        refused += ours == "refused"
    assert refused > 0 if kind == "char" else refused == 0  # only a character vocabulary refuses
    for _ in range(300):
        ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randint(0, 20))]
        assert fast.decode(ids, skip_special_tokens=True) == tokenizer.decode(ids), ids


def test_hf_tokenizer_is_written_back_as_it_came(tmp_path):
    bpe = build_tokenizer("bpe", TEXT, vocab_size=300)
    transformers.PreTrainedTokenizerFast(tokenizer_object=bpe.tok, eos_token="<|endoftext|>").save_pretrained(
        tmp_path / "src"
    )
    hf = build_tokenizer(f"hf:{tmp_path / 'src'}", "")
    assert save_hf_tokenizer(hf, tmp_path / "out", 64)["eos_token_id"] == 0
    fast = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    for text in _samples(hf, 50):
        assert fast(text, add_special_tokens=False)["input_ids"] == hf.encode(text)


def test_tiktoken_encodings_convert_to_the_same_ids():
    tiktoken = pytest.importorskip("tiktoken")
    import regex

    from lmlab.data.tokenizers.tiktoken import TiktokenTokenizer

    # A small encoding trained here the way tiktoken's are: byte-pair merges within GPT-2's pre-tokens.
    pattern = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    words = collections.Counter(regex.findall(pattern, TEXT))
    ranks = {bytes([b]): b for b in range(256)}
    seqs = {w: [bytes([c]) for c in w.encode()] for w in words}
    for _ in range(60):
        pairs = collections.Counter()
        for w, seq in seqs.items():
            for a, b in itertools.pairwise(seq):
                pairs[a, b] += words[w]
        (a, b), _ = pairs.most_common(1)[0]
        ranks[a + b] = len(ranks)
        for w, seq in seqs.items():
            merged, i = [], 0
            while i < len(seq):
                if seq[i : i + 2] == [a, b]:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(seq[i])
                    i += 1
            seqs[w] = merged
    enc = tiktoken.Encoding("toy", pat_str=pattern, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": len(ranks)})
    ours = TiktokenTokenizer(enc)
    backend, specials = ours.hf_backend()
    assert specials == {"eos_token": "<|endoftext|>"} and backend.token_to_id("<|endoftext|>") == len(ranks)
    for text in _samples(ours):
        ids = ours.encode(text)
        assert backend.encode(text).ids == ids and backend.decode(ids) == ours.decode(ids), text


def _train(tmp_path, corpus_file, *extra):
    args = small_train_args(corpus_file, layers=1, max_steps=2, batch=2, save_dir=tmp_path / "runs", seq_len=48)
    result = CliRunner().invoke(cli, ["train", *args, *extra])
    assert result.exit_code == 0, result.output
    return RunDir.latest(tmp_path / "runs")


def _export(run, out):
    result = CliRunner().invoke(cli, ["export", "--run", str(run.path), "--format", "hf", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "parity.json").read_text())


GENERATE = """
import json, sys
sys.modules["lmlab"] = None
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
out = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
ids = tok("the quick", return_tensors="pt", add_special_tokens=False)["input_ids"]
lengths = []
for seed in range(16):
    torch.manual_seed(seed)
    new = model.generate(ids, max_new_tokens=12, do_sample=True)[0, ids.shape[1]:].tolist()
    lengths.append((len(new), new[-1]))
text = pipeline("text-generation", model=out, trust_remote_code=True)("the quick", max_new_tokens=5)[0]["generated_text"]
print(json.dumps({"lengths": lengths, "text": text}))
"""


def _check_round_trip(run, export_dir, save_dir) -> None:
    """`lmlab import` of the export: the same tokenizer, and greedy output token for token, from every prompt."""
    imported = CliRunner().invoke(cli, ["import", "--hf", str(export_dir), "--save-dir", str(save_dir)])
    assert imported.exit_code == 0, imported.output
    again, original = load_run(RunDir.latest(save_dir).path), load_run(run.path)
    assert again.tokenizer.fingerprint() == original.tokenizer.fingerprint()
    for prompt in ("the quick", "\n", "z"):
        ids = torch.tensor([original.tokenizer.encode(prompt) or [0]])
        a = original.model.generate(ids, 12, temperature=0)
        assert torch.equal(again.model.generate(ids, 12, temperature=0), a), prompt
    base = ["generate", "--prompt", "the", "--max-new-tokens", "8", "--temperature", "0"]
    texts = [CliRunner().invoke(cli, [*base, "--run", str(r.run.path)]).output for r in (original, again)]
    assert texts[0] == texts[1] and "the" in texts[0]


@pytest.mark.parametrize(
    ("preset", "tokenizer", "layout"),
    [("llama", "char", "llama"), ("gpt2", "bpe", "gpt2"), ("tiny", "word", "remote code"), ("gpt2", "byte", "gpt2")],
)
def test_exports_carry_the_run_tokenizer_and_its_special_ids(tmp_path, corpus_file, preset, tokenizer, layout):
    extra = ["--ffn", "gated_mlp", "--pos", "alibi"] if layout == "remote code" else []
    run = _train(tmp_path, corpus_file, "--preset", preset, "--tokenizer", tokenizer, "--heads", "2", *extra)
    report = _export(run, tmp_path / "hf")
    assert report["layout"] == layout and report["probe_shape"] == [3, 48] and report["max_abs_logit_diff"] <= 1e-4
    expected = {"char": (None, 29, None), "byte": (256, 257, 258), "word": (1, 2, 0)}.get(tokenizer)
    for name in ("config.json", "generation_config.json"):
        saved = json.loads((tmp_path / "hf" / name).read_text())
        specials = tuple(saved.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id"))
        assert expected is None or specials == expected, name
    assert (tmp_path / "hf" / "model.safetensors").is_file() and not (tmp_path / "hf.partial").exists()
    _check_round_trip(run, tmp_path / "hf", tmp_path / "imported")
    if tokenizer != "char":  # the export's own check ran AutoTokenizer and pipeline without lmlab
        return
    out = subprocess.run([sys.executable, "-c", GENERATE, str(tmp_path / "hf")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    checked = json.loads(out.stdout.strip().splitlines()[-1])
    # a sampled row stops early only at the declared end-of-text (id 29, after the corpus's 29 characters)
    assert all(n == 12 or last == 29 for n, last in checked["lengths"]), checked["lengths"]
    assert checked["text"].startswith("the quick")


def test_windowed_runs_export_with_their_window_checked_at_full_context(tmp_path, corpus_file, monkeypatch):
    # A window of 40 in a context of 48: a probe of 32 tokens (as before) could not see it.
    run = _train(tmp_path, corpus_file, "--preset", "llama", "--window", "40", "--heads", "2")
    report = _export(run, tmp_path / "hf40")
    config = json.loads((tmp_path / "hf40" / "config.json").read_text())
    assert (report["layout"], config["sliding_window"], report["probe_shape"]) == ("mistral", 40, [3, 48])
    gpt2 = _train(tmp_path, corpus_file, "--preset", "gpt2", "--window", "8", "--heads", "2")
    assert _export(gpt2, tmp_path / "hf_gpt2")["layout"] == "remote code"
    # The full-context probe is what catches a dropped window: exporting as plain Llama is refused.
    import lmlab.export.hf as hf

    real_hf_config = hf.hf_config
    monkeypatch.setattr(hf, "target_family", lambda cfg: "llama")
    monkeypatch.setattr(
        hf, "hf_config", lambda cfg, _: real_hf_config(cfg.model_copy(update={"window": None}), "llama")
    )
    result = CliRunner().invoke(cli, ["export", "--run", str(run.path), "--format", "hf", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "logits differ" in result.output
