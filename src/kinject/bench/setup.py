"""The models, questions and indexes a suite times: the tiny demo's artifacts (read only) when
present, else tiny random models built on the fly (real architectures, random weights: right for
timing, meaningless for accuracy). `Setup.source` says which, and every JSON records it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kinject.bench.config import Artifacts
from kinject.errors import UserError
from kinject.resources import shipped

RANDOM_SYSTEM = "You are an expert in catalytic materials."
# the shipped tiny GAG presets: the random setup's injector and memories take their settings, so a
# suite timed without the demo's artifacts still runs the GAG that ships (pooling, heads, mix)
STAGE3_PRESET = shipped("configs/gag/materials_stage3_tiny.yaml")
MEMORY_PRESET = shipped("configs/gag/materials_memory_tiny.yaml")


def shipped_gag_preset():
    """(injector settings of the Stage III preset, its memory build config)."""
    from kinject.config import load_config
    from kinject.gag.config import Stage3Config
    from kinject.memory.config import MemoryBuildConfig

    stage3 = load_config(STAGE3_PRESET, [], expect=Stage3Config)
    return stage3.injector, load_config(MEMORY_PRESET, [], expect=MemoryBuildConfig)


@dataclass
class Setup:
    source: str  # "demo" or "random"
    base: str
    expert: str
    injector: str
    grip_model: str
    system: str
    rows: list[dict]  # {question, answer: [..], instruction}
    grip_rows: list[dict]
    passages: list  # kinject.retrieval.base.Doc for the private questions' RAG index
    grip_index: str | None  # an existing index dir (demo) or None (built from grip_passages)
    grip_passages: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {"source": self.source, "base": self.base, "expert": self.expert, "injector": self.injector,
                "grip_model": self.grip_model, "grip_index": self.grip_index, "n_questions": len(self.rows),
                "n_grip_questions": len(self.grip_rows), "n_passages": len(self.passages), "notes": self.notes}


def _rows(path: Path) -> list[dict]:
    from kinject.eval.data import gold_answers
    from kinject.io import read_jsonl
    from kinject.memory.store import row_question

    out = []
    for i, r in enumerate(read_jsonl(path), 1):
        out.append({"question": row_question(r, f"{path}:{i}"), "answer": gold_answers(r, f"{path}:{i}"),
                    "instruction": r.get("instruction")})
    return out


def demo_setup(art: Artifacts) -> Setup:
    from kinject.io import iter_jsonl
    from kinject.retrieval.base import Doc

    docs = [Doc(f"kb-{i}", r["text"], r.get("entity", "")) for i, r in
            enumerate(iter_jsonl(art.path("knowledge"), required=["text"]))]
    return Setup("demo", str(art.path("base")), str(art.path("expert")), str(art.path("injector")),
                 str(art.path("grip_model")), art.system, _rows(art.path("questions")),
                 _rows(art.path("grip_questions")), docs, str(art.path("grip_index")))


def random_setup(work: Path, seed: int = 0) -> Setup:
    """Tiny random base (64 wide, 2 layers), expert (48 wide, 3 layers, as deep as the shipped
    tiny expert) and an untrained injector configured as the shipped Stage III preset (memory
    layers and slots of the shipped memory preset), with a synthetic question set and knowledge
    base; the GRIP policy is the random base."""
    from kinject.gag.injector import Injector, InjectorConfig
    from kinject.models import TinySpec, make_tiny_model, save_model
    from kinject.retrieval.base import Doc
    from kinject.tokenizer import BUILTIN_SAMPLE, train_tokenizer

    work.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(BUILTIN_SAMPLE * 4, vocab_size=600, min_frequency=1)
    base = make_tiny_model(TinySpec(vocab=600, hidden=64, layers=2, heads=4), tokenizer=tok, seed=seed)
    expert = make_tiny_model(TinySpec(vocab=600, hidden=48, layers=3, heads=4), tokenizer=tok, seed=seed + 1)
    save_model(base, tok, work / "base")
    save_model(expert, tok, work / "expert")
    inj, mem = shipped_gag_preset()
    Injector(InjectorConfig(expert_hidden=48, base_hidden=64, layers=list(mem.layers), slots=mem.slots,
                            pooling=inj.pooling, store_pooling=mem.pooling, tau=mem.tau,
                            mixer_clamp=inj.mixer_clamp, attention_dim=inj.attention_dim,
                            attention_heads=inj.attention_heads, residual_mix=inj.residual_mix),
             seed=seed).save(work / "injector")
    rows, docs = [], []
    for i in range(64):
        name, value = f"Ferovia-{i}", f"{50 + i}.{i % 10} %"
        rows.append({"question": f"What is the Faradaic efficiency of {name}?", "answer": [value],
                     "instruction": "You are an expert in catalytic materials."})
        docs.append(Doc(f"kb-{i}", f"{name} reaches a Faradaic efficiency of {value}. {name} runs at "
                                   f"{400 + i} K and sits on a carbon support.", name))
    grip_rows = [{"question": f"Which country is the birthplace of Vexkom-{i} in?", "answer": ["Norland"],
                  "instruction": None} for i in range(32)]
    grip_docs = [Doc(f"w-{i}", f"Vexkom-{i} was born in Tarsk. Tarsk is a city in Norland.", f"Vexkom-{i}")
                 for i in range(32)]
    return Setup("random", str(work / "base"), str(work / "expert"), str(work / "injector"), str(work / "base"),
                 RANDOM_SYSTEM, rows, grip_rows, docs, None, grip_docs,
                 ["tiny random models built on the fly (injector: the shipped Stage III preset, untrained): timings only, "
                  "accuracy is meaningless"])


def resolve_setup(source: str, art: Artifacts, work: Path) -> Setup:
    missing = art.missing()
    if source == "demo" or (source == "auto" and not missing):
        if missing:
            raise UserError(f"bench: demo artifacts missing: {', '.join(missing[:3])}; run `make demo` "
                            "or set artifacts.root=... (or source=random)")
        return demo_setup(art)
    s = random_setup(work / "random_models")
    if source == "auto":
        s.notes.append(f"demo artifacts absent ({missing[0]}{' ...' if len(missing) > 1 else ''})")
    return s


def build_index(docs: list, path: Path):
    """A fresh tantivy index of `docs` (the embedded default backend)."""
    import shutil

    from kinject.retrieval.base import get_backend

    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    r = get_backend("tantivy").create(path)
    r.add(docs)
    return r


def open_grip_index(setup: Setup, work: Path):
    from kinject.retrieval.base import open_index

    if setup.grip_index:
        return open_index(setup.grip_index)
    return build_index(setup.grip_passages, work / "grip_index")
