"""What a request's `model` names. All share the models the mixed pipeline loaded:

- `kinject-mixed`: the routed pipeline (`kinject.mixed.MixedPipeline`);
- `kinject-grip`: its GRIP route alone (when configured);
- `base`: the base closed-book (the `general` route);
- `rag`: top-k passages from an index in the base's knowledge prompt (when configured);
- `gag-<domain>`: one domain's GAG route, for every domain served now (hot-plugged ones too);
- `extra_models`: any registered eval method by name, built through `kinject.eval.method`.

Each has `answer` (a batch) and, where its text can be streamed token by token, `stream` (one
row, see `streaming.py`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kinject.errors import UserError
from kinject.mixed import (
    GENERAL,
    ClosedBookRoute,
    DomainUnavailable,
    GagRoute,
    MixedPipeline,
    ModelCache,
    UnavailableRoute,
    check_paths,
)
from kinject.serve.config import RagServeOptions, ServeConfig
from kinject.serve.streaming import ClosedBookStream, stream_gag, stream_mixed

MIXED, GRIP = "kinject-mixed", "kinject-grip"


class RagRoute:
    """`rag`: retrieve top-k passages, answer from them (`kinject.retrieval.rag.rag_answer`)."""

    def __init__(self, models: ModelCache, base: Path, opts: RagServeOptions, max_new_tokens: int, batch_size: int):
        from kinject.retrieval.base import open_index

        self.name, self.models, self.opts = "rag", models, opts
        self.model, self.tokenizer = models.get(base)
        self.retriever = open_index(opts.index)
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    def answer(self, batch: list[dict]) -> list[dict]:
        from kinject.retrieval.rag import rag_answer

        with self.models.lock:
            outs = rag_answer(self.model, self.tokenizer, self.retriever, [r["question"] for r in batch],
                              self.opts.k, self.max_new_tokens, self.batch_size, self.opts.instruction,
                              style=self.opts.passage_format)
        return [{"prediction": o.answer,
                 "trace": {"retrievals": [h.to_dict() for h in o.hits], "prompt_tokens": o.n_prompt_tokens,
                           "new_tokens": o.n_new_tokens}} for o in outs]

    def stream(self, row: dict) -> dict:
        """`answer` for one row, its text streamed into `row["sink"]` (`rag_answer`'s prompt)."""
        from kinject.generation import generate_texts
        from kinject.prompts import render
        from kinject.retrieval.rag import rag_messages

        with self.models.lock:
            hits = self.retriever.batch_search([row["question"]], self.opts.k)[0][:self.opts.k]
            prompt = render(self.tokenizer, rag_messages(row["question"], hits, self.opts.instruction,
                                                         self.opts.passage_format))
            g = generate_texts(self.model, self.tokenizer, [prompt], self.max_new_tokens, 1,
                               **row["sink"].generate_kwargs(self.tokenizer))[0]
        return {"prediction": g.text, "trace": {"retrievals": [h.to_dict() for h in hits],
                                                "prompt_tokens": g.n_prompt_tokens, "new_tokens": g.n_new_tokens}}


@dataclass
class ServedModel:
    name: str
    answer: Callable[[list[dict]], list[dict]]
    tokenizer: Any  # the event loop's own copy: counts usage tokens, cuts answers at max_tokens
    kind: str
    # one row, its text streamed into row["sink"] as generated; None: no token streaming
    stream: Callable[[dict], dict] | None = None


_copies: dict[int, Any] = {}


def own_copy(tokenizer):
    """A copy of a model's tokenizer for the event loop thread: a fast tokenizer used from two
    threads at once can fail ("Already borrowed") while the model thread sets its padding."""
    import copy

    key = id(tokenizer)
    if key not in _copies:
        _copies[key] = (tokenizer, copy.deepcopy(tokenizer))  # the original is kept so its id stays unique
    return _copies[key][1]


class ServedModels:
    def __init__(self, cfg: ServeConfig):
        from kinject.eval.method import MethodContext, build_method

        p = cfg.pipeline
        isolate = cfg.on_domain_error == "isolate"
        check_paths(p, cfg.missing_hint, prefix="pipeline.", domains=not isolate)
        if cfg.rag is not None and not Path(cfg.rag.index).exists():
            raise UserError(f"rag.index: {cfg.rag.index} does not exist{cfg.missing_hint}")
        self.pipeline = MixedPipeline.from_config(p, hint=cfg.missing_hint, isolate=isolate)
        self.configured = set(p.domains)
        models = self.pipeline.models
        routes = self.pipeline.routes
        base = routes.get(GENERAL) or ClosedBookRoute(models, p.base, p.max_new_tokens, p.batch_size)
        # built with the arguments of the ClosedBookRoutes above (the `general` one has the answer format)
        general = ClosedBookStream(models, p.base, p.max_new_tokens, p.answer_format)
        base_stream = general if GENERAL in routes else ClosedBookStream(models, p.base, p.max_new_tokens)
        self.static: dict[str, ServedModel] = {
            MIXED: ServedModel(MIXED, self.pipeline.answer, own_copy(base.tokenizer), "mixed",
                               functools.partial(stream_mixed, self.pipeline, general)),
            "base": ServedModel("base", base.answer, own_copy(base.tokenizer), "method", base_stream),
        }
        grip = self.pipeline.grip
        if grip is not None:
            self.static[GRIP] = ServedModel(GRIP, grip.answer, own_copy(grip.tokenizer), "method")
        if cfg.rag is not None:
            rag = RagRoute(models, p.base, cfg.rag, p.max_new_tokens, p.batch_size)
            self.static["rag"] = ServedModel("rag", rag.answer, own_copy(rag.tokenizer), "method", rag.stream)
        ctx = MethodContext(device=p.device, dtype=p.dtype, batch_size=p.batch_size, max_new_tokens=p.max_new_tokens)
        for name, extra in cfg.extra_models.items():
            if name in self.static or name.startswith("gag-"):
                raise UserError(f"extra_models.{name}: the name is taken by a built-in model; choose another")
            method = build_method(extra.method, extra.options, ctx, where=f"extra_models.{name}")
            tok = getattr(method, "tokenizer", None) or base.tokenizer
            self.static[name] = ServedModel(name, method.answer, own_copy(tok), "method")

    def domains(self) -> list[str]:
        return [d for d, m in self.pipeline.routes.items() if isinstance(m, (GagRoute, UnavailableRoute))]

    def clear_caches(self) -> None:
        """Forget every per-question memory (so a benchmark run starts cold)."""
        for route in self.pipeline.routes.values():
            cache = getattr(getattr(route, "pipe", None), "cache", None)
            if cache is not None:
                cache.clear()

    def domain_state(self, failures: dict[str, str]) -> dict[str, dict]:
        """Per domain (served, failed at start, or failing now): state, reason, threshold."""
        from kinject.mixed import _file_sig

        snap = self.pipeline.snapshot
        routing = snap.router.status()["domains"]
        out = {}
        for d, route in snap.routes.items():
            if d == GENERAL or not isinstance(route, (GagRoute, UnavailableRoute)):
                continue
            reason = None
            if isinstance(route, UnavailableRoute):
                reason = route.reason
            elif _file_sig(route.injector_dir) is None:
                reason = f"injector files in {route.injector_dir} are missing"
            else:
                reason = failures.get(d)
            out[d] = {"state": "unavailable" if reason else "available", "reason": reason,
                      "model": f"gag-{d}", **{k: routing.get(d, {}).get(k) for k in ("threshold", "threshold_source")}}
        for d, why in self.pipeline.unavailable.items():
            if d not in out:
                out[d] = {"state": "unavailable", "reason": why, "model": f"gag-{d}", "threshold": None,
                          "threshold_source": None}
        return out

    def names(self) -> list[str]:
        return [*self.static, *(f"gag-{d}" for d in self.domains())]

    def get(self, name: str) -> ServedModel | None:
        if name in self.static:
            return self.static[name]
        domain = name[4:] if name.startswith("gag-") else None
        route = self.pipeline.routes.get(domain) if domain else None
        if isinstance(route, UnavailableRoute):
            return ServedModel(name, route.answer, self.static["base"].tokenizer, "gag")
        if not isinstance(route, GagRoute):
            return None

        def current(domain: str = domain) -> GagRoute:  # the route served when the batch runs
            route = self.pipeline.routes.get(domain)
            if not isinstance(route, GagRoute):
                raise DomainUnavailable(f"domain {domain!r} was removed")
            return route

        return ServedModel(name, lambda rows: current().answer(rows), own_copy(route.tokenizer), "gag",
                           lambda row: stream_gag(current(), row))
