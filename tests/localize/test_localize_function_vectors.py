"""Function vectors: the cached per-head sweep equals patching the whole prompt, the vector is the sum of the chosen
heads' output-projection contributions, it is added at the last token only, and bad input is refused."""

from __future__ import annotations

import pytest
import torch

from actkit import ActkitError
from actkit.core.hooks import Capture, tap
from actkit.core.interventions import Apply
from actkit.core.positions import Last
from actkit.localize.function_vectors import _effects, function_vector, icl_prompt, zero_shot_accuracy

from tiny import DecodingTokenizer, build

PAIRS = [("ab", "ba"), ("cd", "dc"), ("ef", "fe"), ("gh", "hg"), ("ij", "ji"), ("kl", "lk"), ("mn", "nm")]


class Tok(DecodingTokenizer):
    def __call__(self, text: str, **_: object) -> dict[str, list[int]]:
        return super().__call__(text)


@pytest.fixture(scope="module")
def llama():
    return build("llama")


def test_cached_head_sweep_equals_patching_the_whole_prompt(llama) -> None:
    ids = torch.tensor([Tok()("abcdefghij")["input_ids"]])
    sites = [f"attn_hidden.{i}" for i in range(3)]
    g = torch.Generator().manual_seed(0)
    means = [torch.randn(64, generator=g) for _ in range(3)]
    patches = [(i, j) for i in range(3) for j in range(4)]
    with torch.no_grad():
        effects = _effects(llama, ids, 5, sites, means, 16, patches, batch_size=5)
        base = torch.softmax(llama(input_ids=ids).logits[0, -1], -1)[5]
        for i, j in patches:
            def put(x: torch.Tensor, i: int = i, j: int = j) -> torch.Tensor:
                x = x.clone()
                x[..., j * 16:(j + 1) * 16] = means[i][j * 16:(j + 1) * 16]
                return x
            with tap(llama, write={sites[i]: Apply(put, Last())}):
                expected = torch.softmax(llama(input_ids=ids).logits[0, -1], -1)[5] - base
            assert abs(float(effects[i, j]) - float(expected)) < 1e-6
    assert float(effects.abs().max()) > 1e-4


def test_vector_is_the_sum_of_the_chosen_heads_contributions(llama) -> None:
    tok = Tok()
    fv = function_vector(llama, tok, PAIRS, shots=3, prompts=3, top=2, layer=1)
    assert fv.effects.shape == (3, 4) and len(fv.heads) == 2 and fv.vector.shape == (64,)
    flat = fv.effects.reshape(-1)
    assert [i * 4 + j for i, j in fv.heads] == torch.argsort(flat, descending=True)[:2].tolist()
    # by hand: the heads' mean slices at the last token of the in-context prompts, through o_proj's columns
    from actkit.localize.function_vectors import _prompts

    clean = _prompts(PAIRS, 3, 3, 0, shuffled=False)
    expected = torch.zeros(64, dtype=torch.float64)
    for i, j in fv.heads:
        cap = Capture()
        total = torch.zeros(64, dtype=torch.float64)
        for text, _ in clean:
            with torch.no_grad(), tap(llama, read={f"attn_hidden.{i}": cap}):
                llama(input_ids=torch.tensor([tok(text)["input_ids"]]))
            total += cap.last[0, -1].double()
        mean = total / len(clean)
        weight = llama.model.layers[i].self_attn.o_proj.weight.double()
        expected += weight[:, j * 16:(j + 1) * 16] @ mean[j * 16:(j + 1) * 16]
    assert torch.allclose(fv.vector.double(), expected, atol=1e-4)
    # added at the last prompt token only: earlier positions are untouched
    ids = torch.tensor([tok("abc:")["input_ids"]])
    with torch.no_grad():
        plain = llama(input_ids=ids).logits
        with tap(llama, write=fv.writes(coef=5.0)):
            steered = llama(input_ids=ids).logits
    assert torch.equal(plain[0, :-1], steered[0, :-1]) and not torch.equal(plain[0, -1], steered[0, -1])
    assert 0.0 <= zero_shot_accuracy(llama, tok, PAIRS, fv) <= 1.0
    assert icl_prompt([("ab", "ba")], "cd") == "ab: ba\ncd:"


def test_bad_input_is_refused(llama) -> None:
    tok = Tok()
    with pytest.raises(ActkitError, match="at least shots"):
        function_vector(llama, tok, PAIRS[:4], shots=3)
    with pytest.raises(ActkitError, match="top must lie in 1..12"):
        function_vector(llama, tok, PAIRS, shots=3, top=13)
    with pytest.raises(ActkitError, match="layer must lie"):
        function_vector(llama, tok, PAIRS, shots=3, layer=3)
    with pytest.raises(ActkitError, match="empty"):
        function_vector(llama, tok, PAIRS + [("x", " ")], shots=3)
