"""Token streaming (`kinject.serve.streaming`): what may be sent of a growing answer, and text
reaching the event loop while `generate` is still running."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from kinject.serve.streaming import ClosedBookStream, StreamedText, TokenSink, finish_answer

CASES = [
    ("  the answer is 42. Next one  ", ["."], 20),
    ("a b c d", ["c", "b"], 20),
    ("one two three four five six", [], 2),
    ("The catalyst Ferovia-7 reaches a Faradaic efficiency", [], 4),
    ("xabc tail", ["abc", "b"], 20),  # a longer stop string that starts before the shorter one
    ("answer\n\nmore", ["\n"], 20),
    ("answer\n", ["\n"], 20),  # a whitespace stop at the very end: gone with the stripping, as in a batch
    ("it ends with sto", ["stop!"], 50),
    ("Velmora is the capital of Norland", ["capital"], 3),
    ("short", ["zzz"], 50),
    ("\n\n\n", [], 4),
]


@pytest.mark.parametrize("text,stops,budget", CASES)
def test_streamed_text_sends_only_what_the_answer_keeps(text, stops, budget, tiny_tokenizer):
    want = finish_answer(text.strip(), stops, budget, tiny_tokenizer)  # the answer of a request that does not stream
    for size in (1, 2, 3, 7, len(text)):
        streamed = StreamedText(stops, budget, tiny_tokenizer)
        sent = ""
        for i in range(0, len(text), size):
            sent += streamed.feed(text[i:i + size])
            assert want[0].startswith(sent), (size, sent)  # nothing sent is ever taken back
        got, rest = streamed.finish(text.strip())
        assert got == want and sent + rest == want[0], (size, got, want)


def test_a_stop_string_or_the_budget_decides_the_answer_before_the_end(tiny_tokenizer):
    streamed = StreamedText([". "], 50, tiny_tokenizer)
    assert streamed.feed("the answer is 42") == "the answer is 42"
    assert streamed.feed(".") == "" and streamed.final is None  # may be the start of the stop string
    assert streamed.feed(" Then more") == "" and streamed.final[0] == "the answer is 42"
    assert streamed.feed(" text") == ""  # decided: the generation can stop
    streamed = StreamedText([], 2, tiny_tokenizer)
    for piece in ("one ", "two ", "three "):
        streamed.feed(piece)
    assert streamed.final is not None and streamed.final[2] == "length" and len(streamed.final[1]) == 2


class _Say(LogitsProcessor):
    """Forces a token sequence, then the end of turn; before the token `wait_at` it waits until
    the event loop has received the first text (`seen`), at most 30 s."""

    def __init__(self, ids: list[int], end: int, wait_at: int, seen: threading.Event):
        self.ids, self.end, self.wait_at, self.seen = ids, end, wait_at, seen
        self.step = 0
        self.waited: bool | None = None

    def __call__(self, input_ids, scores):
        if self.step == self.wait_at:
            self.waited = self.seen.wait(30)
        want = self.ids[self.step] if self.step < len(self.ids) else self.end
        self.step += 1
        out = torch.full_like(scores, -float("inf"))
        out[:, want] = 0
        return out


def test_text_reaches_the_event_loop_while_generate_is_still_running(tiny_tokenizer, tiny_model_dir):
    """The real closed-book path (the `base` model) on a tiny model made to say a known sentence:
    its first words are read on the event loop before generation goes on past them."""
    from kinject.mixed import ModelCache
    from kinject.tokenizer import stop_token_ids

    models = ModelCache("cpu", "float32")
    _, tok = models.get(tiny_model_dir)
    sentence = "The catalyst Ferovia-7 reaches a Faradaic efficiency of 93.5 percent"
    ids = tok(" " + sentence, add_special_tokens=False)["input_ids"]
    seen = threading.Event()
    say = _Say(ids, stop_token_ids(tok)[0], wait_at=4, seen=seen)

    class Sink(TokenSink):
        def generate_kwargs(self, tokenizer) -> dict:
            return {**super().generate_kwargs(tokenizer), "logits_processor": LogitsProcessorList([say])}

    async def run():
        sink = Sink()
        stream = ClosedBookStream(models, tiny_model_dir, max_new_tokens=len(ids) + 2)
        job = asyncio.ensure_future(asyncio.to_thread(stream, {"question": "What does Ferovia-7 reach?", "sink": sink}))
        job.add_done_callback(sink.queue.put_nowait)
        pieces = []
        while (item := await sink.queue.get()) is not job:
            pieces.append((item, say.step))
            seen.set()
        return pieces, job.result()

    pieces, result = asyncio.run(run())
    assert say.waited is True  # generation was held until the loop had text: it did not wait for the end
    assert pieces[0][1] <= 4 < len(ids) and len(pieces) > 2
    assert "".join(p for p, _ in pieces).strip() == result["prediction"] == sentence
