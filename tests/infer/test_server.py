"""The OpenAI-compatible server, driven by the official `openai` client and raw HTTP on 127.0.0.1."""

import concurrent.futures
import socket
import threading
import time

import pytest
import torch
from click.testing import CliRunner

from lmlab.cli.app import cli
from lmlab.infer.load import load_run
from lmlab.runs.run_dir import RunDir
from tests.helpers import small_train_args

# The tests share one module fixture: under xdist they run in one worker, so it is built once.
pytestmark = pytest.mark.xdist_group("server")

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

KEY = "test-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from lmlab.infer.server import Limits, create_app

    root = tmp_path_factory.mktemp("serve")
    corpus = root / "corpus.txt"
    corpus.write_text("user: the quick brown fox\nassistant: jumps over the lazy dog.\n" * 200)
    args = ["train", *small_train_args(corpus, layers=1, max_steps=20, batch=4, save_dir=root / "runs")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    loaded = load_run(RunDir.latest(root / "runs").path)
    app = create_app(
        {"tiny": loaded}, limits=Limits(max_tokens=64, max_body_bytes=4096, max_concurrent=16), api_key=KEY
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:  # wait for the event itself, however slow the machine
        assert thread.is_alive(), "the server thread died during start-up"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}", loaded
    srv.should_exit = True
    thread.join(timeout=10)


def test_openai_client_completes_and_streams(server):
    url, loaded = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    out = client.completions.create(model="tiny", prompt="the quick", max_tokens=12, temperature=0.8, seed=5)
    ids = torch.tensor([loaded.tokenizer.encode("the quick")])
    expected = loaded.model.generate(ids, 12, temperature=0.8, seed=5)[0, ids.shape[1] :].tolist()
    assert out.choices[0].text == loaded.tokenizer.decode(expected)  # the same sampler as `lmlab generate`
    assert out.usage.completion_tokens == 12 and out.choices[0].finish_reason == "length"
    pieces = list(
        client.completions.create(model="tiny", prompt="the quick", max_tokens=12, temperature=0.8, seed=5, stream=True)
    )
    assert "".join(p.choices[0].text for p in pieces) == out.choices[0].text
    assert pieces[-1].choices[0].finish_reason == "length"
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "the"}], max_tokens=8)
    assert chat.choices[0].message.role == "assistant" and isinstance(chat.choices[0].message.content, str)


def test_logprobs_and_stop_strings(server):
    url, _loaded = server
    r = httpx.post(
        f"{url}/v1/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"prompt": "the lazy", "max_tokens": 10, "temperature": 0, "logprobs": 1},
    )
    body = r.json()
    lps = body["choices"][0]["logprobs"]["token_logprobs"]
    assert r.status_code == 200 and len(lps) == 10 and all(lp <= 0 for lp in lps)
    text = body["choices"][0]["text"]
    stop = text[3:5]
    r = httpx.post(
        f"{url}/v1/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"prompt": "the lazy", "max_tokens": 10, "temperature": 0, "stop": stop},
    )
    assert (
        r.json()["choices"][0]["text"] == text[: text.index(stop)] and r.json()["choices"][0]["finish_reason"] == "stop"
    )


@pytest.mark.parametrize(
    ("content", "headers", "status", "needle"),
    [
        (b"{not json", {}, 400, "not valid JSON"),
        (b'{"prompt": 5}', {}, 400, "prompt"),
        (b'{"prompt": "the", "max_tokens": -3}', {}, 400, "max_tokens"),
        (b'{"prompt": "the", "max_tokens": 100000}', {}, 400, "exceeds the limit of 64"),
        (b'{"prompt": "' + b"the " * 200 + b'"}', {}, 400, "exceeds the context"),
        (b'{"prompt": "\xff\xfe"}', {}, 400, "not UTF-8"),
        (b'{"prompt": "the", "model": "nope"}', {}, 404, "available: tiny"),
        (b'{"prompt": "the", "best_of": 3, "temperature": 0}', {}, 400, "beam search is for encoder-decoder runs"),
        (b'{"prompt": "' + b"a" * 5000 + b'"}', {}, 413, "exceeds 4096"),
        (b'{"prompt": "the"}', {"Authorization": "Bearer wrong"}, 401, "API key"),
        (b'{"prompt": "the"}', {"Authorization": None}, 401, "API key"),
    ],
)
def test_bad_requests_get_the_right_4xx_and_the_server_keeps_serving(server, content, headers, status, needle):
    url, _ = server
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    h.update(headers)
    h = {k: v for k, v in h.items() if v is not None}
    r = httpx.post(f"{url}/v1/completions", content=content, headers=h)
    assert r.status_code == status and needle in r.json()["error"]["message"], r.text
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_concurrent_streams_all_complete(server):
    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY)

    def one(i):
        stream = client.completions.create(model="tiny", prompt="the", max_tokens=16, seed=i, stream=True)
        return "".join(p.choices[0].text for p in stream)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(one, range(8)))
    assert len(outs) == 8 and all(isinstance(o, str) and o for o in outs)


def test_concurrent_requests_are_batched_and_each_equals_its_solo_run(server):
    url, loaded = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY)
    prompts = ["the quick brown", "a", "user: the", "jumps over the lazy", "the", "fox"]
    before = httpx.get(f"{url}/health").json()["batching"]["tiny"]["batches"]
    barrier = threading.Barrier(len(prompts))

    def one(i):
        barrier.wait()
        out = client.completions.create(model="tiny", prompt=prompts[i], max_tokens=10 + i, temperature=0.9, seed=i)
        return out.choices[0].text

    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        texts = list(pool.map(one, range(len(prompts))))
    stats = httpx.get(f"{url}/health").json()["batching"]["tiny"]
    assert stats["largest_batch"] > 1 and stats["batches"] - before < len(prompts)  # some requests shared a batch
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([loaded.tokenizer.encode(prompt)])
        alone = loaded.model.generate(ids, 10 + i, temperature=0.9, seed=i)[0, ids.shape[1] :].tolist()
        assert texts[i] == loaded.tokenizer.decode(alone), prompt


def test_openai_logprobs_n_and_chat_options_through_the_client(server):
    url, loaded = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY)
    tok, model = loaded.tokenizer, loaded.model
    # completions: logprobs=3 lists the three likeliest tokens at each step, as the model computes them
    out = client.completions.create(model="tiny", prompt="the quick", max_tokens=6, temperature=0, logprobs=3)
    lp = out.choices[0].logprobs
    ids = tok.encode("the quick")
    generated = model.generate(torch.tensor([ids]), 6, temperature=0)[0].tolist()
    with torch.no_grad():
        logp = model(torch.tensor([generated])).logits[0, len(ids) - 1 : -1].log_softmax(-1)
    for step, (top, chosen) in enumerate(zip(lp.top_logprobs, lp.token_logprobs, strict=True)):
        values, best = logp[step].topk(3)
        assert list(top) == [tok.decode([i]) for i in best.tolist()] or len(set(top)) < 3  # distinct texts
        assert max(top.values()) == pytest.approx(float(values[0]), abs=1e-4) and chosen <= 0
    assert "".join(lp.tokens) == out.choices[0].text and lp.text_offset[0] == 0
    # n > 1: extra rows of one batch, sample i seeded with seed + i, each equal to its solo run
    before = httpx.get(f"{url}/health").json()["batching"]["tiny"]["batches"]
    many = client.completions.create(model="tiny", prompt="the", max_tokens=8, temperature=0.9, seed=11, n=3)
    after = httpx.get(f"{url}/health").json()["batching"]["tiny"]
    assert [c.index for c in many.choices] == [0, 1, 2] and after["batches"] == before + 1
    for i, choice in enumerate(many.choices):
        prompt = torch.tensor([tok.encode("the")])
        alone = model.generate(prompt, 8, temperature=0.9, seed=11 + i)[0, prompt.shape[1] :].tolist()
        assert choice.text == tok.decode(alone)
    assert many.usage.completion_tokens == 24
    streamed: dict[int, str] = {}
    for chunk in client.completions.create(
        model="tiny", prompt="the", max_tokens=8, temperature=0.9, seed=11, n=3, stream=True
    ):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    assert streamed == {i: c.text for i, c in enumerate(many.choices)}
    # chat: max_completion_tokens wins over max_tokens; logprobs and top_logprobs come back per token
    messages = [{"role": "user", "content": "the"}]
    chat = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=20, max_completion_tokens=4, logprobs=True, top_logprobs=2
    )
    content = chat.choices[0].logprobs.content
    assert chat.usage.completion_tokens <= 4 and len(content) == chat.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 and t.bytes == list(t.token.encode()) for t in content)
    plain = client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=4)
    assert plain.choices[0].logprobs is None
    first = next(iter(client.chat.completions.create(model="tiny", messages=messages, max_tokens=3, stream=True)))
    assert first.choices[0].delta.role == "assistant"
