"""The mixed-domain pipeline (the GAG paper's mixed-domain flow): route each question with PPR, then
answer it with the routed method: `general` -> the frozen base closed-book, each private domain
-> GAG for that domain (its expert + injector over the SHARED base), optionally `wiki` -> GRIP.

`MixedPipeline` is itself a `kinject.eval.method.Method`. It holds an immutable snapshot
(router, routes); `answer()` takes the snapshot once, routes the whole batch in one encoder
call, calls each route's method once on its group, and puts the answers back in input order.
`add_domain` / `remove_domain` build a new snapshot and swap it in under a lock: calls already
running finish on the old one. A route whose method raises fails only its own rows (their
result carries `error`; `strict=True` re-raises instead, for evaluation runs).

Every GAG domain checks its injector files before each call: a changed file is reloaded (and
checked) in place, a missing or broken one fails that domain's rows with a clear message.
With `isolate=True` a domain whose artifacts fail to load is kept out instead of failing the
whole pipeline: a broken bank leaves the router (its questions fall to `general`), a broken
expert/injector becomes an `UnavailableRoute` (its rows fail with `unavailable`). Either way
`unavailable` names it with the reason.

    pipe = MixedPipeline.from_config(MixedOptions(banks=..., base=..., domains={...}))
    pipe.answer([{"id": "q1", "question": "Which lab developed Ferovia-2?"}])
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import Field

from kinject.config import StrictModel
from kinject.errors import UserError

log = logging.getLogger(__name__)

GENERAL = "general"


# ---------------------------------------------------------------- options


class DomainOptions(StrictModel):
    """One private domain's GAG route."""

    expert: Path  # the domain expert (Stage II checkpoint)
    injector: Path  # its Stage III injector dir (injector.json + injector.safetensors)
    # the expert's background settings: None = the injector's recorded background spec (its
    # memories' system prompt and length cap, `kinject.memory.spec`); a contradicting value is refused
    system: str | None = None
    instruction: str = ""  # the base's GAG prompt instruction (the world's domain instruction)
    max_background_tokens: int | None = Field(None, ge=1)
    memory: Path | None = None  # the store the injector was trained on (its spec, for an injector that records none)
    bank: Path | None = None  # a banks dir holding this domain's bank when `banks` lacks it


class GripOptions(StrictModel):
    """The optional `wiki` route: a GRIP model with its retrieval index."""

    model: Path
    index: Path
    route: str = "wiki"
    # a banks dir holding the route's bank, or a JSONL of its questions; without one (and without
    # the bank in `banks`) GRIP is not routed to, only served alone (`kinject-grip`)
    bank: Path | None = None
    max_rounds: int = 4
    top_k: int = 3
    max_new_tokens: int = 64
    control_tokens: str = "special"


class MixedOptions(StrictModel):
    banks: Path  # a PPR banks dir (`kinject ppr build`): one bank per route
    base: Path  # the frozen base: closed-book for `general`, the injected base for every domain
    domains: dict[str, DomainOptions] = {}
    grip: GripOptions | None = None
    margin: float | None = None  # best - second score below it -> `general` (the plain base)
    abstain: bool = True  # a specialist below its bank's calibrated threshold -> `general`
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 16
    max_new_tokens: int = 32
    answer_format: str = ""  # the general route's answer-format line (prompts.py); GAG routes use their injector's


def check_paths(opts: MixedOptions, hint: str = "", prefix: str = "", domains: bool = True) -> None:
    """Every path an options block names must exist (one line naming the field, plus `hint`)."""
    pairs: list[tuple[str, Path]] = [("banks", opts.banks), ("base", opts.base)]
    for name, d in (opts.domains.items() if domains else ()):
        pairs += [(f"domains.{name}.expert", d.expert), (f"domains.{name}.injector", d.injector)]
        pairs += [(f"domains.{name}.{k}", p) for k, p in (("memory", d.memory), ("bank", d.bank)) if p is not None]
    if opts.grip is not None:
        pairs += [("grip.model", opts.grip.model), ("grip.index", opts.grip.index)]
        if opts.grip.bank is not None:
            pairs.append(("grip.bank", opts.grip.bank))
    for field, p in pairs:
        if not Path(p).exists():
            raise UserError(f"{prefix}{field}: {p} does not exist{hint}")


# ---------------------------------------------------------------- shared models


class ModelCache:
    """Loads each model directory once; every route using it shares the object.

    `lock` serializes model calls: routes share models (and tokenizers whose padding side is
    set per call), so two threads must not run them at once."""

    def __init__(self, device: str = "auto", dtype: str = "auto"):
        self.device, self.dtype = device, dtype
        self._models: dict[str, tuple[Any, Any]] = {}
        self._load_lock = threading.Lock()
        self.lock = threading.RLock()

    def get(self, path: str | Path) -> tuple[Any, Any]:
        from kinject.models import load_causal_lm

        key = str(Path(path).resolve())
        with self._load_lock:
            if key not in self._models:
                self._models[key] = load_causal_lm(path, device=self.device, dtype=self.dtype)
            return self._models[key]

    def __len__(self) -> int:
        return len(self._models)


# ---------------------------------------------------------------- routes (each a Method)


class ClosedBookRoute:
    """`general`: the base closed-book, the `base` eval method's answer() on a shared model."""

    def __init__(self, models: ModelCache, base: Path, max_new_tokens: int, batch_size: int, answer_format: str = ""):
        from kinject.eval.methods.closed_book import ClosedBook

        model, tok = models.get(base)
        # ClosedBook's __init__ loads its own copy; its answer() only needs these attributes
        self._impl = ClosedBook.__new__(ClosedBook)
        self._impl.model, self._impl.tokenizer = model, tok
        self._impl.max_new_tokens, self._impl.batch_size = max_new_tokens, batch_size
        self._impl.answer_format = answer_format
        self.models, self.name, self.tokenizer = models, "base", tok

    def answer(self, batch: list[dict]) -> list[dict]:
        with self.models.lock:
            return self._impl.answer(batch)


def _file_sig(d: Path) -> tuple | None:
    from kinject.gag.injector import CONFIG_FILE, WEIGHTS_FILE

    try:
        return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in (os.stat(d / f) for f in (WEIGHTS_FILE, CONFIG_FILE)))
    except FileNotFoundError:
        return None


class DomainUnavailable(RuntimeError):
    """A domain cannot answer now (its artifacts vanished or broke while serving)."""


class UnavailableRoute:
    """A configured domain whose artifacts failed to load: its rows fail, nothing is run."""

    def __init__(self, domain: str, reason: str):
        self.domain, self.reason, self.name = domain, reason, f"gag-{domain}"

    def answer(self, batch: list[dict]) -> list[dict]:
        raise DomainUnavailable(f"domain {self.domain!r} is unavailable: {self.reason}")


class GagRoute:
    """One private domain: its expert writes a background, the injector carries it into the
    shared base (a `GagPipeline` over the loaded models). The injector files are checked before every call."""

    def __init__(self, domain: str, opts: DomainOptions, models: ModelCache, base: Path,
                 max_new_tokens: int, batch_size: int):
        from kinject.gag.base import InjectedBase
        from kinject.gag.injector import Injector
        from kinject.gag.pipeline import GagPipeline

        self.domain, self.opts, self.models = domain, opts, models
        self.name = f"gag-{domain}"
        self.max_new_tokens = max_new_tokens
        self.injector_dir = Path(opts.injector)
        sig = _file_sig(self.injector_dir)
        injector = Injector.load(self.injector_dir)
        expert, expert_tok = models.get(opts.expert)
        model, tok = models.get(base)
        with models.lock:  # the shared base's tokenizer may be in use by a running route
            injected = InjectedBase(model, tok, injector.config.slots, opts.instruction,
                                    answer_format=injector.config.answer_format)
            self.pipe = GagPipeline(expert, expert_tok, injected, injector, opts.system, opts.max_background_tokens,
                                    batch_size, memory=opts.memory, where=str(self.injector_dir))
        self._sig = sig
        self.tokenizer = tok

    def _refresh(self) -> None:
        """Reload the injector when its files changed; refuse when they are gone or broken."""
        from kinject.gag.injector import Injector
        from kinject.gag.pipeline import background_spec, check_injector

        sig = _file_sig(self.injector_dir)
        if sig == self._sig:
            return
        if sig is None:
            raise DomainUnavailable(f"domain {self.domain!r}: injector files in {self.injector_dir} are missing "
                                    "(removed while serving); restore them or re-add the domain")
        try:
            inj = Injector.load(self.injector_dir)
            check_injector(inj, self.pipe.expert, self.pipe.base, str(self.injector_dir))
            spec = background_spec(inj.config, str(self.injector_dir), self.opts.system,
                                   self.opts.max_background_tokens, self.opts.memory)
        except UserError as e:
            raise DomainUnavailable(f"domain {self.domain!r}: injector changed while serving and cannot be "
                                    f"used: {e}") from None
        self.pipe.injector, self.pipe.background = inj.to(self.pipe.base.device).eval(), spec
        self._sig = sig
        log.info("domain %s: reloaded injector %s", self.domain, self.injector_dir)

    def answer(self, batch: list[dict]) -> list[dict]:
        with self.models.lock:
            self._refresh()
            answers = self.pipe.answer([r["question"] for r in batch], max_new_tokens=self.max_new_tokens)
        slots = self.pipe.base.num_slots
        return [{"prediction": a.answer,
                 "trace": {"background": a.background, "expert_tokens": a.background_tokens,
                           "added_prompt_tokens": slots, "domain": self.domain}} for a in answers]


class GripRoute:
    """`wiki`: the GRIP agent (self-triggered retrieval) over a retrieval index."""

    def __init__(self, opts: GripOptions, models: ModelCache, batch_size: int):
        from kinject.grip.agent import AgentSettings
        from kinject.retrieval.base import open_index

        self.models, self.name = models, "grip"
        self.model, self.tokenizer = models.get(opts.model)
        self.retriever = open_index(opts.index)
        self.settings = AgentSettings(max_rounds=opts.max_rounds, top_k=opts.top_k,
                                      max_new_tokens=opts.max_new_tokens, batch_size=batch_size,
                                      control_tokens=opts.control_tokens)

    def answer(self, batch: list[dict]) -> list[dict]:
        from kinject.grip.agent import GripAgent

        with self.models.lock:
            # a fresh agent per call: its query cache is per batch, not a server-lifetime leak
            agent = GripAgent.from_model(self.model, self.tokenizer, self.retriever, self.settings)
            episodes = agent.run([r["question"] for r in batch])
        out = []
        for ep in episodes:
            steps = [{"round": s.round, "query": s.query, "retrieved_ids": s.retrieved_ids}
                     for s in ep.steps if s.kind == "plan"]
            out.append({"prediction": ep.answer,
                        "trace": {"n_retrievals": ep.n_retrievals, "step_answers": ep.step_answers,
                                  "retrievals": steps}})
        return out


# ---------------------------------------------------------------- the pipeline


@dataclass(frozen=True)
class Snapshot:
    router: Any  # kinject.ppr.router.Router
    routes: Mapping[str, Any]  # route name -> Method (read-only view)
    version: int


def _check_routes(router, routes: Mapping[str, Any]) -> None:
    missing = [d for d in router.domains if d not in routes]
    if missing:
        raise UserError(f"bank(s) {', '.join(missing)} have no route: configure a method for each "
                        "(or remove the bank with `kinject ppr remove`)")
    extra = [r for r in routes if r not in router.domains]
    if extra:
        raise UserError(f"route(s) {', '.join(extra)} have no PPR bank, so no question would reach them: "
                        "add their banks (`kinject ppr add`)")
    if router.margin is not None and GENERAL not in routes:
        raise UserError(f"a routing margin falls back to {GENERAL!r}, which has no route")


class MixedPipeline:
    name = "mixed"

    def __init__(self, router, routes: Mapping[str, Any], strict: bool = False,
                 models: ModelCache | None = None, options: MixedOptions | None = None):
        _check_routes(router, routes)
        self._snap = Snapshot(router, MappingProxyType(dict(routes)), 0)
        self._swap_lock = threading.Lock()
        self.strict = strict
        self.models, self.options = models, options
        self.grip = None
        self.unavailable: dict[str, str] = {}  # domain -> why it is not served (isolate=True)

    # ------------------------------------------------------------ building
    @classmethod
    def from_config(cls, opts: MixedOptions, strict: bool = False, hint: str = "", encoder=None,
                     isolate: bool = False) -> MixedPipeline:
        """Everything from paths: banks (+ their encoder, unless a loaded `encoder` is given), the
        base loaded once, one GAG route per domain, optionally GRIP. `hint` ends each
        missing-path error (e.g. "; run make demo first"). `isolate`: a domain that fails to
        load is left out (see `unavailable`) instead of failing everything."""
        from kinject.ppr.banks import encoder_config_of, load_bank, read_index
        from kinject.ppr.encoders import load_encoder
        from kinject.ppr.router import Router

        check_paths(opts, hint, domains=not isolate)
        unavailable: dict[str, str] = {}
        if isolate:  # each bank on its own: a broken one leaves the router, not the server
            index = read_index(opts.banks)
            encoder = encoder or load_encoder(encoder_config_of(index))
            loaded = []
            for name in index["domains"]:
                try:
                    loaded.append(load_bank(Path(opts.banks), name, encoder_id=encoder.id, dim=encoder.dim))
                except UserError as e:
                    if name == GENERAL:
                        raise
                    unavailable[name] = str(e)
            router = Router(encoder, loaded, opts.margin, opts.abstain)
        else:
            router = Router.from_pretrained(opts.banks, encoder=encoder, margin=opts.margin, abstain=opts.abstain)
        models = ModelCache(opts.device, opts.dtype)
        banks = list(router.banks)
        for name, d in opts.domains.items():
            if name not in router.domains and name not in unavailable:
                try:
                    if d.bank is None:
                        raise UserError(f"domain {name!r} has no bank in {opts.banks}: add it (`kinject ppr add`) "
                                        f"or set domains.{name}.bank")
                    banks.append(load_domain_bank(d.bank, name, router.encoder))
                except UserError as e:
                    if not isolate:
                        raise
                    unavailable[name] = str(e)
        grip = opts.grip
        if grip is not None and grip.route not in router.domains and grip.bank is not None:
            banks.append(load_domain_bank(grip.bank, grip.route, router.encoder))
        if len(banks) != len(router.banks):
            router = Router(router.encoder, banks, opts.margin, opts.abstain)
        routes: dict[str, Any] = {}
        if GENERAL in router.domains:
            routes[GENERAL] = ClosedBookRoute(models, opts.base, opts.max_new_tokens, opts.batch_size,
                                             opts.answer_format)
        for name, d in opts.domains.items():
            if name in unavailable:
                continue
            try:
                if isolate:
                    check_paths(MixedOptions(banks=opts.banks, base=opts.base, domains={name: d}), hint)
                routes[name] = GagRoute(name, d, models, opts.base, opts.max_new_tokens, opts.batch_size)
            except (UserError, OSError) as e:
                if not isolate:
                    raise
                unavailable[name] = str(e)
                routes[name] = UnavailableRoute(name, str(e))  # its bank still recognizes its questions
        grip_route = None if grip is None else GripRoute(grip, models, opts.batch_size)
        if grip_route is not None and grip.route in router.domains:
            routes[grip.route] = grip_route
        pipe = cls(router, routes, strict, models, opts)
        pipe.unavailable = unavailable
        for name, why in unavailable.items():
            log.error("domain %s is unavailable: %s", name, why)
        pipe.grip = grip_route  # served alone too (`kinject-grip`), routed to only with a bank
        return pipe

    def build_gag_route(self, name: str, opts: DomainOptions) -> GagRoute:
        """A GAG route over this pipeline's shared base (for `add_domain`)."""
        if self.models is None or self.options is None:
            raise UserError("this pipeline was not built from options: build the domain's method yourself")
        return GagRoute(name, opts, self.models, self.options.base, self.options.max_new_tokens,
                        self.options.batch_size)

    # ------------------------------------------------------------ the snapshot
    @property
    def snapshot(self) -> Snapshot:
        return self._snap

    @property
    def routes(self) -> Mapping[str, Any]:
        return self._snap.routes

    @property
    def encoder(self):
        return self._snap.router.encoder

    def add_domain(self, name: str, bank, method) -> Snapshot:
        """Swap in a snapshot with one more route. `bank`: a `Bank`, a banks dir holding `name`,
        or a questions JSONL (its bank is built with the router's encoder)."""
        from kinject.ppr.banks import check_domain_name
        from kinject.ppr.router import Router

        check_domain_name(name)
        if not hasattr(bank, "prototypes"):
            # the encoder (and its tokenizer) may be answering in the model thread right now
            with self.models.lock if self.models is not None else contextlib.nullcontext():
                bank = load_domain_bank(bank, name, self.encoder)
        if bank.domain != name:
            raise UserError(f"bank is for domain {bank.domain!r}, not {name!r}")
        with self._swap_lock:
            old = self._snap
            if name in old.routes:
                raise UserError(f"domain {name!r} is already served; remove it first to replace it")
            router = Router(old.router.encoder, [*old.router.banks, bank], old.router.margin, old.router.abstain)
            self._snap = Snapshot(router, MappingProxyType({**old.routes, name: method}), old.version + 1)
            self.unavailable.pop(name, None)
            return self._snap

    def remove_domain(self, name: str) -> Snapshot:
        from kinject.ppr.router import Router

        with self._swap_lock:
            old = self._snap
            if name not in old.routes:
                if self.unavailable.pop(name, None) is not None:  # never served: forget it
                    return old
                raise UserError(f"domain {name!r} is not served (routes: {', '.join(old.routes)})")
            if name == GENERAL:
                raise UserError(f"{GENERAL!r} is the base model's route and cannot be removed")
            banks = [b for b in old.router.banks if b.domain != name]
            if not banks:
                raise UserError(f"{name!r} is the only route; a router needs at least one bank")
            router = Router(old.router.encoder, banks, old.router.margin, old.router.abstain)
            self._snap = Snapshot(router, MappingProxyType({k: v for k, v in old.routes.items() if k != name}),
                                  old.version + 1)
            return self._snap

    # ------------------------------------------------------------ answering
    def answer(self, batch: list[dict]) -> list[dict]:
        snap = self._snap  # one snapshot for the whole call
        if not batch:
            return []
        t0 = time.perf_counter()
        decisions = snap.router.route_batch([r["question"] for r in batch])
        route_s = time.perf_counter() - t0
        groups: dict[str, list[int]] = {}
        for i, d in enumerate(decisions):
            groups.setdefault(d.route, []).append(i)
        results: list[dict | None] = [None] * len(batch)
        for route, idx in groups.items():
            method = snap.routes[route]
            gone = False
            t1 = time.perf_counter()
            try:
                outs = method.answer([batch[i] for i in idx])
                if len(outs) != len(idx):
                    raise RuntimeError(f"returned {len(outs)} answers for {len(idx)} questions")
                error = None
            except Exception as e:  # one route's failure must not fail the other routes' rows
                if self.strict:
                    raise
                log.warning("route %s (%s) failed on %d rows: %s", route, method.name, len(idx), e)
                outs, error = [{"prediction": "", "trace": {}}] * len(idx), f"route {route!r} failed: {e}"
                gone = isinstance(e, DomainUnavailable)
            answer_s = time.perf_counter() - t1
            for i, out in zip(idx, outs):
                d = decisions[i]
                trace = {**out.get("trace", {}), "route": d.route, "route_score": d.score,
                         "route_scores": d.scores, "route_fallback": d.fallback, "method": method.name,
                         "snapshot": snap.version,
                         "timings": {"route_s": route_s, "answer_s": answer_s, "group_size": len(idx)}}
                results[i] = {**out, "trace": trace}
                if error is not None:
                    results[i]["error"] = error
                    if gone:  # the domain is down, not this request: the server answers 503
                        results[i]["unavailable"] = route
        return results  # type: ignore[return-value]


def load_domain_bank(source: str | Path, name: str, encoder):
    """A domain's bank from a banks dir (checked against the router's encoder) or a questions JSONL."""
    from kinject.ppr.banks import build_bank, load_bank, read_index, read_questions
    from kinject.ppr.config import PPRConfig

    p = Path(source)
    if p.is_file():
        cfg = PPRConfig()
        return build_bank(read_questions(name, p, cfg.max_questions, cfg.seed), encoder, cfg, progress=False)
    index = read_index(p)
    if name not in index["domains"]:
        raise UserError(f"banks dir {p} has no bank for domain {name!r} (it has: {', '.join(index['domains'])})")
    return load_bank(p, name, encoder_id=encoder.id, dim=encoder.dim)
