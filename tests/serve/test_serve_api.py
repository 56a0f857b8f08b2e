"""``actkit serve`` end to end, through the real ``openai`` client (and raw HTTP for what it cannot send):
completions and chat equal to `actkit.generate` / ``actkit generate`` token for token with greedy decoding,
steered or not; streaming; stop strings; prompt log-probabilities; the bad-request matrix; the API key; SIGTERM."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from typer.testing import CliRunner

import actkit
from actkit.cli import app as cli_app
from actkit.serve.app import MAX_BODY
from actkit.serve.steering import DEFAULT_PRESET_COEF, MAX_ITEMS

PROMPT = "James reviewed the soup, 1 stars: The food was"
CAP = 48  # the server's --max-new-tokens
KEY = "sesame"  # the module server's API key (ACTKIT_API_KEY)


@pytest.fixture(scope="module")
def toy():
    return actkit.load("builtin:toy-dense")


@pytest.fixture(scope="module")
def server(serve_module, vector_dir: Path):
    return serve_module("--vectors", str(vector_dir), "--max-new-tokens", str(CAP), "--max-batch", "4",
                        env={"ACTKIT_API_KEY": KEY})


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(server) -> httpx.Client:
    """Raw HTTP to the module server, with its API key."""
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


def cli_generate(*args: str) -> str:
    """The completion ``actkit generate --json`` prints for PROMPT."""
    result = CliRunner().invoke(cli_app, ["generate", "-p", PROMPT, "--json", *args])
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout.splitlines()[0])["completion"])


def test_completion_equals_generate(client: openai.OpenAI, toy) -> None:
    model, tokenizer = toy
    reply = client.completions.create(model="toy-dense", prompt=[PROMPT, "Sam reviewed the soup"], max_tokens=12,
                                      temperature=0)
    assert reply.object == "text_completion" and reply.model == "toy-dense"
    texts = [c.text for c in sorted(reply.choices, key=lambda c: c.index)]
    assert texts == actkit.generate(model, tokenizer, [PROMPT, "Sam reviewed the soup"], max_new_tokens=12)
    assert reply.choices[0].finish_reason in ("length", "stop")
    assert reply.usage is not None and reply.usage.prompt_tokens == sum(
        len(tokenizer(p)["input_ids"]) for p in (PROMPT, "Sam reviewed the soup"))


def test_steering_equals_actkit_generate(client: openai.OpenAI, vector_dir: Path) -> None:
    """vllm_xargs, the top-level steer field and the preset name all give what the command gives."""
    vector = str(vector_dir / "sentiment.safetensors")
    expected = cli_generate("--vector", vector, "--coef", "0.8", "--relative", "--positions", "generated",
                            "--max-new-tokens", "12")
    assert expected != cli_generate("--max-new-tokens", "12")  # the vector changes the text
    item = {"vector": "sentiment", "coef": 0.8, "relative": True, "positions": "generated"}
    by_xargs = client.completions.create(model="toy-dense", prompt=PROMPT, max_tokens=12, temperature=0,
                                         extra_body={"vllm_xargs": {"steer": json.dumps([item])}})
    assert by_xargs.choices[0].text == expected
    top = client.completions.create(model="toy-dense", prompt=PROMPT, max_tokens=12, temperature=0,
                                    extra_body={"steer": [item]})
    assert top.choices[0].text == expected
    preset = cli_generate("--vector", vector, "--coef", "0.8", "--relative", "--max-new-tokens", "12")
    by_name = client.completions.create(model="toy-dense:sentiment@0.8", prompt=PROMPT, max_tokens=12,
                                        temperature=0)
    assert by_name.choices[0].text == preset and by_name.model == "toy-dense:sentiment@0.8"
    absolute = cli_generate("--vector", vector, "--coef", "2", "--layers", "3", "--max-new-tokens", "12")
    chat = client.completions.create(model="toy-dense", prompt=PROMPT, max_tokens=12, temperature=0,
                                     extra_body={"vllm_xargs": {"steer": json.dumps(
                                         [{"vector": "sentiment", "coef": 2, "layers": [3]}])}})
    assert chat.choices[0].text == absolute


def test_concurrent_mixed_steering_equals_each_alone(client: openai.OpenAI, toy, vector_dir: Path) -> None:
    """8 requests at once (the server batches 4): steered, ablated and plain rows each get their own text."""
    from concurrent.futures import ThreadPoolExecutor

    from actkit.steer import load_vector, steering_writes

    model, tokenizer = toy
    vector = load_vector(vector_dir / "sentiment.safetensors", model)
    prompts = [PROMPT, "Sam", "Q:", "The cat", "Once", "Sam reviewed the soup, 5 stars:", "In the", "Tom"]
    coefs = [0.8, None, -0.8, 0.4, None, 1.2, 0.8, None]

    def ask(i: int) -> str:
        steer = [] if coefs[i] is None else [{"vector": "sentiment", "coef": coefs[i], "relative": True}]
        reply = client.completions.create(model="toy-dense", prompt=prompts[i], max_tokens=16, temperature=0,
                                          extra_body={"steer": steer})
        return reply.choices[0].text

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(ask, range(8)))
    for i, text in enumerate(got):
        writes = None if coefs[i] is None else steering_writes(vector, coefs[i], relative=True)
        assert text == actkit.generate(model, tokenizer, [prompts[i]], writes=writes, max_new_tokens=16)[0], i


def test_sampling_seed_logprobs_and_echo(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        return client.completions.create(model="toy-dense", prompt="Sam", max_tokens=12, temperature=1.0,
                                         seed=seed).choices[0].text

    assert sample(5) == sample(5)
    assert len({sample(seed) for seed in range(4)}) > 1
    reply = client.completions.create(model="toy-dense", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2)
    lp = reply.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and lp.top_logprobs is not None
    assert "".join(lp.tokens) == reply.choices[0].text and all(len(t) == 2 for t in lp.top_logprobs)
    echoed = client.completions.create(model="toy-dense", prompt=PROMPT, max_tokens=4, temperature=0, echo=True)
    assert echoed.choices[0].text == PROMPT + reply.choices[0].text


def test_chat_equals_generate_with_the_template(client: openai.OpenAI, toy) -> None:
    model, tokenizer = toy
    reply = client.chat.completions.create(model="toy-dense", messages=[{"role": "user", "content": PROMPT}],
                                           max_tokens=10, temperature=0)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == actkit.generate(model, tokenizer, [PROMPT], max_new_tokens=10,
                                                               chat=True)[0]


def test_streaming_gives_the_same_text(client: openai.OpenAI, http: httpx.Client) -> None:
    whole = client.completions.create(model="toy-dense", prompt=PROMPT, max_tokens=12, temperature=0)
    parts = list(client.completions.create(model="toy-dense", prompt=PROMPT, max_tokens=12, temperature=0,
                                           stream=True))
    assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text
    assert parts[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    chat = [{"role": "user", "content": PROMPT}]
    plain = client.chat.completions.create(model="toy-dense", messages=chat, max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(model="toy-dense", messages=chat, max_tokens=10, temperature=0,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain.choices[0].message.content
    raw = http.post("/v1/completions", json={"model": "toy-dense", "prompt": PROMPT, "max_tokens": 3,
                                             "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_stop_strings_cut_the_text(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="toy-dense", prompt=PROMPT, max_tokens=12, temperature=0)
    text = whole.choices[0].text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    cut = client.completions.create(model="toy-dense", prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="toy-dense", prompt=PROMPT, max_tokens=12, temperature=0,
                                         stop=stop, stream=True)
    assert "".join(p.choices[0].text for p in streamed) == text[:text.index(stop)]


def test_echo_logprobs_are_the_prompt_log_probabilities(client: openai.OpenAI, toy) -> None:
    """The shape lm-evaluation-harness's local-completions reads: prompt tokens then one generated token, the
    first log-probability null, each top_logprobs holding the best alternative."""
    model, tokenizer = toy
    ids = tokenizer(PROMPT)["input_ids"]
    reply = client.completions.create(model="toy-dense", prompt=ids, max_tokens=1, temperature=0, logprobs=1,
                                      echo=True)
    lp = reply.choices[0].logprobs
    assert lp is not None and lp.token_logprobs is not None and lp.top_logprobs is not None
    assert len(lp.token_logprobs) == len(ids) + 1 and lp.token_logprobs[0] is None
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    expected = [float(logits[i - 1, ids[i]]) for i in range(1, len(ids))]
    assert all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(lp.token_logprobs[1:len(ids)], expected,
                                                                  strict=True))
    assert max(lp.top_logprobs[1].values()) == pytest.approx(float(logits[0].max()), abs=1e-4)


def test_streamed_echo_sends_the_prompt_log_probabilities_first(client: openai.OpenAI) -> None:
    """A streamed ``echo`` + ``logprobs`` reply: the first chunk is the prompt with its log-probabilities (as vLLM
    sends it), and the chunks' logprobs, joined, are those of the reply that is not streamed."""
    ask = {"model": "toy-dense", "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "logprobs": 2, "echo": True,
           "extra_body": {"ignore_eos": True}}
    whole = client.completions.create(**ask).choices[0]
    parts = [p.choices[0] for p in client.completions.create(**ask, stream=True)]
    assert parts[0].text == PROMPT and parts[0].logprobs is not None
    assert parts[0].logprobs.token_logprobs is not None and parts[0].logprobs.token_logprobs[0] is None
    assert whole.logprobs is not None
    joined: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for part in parts:
        if part.logprobs is not None:
            for key, values in joined.items():
                values += getattr(part.logprobs, key)
    assert joined == {key: getattr(whole.logprobs, key) for key in joined}
    assert len(parts[0].logprobs.tokens or []) == len(joined["tokens"]) - 4  # the prompt's, then one per token
    assert "".join(p.text for p in parts) == whole.text


def test_a_client_that_leaves_frees_its_row_at_once(serve_process, toy) -> None:
    """A client that goes away mid-generation, streaming or not: its row is dropped at once (far sooner than its
    remaining tokens would take), and the next request runs in the one slot and equals generate."""
    model, tokenizer = toy
    served = serve_process("--max-new-tokens", "250", "--max-batch", "1")
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0, timeout=60)
    ask = {"model": "toy-dense", "prompt": "Q:", "temperature": 0, "extra_body": {"ignore_eos": True}}

    def running() -> int:
        return int(httpx.get(f"{served.url}/health", timeout=10).json()["running"])

    start = time.monotonic()
    client.completions.create(**ask, max_tokens=150)
    budget = time.monotonic() - start  # what 150 tokens take here, now
    gone = []
    stream = client.completions.create(**ask, max_tokens=250, stream=True)
    for _, _ in zip(range(3), stream, strict=False):
        pass
    assert running() == 1
    stream.close()  # the stream case: 247 tokens still to come
    left = time.monotonic()
    while running() and time.monotonic() - left < 60:
        time.sleep(0.01)
    gone.append(time.monotonic() - left)
    with pytest.raises(httpx.ReadTimeout):  # the whole-reply case: the client gives up after 0.2 s
        httpx.post(f"{served.url}/v1/completions", json={**ask.pop("extra_body"), **ask, "max_tokens": 250},
                   timeout=httpx.Timeout(10, read=0.2))
    left = time.monotonic()
    while running() and time.monotonic() - left < 60:
        time.sleep(0.01)
    gone.append(time.monotonic() - left)
    assert max(gone) < budget, (gone, budget)
    after = client.completions.create(model="toy-dense", prompt=PROMPT, max_tokens=8, temperature=0)
    assert after.choices[0].text == actkit.generate(model, tokenizer, [PROMPT], max_new_tokens=8)[0]


def test_models_and_steering_listings(http: httpx.Client, client: openai.OpenAI) -> None:
    models = http.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["toy-dense", f"toy-dense:sentiment@{DEFAULT_PRESET_COEF:g}"]
    assert client.models.retrieve("toy-dense:sentiment@0.8").id == "toy-dense:sentiment@0.8"
    assert client.models.retrieve("toy-dense").owned_by == "actkit"
    for missing in ("toy-dense:nope@0.8", "other"):
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(missing)
    steering = http.get("/v1/steering").json()["data"]
    assert [(v["name"], v["site"], v["layers"]) for v in steering] == [("sentiment", "resid_post", [2, 3])]
    assert steering[0]["method"] == "mean-diff" and set(steering[0]["norms"]) == {"2", "3"}


BAD = [
    ("malformed json", b"{\"model\": ", None, 400),
    ("not an object", b"[1]", None, 400),
    ("wrong type", {"model": "toy-dense", "prompt": PROMPT, "max_tokens": "8"}, "max_tokens", 400),
    ("unknown field", {"model": "toy-dense", "prompt": PROMPT, "max_token": 8}, "max_token", 400),
    ("n over 1", {"model": "toy-dense", "prompt": PROMPT, "n": 2}, "n", 400),
    ("max_tokens over the cap", {"model": "toy-dense", "prompt": PROMPT, "max_tokens": CAP + 1}, "max_tokens",
     400),
    ("prompt over the context", {"model": "toy-dense", "prompt": "word " * 400, "max_tokens": 1}, "prompt", 400),
    ("token id outside the vocabulary", {"model": "toy-dense", "prompt": [1, 10**9]}, "prompt", 400),
    ("unknown model", {"model": "gpt-4", "prompt": PROMPT}, "model", 404),
    ("unknown preset vector", {"model": "toy-dense:nope@1", "prompt": PROMPT}, "model", 400),
    ("unknown vector", {"model": "toy-dense", "prompt": PROMPT, "steer": [{"vector": "nope"}]}, "steer.0.vector",
     400),
    ("vector name as a path", {"model": "toy-dense", "prompt": PROMPT,
                               "steer": [{"vector": "../sentiment"}]}, "steer.0.vector", 400),
    ("non-finite coef", {"model": "toy-dense", "prompt": PROMPT,
                         "vllm_xargs": {"steer": "[{\"vector\": \"sentiment\", \"coef\": NaN}]"}},
     "vllm_xargs.steer.0.coef", 400),
    ("absurd coef", {"model": "toy-dense", "prompt": PROMPT, "steer": [{"vector": "sentiment", "coef": 1e9}]},
     "steer.0.coef", 400),
    ("too many items", {"model": "toy-dense", "prompt": PROMPT, "steer": [{"vector": "sentiment"}] *
                        (MAX_ITEMS + 1)}, "steer", 400),
    ("a layer the vector lacks", {"model": "toy-dense", "prompt": PROMPT,
                                  "steer": [{"vector": "sentiment", "layers": [0]}]}, "steer.0", 400),
    ("oversized body", {"model": "toy-dense", "prompt": "x" * (MAX_BODY + 1)}, None, 413),
]


@pytest.mark.parametrize(("case", "body", "param", "status"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_the_openai_error_object(http: httpx.Client, case, body, param, status) -> None:
    if isinstance(body, bytes):
        reply = http.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    else:
        reply = http.post("/v1/completions", json=body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    assert http.get("/health").status_code == 200  # still up


def test_bad_chat_requests_and_routes(http: httpx.Client) -> None:
    url = "/v1/chat/completions"
    for body, param in [({"model": "toy-dense", "messages": []}, "messages"),
                        ({"model": "toy-dense", "messages": [{"role": "robot", "content": "x"}]}, "messages"),
                        ({"model": "toy-dense", "messages": [{"role": "user", "content": 3}]}, "messages")]:
        reply = http.post(url, json=body)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text
    assert http.get("/v1/nothing").json()["error"]["code"] == "not_found"
    assert http.get(url).status_code == 405


def test_api_key(server) -> None:
    """The module server runs with ACTKIT_API_KEY set: without the key, 401 everywhere but /health."""
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    for reply in (httpx.post(f"{server.url}/v1/completions", json={"model": "toy-dense", "prompt": PROMPT}),
                  httpx.get(f"{server.url}/v1/steering")):
        assert reply.status_code == 401 and reply.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_sigterm_finishes_the_request_in_flight(serve_process, toy) -> None:
    """SIGTERM while a request streams: it still gets all its tokens, then the server exits 0 and is gone."""
    model, tokenizer = toy
    served = serve_process("--max-new-tokens", "120")
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0, timeout=60)
    first, done = threading.Event(), threading.Event()
    texts: list[str] = []

    def ask() -> None:
        pieces = []
        for part in client.completions.create(model="toy-dense", prompt="Q:", max_tokens=120, temperature=0,
                                              stream=True):
            pieces.append(part.choices[0].text)
            first.set()
        texts.append("".join(pieces))
        done.set()

    worker = threading.Thread(target=ask)
    worker.start()
    assert first.wait(60)
    in_flight = not done.is_set()
    status, err = served.stop(signal.SIGTERM)
    worker.join(60)
    assert in_flight  # the prompt gives 45 tokens, streamed one event each: far from done at the first
    assert status == 0, err
    assert texts == actkit.generate(model, tokenizer, ["Q:"], max_new_tokens=120)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{served.url}/health", timeout=2)


def test_bad_options_fail_before_loading(tmp_path: Path) -> None:
    start = time.monotonic()
    for args, message in [(["--port", "0"], "--port"), (["--max-batch", "0"], "--max-batch"),
                          (["--threads", "0"], "--threads"),
                          (["--max-new-tokens", "0"], "--max-new-tokens"),
                          (["--vectors", str(tmp_path / "none")], "--vectors")]:
        result = CliRunner().invoke(cli_app, ["serve", *args])
        assert result.exit_code == 2 and "error:" in result.output and message in result.output, result.output
    assert time.monotonic() - start < 10


def test_a_vector_that_does_not_fit_is_an_error_at_start(tmp_path: Path) -> None:
    from actkit.steer import SteeringVector, save_vector

    save_vector(SteeringVector({1: torch.ones(7)}), tmp_path / "wide.safetensors")
    result = CliRunner().invoke(cli_app, ["serve", "--vectors", str(tmp_path)])
    assert result.exit_code == 2 and "wide.safetensors" in result.output, result.output
