"""`prune_weights` on whole models: exact sparsity, identity at 0, the source untouched, which layers are
pruned, and layer-by-layer calibration that really reads the pruned blocks' outputs."""

from __future__ import annotations

import math

import pytest
import torch

import actkit
from actkit import Covariance, Moments, collect
from actkit.builtin.calibration import builtin_calibration
from actkit.compress.layerwise import layer_by_layer
from actkit.compress.scores import input_norms
from actkit.compress.weights import METHODS, find_targets, prune_weights
from actkit.core.collect import token_batches
from actkit.errors import ActkitError

from tiny import CharTokenizer, build

TEXTS = ["the cat sat on the mat and looked around the room", "a dog ran to the park", "birds sing at dawn",
         "x"]


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", METHODS)
def test_sparsity_zero_is_the_identity_and_the_source_is_never_changed(method: str) -> None:
    model = build("llama")
    before = snapshot(model)
    same, report = prune_weights(model, CharTokenizer(), method, 0.0, calibration=TEXTS)
    for name, value in same.state_dict().items():
        assert torch.equal(value, before[name]), name
    pruned, _ = prune_weights(model, CharTokenizer(), method, 0.5, calibration=TEXTS)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert any(not torch.equal(v, before[k]) for k, v in pruned.state_dict().items())
    assert report["achieved_sparsity"] == 0.0 and report["method"] == method


@pytest.mark.parametrize("method", ["magnitude", "wanda", "dass"])
def test_achieved_sparsity_is_exact(method: str) -> None:
    pruned, report = prune_weights(build("llama"), CharTokenizer(), method, 0.3, calibration=TEXTS)
    for name, info in report["modules"].items():
        w = pruned.get_submodule(name).weight
        rows, cols = w.shape
        if method == "magnitude":
            expected = math.floor(0.3 * w.numel())
        elif method == "dass" and info["kind"] == "expand":
            expected = math.floor(0.3 * rows) * cols
        else:
            expected = math.floor(0.3 * cols) * rows
        assert int((w == 0).sum()) == expected, name
        assert info["sparsity"] == expected / w.numel()


@pytest.mark.parametrize("method", METHODS)
def test_nm_pattern_is_exact_in_every_layer(method: str) -> None:
    pruned, report = prune_weights(build("qwen2"), CharTokenizer(), method, pattern="4:8", calibration=TEXTS)
    assert report["pattern"] == "4:8" and report["sparsity"] == 0.5
    for name, info in report["modules"].items():
        w = pruned.get_submodule(name).weight != 0
        along = w.T if method == "dass" and info["kind"] == "expand" else w
        assert (along.reshape(along.shape[0], -1, 8).sum(-1) == 4).all(), name


def test_embeddings_head_and_norms_are_never_pruned() -> None:
    model = build("llama")
    pruned, report = prune_weights(model, CharTokenizer(), "wanda", 0.5, calibration=TEXTS)
    changed = {k for k, v in pruned.state_dict().items() if not torch.equal(v, model.state_dict()[k])}
    assert changed == {f"{name}.weight" for name in report["modules"]}
    assert len(report["modules"]) == 3 * 7  # q, k, v, o, gate, up, down in each of 3 blocks


def test_keep_attention_dense() -> None:
    model = build("llama")
    pruned, report = prune_weights(model, CharTokenizer(), "sparsegpt", 0.5, calibration=TEXTS,
                                   keep_attention_dense=True)
    assert all(info["kind"] != "attention" for info in report["modules"].values())
    assert "model.layers.2.self_attn.o_proj" in report["skipped"]
    assert torch.equal(pruned.model.layers[1].self_attn.q_proj.weight, model.model.layers[1].self_attn.q_proj.weight)


def test_conv1d_layers_are_pruned_per_output_feature() -> None:
    pruned, _ = prune_weights(build("gpt2"), CharTokenizer(), "wanda", 0.5, calibration=TEXTS)
    c_fc = pruned.transformer.h[0].mlp.c_fc.weight  # Conv1D stores (in 64, out 256)
    assert ((c_fc == 0).sum(dim=0) == 32).all()


def test_moe_experts_are_left_dense_with_a_note() -> None:
    model = build("mixtral")
    pruned, report = prune_weights(model, CharTokenizer(), "wanda", 0.5, calibration=TEXTS)
    assert "fused MoE experts" in report["skipped"]["model.layers.0.mlp.experts"]
    experts = pruned.model.layers[0].mlp.experts
    assert torch.equal(experts.gate_up_proj, model.model.layers[0].mlp.experts.gate_up_proj)
    assert report["modules"]["model.layers.0.self_attn.q_proj"]["sparsity"] == 0.5


def test_calibration_is_recorded() -> None:
    _, report = prune_weights(build("llama"), CharTokenizer(), "wanda", 0.5, calibration=TEXTS)
    tokens = sum(len(t) for t in TEXTS)
    assert report["calibration"] == {"source": "texts", "seed": 0, "documents": 4, "tokens": tokens}
    assert report["seconds"] > 0 and report["versions"]["torch"] == torch.__version__
    _, report = prune_weights(build("llama"), None, "magnitude", 0.5)
    assert report["calibration"] is None


def test_layer_by_layer_reads_the_pruned_blocks_outputs() -> None:
    """Block 1's statistics equal a plain `collect` on the dense model when block 0 is left alone, and differ
    once block 0 is pruned: the next block's inputs come from the pruned copy."""
    tok = CharTokenizer()
    model = build("llama")
    dense = collect(model, TEXTS, ["mlp_in.1"], {"m": Moments}, tokenizer=tok)["mlp_in.1"]["m"].result()

    def block1_norms(prune_block0: bool) -> torch.Tensor:
        work = build("llama")
        targets, _ = find_targets(work)
        modules = {1: {t.name: t.module for t in targets if t.layer == 1}}
        modules[0] = {t.name: t.module for t in targets if t.layer == 0}
        seen: dict[str, torch.Tensor] = {}

        def prune(layer: int, stats: dict) -> None:
            if layer == 0 and prune_block0:
                with torch.no_grad():
                    for module in modules[0].values():
                        module.weight.mul_(torch.rand_like(module.weight) > 0.5)
            if layer == 1:
                seen["x"] = input_norms(stats["model.layers.1.mlp.gate_proj"]["m"].result())

        batches = list(token_batches(TEXTS, tok, limit=128, batch_size=3))
        layer_by_layer(work, batches, modules, {"m": Moments}, prune)
        return seen["x"]

    assert torch.allclose(block1_norms(False), input_norms(dense), rtol=1e-5)
    assert not torch.allclose(block1_norms(True), input_norms(dense), rtol=1e-2)


def _hooked_statistics(model: torch.nn.Module, batches, names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """The reference: moments and covariance of each layer's own input over a plain forward of the dense model,
    read by hooks on the layers themselves (padding masked out by hand)."""
    stats = {name: {"m": Moments(), "c": Covariance()} for name in names}
    current: dict[str, torch.Tensor] = {}

    def feeder(name: str):
        def feed(module, args):
            x = args[0]
            mask = current["mask"] if x.dim() == 3 else current["mask"].reshape(-1)
            for reducer in stats[name].values():
                reducer.update(x, mask)
        return feed

    handles = [model.get_submodule(name).register_forward_pre_hook(feeder(name)) for name in names]
    try:
        with torch.inference_mode():
            for b in batches:
                current["mask"] = b.mask
                model(input_ids=b.ids, attention_mask=b.mask.long(), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {name: {k: r.result() for k, r in red.items()} for name, red in stats.items()}


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2_moe", "gemma3"])
def test_layer_by_layer_statistics_equal_hooks_on_each_layer(family: str) -> None:
    """With nothing pruned, the statistics read at the sites while each block runs alone on cached hidden states
    equal, bit for bit, those that hooks on each layer read in a plain forward (padded batches; Qwen2-MoE's
    shared-expert down projection has no site and keeps its own hook). Layers that share a site share reducers."""
    model = build(family)
    targets, _ = find_targets(model)
    batches = list(token_batches(TEXTS, CharTokenizer(), limit=128, batch_size=3))
    assert any(not bool(b.mask.all()) for b in batches)  # padding is there, and must be masked out
    reference = _hooked_statistics(model, batches, [t.name for t in targets])
    modules: dict[int, dict[str, torch.nn.Module]] = {}
    for t in targets:
        modules.setdefault(t.layer, {})[t.name] = t.module
    seen: dict[str, dict] = {}

    def keep(layer: int, stats: dict) -> None:
        seen.update(stats)

    layer_by_layer(model, batches, modules, {"m": Moments, "c": Covariance}, keep)
    assert set(seen) == set(reference)
    for name, expected in reference.items():
        got = {k: r.result() for k, r in seen[name].items()}
        for k in expected:
            for key, value in expected[k].items():
                assert torch.equal(torch.as_tensor(got[k][key]), torch.as_tensor(value)), (name, k, key)
    if family == "llama":
        q, k = seen["model.layers.0.self_attn.q_proj"], seen["model.layers.0.self_attn.k_proj"]
        assert q["c"] is k["c"] and q is not seen["model.layers.0.self_attn.o_proj"]


def test_builtin_model_keeps_modelling_text_at_half_sparsity() -> None:
    """Behaviour on the trained toy model: Wanda at 50% stays close to the dense perplexity."""
    from actkit.builtin import corpus
    from actkit.evaluate.perplexity import perplexity

    model, tok = actkit.load("builtin:toy-dense")
    heldout = corpus.texts(16, split="heldout")
    pruned, report = prune_weights(model, tok, "wanda", 0.5, calibration=builtin_calibration(documents=16))
    dense, after = perplexity(model, tok, heldout), perplexity(pruned, tok, heldout)
    assert report["achieved_sparsity"] == 0.5
    assert after < dense * 1.25, (dense, after)


@pytest.mark.parametrize("kwargs,needle", [
    ({"method": "wanda", "sparsity": 1.0}, r"\[0, 1\)"),
    ({"method": "wanda", "pattern": "4:4"}, "smaller than M"),
    ({"method": "obs", "sparsity": 0.5}, "unknown method 'obs'"),
    ({"method": "wanda", "pattern": "1:3"}, "not divisible by M=3"),
    ({"method": "wanda", "sparsity": 0.5, "calibration": ["ab", "c"]}, "gave only 3 tokens"),
])
def test_bad_input(kwargs: dict, needle: str) -> None:
    model = build("llama")
    before = snapshot(model)
    with pytest.raises(ActkitError, match=needle):
        prune_weights(model, CharTokenizer(), **kwargs)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_calibrated_methods_need_a_tokenizer() -> None:
    with pytest.raises(ActkitError, match="needs the model's tokenizer"):
        prune_weights(build("llama"), None, "sparsegpt", 0.5)


def test_calibrated_methods_need_calibration_text_passed_in() -> None:
    # the pillar has no default text: calibrating a user's model on the toy corpus silently would be wrong
    with pytest.raises(ActkitError, match="needs calibration text: pass calibration=calibration_texts"):
        prune_weights(build("llama"), CharTokenizer(), "wanda", 0.5)
    with pytest.raises(ActkitError, match="one string; give a list of documents"):
        prune_weights(build("llama"), CharTokenizer(), "wanda", 0.5, calibration="one long document")
