"""AtP and AtP* against hand computations: the gradient formula, the QK fix on saturated attention, GradDrop."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import actkit
from actkit.core.anatomy import Anatomy
from actkit.core.attention import intercept_attention
from actkit.core.hooks import Capture, tap
from actkit.core.interventions import Apply
from actkit.localize import activation_patching, attribution_patching, make_metric
from actkit.localize.attribution import _recorder
from actkit.localize.pairs import PromptPair

from tiny import build, random_pair


def test_atp_equals_the_gradient_formula_by_hand() -> None:
    model, pair = build("llama"), random_pair()
    result = attribution_patching(model, pair, "resid_post")
    metric = make_metric("logit-diff", pair.answer, pair.foil)
    with torch.no_grad():
        clean = model(input_ids=pair.clean, output_hidden_states=True).hidden_states
    out = model(input_ids=pair.corrupt, output_hidden_states=True)
    hidden = out.hidden_states[1:-1]  # block outputs 0..L-2 (the last entry is after the final norm)
    grads = torch.autograd.grad(metric(out.logits[:, -1])[0], hidden)
    for layer, (h, g) in enumerate(zip(hidden, grads, strict=True)):
        expected = ((clean[layer + 1] - h.detach()) * g).sum(-1)[0].double()
        torch.testing.assert_close(result.effects[layer], expected, atol=1e-6, rtol=1e-6)
    # noising linearises around the clean run instead
    noised = attribution_patching(model, pair, "resid_post", direction="noise")
    assert not torch.allclose(noised.effects, -result.effects, atol=1e-6)


def test_heads_sum_the_gradient_formula_over_positions_and_head_dimensions() -> None:
    model, pair = build("llama"), random_pair()
    heads = attribution_patching(model, pair, "heads")
    o_proj = model.model.layers[1].self_attn.o_proj
    seen = {}
    handle = o_proj.register_forward_pre_hook(lambda m, args: seen.__setitem__("clean", args[0].detach()))
    with torch.no_grad():
        model(input_ids=pair.clean)
    handle.remove()

    def keep(module, args):
        x = args[0]
        x.retain_grad()
        seen["corrupt"] = x

    handle = o_proj.register_forward_pre_hook(keep)
    logits = model(input_ids=pair.corrupt).logits[:, -1]
    handle.remove()
    make_metric("logit-diff", 5, 6)(logits)[0].backward()
    product = (seen["clean"] - seen["corrupt"].detach()) * seen["corrupt"].grad
    expected = product[0].reshape(8, 4, -1).sum(dim=(0, 2)).double()
    torch.testing.assert_close(heads.effects[1], expected, atol=1e-6, rtol=1e-6)


def saturated_case() -> tuple[torch.nn.Module, PromptPair]:
    """One block, no MLP, sharp attention: the last query ignores position 3 in the corrupt run and attends to it
    in the clean run. The two tokens at 3 differ only in what the keys read (the value projection is blind to the
    difference), so all of the effect goes through the attention pattern."""
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=1,
                            num_key_value_heads=1, intermediate_size=16, max_position_embeddings=64)
    config._attn_implementation = "eager"
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    block, position = model.model.layers[0], 3
    base = torch.randint(3, 32, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        block.mlp.down_proj.weight.zero_()
        block.self_attn.q_proj.weight.mul_(12)
        block.self_attn.k_proj.weight.mul_(12)
        weights = []
        for token in range(3, 32):
            ids = base.clone()
            ids[0, position] = token
            weights.append((model(ids, output_attentions=True).attentions[0][0, 0, -1, position].item(), token))
        (low, corrupt_token), (high, clean_token) = min(weights), max(weights)
        assert low < 0.01 and high > 0.5
        emb, norm = model.model.embed_tokens.weight, block.input_layernorm
        w = norm(emb[clean_token]) - norm(emb[corrupt_token])
        w = w / w.norm()
        v = block.self_attn.v_proj.weight
        v.copy_(v - (v @ w)[:, None] * w[None, :])
    clean, corrupt = base.clone(), base.clone()
    clean[0, position], corrupt[0, position] = clean_token, corrupt_token
    with torch.no_grad():
        shift = model(clean).logits[0, -1] - model(corrupt).logits[0, -1]
    return model, PromptPair(clean, corrupt, int(shift.argmax()), int(shift.argmin()), [str(i) for i in range(8)])


def test_qk_fix_finds_the_effect_that_saturated_attention_hides_from_atp() -> None:
    model, pair = saturated_case()
    exact = activation_patching(model, pair, "resid_pre").effects[0, 3].item()
    atp = attribution_patching(model, pair, "resid_pre").effects[0, 3].item()
    star = attribution_patching(model, pair, "resid_pre", method="atp-star").effects[0, 3].item()
    assert abs(exact) > 0.05
    assert abs(atp) < 0.05 * abs(exact)  # the softmax is flat where the corrupt run sits
    assert star == pytest.approx(exact, rel=0.3)


def test_graddrop_equals_explicit_masked_backward_passes() -> None:
    model, pair = build("llama"), random_pair()
    n = Anatomy.of(model).n_layers
    for site in ("attn_out", "resid_post"):
        star = attribution_patching(model, pair, site, method="atp-star", qk_fix=False)
        with torch.no_grad():
            caps = {f"{site}.{i}": Capture() for i in range(n)}
            with tap(model, read=caps):
                model(input_ids=pair.clean)
            clean = {k: c.last for k, c in caps.items()}
        terms = []
        for dropped in range(n):  # a fresh forward per block, its branches cut from the graph with detach()
            deltas = {f"{site}.{i}": torch.zeros_like(clean[f"{site}.{i}"], requires_grad=True) for i in range(n)}
            writes = {k: [Apply(lambda x, d=d: x + d)] for k, d in deltas.items()}
            for branch in (f"attn_out.{dropped}", f"mlp_out.{dropped}"):
                writes.setdefault(branch, []).append(Apply(lambda x: x.detach()))
            caps = {k: Capture() for k in deltas}
            with tap(model, read=caps, write=writes):
                logits = model(input_ids=pair.corrupt).logits[:, -1]
            captured = {k: c.last for k, c in caps.items()}
            grads = torch.autograd.grad(make_metric("logit-diff", 5, 6)(logits)[0], list(deltas.values()),
                                        allow_unused=True)
            terms.append(torch.stack([((clean[k] - captured[k]) * (g if g is not None else 0)).sum(-1)[0]
                                      for k, g in zip(deltas, grads, strict=True)]))
        stacked = torch.stack(terms)  # (dropped block, node layer, position)
        expected = torch.stack([stacked[[b for b in range(n) if b != layer], layer].mean(0) for layer in range(n)])
        torch.testing.assert_close(star.effects, expected.double(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["llama", "qwen3", "gemma3", "mistral", "gpt2", "mixtral"])
def test_attention_recomputed_for_atp_star_matches_the_model(name: str) -> None:
    """The eager recomputation that exposes the pattern gives the model's own logits (GQA, QK-norm, sliding
    window, GPT-2's scaling, MoE)."""
    model = build(name)
    ids = random_pair().clean
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        store: dict = {}
        anatomy = Anatomy.of(model)
        with intercept_attention(anatomy, dict.fromkeys(range(anatomy.n_layers), _recorder(store, keep_graph=True))):
            recomputed = model(input_ids=ids).logits
    assert sorted(store) == list(range(anatomy.n_layers))
    torch.testing.assert_close(recomputed, plain, atol=1e-5, rtol=1e-5)


def test_atp_star_runs_on_every_site_and_keeps_the_model_untouched() -> None:
    model, pair = build("qwen3"), random_pair(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for site in ("resid_pre", "resid_post", "attn_out", "mlp_out", "heads"):
        result = attribution_patching(model, pair, site, method="atp-star")
        assert torch.isfinite(result.effects).all() and result.method == "atp-star"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(actkit.ActkitError, match="unknown attribution method"):
        attribution_patching(model, pair, method="atp-plus")


def test_atp_star_is_the_mean_of_qk_fixed_estimates_with_one_block_cut_at_a_time() -> None:
    """Both parts together: each GradDrop term is the QK-fixed estimate on the model with block ℓ's branches
    detached (an outer tap), and AtP* averages them over the blocks other than the node's writer."""
    model, pair = build("llama"), random_pair(3)
    n = Anatomy.of(model).n_layers
    star = attribution_patching(model, pair, "resid_pre", method="atp-star")
    terms = []
    for dropped in range(n):
        cut = {f"attn_out.{dropped}": Apply(lambda x: x.detach()), f"mlp_out.{dropped}": Apply(lambda x: x.detach())}
        with tap(model, write=cut):
            terms.append(attribution_patching(model, pair, "resid_pre", method="atp-star", grad_drop=False).effects)
    stacked = torch.stack(terms)
    writers = [None, 0, 1]  # resid_pre.0 is written by the embedding, resid_pre.k by block k-1
    expected = torch.stack([stacked[[b for b in range(n) if b != writers[k]], k].mean(0) for k in range(n)])
    torch.testing.assert_close(star.effects, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ["atp", "atp-star"])
def test_the_pair_follows_the_model_to_its_device(method: str) -> None:
    """From Python the pair's ids (tokenized on the CPU) are moved to the model's device before the first run."""
    from test_patching import first_forward_device

    pair = random_pair()
    device = first_forward_device(build("llama"), lambda m: attribution_patching(m, pair, method=method))
    assert device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_attribution_on_a_cuda_model_from_python() -> None:
    model, pair = build("llama"), random_pair()
    expected = attribution_patching(model, pair, "resid_post", method="atp-star")
    result = attribution_patching(model.to("cuda"), pair, "resid_post", method="atp-star")
    torch.testing.assert_close(result.effects, expected.effects, atol=1e-4, rtol=1e-4)
