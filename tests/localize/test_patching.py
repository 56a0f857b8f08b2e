"""Exact activation patching against hand-made patches, and the pair and metric rules (tiny random models)."""

from __future__ import annotations

import pytest
import torch

import actkit
from actkit.localize import activation_patching, agreement, make_metric
from actkit.localize.pairs import PromptPair, answer_token, prompt_pair

from tiny import build, random_pair


def last_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits[:, -1]


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_final_block_at_the_last_position_recovers_the_other_run(direction: str) -> None:
    model, pair = build("llama"), random_pair()
    result = activation_patching(model, pair, "resid_post", direction=direction)
    gap = result.clean_metric - result.corrupt_metric
    expected = gap if direction == "denoise" else -gap
    assert abs(gap) > 1e-3
    assert result.effects[-1, -1].item() == pytest.approx(expected, abs=1e-5)
    # positions before the first changed token carry nothing of the difference
    torch.testing.assert_close(result.effects[:, :2], torch.zeros(3, 2, dtype=torch.float64), atol=1e-6, rtol=0)


def test_one_patch_equals_a_hand_made_hook() -> None:
    model, pair = build("llama"), random_pair()
    result = activation_patching(model, pair, "resid_post", batch_size=5)
    with torch.no_grad():
        clean_hidden = model(input_ids=pair.clean, output_hidden_states=True).hidden_states[2]  # block 1's output

    def patch(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, 5] = clean_hidden[:, 5]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = model.model.layers[1].register_forward_hook(patch)
    try:
        logits = last_logits(model, pair.corrupt)
    finally:
        handle.remove()
    metric = make_metric("logit-diff", pair.answer, pair.foil)
    expected = float(metric(logits)[0]) - result.corrupt_metric
    assert result.effects[1, 5].item() == pytest.approx(expected, abs=1e-5)


def test_batch_size_does_not_change_the_effects() -> None:
    model, pair = build("qwen3"), random_pair(1)
    one = activation_patching(model, pair, "mlp_out", batch_size=1)
    many = activation_patching(model, pair, "mlp_out", batch_size=64)
    torch.testing.assert_close(one.effects, many.effects, atol=1e-5, rtol=1e-5)


def test_head_patch_equals_patching_its_slice_of_the_output_projection_input() -> None:
    model, pair = build("llama"), random_pair()
    result = activation_patching(model, pair, "heads")
    assert result.effects.shape == (3, 4) and result.columns == "head"
    captured = {}
    o_proj = model.model.layers[2].self_attn.o_proj
    handle = o_proj.register_forward_pre_hook(lambda m, args: captured.__setitem__("x", args[0].clone()))
    last_logits(model, pair.clean)
    handle.remove()
    width = captured["x"].shape[-1] // 4

    def patch(module, args):
        x = args[0].clone()
        x[..., 3 * width:] = captured["x"][..., 3 * width:]
        return (x,)

    handle = o_proj.register_forward_pre_hook(patch)
    try:
        logits = last_logits(model, pair.corrupt)
    finally:
        handle.remove()
    expected = float(make_metric("logit-diff", 5, 6)(logits)[0]) - result.corrupt_metric
    assert result.effects[2, 3].item() == pytest.approx(expected, abs=1e-5)
    # all heads of a block together are the whole attention output
    whole = activation_patching(model, pair, "attn_out")
    assert whole.effects.shape == (3, 8)


def test_metrics_prob_and_kl() -> None:
    model, pair = build("llama"), random_pair()
    prob = activation_patching(model, pair, "resid_post", metric="prob")
    clean_p = torch.softmax(last_logits(model, pair.clean), -1)[0, 5].item()
    assert prob.clean_metric == pytest.approx(clean_p, abs=1e-6)
    kl = activation_patching(model, pair, "resid_post", metric="kl")
    assert kl.clean_metric == pytest.approx(0.0, abs=1e-6) and kl.corrupt_metric > 0
    assert kl.effects[-1, -1].item() == pytest.approx(-kl.corrupt_metric, abs=1e-5)  # restores the clean output


def test_pair_rules_name_the_problem() -> None:
    class Words:
        """Word-level tokenizer: each space-separated word one id, 'sunflower' two."""

        vocab = {w: i for i, w in enumerate("<bos> the cat dog sat ran Anna Tom sun flower".split())}

        def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
            ids = [0] if add_special_tokens else []
            for w in text.split():
                ids += [self.vocab["sun"], self.vocab["flower"]] if w == "sunflower" else [self.vocab[w]]
            return {"input_ids": ids}

        def decode(self, ids: list[int]) -> str:
            inverse = {i: w for w, i in self.vocab.items()}
            return " ".join(inverse[i] for i in ids)

    tok = Words()
    pair = prompt_pair(tok, "the cat sat", "the dog sat", "Anna", "Tom")
    assert pair.length == 4 and pair.answer == tok.vocab["Anna"]
    with pytest.raises(actkit.ActkitError, match="clean prompt is 4 tokens and the corrupt prompt 5.*same length"):
        prompt_pair(tok, "the cat sat", "the sunflower sat", "Anna")
    with pytest.raises(actkit.ActkitError, match="2 tokens.*not one"):
        answer_token(tok, "the cat", "sunflower")
    with pytest.raises(actkit.ActkitError, match="same tokens"):
        prompt_pair(tok, "the cat sat", "the cat sat", "Anna")
    with pytest.raises(actkit.ActkitError, match="answer and the foil are the same"):
        prompt_pair(tok, "the cat sat", "the dog sat", "Anna", "Anna")


def test_bad_site_metric_direction_and_layers() -> None:
    model, pair = build("llama"), random_pair()
    with pytest.raises(actkit.ActkitError, match="unknown patching site 'resid_mid'"):
        activation_patching(model, pair, "resid_mid")
    with pytest.raises(actkit.ActkitError, match="unknown metric 'acc'"):
        activation_patching(model, pair, metric="acc")
    with pytest.raises(actkit.ActkitError, match="unknown direction"):
        activation_patching(model, pair, direction="sideways")
    with pytest.raises(actkit.ActkitError, match=r"layer 7 does not exist.*3 blocks \(0..2, or -1..-3"):
        activation_patching(model, pair, layers=[7])
    last = activation_patching(model, pair, layers=[-1, 2])  # negative indices count from the end; once each
    assert last.layers == [2] and last.effects.shape[0] == 1
    with pytest.raises(actkit.ActkitError, match="needs a foil"):
        activation_patching(model, PromptPair(pair.clean, pair.corrupt, 5, None, pair.tokens))


def test_agreement_measures() -> None:
    exact = torch.tensor([[3.0, 0.0, 1.0], [0.0, -2.0, 0.5]])
    assert agreement(exact, exact, k=2) == {"pearson": pytest.approx(1.0), "top2_recall": 1.0, "pairs": 1}
    swapped = torch.tensor([[0.0, 3.0, 1.0], [0.0, -2.0, 0.5]])  # the strongest component missed
    assert agreement(exact, swapped, k=2)["top2_recall"] == 0.5
    sparse = torch.tensor([[0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 1.0]])  # two non-zero effects: k shrinks to 2
    assert agreement(sparse, torch.tensor([[0.1, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.5]]), k=5)["top5_recall"] == 1.0
    with pytest.raises(actkit.ActkitError, match="same pairs"):
        agreement([exact], [exact[:1]])


class _Stop(Exception):
    pass


def first_forward_device(model: torch.nn.Module, run) -> torch.device:
    """Put `model` on the "meta" device and return the device of the token ids its first forward pass gets."""
    seen: list[torch.device] = []

    def spy(*args, input_ids=None, **kwargs):
        seen.append(input_ids.device)
        raise _Stop

    model.to("meta")
    model.forward = spy
    with pytest.raises(_Stop):
        run(model)
    return seen[0]


def test_the_pair_follows_the_model_to_its_device() -> None:
    """From Python the pair's ids (tokenized on the CPU) are moved to the model's device before the first run."""
    pair = random_pair()
    device = first_forward_device(build("llama"), lambda m: activation_patching(m, pair, "resid_post"))
    assert device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_patching_a_cuda_model_from_python() -> None:
    model, pair = build("llama"), random_pair()
    expected = activation_patching(model, pair, "resid_post")
    result = activation_patching(model.to("cuda"), pair, "resid_post")
    torch.testing.assert_close(result.effects, expected.effects, atol=1e-4, rtol=1e-4)
