"""kinject: inject private, fast-changing domain knowledge into frozen LLMs.

Two systems on one code path: GAG (Generation-Augmented Generation, with PPR routing) and
GRIP (Retrieval as Generation). See README.md and docs/design.md.

The main objects are importable from here; each is loaded on first use, so `import kinject`
is fast, imports no torch and changes nothing in the host process (the `kinject` command sets
the offline Hugging Face variables itself, `kinject.cli.offline_environment`):

    import kinject
    pipe = kinject.GagPipeline.from_pretrained(expert="...", base="...", injector="...")
    router = kinject.Router.from_pretrained("outputs/demo/ppr/banks")

`examples/quickstart.py` runs each of them end to end.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it (the object keeps its home; this only re-exports it)
_EXPORTS: dict[str, str] = {
    # errors and models
    "UserError": "kinject.errors",
    "load_causal_lm": "kinject.models",
    "load_config": "kinject.config",
    # GAG: the injector, the injected frozen base, online answering
    "Injector": "kinject.gag.injector",
    "InjectedBase": "kinject.gag.base",
    "GagPipeline": "kinject.gag.pipeline",
    # PPR routing
    "PPRConfig": "kinject.ppr.config",
    "build_banks": "kinject.ppr.banks",
    "Router": "kinject.ppr.router",
    # retrieval (RAG's and GRIP's indexes)
    "build_index": "kinject.retrieval.index",
    "open_index": "kinject.retrieval.base",
    # GRIP
    "GripAgent": "kinject.grip.agent",
    "AgentSettings": "kinject.grip.agent",
    # the mixed-domain pipeline (PPR -> base / GAG per domain, optionally GRIP)
    "MixedPipeline": "kinject.mixed",
    "MixedOptions": "kinject.mixed",
    # evaluation
    "EvalConfig": "kinject.eval.config",
    "run_eval": "kinject.eval.harness",
}

__all__ = [
    "AgentSettings", "EvalConfig", "GagPipeline", "GripAgent", "InjectedBase", "Injector", "MixedOptions",
    "MixedPipeline", "PPRConfig", "Router", "UserError", "build_banks", "build_index", "load_causal_lm",
    "load_config", "open_index", "run_eval",
]

if TYPE_CHECKING:  # static tools see the real objects; at run time they load on first access
    from kinject.config import load_config
    from kinject.errors import UserError
    from kinject.eval.config import EvalConfig
    from kinject.eval.harness import run_eval
    from kinject.gag.base import InjectedBase
    from kinject.gag.injector import Injector
    from kinject.gag.pipeline import GagPipeline
    from kinject.grip.agent import AgentSettings, GripAgent
    from kinject.mixed import MixedOptions, MixedPipeline
    from kinject.models import load_causal_lm
    from kinject.ppr.banks import build_banks
    from kinject.ppr.config import PPRConfig
    from kinject.ppr.router import Router
    from kinject.retrieval.base import open_index
    from kinject.retrieval.index import build_index


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kinject' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    """The public names and the module's own dunders (not the helpers used here)."""
    return sorted({*__all__, *(n for n in globals() if n.startswith("__"))})
