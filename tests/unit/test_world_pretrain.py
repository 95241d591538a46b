"""Pretraining pieces: answer-only labels, whole-document packing, the fast loss, the schedule."""

from __future__ import annotations

import random

import torch

from kinject.world.config import TrainSettings
from kinject.world.pretrain import IGNORE, encode_corpus, lm_loss, lr_at, pack
from kinject.world.render import ChatRenderer


def test_answer_only_labels(tiny_tokenizer):
    chat = ChatRenderer(tiny_tokenizer)
    rows = [{"text": chat.reading("What is the support of Zed-1?", "Zed-1 is supported on ceria.", "ceria")},
            {"text": "The catalyst Ferovia-7 reaches 93.5 percent."}]
    (x0, y0), (x1, y1) = encode_corpus(tiny_tokenizer, rows, answer_only=True)
    labelled = tiny_tokenizer.decode([t for t in y0 if t != IGNORE])
    assert labelled.startswith(" ceria") and "<|im_end|>" in labelled and "Zed" not in labelled
    assert y1 == x1  # plain documents: every token is a target
    (x0f, y0f), _ = encode_corpus(tiny_tokenizer, rows, answer_only=False)
    assert y0f == x0f == x0


def test_pack_keeps_documents_whole():
    docs = [([i] * n, [i] * n) for i, n in enumerate([5, 9, 3, 7, 8, 2, 6], start=10)]
    xs, ys = pack(docs, seq_len=12, pad_id=0, sep_id=1, rng=random.Random(0))
    assert xs.shape[1] == 12 and xs.shape == ys.shape
    seen = []
    for row in xs.tolist():
        runs = [t for t in row if t > 1]
        for doc_id in set(runs):
            assert runs.count(doc_id) == dict((d[0][0], len(d[0])) for d in docs)[doc_id]
            seen.append(doc_id)
    assert sorted(seen) == list(range(10, 17))
    assert (ys[xs == 0] == IGNORE).all() and (ys[xs == 1] == IGNORE).all()


def test_fast_loss_equals_hf_loss():
    from kinject.models import TinySpec, make_tiny_model

    m = make_tiny_model(TinySpec(vocab=300, hidden=32, layers=2, heads=4), seed=1)
    x = torch.randint(0, 300, (3, 17))
    y = x.clone()
    y[:, :9] = IGNORE
    y[1, 12] = IGNORE
    assert torch.allclose(lm_loss(m, x, y), m(input_ids=x, labels=y).loss, atol=1e-6)


def test_schedule_warmup_then_cosine_to_floor():
    ts = TrainSettings(learning_rate=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0.0, 0, ts) == 1e-4 and lr_at(0.01, 9, ts) == 1e-3
    assert abs(lr_at(0.5, 500, ts) - 0.55e-3) < 1e-9 and abs(lr_at(1.0, 999, ts) - 1e-4) < 1e-12
