"""Prefill vs decode, measured inside the real generation path.

`StepClock` is a logits processor: `generate` calls it once per new token, right after the
forward that produced that token's logits. So in one `generate` call started at t0, the first
stamp closes the prefill (tokenization + the forward over the prompt) and the rest is the decode
loop (one forward per further token). `prefill_forward_ms` separately times a bare forward over
the prompt (what `generate` runs first: KV cache on, logits of the last position only), median
of repeats, for ratios that must not include tokenization or Python overhead of `generate`.
"""

from __future__ import annotations

import time

import torch
from transformers import LogitsProcessor, LogitsProcessorList


class StepClock(LogitsProcessor):
    def __init__(self):
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores):
        self.stamps.append(time.perf_counter())
        return scores


def split_times(t0: float, t1: float, clock: StepClock) -> dict:
    """{total_ms, prefill_ms, decode_ms, decode_steps} of one generate call."""
    first = clock.stamps[0] if clock.stamps else t1
    return {"total_ms": (t1 - t0) * 1000, "prefill_ms": (first - t0) * 1000, "decode_ms": (t1 - first) * 1000,
            "decode_steps": max(len(clock.stamps) - 1, 0)}


def timed_texts(model, tokenizer, prompts, max_new_tokens: int, batch_size: int = 1, **kw):
    """`generate_texts` with the step clock: (generations, split times)."""
    from kinject.generation import generate_texts

    clock = StepClock()
    t0 = time.perf_counter()
    gens = generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                          logits_processor=LogitsProcessorList([clock]), **kw)
    return gens, split_times(t0, time.perf_counter(), clock)


@torch.no_grad()
def prefill_forward_ms(model, repeats: int = 5, input_ids=None, inputs_embeds=None, make_embeds=None) -> float:
    """Median ms of a forward over one prompt as generate's prefill runs it (use_cache, logits
    of the last position). `make_embeds()` (GAG) is timed inside: embedding + slot overwrite."""
    import statistics

    def once():
        emb = make_embeds() if make_embeds is not None else inputs_embeds
        if emb is not None:
            model(inputs_embeds=emb, use_cache=True, logits_to_keep=1)
        else:
            model(input_ids=input_ids, use_cache=True, logits_to_keep=1)

    once()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        once()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)
