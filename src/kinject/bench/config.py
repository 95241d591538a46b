"""Configs of the bench suites (`configs/bench/*.yaml`). Artifact paths are relative to
`artifacts` (the demo's output root) unless absolute; when they are absent and `source` is
`auto`, the suites build tiny random models on the fly and say so in the JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from kinject.config import StageConfig, StrictModel, register_config


class Artifacts(StrictModel):
    root: str = Field("outputs/demo", description="demo output root (read only)")
    base: str = Field("assets/foundation/tiny/base", description="frozen base (relative to the working dir)")
    expert: str = "expert/materials_sft"
    injector: str = "gag/materials/injector"
    questions: str = "world/world/materials_domain/qa_dev.jsonl"
    knowledge: str = Field("world/world/materials_domain/knowledge_base.jsonl",
                           description="JSONL {text, entity}: RAG's passages for the private questions")
    grip_model: str = "grip/model"
    grip_index: str = "retrieval/wiki_index"
    grip_questions: str = "world/world/wiki/qa_test.jsonl"
    system: str = Field("You are an expert in catalytic materials.", description="expert system prompt (memory build)")

    def path(self, name: str) -> Path:
        p = Path(getattr(self, name))
        return p if p.is_absolute() or name == "base" else Path(self.root) / p

    def missing(self) -> list[str]:
        names = ("base", "expert", "injector", "questions", "knowledge", "grip_model", "grip_index", "grip_questions")
        return [str(self.path(n)) for n in names if not self.path(n).exists()]


@register_config
class MethodsBenchConfig(StageConfig):
    kind: str = "bench_methods"
    source: Literal["auto", "demo", "random"] = "auto"
    artifacts: Artifacts = Artifacts()
    n_questions: int = Field(24, ge=2, description="questions timed one at a time (p50/p90)")
    n_throughput: int = Field(64, ge=2, description="questions for the batched throughput run")
    batch_size: int = Field(16, ge=1)
    ks: list[Annotated[int, Field(ge=1)]] = [1, 3, 5]
    max_new_tokens: int = Field(24, ge=1, description="answer tokens (base side)")
    max_background_tokens: int | None = Field(None, ge=1, description="expert background cap (None: the injector's "
                                                                     "recorded one, as its memories were built)")
    prefill_repeats: int = Field(5, ge=1, description="timed prompt forwards per question (median)")
    grip_max_rounds: int = 4
    grip_top_k: int = 3
    grip_max_new_tokens: int = 64
    methods: list[Literal["base", "rag", "text_injection", "gag", "grip"]] = [
        "base", "rag", "text_injection", "gag", "grip"]
    threads: int | None = 1


@register_config
class LeversBenchConfig(StageConfig):
    kind: str = "bench_levers"
    source: Literal["auto", "demo", "random"] = "auto"
    artifacts: Artifacts = Artifacts()
    n_repeat: int = Field(32, ge=1, description="questions for the cache (cold vs warm) and batching runs")
    caps: list[Annotated[int, Field(ge=1)]] = [4, 8, 16, 32, 64, 128]
    n_cap: int = Field(180, ge=1, description="dev questions scored at each background cap")
    batch_sizes: list[Annotated[int, Field(ge=1)]] = [1, 16]
    max_new_tokens: int = 24
    max_background_tokens: int | None = Field(None, ge=1, description="expert background cap (None: the injector's "
                                                                     "recorded one)")
    decode_tokens: int = Field(32, ge=1, description="tokens decoded in the static-cache / compile run")
    compile: bool = Field(True, description="also time static cache + torch.compile (slow to compile)")
    n_prefill: int = Field(24, ge=0, description="questions timed with memories without decoding (0: skip)")
    answer_prefix: str = Field("", description="prefill memories: text read after the question")
    threads: int | None = 1


class ArchShape(StrictModel):
    name: str
    arch: Literal["qwen3", "llama"]
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tie_embeddings: bool = False


@register_config
class ArchBenchConfig(StageConfig):
    kind: str = "bench_arch"
    shapes: list[ArchShape] = [
        ArchShape(name="qwen3_8b_base", arch="qwen3", hidden=4096, layers=36, heads=32, kv_heads=8, head_dim=128,
                  intermediate=12288, vocab=151936),
        ArchShape(name="qwen3_1p7b_expert", arch="qwen3", hidden=2048, layers=28, heads=16, kv_heads=8,
                  head_dim=128, intermediate=6144, vocab=151936, tie_embeddings=True),
        ArchShape(name="llama3_8b_grip", arch="llama", hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128,
                  intermediate=14336, vocab=128256),
    ]
    cpu_layers: list[int] = Field([1, 2], description="reduced depths timed on CPU; per-layer cost = slope")
    prompt_tokens: dict[str, int] = Field(
        {"base": 29, "gag": 63, "gag_no_slots": 59, "rag_k3": 318},
        description="prompt lengths timed for the prefill ratios (the methods suite's measured means)")
    decode_tokens: int = Field(8, ge=2)
    repeats: int = Field(3, ge=1)
    dtypes: list[Literal["float32", "bfloat16", "float16"]] = ["float32", "bfloat16"]
    threads: int | None = 1
    cuda_full_size: bool = True


@register_config
class StagesBenchConfig(StageConfig):
    kind: str = "bench_stages"
    source: Literal["auto", "demo", "random"] = "auto"
    artifacts: Artifacts = Artifacts()
    steps: int = Field(20, ge=1, description="timed steps per trainer (after warmup)")
    warmup_steps: int = Field(3, ge=0)
    only: list[Literal["dapt", "sft", "stage3", "memory", "grip_sft", "routing", "retrieval"]] = [
        "dapt", "sft", "stage3", "memory", "grip_sft", "routing", "retrieval"]
    # stage3: the frozen base's dtype(s), timed one after the other (e.g. [float32, bfloat16] on a CPU
    # with AVX512-BF16), the batch, and the answer-format line of the preset being timed
    stage3_base_dtypes: list[Literal["auto", "float32", "bfloat16"]] = ["auto"]
    stage3_batch: int = Field(32, ge=1)
    stage3_answer_format: str = ""
    threads: int | None = 1
