"""bertscore_f1 and sts with the shipped all-MiniLM-L6-v2 (a real encoder, loaded locally)."""

import pytest

from kinject.errors import UserError
from kinject.eval.metrics import compute_metric

bert_score = pytest.importorskip("bert_score")


@pytest.fixture(scope="module")
def minilm():
    from kinject.encoders import default_encoder_path

    return default_encoder_path()


def test_bertscore_parity_with_library(minilm):
    preds = ["the cat sat on the mat", "hello there", "Ferovia-7 reaches 93.5 % efficiency"]
    golds = [["a cat sat on a mat", "x"], ["hello"], ["The efficiency of Ferovia-7 is 93.5 %."]]
    _, _, f = bert_score.score(preds, golds, model_type=minilm, num_layers=6, idf=False,
                               rescale_with_baseline=False, use_fast_tokenizer=True)
    ours = compute_metric("bertscore_f1", preds, golds, {"num_layers": 6})
    assert ours == pytest.approx(f.tolist(), abs=1e-5)
    assert ours[0] == pytest.approx(0.9646, abs=1e-3)  # hand-run value of the library
    # default layer = the model's last (6 for MiniLM-L6)
    assert compute_metric("bertscore_f1", preds, golds) == pytest.approx(ours, abs=1e-6)


def test_bertscore_empty_identical_and_layer(minilm):
    got = compute_metric("bertscore_f1", ["", "Velmora Institute", "   "], [["x"], ["Velmora Institute"], ["y"]])
    assert got[0] == 0.0 and got[2] == 0.0  # the library's empty-candidate rule
    assert got[1] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(UserError, match="out of range"):
        compute_metric("bertscore_f1", ["a"], [["a"]], {"num_layers": 9})
    with pytest.raises(UserError, match="unknown config key 'layer'"):
        compute_metric("bertscore_f1", ["a"], [["a"]], {"layer": 3})
    with pytest.raises(UserError, match="bertscore model not found"):
        compute_metric("bertscore_f1", ["a"], [["a"]], {"model": "/nonexistent/scibert"})


def test_bertscore_chunks_long_texts(minilm):
    """Over 512 word pieces the library truncates; chunking keeps the tail in the match."""
    filler = " ".join(["alpha beta gamma delta"] * 140)  # ~560 word pieces
    long_gold = filler + " the catalyst Ferovia-7 melts at 450 kelvin"
    pred = "the catalyst Ferovia-7 melts at 450 kelvin"
    chunked = compute_metric("bertscore_f1", [pred], [[long_gold]])[0]
    _, _, f_lib = bert_score.score([pred], [long_gold], model_type=minilm, num_layers=6, use_fast_tokenizer=True)
    # the prediction's tokens find their twins in the (kept) tail: precision ~1 -> higher F
    assert chunked > float(f_lib[0]) + 0.01
    # a text shorter than one chunk scores the same whatever the chunk size
    short = compute_metric("bertscore_f1", [pred], [["Ferovia-7 melts at 450 K"]], {"chunk_tokens": 500})
    tiny_chunks = compute_metric("bertscore_f1", [pred], [["Ferovia-7 melts at 450 K"]], {"chunk_tokens": 4})
    assert short[0] != tiny_chunks[0]  # chunks are encoded separately (less context)
    assert 0.5 < tiny_chunks[0] <= 1.0


def test_sts_cosine(minilm):
    from sentence_transformers import SentenceTransformer

    preds = ["The catalyst works at high temperature.", "", "bananas are yellow"]
    golds = [["This catalyst operates at a high temperature.", "unrelated"], ["x"], ["Quantum field theory"]]
    got = compute_metric("sts", preds, golds)
    m = SentenceTransformer(minilm, device="cpu")
    e = m.encode([preds[0], golds[0][0]], normalize_embeddings=True)
    assert got[0] == pytest.approx(float(e[0] @ e[1]), abs=1e-5)
    assert got[0] > 0.7 and got[1] == 0.0 and got[2] < 0.3
    assert compute_metric("sts", ["same text"], [["same text"]])[0] == pytest.approx(1.0, abs=1e-5)
