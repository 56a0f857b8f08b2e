"""The anatomy tables of the supported families (transformers 5 module layouts).

Each entry is data: paths relative to the base model and to a block. See `actkit.core.anatomy.Family`.
"""

from __future__ import annotations

from actkit.core.anatomy import Experts, Family, Hook, register_family

# Pre-norm decoders with a GLU MLP whose down projection is `mlp.down_proj` (Phi-3 fuses gate and up; the
# down projection's input is the same act(gate) * up).
_LLAMA_ATTENTION = {"attn_in": Hook("self_attn", "input"), "attn_hidden": Hook("self_attn.o_proj", "input")}
_LLAMA_BLOCK = {
    **_LLAMA_ATTENTION,
    "attn_out": Hook("self_attn"),
    "mlp_in": Hook("mlp", "input"),
    "mlp_hidden": Hook("mlp.down_proj", "input"),
    "mlp_out": Hook("mlp"),
}
# MoE decoders: the MoE block replaces the MLP; dense layers of partly-MoE models keep `mlp.down_proj`.
_MOE_BLOCK = {**_LLAMA_BLOCK, "router": Hook("mlp.gate")}

for _name, _types in [
    ("llama", ("llama",)),
    ("mistral", ("mistral",)),
    ("qwen2", ("qwen2",)),
    ("qwen3", ("qwen3",)),
    ("gemma", ("gemma",)),
    ("phi3", ("phi3",)),
]:
    register_family(Family(_name, _types, layers="layers", embed=Hook("embed_tokens"), block=_LLAMA_BLOCK))

# Gemma 2 and 3 normalise each branch again before adding it to the residual ("sandwich" norms).
register_family(
    Family(
        "gemma3",
        ("gemma2", "gemma3", "gemma3_text"),
        layers="layers",
        embed=Hook("embed_tokens"),
        block={
            **_LLAMA_ATTENTION,
            "attn_out": Hook("post_attention_layernorm"),
            "mlp_in": Hook("mlp", "input"),
            "mlp_hidden": Hook("mlp.down_proj", "input"),
            "mlp_out": Hook("post_feedforward_layernorm"),
        },
        roots=("", "language_model"),
    )
)

# Qwen2-MoE runs a shared expert (a GLU MLP) beside the routed ones; its down projection writes to the residual.
for _name, _types, _experts in [
    ("mixtral", ("mixtral",), Experts()),
    ("qwen2_moe", ("qwen2_moe",), Experts(shared_down="mlp.shared_expert.down_proj")),
    ("qwen3_moe", ("qwen3_moe",), Experts()),
    ("olmoe", ("olmoe",), Experts()),
]:
    register_family(
        Family(_name, _types, layers="layers", embed=Hook("embed_tokens"), block=_MOE_BLOCK, experts=_experts)
    )

# GPT-2: Conv1D weights are stored [in, out]; the MLP's down projection is `c_proj`.
register_family(
    Family(
        "gpt2",
        ("gpt2",),
        layers="h",
        embed=Hook("wte"),
        block={
            "attn_in": Hook("attn", "input"),
            "attn_hidden": Hook("attn.c_proj", "input"),
            "attn_out": Hook("attn"),
            "mlp_in": Hook("mlp", "input"),
            "mlp_hidden": Hook("mlp.c_proj", "input"),
            "mlp_out": Hook("mlp"),
        },
    )
)

register_family(
    Family(
        "gpt_neox",
        ("gpt_neox",),
        layers="layers",
        embed=Hook("embed_in"),
        block={
            "attn_in": Hook("attention", "input"),
            "attn_hidden": Hook("attention.dense", "input"),
            "attn_out": Hook("attention"),
            "mlp_in": Hook("mlp", "input"),
            "mlp_hidden": Hook("mlp.dense_4h_to_h", "input"),
            "mlp_out": Hook("mlp"),
        },
    )
)

# BERT is post-norm: what a branch adds to the residual is the output of its dense layer, before the
# residual sum and LayerNorm; `resid_post` is the block output (after that LayerNorm).
register_family(
    Family(
        "bert",
        ("bert",),
        layers="encoder.layer",
        embed=Hook("embeddings"),
        block={
            "attn_in": Hook("attention.self", "input"),
            "attn_hidden": Hook("attention.output.dense", "input"),
            "attn_out": Hook("attention.output.dense"),
            "mlp_in": Hook("intermediate", "input"),
            "mlp_hidden": Hook("output.dense", "input"),
            "mlp_out": Hook("output.dense"),
        },
        encoder=True,
    )
)
