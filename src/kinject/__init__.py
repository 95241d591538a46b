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
    # the training stages: a config and the function or trainer that runs it
    "DaptConfig": "kinject.expert.config",
    "run_dapt": "kinject.expert.dapt",
    "SftConfig": "kinject.expert.config",
    "run_sft": "kinject.expert.sft",
    "MemoryBuildConfig": "kinject.memory.config",
    "build_memory": "kinject.memory.build",
    "Stage3Config": "kinject.gag.config",
    "Stage3Trainer": "kinject.gag.trainer",
    "LoraBaselineConfig": "kinject.baselines.config",
    "run_lora": "kinject.baselines.lora",
    "GripSynthConfig": "kinject.grip.config",
    "synthesize": "kinject.grip.synth",
    "GripSftConfig": "kinject.grip.config",
    "train_sft": "kinject.grip.sft",
    "GripRLConfig": "kinject.grip.rl_config",
    "run_grip_rl": "kinject.grip.rl_train",
    # evaluation
    "EvalConfig": "kinject.eval.config",
    "run_eval": "kinject.eval.harness",
}

__all__ = [
    "AgentSettings", "DaptConfig", "EvalConfig", "GagPipeline", "GripAgent", "GripRLConfig", "GripSftConfig",
    "GripSynthConfig", "InjectedBase", "Injector", "LoraBaselineConfig", "MemoryBuildConfig", "MixedOptions",
    "MixedPipeline", "PPRConfig", "Router", "SftConfig", "Stage3Config", "Stage3Trainer", "UserError", "build_banks",
    "build_index", "build_memory", "load_causal_lm", "load_config", "open_index", "run_dapt", "run_eval",
    "run_grip_rl", "run_lora", "run_sft", "synthesize", "train_sft",
]

if TYPE_CHECKING:  # static tools see the real objects; at run time they load on first access
    from kinject.baselines.config import LoraBaselineConfig
    from kinject.baselines.lora import run_lora
    from kinject.config import load_config
    from kinject.errors import UserError
    from kinject.eval.config import EvalConfig
    from kinject.eval.harness import run_eval
    from kinject.expert.config import DaptConfig, SftConfig
    from kinject.expert.dapt import run_dapt
    from kinject.expert.sft import run_sft
    from kinject.gag.base import InjectedBase
    from kinject.gag.config import Stage3Config
    from kinject.gag.injector import Injector
    from kinject.gag.pipeline import GagPipeline
    from kinject.gag.trainer import Stage3Trainer
    from kinject.grip.agent import AgentSettings, GripAgent
    from kinject.grip.config import GripSftConfig, GripSynthConfig
    from kinject.grip.rl_config import GripRLConfig
    from kinject.grip.rl_train import run_grip_rl
    from kinject.grip.sft import train_sft
    from kinject.grip.synth import synthesize
    from kinject.memory.build import build_memory
    from kinject.memory.config import MemoryBuildConfig
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
