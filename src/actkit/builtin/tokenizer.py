"""The toy models' tokenizer: byte-level BPE trained on the corpus, saved as ordinary Hugging Face files.

Special tokens and how they are used (the same for both toy models):

- ``<pad>`` (id 0) pads batches; it is never trained on. Generation pads on the left.
- ``<bos>`` (id 1) starts every document: the tokenizer adds it itself (a template post-processor, like Llama's
  ``add_bos_token``), so ``tokenizer(text)`` is what the model saw in training, and `collect` reads documents
  exactly as they were trained.
- ``<eos>`` (id 2) ends every training document; it is *not* added by the tokenizer. Generation stops on it.

Byte-level means any text tokenizes (no unknown token); a leading space belongs to the word after it, so a prompt
ending in ``"Assistant:"`` or ``"... gave a book to"`` is continued by a token such as ``" Sure"`` or ``" Anna"``.
The chat template formats ``[{"role": "user", ...}]`` as ``"<bos>User: ...\\nAssistant:"``, the training format.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)

#: Hugging Face chat template matching the corpus' ``User: ...\nAssistant: ...`` format.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}Assistant: {{ m['content'] }}{{ eos_token }}\n"
    "{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, max_length: int = 256) -> Any:
    """Train byte-level BPE on `texts` and wrap it as a `PreTrainedTokenizerFast` (pad/bos/eos set, BOS added)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B:1",
                                                       special_tokens=[(BOS, bos_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   model_max_length=max_length, padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    return fast

