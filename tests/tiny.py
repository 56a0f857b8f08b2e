"""Tiny random Hugging Face models, one per anatomy family (vocabulary 32, hidden 64, 3 layers)."""

from __future__ import annotations

from typing import Any

import torch
import transformers as tf

VOCAB, HIDDEN, LAYERS = 32, 64, 3
_COMMON = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
               max_position_embeddings=128)
_DECODER = dict(_COMMON, num_key_value_heads=2, intermediate_size=96, pad_token_id=0, bos_token_id=1,
                eos_token_id=2)
_MOE = dict(_DECODER, num_experts_per_tok=2)

CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**_DECODER),
    "mistral": lambda: tf.MistralConfig(**_DECODER),
    "qwen2": lambda: tf.Qwen2Config(**_DECODER),
    "qwen3": lambda: tf.Qwen3Config(**_DECODER, head_dim=16),
    "gemma": lambda: tf.GemmaConfig(**_DECODER, head_dim=16),
    "gemma3": lambda: tf.Gemma3TextConfig(**_DECODER, head_dim=16, sliding_window=4),
    "phi3": lambda: tf.Phi3Config(**_DECODER),
    "gpt2": lambda: tf.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=128,
                                   bos_token_id=1, eos_token_id=2),
    "gpt_neox": lambda: tf.GPTNeoXConfig(**_COMMON, intermediate_size=96, bos_token_id=1, eos_token_id=2),
    "mixtral": lambda: tf.MixtralConfig(**_MOE, num_local_experts=4),
    "qwen2_moe": lambda: tf.Qwen2MoeConfig(**_MOE, num_experts=4, moe_intermediate_size=32,
                                           shared_expert_intermediate_size=48, mlp_only_layers=[1]),
    "qwen3_moe": lambda: tf.Qwen3MoeConfig(**_MOE, num_experts=4, moe_intermediate_size=32, head_dim=16),
    "olmoe": lambda: tf.OlmoeConfig(**_MOE, num_experts=4),
    "bert": lambda: tf.BertConfig(**_COMMON, intermediate_size=96, pad_token_id=0),
}
DECODERS = [name for name in CONFIGS if name != "bert"]
MOE = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"]


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of family `name` in eval mode, float32, attention in eager mode (exact parity)."""
    torch.manual_seed(seed)
    config = CONFIGS[name]()
    config._attn_implementation = "eager"
    cls = tf.BertForMaskedLM if name == "bert" else tf.AutoModelForCausalLM
    model = cls.from_config(config) if cls is tf.AutoModelForCausalLM else cls(config)
    with torch.no_grad():  # random init leaves some norms at exactly one; perturb every parameter a little
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def tokens(batch: int = 2, length: int = 7, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (batch, length), generator=g)


class CharTokenizer:
    """A tokenizer stand-in for `collect`: one id per character (1 + code % (VOCAB - 1)), pad id 0."""

    pad_token_id = 0
    model_max_length = 128

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [1 + ord(c) % (VOCAB - 1) for c in text]}


class DecodingTokenizer(CharTokenizer):
    """`CharTokenizer` plus an injective `decode` (id k -> chr(64 + k)), so equal strings mean equal ids."""

    eos_token_id = 2

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(64 + int(i)) for i in ids if not (skip_special_tokens and int(i) == 0))


def random_pair(seed: int = 0, length: int = 8, changed: tuple[int, ...] = (2, 5)) -> Any:
    """A patching pair of random tokens that differ at `changed`; answer token 5, foil 6."""
    from actkit.localize.pairs import PromptPair

    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, 32, (1, length), generator=g)
    corrupt = clean.clone()
    for p in changed:
        corrupt[0, p] = (clean[0, p] + 5) % 29 + 3
    return PromptPair(clean, corrupt, 5, 6, [str(i) for i in range(length)])
