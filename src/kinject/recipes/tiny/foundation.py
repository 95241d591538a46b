"""Demo stage `foundation` (order 0): a tiny random model saved and loaded again gives identical
logits (a check of the model save/load path; the shipped foundation models are the world
stage's)."""

from __future__ import annotations

from pathlib import Path

from kinject.recipes.engine import DemoContext, stage


@stage("foundation", order=0, help="tiny random model: save, reload, identical logits")
def foundation_check(ctx: DemoContext, out: Path) -> None:
    import torch

    from kinject.models import TinySpec, load_causal_lm, make_tiny_model, save_model
    from kinject.runs import RunRecorder
    from kinject.tokenizer import BUILTIN_SAMPLE, train_tokenizer

    rec = RunRecorder(out, "demo foundation", seed=0)
    tok = train_tokenizer(BUILTIN_SAMPLE * 4, vocab_size=600, min_frequency=1)
    model = make_tiny_model(TinySpec(vocab=600, hidden=64, layers=2, heads=4), tokenizer=tok)
    save_model(model, tok, out / "tiny-model")
    loaded, tok2 = load_causal_lm(out / "tiny-model", device="cpu")
    ids = tok2("Question: What is the capital of Norland?", return_tensors="pt").input_ids
    with torch.no_grad():
        same = torch.equal(model.eval()(ids).logits, loaded(ids).logits)
    rec.metrics["reload_logits_identical"] = same
    rec.write()
    ctx.summary["foundation: reload logits identical"] = same
    if not same:
        raise RuntimeError("saved-then-loaded tiny model gives different logits")
