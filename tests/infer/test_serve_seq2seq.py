"""A served encoder-decoder run translates: the prompt (or the last user message) is the source, driven by the
official `openai` client; greedy and beam replies equal `lmlab translate`, streaming equals the whole reply."""

import pytest
import torch
from click.testing import CliRunner

from lmlab.cli.app import cli
from lmlab.infer.load import load_run
from lmlab.infer.translate import translate
from lmlab.runs.run_dir import RunDir
from lmlab.text.words import BOS_ID

pytestmark = pytest.mark.xdist_group("serve_seq2seq")

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

SOURCES = ["1 2 3 4", "5 6 7", "8 9 0 1 2"]  # the reverse task's digits


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from fastapi.testclient import TestClient

    from lmlab.infer.server import Limits, create_app

    root = tmp_path_factory.mktemp("s2s")
    args = ["train", "--preset", "seq2seq", "--data", "task:reverse:200", "--layers", "1", "--model.n_enc_layer", "1"]
    args += ["--dim", "32", "--heads", "2", "--context", "16", "--batch", "16", "--train.eval_iters", "1"]
    args += [
        "--train.sample_tokens",
        "0",
        "--no-progress",
        "--max-steps",
        "100",
        "--lr",
        "3e-3",
        "--save-dir",
        str(root),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    loaded = load_run(RunDir.latest(root).path)
    with TestClient(create_app({"s2s": loaded}, limits=Limits(max_tokens=64))) as http:  # one event loop throughout
        yield openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=http), loaded, http


def test_completions_and_chat_translate_as_lmlab_translate_does(served):
    client, loaded, _ = served
    for source in SOURCES:
        expected = translate(loaded, [source])[0]
        out = client.completions.create(model="s2s", prompt=source, max_tokens=15, temperature=0)
        assert out.choices[0].text == expected, source
        assert out.choices[0].finish_reason in ("stop", "length")
        assert out.usage.prompt_tokens == len(loaded.src_tokenizer.encode(source, eos=True))
        messages = [{"role": "system", "content": "translate"}, {"role": "user", "content": "4 5"}]
        messages += [{"role": "assistant", "content": "5 4"}, {"role": "user", "content": source}]
        chat = client.chat.completions.create(model="s2s", messages=messages, max_tokens=15, temperature=0)
        assert chat.choices[0].message.content == expected  # the last user message is the source
        beam = client.completions.create(model="s2s", prompt=source, max_tokens=15, temperature=0, best_of=3)
        assert beam.choices[0].text == translate(loaded, [source], beam=3)[0]
        extra = client.chat.completions.create(
            model="s2s", messages=messages, max_tokens=15, temperature=0, extra_body={"num_beams": 3}
        )
        assert extra.choices[0].message.content == beam.choices[0].text


def test_streaming_n_and_logprobs(served):
    client, loaded, _ = served
    whole = client.completions.create(model="s2s", prompt="1 2 3", max_tokens=15, temperature=0, logprobs=2)
    pieces = list(client.completions.create(model="s2s", prompt="1 2 3", max_tokens=15, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in pieces if p.choices[0].text) == whole.choices[0].text
    assert pieces[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    chunks = client.chat.completions.create(
        model="s2s", messages=[{"role": "user", "content": "1 2 3"}], max_tokens=15, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].text
    # The log-probabilities are the model's, by teacher forcing: their sum is log p(reply | source).
    lp = whole.choices[0].logprobs
    assert lp.tokens, "the reply is empty: nothing to check"
    src = torch.tensor([loaded.src_tokenizer.encode("1 2 3", eos=True)])
    ids = [loaded.tokenizer.encode(t)[0] for t in lp.tokens]
    if whole.choices[0].finish_reason == "stop":
        ids.append(loaded.tokenizer.eos_id)
    with torch.no_grad():
        logits = loaded.model(src, torch.tensor([[BOS_ID, *ids[:-1]]])).logits[0].float()
    logits[:, [0, BOS_ID]] = float("-inf")
    ref = logits.log_softmax(-1)[torch.arange(len(lp.tokens)), torch.tensor(ids[: len(lp.tokens)], dtype=torch.long)]
    assert lp.token_logprobs == pytest.approx(ref.tolist(), abs=1e-4)
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    sampled = client.completions.create(model="s2s", prompt="1 2 3", max_tokens=10, temperature=1.0, n=3, seed=7)
    again = client.completions.create(model="s2s", prompt="1 2 3", max_tokens=10, temperature=1.0, n=3, seed=7)
    assert len(sampled.choices) == 3 and [c.text for c in sampled.choices] == [c.text for c in again.choices]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"prompt": "a b", "max_tokens": 16}, "exceeds this decoder's 15 output tokens"),
        ({"prompt": "a b", "max_tokens": 4, "best_of": 2, "n": 2, "temperature": 0}, "ask n=1 and temperature 0"),
        ({"prompt": "a b", "max_tokens": 4, "num_beams": 2}, "ask n=1 and temperature 0"),
        ({"prompt": "", "max_tokens": 4}, "empty prompt"),
        ({"prompt": "a " * 20, "max_tokens": 4}, "exceeds the context of 16"),
    ],
)
def test_bad_requests_are_refused_in_one_line(served, body, needle):
    _, _, http = served
    reply = http.post("/v1/completions", json={"model": "s2s", **body})
    assert reply.status_code == 400 and needle in reply.json()["error"]["message"], reply.text
    chat = http.post("/v1/chat/completions", json={"messages": [{"role": "system", "content": "x"}], "max_tokens": 2})
    assert chat.status_code == 400 and "last user message" in chat.json()["error"]["message"]
