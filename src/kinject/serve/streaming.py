"""Token streaming for `stream: true` requests.

A streaming request is decoded on its own path, one request per model call: transformers'
streamers take one sequence (`TextStreamer` refuses a batch) and the routes' batched `answer()`
has no per-row hook to hand a streamer to. A client that streams wants its first token early
more than it wants batch throughput; the requests that do not stream keep their batching. The
model calls stay on the server's one model thread, queued with the batches.

What streams token by token: `base`, `rag`, `gag-<domain>`, and `kinject-mixed` for the
questions it routes to `general` or to a GAG domain (routing, and a GAG expert's background,
come first). The GRIP agent (`kinject-grip`, and the questions routed to it) answers in stages
(plan, retrieve, answer) and `extra_models` answer through their eval method's batch
`answer()`: their streaming requests get the finished answer as chunks.

The model thread decodes with transformers' `TextStreamer` (incremental decoding) into a
`TokenSink`; the event loop reads the sink and sends, through `StreamedText`, only what
`finish_answer` will keep of the whole answer (stop strings and `max_tokens` applied as the text
grows). Once the answer is decided the sink's `stop` ends the generation.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from kinject.mixed import GENERAL, ClosedBookRoute, GagRoute, MixedPipeline, ModelCache


def _tokens(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"] if text else []


def finish_answer(text: str, stops: list[str], max_tokens: int, tokenizer) -> tuple[str, list[int], str]:
    """The answer cut before its first stop string, then at `max_tokens` -> (text, ids, finish_reason)."""
    cuts = [i for i in (text.find(x) for x in stops) if i >= 0]
    if cuts:
        text = text[:min(cuts)]
    ids = _tokens(tokenizer, text)
    if len(ids) > max_tokens:  # cut at the requested budget
        return tokenizer.decode(ids[:max_tokens]), ids[:max_tokens], "length"
    return text, ids, "length" if not cuts and len(ids) >= max_tokens else "stop"  # full budget used: length


# ---------------------------------------------------------------- model thread -> event loop


class TokenSink:
    """Where a streaming request's text goes: put from the model thread, read on the event loop.
    The reader sets `stop` (answer decided, client gone) and the generation ends at its next step."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.stop = threading.Event()

    def put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def generate_kwargs(self, tokenizer) -> dict:
        """`generate` arguments that stream the new text here and stop once `stop` is set."""
        return {"streamer": _SinkStreamer(tokenizer, self),
                "stopping_criteria": StoppingCriteriaList([_StopWhenSet(self.stop)])}


class _SinkStreamer(TextStreamer):
    """transformers' `TextStreamer` (incremental decoding) whose text goes to a sink, as its
    `TextIteratorStreamer` puts it in a queue."""

    def __init__(self, tokenizer, sink: TokenSink):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.sink = sink

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.sink.put(text)


class _StopWhenSet(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


# ---------------------------------------------------------------- what may be sent

_LAST_WORD = re.compile(r"\s*\S*$")


class StreamedText:
    """The part of a growing answer that `finish_answer` will keep whatever comes next.

    Held back: leading and trailing whitespace (the answer is stripped), a tail that may become
    a stop string, and an unfinished word near `max_tokens` (the budget is counted on the
    re-tokenized text, and a word may tokenize otherwise once complete). `final` is set once
    the rest cannot change the answer: a stop string appeared, or the text is over `max_tokens`."""

    def __init__(self, stops: list[str], max_tokens: int, tokenizer):
        self.stops, self.max_tokens, self.tokenizer = stops, max_tokens, tokenizer
        self.raw = ""  # the generated text so far
        self.sent = ""
        self.final: tuple[str, list[int], str] | None = None

    def feed(self, piece: str) -> str:
        """Add generated text -> the new text that may be sent ("" if none yet)."""
        if self.final is not None:
            return ""
        self.raw += piece
        text = self.raw.lstrip()
        body = text.rstrip()  # the answer is stripped: trailing whitespace counts once text follows it
        cut = min((i for i in (body.find(s) for s in self.stops) if i >= 0), default=None)
        # the earliest place where a stop string may still complete
        pending = min((i for s in self.stops for i in range(max(0, len(body) - len(s) + 1), len(body))
                       if s.startswith(body[i:])), default=None)
        if cut is not None and (pending is None or cut <= pending):
            self.final = finish_answer(body, self.stops, self.max_tokens, self.tokenizer)
            return self._send(self.final[0])
        safe = body if pending is None else body[:pending]
        # its finished words (whitespace follows them): their tokens stay the same whatever follows
        words = safe if len(safe) < len(text) and text[len(safe)].isspace() else _LAST_WORD.sub("", safe)
        if len(_tokens(self.tokenizer, words)) > self.max_tokens:  # the budget is spent
            self.final = finish_answer(words, [], self.max_tokens, self.tokenizer)
            return self._send(self.final[0])
        # an unfinished word may tokenize otherwise once complete: it is sent while within the budget
        return self._send(safe if len(_tokens(self.tokenizer, safe)) < self.max_tokens else words)

    def finish(self, answer: str) -> tuple[tuple[str, list[int], str], str]:
        """The generation ended with `answer` -> ((text, ids, finish_reason), the text not sent yet)."""
        text, ids, why = self.final or finish_answer(answer, self.stops, self.max_tokens, self.tokenizer)
        if not text.startswith(self.sent):  # a tokenizer that re-splits differently: what was sent stays
            text, ids = self.sent, _tokens(self.tokenizer, self.sent)
        return (text, ids, why), self._send(text)

    def _send(self, text: str) -> str:
        if not text.startswith(self.sent):
            return ""
        new, self.sent = text[len(self.sent):], text
        return new


# ---------------------------------------------------------------- streaming answers (model thread)


@dataclass
class ClosedBookStream:
    """`ClosedBookRoute`'s answer for one row, its text streamed into `row["sink"]`."""

    models: ModelCache
    base: Path
    max_new_tokens: int
    answer_format: str = ""

    def __call__(self, row: dict) -> dict:
        from kinject.generation import generate_texts
        from kinject.prompts import general_messages, render

        model, tok = self.models.get(self.base)
        with self.models.lock:
            prompt = render(tok, general_messages(row["question"], self.answer_format))
            g = generate_texts(model, tok, [prompt], self.max_new_tokens, 1, **row["sink"].generate_kwargs(tok))[0]
        return {"prediction": g.text,
                "trace": {"prompt_tokens": g.n_prompt_tokens, "new_tokens": g.n_new_tokens, "added_prompt_tokens": 0}}


def stream_gag(route: GagRoute, row: dict) -> dict:
    """`GagRoute.answer` for one row: the expert's background whole, the answer streamed."""
    pipe = route.pipe
    with route.models.lock, torch.no_grad():
        route._refresh()  # the route's own check of its injector files, as before each of its calls
        traces, inputs = pipe.memories([row["question"]])
        z = pipe.injector(**inputs)
        g = pipe.base.generate([row["question"]], z, route.max_new_tokens, 1,
                               **row["sink"].generate_kwargs(pipe.base.tokenizer))[0]
    t = traces[0]
    return {"prediction": g.text,
            "trace": {"background": t.text, "expert_tokens": t.n_tokens, "added_prompt_tokens": pipe.base.num_slots,
                      "domain": route.domain}}


class _OneRow:
    """A route answering through `stream` (one row at a time)."""

    def __init__(self, name: str, stream: Callable[[dict], dict]):
        self.name, self.stream = name, stream

    def answer(self, batch: list[dict]) -> list[dict]:
        return [self.stream(row) for row in batch]


def stream_mixed(pipeline: MixedPipeline, general: ClosedBookStream, row: dict) -> dict:
    """`MixedPipeline.answer` for one row over the current snapshot, its GAG and `general` routes
    streaming; the other routes (GRIP, an unavailable domain) answer as in a batch."""
    snap = pipeline.snapshot
    routes = {}
    for name, route in snap.routes.items():
        if isinstance(route, GagRoute):
            route = _OneRow(route.name, lambda r, route=route: stream_gag(route, r))
        elif name == GENERAL and isinstance(route, ClosedBookRoute):
            route = _OneRow(route.name, general)
        routes[name] = route
    # a pipeline over the same router: routing, per-route failures and the trace as in a batch
    result = MixedPipeline(snap.router, routes).answer([row])[0]
    result["trace"]["snapshot"] = snap.version  # that pipeline numbers its own snapshots
    return result
