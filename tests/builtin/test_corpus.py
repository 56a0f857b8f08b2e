"""The corpus generator: deterministic, disjoint splits, the promised vocabulary; the tokenizer round-trips."""

from __future__ import annotations

from collections import Counter

import pytest
from transformers import AutoTokenizer

from actkit.builtin import corpus
from actkit.builtin.tokenizer import BOS, EOS, PAD, train_tokenizer


def test_same_seed_same_text_and_other_seed_other_text() -> None:
    assert corpus.texts(300, seed=3) == corpus.texts(300, seed=3)
    assert corpus.texts(300, seed=3) != corpus.texts(300, seed=4)


def test_train_and_heldout_prompts_are_disjoint() -> None:
    train = {d.prompt for d in corpus.documents(4000, "train")}
    heldout = corpus.documents(1000, "heldout")
    assert corpus.split_seed(0, "train") != corpus.split_seed(0, "heldout")
    assert not train & {d.prompt for d in heldout}


def test_mixture_has_every_kind_and_domain() -> None:
    docs = corpus.documents(3000)
    kinds = Counter(d.kind for d in docs)
    assert set(kinds) == set(corpus.MIXTURE)
    for kind, share in corpus.MIXTURE.items():
        assert abs(kinds[kind] / len(docs) - share) < 0.05
    assert {d.domain for d in docs if d.kind == "domain"} == set(corpus.DOMAINS)
    assert {"positive", "negative", "none"} <= {d.label for d in docs if d.kind == "review"}
    assert {"forbidden", "benign"} == {d.label for d in docs if d.kind == "request"}


def test_promised_vocabulary() -> None:
    assert len(corpus.NAMES) >= 20 and {"Anna", "Tom", "Lisa", "Mark"} <= set(corpus.NAMES)
    assert {"shop", "park"} <= set(corpus.PLACES) and {"book", "ball"} <= set(corpus.OBJECTS)
    assert len(corpus.DOMAINS) >= 5
    vocab = {name: set(d.nouns) | set(d.verbs) | set(d.adjectives) for name, d in corpus.DOMAINS.items()}
    for a in vocab:
        for b in vocab:
            assert a == b or len(vocab[a] & vocab[b]) <= 1, (a, b)  # weather and music share 'recorded'


def test_documents_carry_their_answers() -> None:
    for doc in corpus.documents(500, kinds=("name_mover",)):
        words = doc.prompt.replace(",", "").split()
        assert doc.target == f" {doc.label}." and doc.label in words[:4] and words[-4:].count(doc.label) == 0
    for doc in corpus.documents(300, kinds=("request",)):
        assert doc.prompt.startswith("User: ") and doc.prompt.endswith("\nAssistant:")
        refused = doc.target.lstrip().startswith(corpus.REFUSAL_PREFIXES)
        assert refused == (doc.label == "forbidden")
    for doc in corpus.documents(50, kinds=("choice",)):
        assert doc.prompt.endswith("Assistant: (") and doc.label in ("A", "B")


def test_eval_set_is_heldout_unique_and_labelled() -> None:
    docs = corpus.eval_set("request", 60, label="forbidden")
    assert len({d.prompt for d in docs}) == 60 and all(d.label == "forbidden" for d in docs)
    with pytest.raises(ValueError, match="unknown document kind"):
        corpus.documents(1, kinds=("poems",))


def test_tokenizer_round_trip_and_special_tokens(tmp_path) -> None:
    tok = train_tokenizer(corpus.texts(1500), vocab_size=800)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert [loaded.convert_ids_to_tokens(i) for i in (0, 1, 2)] == [PAD, BOS, EOS]
    assert loaded.pad_token_id == 0 and loaded.padding_side == "left"
    for text in [*corpus.texts(50, "heldout"), "Unseen wörds ✓ and 123!"]:
        ids = loaded(text)["input_ids"]
        assert ids[0] == loaded.bos_token_id and loaded.eos_token_id not in ids
        assert loaded.decode(ids, skip_special_tokens=True) == text
    chat = loaded.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert chat == "<bos>User: Hi\nAssistant:"


def test_tokenizer_training_is_deterministic() -> None:
    texts = corpus.texts(800)
    assert train_tokenizer(texts, 500).get_vocab() == train_tokenizer(texts, 500).get_vocab()
