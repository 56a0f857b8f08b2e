"""TEAL: spec parsing, calibration read through the input sites, thresholds as quantiles, target sparsity on
held-out text, identity at 0, clean hooks."""

from __future__ import annotations

import pytest
import torch

import actkit
from actkit import Capture, collect
from actkit.builtin import corpus
from actkit.builtin.calibration import builtin_calibration
from actkit.compress import activation
from actkit.compress.activation import (
    ActivationSparsity,
    activation_sparsity,
    calibrate_teal,
    calibrate_teal_batches,
    plan_activation_sparsity,
)
from actkit.compress.calibration import Calibration
from actkit.compress.projections import input_groups, input_sites, projections
from actkit.core.collect import token_batches
from actkit.core.stats import MagnitudeHistogram
from actkit.errors import ActkitError
from actkit.evaluate.perplexity import nll

import tiny

#: |achieved - target| allowed for the fraction of entries below the thresholds on held-out text.
DENSE_TOLERANCE = 0.03
#: The same for the sparsified model as a whole (later tensors see inputs of already-sparsified ones).
MODEL_TOLERANCE = 0.05
TEXTS = ["the cat sat on the mat and looked around the room", "a dog ran to the park", "birds sing at dawn", "x",
         "a much longer document that is split " * 4]


@pytest.fixture(scope="module")
def toy():
    return actkit.load("builtin:toy-dense")


@pytest.fixture(scope="module")
def toy_calibration(toy):
    model, tokenizer = toy
    return calibrate_teal(model, tokenizer, builtin_calibration(documents=128))


def tiny_batches(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(tiny.tokens(4, 16, seed=s), torch.ones(4, 16, dtype=torch.long)) for s in range(n)]


@pytest.mark.parametrize("text, method, sparsity", [("teal:0.5", "teal", 0.5), (" WINA:0.25 ", "wina", 0.25),
                                                    ("wina-code:0", "wina-code", 0.0), ("teal:.65", "teal", 0.65)])
def test_spec_parses(text, method, sparsity) -> None:
    spec = ActivationSparsity.parse(text)
    assert (spec.method, spec.sparsity) == (method, sparsity)
    assert ActivationSparsity.parse(str(spec)) == spec


@pytest.mark.parametrize("text, needle", [("teal", "METHOD:SPARSITY"), ("teal:", "METHOD:SPARSITY"),
                                          ("teal:abc", "not a number"), ("teal:1", "[0, 1)"),
                                          ("teal:-0.1", "[0, 1)"), ("teal:nan", "[0, 1)"), ("teal:inf", "[0, 1)"),
                                          ("magnitude:0.5", "unknown activation-sparsity method")])
def test_bad_specs_are_refused_with_the_fix(text, needle) -> None:
    with pytest.raises(ActkitError) as info:
        ActivationSparsity.parse(text)
    assert needle in str(info.value)


def test_input_groups_follow_shared_tensors() -> None:
    model = tiny.build("llama")
    groups = input_groups(model, projections(model))
    names = [[p.path for p in g] for g in groups if g[0].layer == 0]
    assert names == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                     ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]


def test_thresholds_are_quantiles_of_the_input_magnitudes() -> None:
    model = tiny.build("llama")
    seen: list[torch.Tensor] = []
    down = model.model.layers[1].mlp.down_proj
    handle = down.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().abs().reshape(-1)))
    try:
        calibration = calibrate_teal_batches(model, tiny_batches())
    finally:
        handle.remove()
    entries = torch.cat(seen).double()
    for s in (0.25, 0.5, 0.65):
        t = calibration.thresholds(s)["model.layers.1.mlp.down_proj"]
        assert t == pytest.approx(float(torch.quantile(entries, s)), rel=5e-3)  # log bins of 1e-3
    assert calibration.thresholds(0.0)["model.layers.1.mlp.down_proj"] == 0.0


@pytest.mark.parametrize("family, expected", [
    ("llama", {"self_attn.q_proj": "attn_in", "self_attn.k_proj": "attn_in", "self_attn.v_proj": "attn_in",
               "self_attn.o_proj": "attn_hidden", "mlp.gate_proj": "mlp_in", "mlp.up_proj": "mlp_in",
               "mlp.down_proj": "mlp_hidden"}),
    ("phi3", {"self_attn.qkv_proj": "attn_in", "self_attn.o_proj": "attn_hidden", "mlp.gate_up_proj": "mlp_in",
              "mlp.down_proj": "mlp_hidden"}),
    ("gpt2", {"attn.c_attn": "attn_in", "attn.c_proj": "attn_hidden", "mlp.c_fc": "mlp_in",
              "mlp.c_proj": "mlp_hidden"}),
    ("bert", {"attention.self.query": "attn_in", "attention.self.key": "attn_in", "attention.self.value": "attn_in",
              "attention.output.dense": "attn_hidden", "intermediate.dense": "mlp_in", "output.dense": "mlp_hidden"}),
    # the shared expert reads the MoE block's flattened input; its down projection has no site
    ("qwen2_moe", {"self_attn.q_proj": "attn_in", "self_attn.k_proj": "attn_in", "self_attn.v_proj": "attn_in",
                   "self_attn.o_proj": "attn_hidden", "mlp.shared_expert.gate_proj": "mlp_in",
                   "mlp.shared_expert.up_proj": "mlp_in", "mlp.shared_expert.down_proj": None,
                   "mlp.shared_expert_gate": "mlp_in"}),
])
def test_every_projection_input_is_a_site(family, expected) -> None:
    model = tiny.build(family)
    projs = [p for p in projections(model) if p.layer == 0]
    sites = input_sites(model, {p.name: p.module for p in projs})
    assert {p.path: None if sites[p.name] is None else sites[p.name].kind for p in projs} == expected
    assert all(s is None or s.layer == 0 for s in sites.values())


def test_calibration_reads_the_sites_through_collect(monkeypatch) -> None:
    """Thresholds from `calibrate_teal` are the quantiles of |x| over the real tokens that `collect` with `Capture`
    reads at each input site; while it runs, the only hooks on projections are the core's own, where a site is a
    projection's input (o_proj and down_proj: one each)."""
    model = tiny.build("llama")
    tok = tiny.CharTokenizer()
    projs = projections(model)
    hooked: set[tuple[str, int]] = set()

    class Watched(MagnitudeHistogram):
        def update(self, x, mask=None, where=None):
            hooked.update((p.path, len(p.module._forward_pre_hooks) + len(p.module._forward_hooks)) for p in projs)
            super().update(x, mask, where)

    monkeypatch.setattr(activation, "MagnitudeHistogram", Watched)
    calibration = calibrate_teal(model, tok, Calibration(TEXTS, "t", 0), batch_size=2, max_length=24)
    assert hooked == {(path, int(path in ("self_attn.o_proj", "mlp.down_proj"))) for path in
                      ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                       "mlp.up_proj", "mlp.down_proj")}
    sites = [f"{kind}.{layer}" for layer in range(3) for kind in ("attn_in", "attn_hidden", "mlp_in", "mlp_hidden")]
    captured = collect(model, TEXTS, sites, {"cap": Capture}, tokenizer=tok, batch_size=2, max_length=24)
    assert calibration.tokens == captured.tokens == sum(len(t) for t in TEXTS)
    members = {"attn_in": ["q_proj", "k_proj", "v_proj"], "attn_hidden": ["o_proj"], "mlp_in": ["gate_proj", "up_proj"],
               "mlp_hidden": ["down_proj"]}
    for site in sites:
        kind, layer = site.split(".")
        cap = captured[site]["cap"]
        entries = torch.cat([x[m].abs().reshape(-1) for x, m in zip(cap.values, cap.masks, strict=True)]).double()
        block = "mlp" if kind.startswith("mlp") else "self_attn"
        names = [f"model.layers.{layer}.{block}.{proj}" for proj in members[kind]]
        group = calibration.groups.index(names)
        assert calibration.histograms[group].count == entries.numel()
        for s in (0.25, 0.5, 0.65):
            t = calibration.thresholds(s)
            assert {t[n] for n in names} == {t[names[0]]}
            assert t[names[0]] == pytest.approx(float(torch.quantile(entries, s)), rel=5e-3)  # log bins of 1e-3


def test_text_and_batch_calibration_agree_bit_for_bit() -> None:
    """`calibrate_teal` (through `collect`) and `calibrate_teal_batches` (through `tap`) on the same batches."""
    model = tiny.build("qwen2")
    tok = tiny.CharTokenizer()
    texts = calibrate_teal(model, tok, Calibration(TEXTS, "t", 0), batch_size=2, max_length=24)
    batches = [(b.ids, b.mask.long()) for b in token_batches(TEXTS, tok, limit=24, batch_size=2)]
    ready = calibrate_teal_batches(model, batches)
    assert texts.groups == ready.groups and texts.tokens == ready.tokens
    for a, b in zip(texts.histograms, ready.histograms, strict=True):
        assert a.result() == b.result() and torch.equal(a._hist, b._hist)


@pytest.mark.parametrize("family", ["llama", "qwen2_moe"])
def test_padding_never_enters_the_histograms(family) -> None:
    model = tiny.build(family)
    ids, mask = tiny_batches(1)[0]
    padded_ids = torch.cat([ids, torch.full((4, 5), 7)], 1)
    padded_mask = torch.cat([mask, torch.zeros(4, 5, dtype=torch.long)], 1)
    plain = calibrate_teal_batches(model, [(ids, mask)])
    padded = calibrate_teal_batches(model, [(padded_ids, padded_mask)])
    assert [h.count for h in padded.histograms] == [h.count for h in plain.histograms]
    assert padded.thresholds(0.5) == pytest.approx(plain.thresholds(0.5), rel=1e-5)


def fraction_below(model, tokenizer, texts, thresholds: dict[str, float]) -> dict[str, float]:
    """Per projection, the fraction of real-token input entries with |x| <= its threshold (dense model)."""
    counts = {name: [0, 0] for name in thresholds}
    current: dict[str, torch.Tensor] = {}

    def counter(name: str):
        def count(module, args):
            x = args[0][current["mask"]]
            counts[name][0] += int((x.abs() <= thresholds[name]).sum())
            counts[name][1] += x.numel()
        return count

    handles = [p.module.register_forward_pre_hook(counter(p.name)) for p in projections(model)]
    try:
        with torch.inference_mode():
            for batch in token_batches(texts, tokenizer, limit=256, batch_size=16):
                current["mask"] = batch.mask
                model(input_ids=batch.ids, attention_mask=batch.mask.long())
    finally:
        for h in handles:
            h.remove()
    return {name: below / n for name, (below, n) in counts.items()}


def test_thresholds_hit_the_target_on_held_out_text(toy, toy_calibration) -> None:
    model, tokenizer = toy
    held = corpus.texts(48, split="heldout")
    for s in (0.25, 0.5, 0.65):
        fractions = fraction_below(model, tokenizer, held, toy_calibration.thresholds(s))
        for name, fraction in fractions.items():  # the dense model on held-out text: every tensor on target
            assert abs(fraction - s) <= DENSE_TOLERANCE, (name, s, fraction)
        plan = plan_activation_sparsity(model, f"teal:{s}", calibration=toy_calibration)
        with activation_sparsity(model, plan) as stats:
            nll(model, tokenizer, held)
        assert abs(stats.overall - s) <= MODEL_TOLERANCE, (s, stats.overall)


def test_zeroed_entries_are_exactly_those_under_the_threshold() -> None:
    model = tiny.build("llama")
    calibration = calibrate_teal_batches(model, tiny_batches())
    plan = plan_activation_sparsity(model, "teal:0.5", calibration=calibration)
    up = model.model.layers[2].mlp.up_proj
    before: list[torch.Tensor] = []
    after: list[torch.Tensor] = []
    h1 = up.register_forward_pre_hook(lambda m, args: before.append(args[0].clone()))  # runs first: dense input
    try:
        with activation_sparsity(model, plan):
            h2 = up.register_forward_pre_hook(lambda m, args: after.append(args[0].clone()))
            try:
                model(input_ids=tiny.tokens(2, 9))
            finally:
                h2.remove()
    finally:
        h1.remove()
    t = plan.rules["model.layers.2.mlp.up_proj"].threshold
    assert t is not None and t > 0
    expected = torch.where(before[0].abs() > t, before[0], torch.zeros_like(before[0]))
    assert torch.equal(after[0], expected)


@pytest.mark.parametrize("spec", ["teal:0", "wina:0", "wina-code:0"])
def test_sparsity_zero_is_the_identity_bit_for_bit(spec) -> None:
    model = tiny.build("llama")
    ids = tiny.tokens(2, 9)
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
    plan = plan_activation_sparsity(model, spec, calibration=calibrate_teal_batches(model, tiny_batches(1)))
    with torch.inference_mode(), activation_sparsity(model, plan) as stats:
        sparse = model(input_ids=ids).logits
    assert torch.equal(plain, sparse)
    assert stats.seen == {}


def test_hooks_are_removed_and_weights_untouched_after_an_exception() -> None:
    model = tiny.build("llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plan = plan_activation_sparsity(model, "teal:0.5", calibration=calibrate_teal_batches(model, tiny_batches(1)))
    with pytest.raises(RuntimeError, match="boom"), activation_sparsity(model, plan):
        model(input_ids=tiny.tokens(1, 4))
        raise RuntimeError("boom")
    for module in model.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_teal_without_calibration_or_with_too_little_text_is_refused(toy) -> None:
    model, tokenizer = toy
    with pytest.raises(ActkitError, match="calibrate_teal"):
        plan_activation_sparsity(model, "teal:0.5")
    with pytest.raises(ActkitError, match="gave only"):
        calibrate_teal(model, tokenizer, Calibration(["Hi there."], "tiny.txt", 0))
    other = tiny.build("llama")
    with pytest.raises(ActkitError, match="another model"):
        plan_activation_sparsity(other, "teal:0.5", calibration=calibrate_teal(model, tokenizer, Calibration(
            corpus.texts(8, split="train"), "builtin:train", 0)))


def test_calibration_record_names_the_text(toy_calibration) -> None:
    record = toy_calibration.record
    assert record["source"] == "builtin:train" and record["documents"] == 128
    assert record["tokens"] == toy_calibration.tokens > 1000
