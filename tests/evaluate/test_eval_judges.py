"""Judges: robust parsing of rubric replies, the OpenAI-compatible judge against a fake endpoint, the rules."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from actkit.errors import ActkitError
from actkit.evaluate.judges import Concept, Criteria, OpenAIJudge, check_judge, parse_scores


@pytest.mark.parametrize("reply, expected", [
    ("concept: 2\ninstruction: 1\nfluency: 0", Criteria(2, 1, 0)),
    ("**Concept**: 1\n**Instruction** - 2\nFluency = 2/2", Criteria(1, 2, 2)),
    ('Here you go: {"concept": 0, "instruction": 2, "fluency": "1"} done', Criteria(0, 2, 1)),
    ("CONCEPT:2 INSTRUCTION:2 FLUENCY:2", Criteria(2, 2, 2)),
])
def test_well_formed_replies_parse(reply, expected):
    assert parse_scores(reply) == expected


@pytest.mark.parametrize("reply", [
    "",
    "I think it is quite good.",
    "concept: 2\ninstruction: 1",              # a criterion missing
    "concept: 3\ninstruction: 1\nfluency: 1",  # out of range
    "concept: 2\nconcept: 0\ninstruction: 1\nfluency: 1",  # contradicts itself
    '{"concept": 1.5, "instruction": 1, "fluency": 1}',     # not an integer score
    "concept: two\ninstruction: 1\nfluency: 1",
])
def test_malformed_replies_give_none(reply):
    assert parse_scores(reply) is None


def test_unknown_judge_is_named():
    with pytest.raises(ActkitError, match="unknown judge 'gpt'; use rules, embed or openai:URL"):
        check_judge("gpt")
    with pytest.raises(ActkitError, match="unknown judge"):
        check_judge("openai:")


def test_rule_scores():
    assert Concept("w", "", "words:wedding,bride").rule_score("The bride loved the weddings.") == 2
    assert Concept("w", "", "words:wedding,bride").rule_score("A quiet day.") == 0
    assert Concept("p", "", "positive").rule_score("It was great.") == 1
    assert Concept("r", "", "refusal").rule_score("I cannot help with that.") == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint() -> Iterator[tuple[str, dict]]:
    """A fake OpenAI-compatible chat endpoint on a loopback port; `state["replies"]` scripts its answers."""
    import uvicorn
    from fastapi import FastAPI

    state: dict = {"replies": [], "calls": 0}
    app = FastAPI()

    @app.get("/v1/models")
    def models() -> dict:
        return {"data": [{"id": "fake-judge"}]}

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        state["calls"] += 1
        state["last"] = body
        reply = state["replies"].pop(0) if state["replies"] else "concept: 2\ninstruction: 2\nfluency: 2"
        return {"choices": [{"message": {"role": "assistant", "content": reply}}]}

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/v1", state
    server.should_exit = True
    thread.join(5)


def test_the_openai_judge_reads_the_endpoint_and_retries_a_malformed_reply(endpoint):
    url, state = endpoint
    state.update(replies=["no scores here", "concept: 1\ninstruction: 2\nfluency: 0"], calls=0)
    judge = OpenAIJudge(Concept("weddings", "Talk about weddings."), url, backoff=0.0)
    assert judge.score(["Tell me"], ["about the bride"]) == [Criteria(1, 2, 0)]
    assert state["calls"] == 2
    assert state["last"]["model"] == "fake-judge"
    assert "weddings" in state["last"]["messages"][0]["content"]
    assert "about the bride" in state["last"]["messages"][0]["content"]


def test_the_openai_judge_stops_after_bounded_malformed_replies(endpoint):
    url, state = endpoint
    state.update(replies=["meh"] * 5, calls=0)
    judge = OpenAIJudge(Concept("weddings", "x"), url, model="m", attempts=3, backoff=0.0)
    with pytest.raises(ActkitError, match=r"no parsable scores in 3 tries \(last reply: 'meh'\)"):
        judge.score(["p"], ["c"])
    assert state["calls"] == 3


def test_an_unreachable_endpoint_fails_clearly_after_a_bounded_retry():
    judge = OpenAIJudge(Concept("w", "x"), f"http://127.0.0.1:{_free_port()}/v1", model="m", attempts=2,
                        backoff=0.01, timeout=2.0)
    start = time.monotonic()
    with pytest.raises(ActkitError, match=r"failed 2 time\(s\); last: ConnectError"):
        judge.score(["p"], ["c"])
    assert time.monotonic() - start < 10


def test_the_embed_judge_calibrates_its_thresholds_on_labelled_examples():
    """A stand-in embedder: texts about cats point one way, others another; thresholds come from the pairs."""
    import torch

    from actkit.evaluate.judges import make_judge
    from actkit.models.packaged import byte_tokenizer
    from actkit.steer.pairs import Pair

    from tiny import build

    def embed(texts):
        rows = [[1.0, 0.1 * len(t) % 1.0, 0.0] if "cat" in t else [0.0, 0.1 * len(t) % 1.0, 1.0] for t in texts]
        return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float64), dim=-1)

    tokenizer = byte_tokenizer()
    model = build("llama")
    model.resize_token_embeddings(len(tokenizer))
    pairs = [Pair("my cat sleeps", "my car starts"), Pair("a cat purrs", "a bus stops")]
    judge = make_judge("embed", Concept("cats", "Talk about cats."), model=model, tokenizer=tokenizer, pairs=pairs,
                       prompts=["Tell me:", "Say:"], unsteered=[" something here", " more words"], embedder=embed)
    concept = judge.calibration["concept"]
    assert concept["low_mean"] < concept["one"] < concept["two"] < concept["high_mean"]
    scores = judge.score(["Tell me:", "Tell me:", "Tell me:"], [" the cat naps", " the car parks", ""])
    assert scores[0].concept == 2 and scores[1].concept == 0
    assert scores[2] == Criteria(0, 0, 0)  # an empty continuation fails every criterion
