"""The shipped configs point where `make demo` writes, so a step run by hand after the demo reads
what the demo made (and the configs cannot drift from the demo's layout again).

The demo's layout is not copied here: a dry run executes every demo stage's own code in a temp
dir (out = `outputs/demo`, as `make demo`), with the heavy work (training, generation, indexing,
scoring) replaced by stubs that return the paths they were given, and records what the stages
hand each other (`ctx.artifacts`), every shipped config a stage loads with the demo's overrides,
the paths they pass to the stubbed calls and the eval stage's method entries (a stage without a
dry run here, like the foundation check that builds a model, counts with its whole dir). Then,
for every YAML under configs/ (all of them: besides the tiny presets, the paper-scale, real-model,
serve and bench configs read the demo's world, experts, memories and index too), values and
the paths in its comments' commands alike:

- a path under `outputs/demo/` lies in something a stage produces;
- a path under `outputs/<name>/` with <name> a demo stage (`outputs/expert/`, `outputs/gag/`, ...)
  is the old layout, and refused;
- any other `outputs/` path a config reads is produced by a config (its `out`), a command in a
  config's header (`--out ...` or an `out=...` override), or the real-model preset (`kinject demo --preset smollm2`);
- where a stage overrides a path of a shipped config, the file already holds the demo's value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from kinject.resources import shipped_root

REPO = shipped_root()
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
DEMO_OUT = Path("outputs/demo")  # `kinject demo`'s default --out (the tiny preset)
REAL_OUT = Path("outputs/real")  # `kinject demo --preset smollm2`'s default --out
OUTPUT_KEYS = ("out", "stores_root")  # config keys naming what the config's own run writes


def norm(value, cwd: Path) -> str:
    """A path as a config spells it: relative to the repository (shipped files) or to the run's cwd."""
    p = Path(str(value))
    for root in (cwd, REPO):
        if p.is_absolute() and p.is_relative_to(root):
            return p.relative_to(root).as_posix()
    return p.as_posix()


def under(path: str, prefixes) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def leaves(node, key: str = ""):
    """(dotted key, value) of every scalar in a YAML tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from leaves(v, f"{key}[{i}]")
    else:
        yield key, node


def outputs_values(data) -> list[tuple[str, str]]:
    return [(k, v) for k, v in leaves(data) if isinstance(v, str) and v.startswith("outputs/")]


def comment_paths(text: str) -> list[str]:
    """`outputs/...` paths in a config's comments (its documented commands)."""
    found = []
    for line in text.splitlines():
        if "#" in line:
            found += [m.rstrip(".,:;/") for m in re.findall(r"outputs/[^\s`'\")]*", line.split("#", 1)[1])]
    return found


def lookup(data, dotted: str):
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


# ---------------------------------------------------------------------------------------------
# dry run of the demo


@dataclass
class DryRun:
    cwd: Path
    artifacts: dict[str, str] = field(default_factory=dict)
    loads: list[tuple[str, list[str]]] = field(default_factory=list)  # (config, the demo's overrides)
    methods: list[dict] = field(default_factory=list)
    stage_dirs: list[str] = field(default_factory=list)  # every stage's output dir
    not_dry_run: list[str] = field(default_factory=list)  # stages without a dry run: their whole dir
    handed: list[str] = field(default_factory=list)  # paths the stages hand to the stubbed calls
    errors: dict[str, str] = field(default_factory=dict)  # stages that failed before producing anything
    late_errors: dict[str, str] = field(default_factory=dict)  # failures after (summaries of metrics)

    def demo_paths(self) -> set[str]:
        """Every path (and what lies under it) the stages produce or hand over: artifacts, the path
        values of the overrides they pass to the shipped configs, the paths they pass to the
        stubbed calls, the eval methods' paths, the whole dirs of stages not dry-run."""
        paths = {*self.artifacts.values(), *self.not_dry_run, *self.handed}
        for _, overrides in self.loads:
            for o in overrides:
                paths.update(override_paths(o.split("=", 1)[1]))
        paths.update(v for _, v in leaves(self.methods) if isinstance(v, str) and "/" in v)
        return {norm(p, self.cwd) for p in paths}

    def recording(self, stub):
        def call(*args, **kwargs):
            self.handed += [str(a) for a in (*args, *kwargs.values()) if isinstance(a, Path)]
            return stub(*args, **kwargs)

        return call


def override_paths(value: str) -> list[str]:
    items = [x.strip() for x in value.strip("[]").split(",")] if value.startswith("[") else [value]
    return [x for x in items if "/" in x]


def _out_of(cfg, *args, **kwargs) -> Path:
    return Path(cfg.out)


def _fake_world(config, out, *args, **kwargs) -> Path:
    """The files the stages look for before they run (the real world builder writes many more)."""
    out = Path(out)
    for f in ("wiki/passages.tsv", "wiki/qa_train.jsonl", "wiki/qa_test.jsonl", "general/align.jsonl",
              "general/align_dev.jsonl", "mixed_domain/offline/general.jsonl", "mixed_domain/online/mixed.jsonl",
              "materials_domain/knowledge_base.jsonl", "adjuvant_domain/knowledge_base.jsonl"):
        (out / f).parent.mkdir(parents=True, exist_ok=True)
        (out / f).touch()
    return out


def _fake_index(passages, index, *args, **kwargs):
    from kinject.retrieval.base import META_FILE

    Path(index).mkdir(parents=True, exist_ok=True)
    (Path(index) / META_FILE).write_text(json.dumps({"backend": "tantivy"}))


def _fake_stage3(cfg, *args, **kwargs) -> Path:
    (Path(cfg.out) / "eval").mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "eval" / "results.jsonl").touch()
    return Path(cfg.out)


def _fake_lora(cfg) -> Path:
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "manifest.json").write_text(json.dumps({"metrics": {"steps": 0, "best_val_loss": 0.0}}))
    return Path(cfg.out)


def _stubs(dry: DryRun) -> dict[str, list[tuple[str, str, object]]]:
    """Per stage: (module, attribute, stub) for its heavy calls. A stage missing here is not
    dry-run; its whole output dir counts as produced."""

    def record_eval(cfg, out, **kwargs):
        dry.methods = [m.model_dump() for m in cfg.methods]
        return []

    return {
        "world": [("kinject.world.build", "build_world", _fake_world),
                  ("kinject.world.checks", "run_checks", lambda world: {})],
        "retrieval": [("kinject.retrieval.index", "build_index", _fake_index),
                      ("kinject.retrieval.rag", "rag_eval", lambda cfg, out: [])],
        "ppr": [("kinject.runs", "is_complete", lambda out, h: True)],  # as if built: the banks' dir only
        "expert": [("kinject.expert.dapt", "run_dapt", _out_of), ("kinject.expert.sft", "run_sft", _out_of),
                   ("kinject.expert.evaluate", "evaluate_files", lambda *a, **k: [])],
        "memory": [("kinject.runs", "is_complete", lambda out, h: True)],  # as if built: the stores' dirs only
        "gag": [("kinject.gag.stage3", "train_and_score", _fake_stage3)],
        "baselines": [("kinject.baselines.lora", "run_lora", _fake_lora)],
        "grip": [("kinject.grip.synth", "synthesize", lambda cfg: {"classes": {}}),
                 ("kinject.grip.sft", "train_sft", _out_of),
                 ("kinject.grip.evaluate", "grip_eval", lambda *a, **k: [])],
        "eval": [("kinject.eval.harness", "run_eval", record_eval)],
    }


PER_DOMAIN = {"gag"}


@pytest.fixture(scope="module")
def dry(tmp_path_factory) -> DryRun:
    import importlib

    import kinject.config
    from kinject.recipes.engine import DemoContext, registered_stages

    cwd = tmp_path_factory.mktemp("demo-dry-run")
    run = DryRun(cwd)
    real_load = kinject.config.load_config

    def recording_load(path, overrides=(), expect=None):
        if path is not None and Path(path).is_relative_to(REPO / "configs"):
            run.loads.append((norm(path, cwd), list(overrides)))
        return real_load(path, overrides, expect=expect)

    stubs = _stubs(run)
    ctx = DemoContext(out=DEMO_OUT, quick=False)  # full preset: no QUICK overrides
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setenv("KINJECT_DEMO_WORKERS", "1")  # per-domain jobs in this process
        mp.setattr(kinject.config, "load_config", recording_load)
        for st in registered_stages():
            run.stage_dirs.append((DEMO_OUT / st.name).as_posix())
            if st.name not in stubs:
                run.not_dry_run.append((DEMO_OUT / st.name).as_posix())
                continue
            before = (len(ctx.artifacts), len(run.loads))
            module = importlib.import_module(st.fn.__module__)
            # one domain at a time where the stage's summary of a domain reads metrics (none here)
            # before the next domain's artifacts are set
            for domains in ([(d,) for d in module.DOMAINS] if st.name in PER_DOMAIN else [None]):
                with pytest.MonkeyPatch.context() as stage_mp:
                    for mod, attr, stub in stubs[st.name]:
                        stage_mp.setattr(importlib.import_module(mod), attr, run.recording(stub))
                    if domains:
                        stage_mp.setattr(module, "DOMAINS", domains)
                    try:
                        st.fn(ctx, DEMO_OUT / st.name)
                    except Exception as e:  # noqa: BLE001 - the stubs return no metrics: summaries may fail
                        failed = run.errors if (len(ctx.artifacts), len(run.loads)) == before else run.late_errors
                        failed[st.name] = f"{type(e).__name__}: {e}"
    run.artifacts = {k: norm(v, cwd) for k, v in ctx.artifacts.items() if isinstance(v, (str, Path))}
    return run


# ---------------------------------------------------------------------------------------------
# the checks


def test_the_dry_run_reaches_every_stage(dry):
    assert not dry.errors, f"demo stages failed in the dry run before producing anything: {dry.errors}"
    assert dry.loads and dry.methods, "the dry run recorded no config loads or eval methods"
    # a stage that stopped after its first domain left the others' artifacts out
    domains = private_domains()
    per_domain = {k.removesuffix(f"_{d}") for k in dry.artifacts for d in domains if k.endswith(f"_{d}")}
    missing = [f"{k}_{d}" for k in sorted(per_domain) for d in domains if f"{k}_{d}" not in dry.artifacts]
    assert not missing, f"the dry run made no {missing} (stage failures after the first artifact: {dry.late_errors})"


def test_the_demo_loads_the_shipped_configs_with_their_own_paths(dry):
    """A path the demo passes to a shipped config is already the file's value: the config run by
    hand reads and writes exactly what the demo does (and its run is the demo's, for skipping)."""
    wrong = []
    for config, overrides in dry.loads:
        data = yaml.safe_load((REPO / config).read_text())
        for o in overrides:
            key, value = o.split("=", 1)
            if not override_paths(value):
                continue
            demo = [norm(p, dry.cwd) for p in override_paths(value)]
            shipped = lookup(data, key)
            shipped = [norm(p, dry.cwd) for p in (shipped if isinstance(shipped, list) else [shipped])]
            if shipped != demo:
                wrong.append(f"{config}: {key} is {shipped}, the demo uses {demo}")
    assert not wrong, "\n".join(wrong)


@dataclass
class Layout:
    stage_names: set[str]  # the demo's stages: outputs/<stage>/ is the old layout
    exact: set[str]  # the demo's root and stage dirs (a config may name a whole one)
    demo: set[str]  # what the demo makes under outputs/demo, with all that lies under it
    made: set[str]  # other outputs/ paths some config (`out`), documented command or demo preset makes

    def errors(self, rel: str, text: str) -> list[str]:
        """What is wrong with the `outputs/` paths of the config `rel` (its YAML `text`)."""
        data = yaml.safe_load(text) or {}
        errors = []
        for key, path in outputs_values(data) + [("comment", p) for p in comment_paths(text)]:
            top = Path(path).parts[1] if len(Path(path).parts) > 1 else ""
            if under(path, [DEMO_OUT.as_posix()]):
                if path not in self.exact and not under(path, self.demo):
                    errors.append(f"{rel}: {key}: {path} is nothing `make demo` writes")
            elif top in self.stage_names:
                errors.append(f"{rel}: {key}: {path} is the old layout (the demo writes outputs/demo/{top}/)")
            elif key != "comment" and key.split(".")[-1] not in OUTPUT_KEYS and not under(path, self.made):
                errors.append(f"{rel}: {key}: {path} is made by no config, documented command or demo preset")
        return errors


@pytest.fixture(scope="module")
def layout(dry) -> Layout:
    from kinject.recipes.smollm2 import MODEL, STAGES

    made = set()
    for f in CONFIGS:
        text = f.read_text()
        made.update(v for k, v in outputs_values(yaml.safe_load(text) or {}) if k.split(".")[-1] in OUTPUT_KEYS)
        # a header command's output: `--out DIR`, or an `out=DIR` override (a second seed's run)
        made.update(re.findall(r"(?:--out\s+|\sout=)(outputs/[^\s`'\")]+)", text))
    made.update((REAL_OUT / st.name).as_posix() for st in STAGES)
    made.add((REAL_OUT.parent / "models" / MODEL).as_posix())  # the real preset's import stage
    return Layout({Path(d).name for d in dry.stage_dirs}, {DEMO_OUT.as_posix(), *dry.stage_dirs},
                  dry.demo_paths(), made)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(REPO / "configs").as_posix())
def test_every_outputs_path_is_one_the_demo_layout_has(config, layout):
    errors = layout.errors(config.relative_to(REPO).as_posix(), config.read_text())
    assert not errors, "\n".join(errors)


def test_the_check_catches_the_old_layout(layout):
    text = (REPO / "configs" / "gag" / "materials_sft_tiny.yaml").read_text()
    text = text.replace("outputs/demo/expert/materials_dapt", "outputs/expert/materials_dapt_tiny")
    text = text.replace("outputs/demo/world/world/", "outputs/demo/world/")
    text = text.replace("outputs/demo/expert/materials_sft", "outputs/paper/expert/materials_sft")
    text += "encoder: outputs/somewhere/encoder  # see outputs/gag/x\n"
    errors = "\n".join(layout.errors("x.yaml", text))
    assert "model: outputs/expert/materials_dapt_tiny is the old layout" in errors
    assert "data: outputs/demo/world/materials_domain/qa_train.jsonl is nothing `make demo` writes" in errors
    assert "encoder: outputs/somewhere/encoder is made by no config" in errors
    assert "comment: outputs/gag/x is the old layout" in errors
    assert "outputs/paper/expert/materials_sft" not in errors  # a config's own output may go elsewhere


def private_domains() -> list[str]:
    from kinject.config import load_config
    from kinject.world.build import tiny_world_config
    from kinject.world.config import WorldConfig

    return list(load_config(tiny_world_config(), expect=WorldConfig).private_domains)


@pytest.mark.parametrize("domain", private_domains())
def test_every_private_domain_has_an_answer_config_on_the_demo(domain, dry):
    """`kinject gag answer --config configs/gag/<domain>_answer_tiny.yaml "..."` after `make demo`:
    the demo's expert, injector and memory store; backgrounds are written with their recorded
    spec (as the domain's stored memories were), not with settings restated here."""
    from kinject.config import load_config
    from kinject.gag.config import GagAnswerConfig

    path = REPO / "configs" / "gag" / f"{domain}_answer_tiny.yaml"
    assert path.is_file(), f"no answer config for the private domain {domain}"
    cfg = load_config(path, expect=GagAnswerConfig)
    assert cfg.expert == dry.artifacts[f"expert_{domain}"]
    assert cfg.injector == dry.artifacts[f"injector_{domain}"]
    assert cfg.base == norm(Path(dry.artifacts["foundation"]) / "base", dry.cwd)
    assert cfg.memory == dry.artifacts[f"memory_{domain}"]
    assert (cfg.system, cfg.max_background_tokens) == (None, None)
