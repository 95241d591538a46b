"""`kinject bench arch`: the paper-scale shapes (Qwen3-8B base, Qwen3-1.7B expert, Llama-3-8B
GRIP) with random weights, timed for prefill and decode.

CPU (always): a reduced-depth variant at full width (`cpu_layers`, e.g. 1 and 2 decoder layers,
with a 1024-token vocabulary), plus the full-vocabulary LM head timed on its own as one
[hidden x vocab] matmul for one position (generate keeps the logits of the last position only).
Scaling, stated in the JSON: full model ~= layers x per-layer time + head time, where the
per-layer time is the slope between the two depths (the embedding lookup and the final norm
are negligible). Both fp32 and bf16 are timed on one layer first; the faster runs the rest.
Memory stays under ~4 GiB (one full-width layer pair + the head matrix at a time).

CUDA (when present): full size in bf16, plus the device ceilings measured in the same run
(copy bandwidth, bf16 matmul rate), decode at batch 1 against the memory-bandwidth roofline
(weight bytes per token / measured bandwidth) and Stage III's MFU (forward + backward to the
injected input embeddings through the frozen base). On a machine without CUDA it says
"skipped: no CUDA".
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import torch

from kinject.bench.common import md_table, ratio, set_threads, write_outputs
from kinject.bench.config import ArchBenchConfig, ArchShape
from kinject.bench.timing import StepClock

SMALL_VOCAB = 1024


def _model(shape: ArchShape, layers: int, vocab: int, dtype: torch.dtype, device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    from kinject.models import TinySpec

    spec = TinySpec(arch=shape.arch, vocab=vocab, hidden=shape.hidden, layers=layers, heads=shape.heads,
                    kv_heads=shape.kv_heads, intermediate=shape.intermediate, max_positions=8192,
                    tie_embeddings=shape.tie_embeddings)
    config = spec.to_config()
    config.head_dim = shape.head_dim
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def _best_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1000)
    return min(times)  # least disturbed by other jobs on a shared machine


@torch.no_grad()
def time_model(model, prompt_tokens: dict[str, int], decode_tokens: int, repeats: int) -> dict:
    """Prefill ms per prompt length (a forward as generate's first step) and decode ms/token
    (generate at batch 1, forced length, split by the step clock)."""
    dev = model.device
    vocab = model.config.vocab_size
    out = {"prefill_ms": {}}
    for name, n in prompt_tokens.items():
        ids = torch.randint(0, vocab, (1, n), device=dev)
        out["prefill_ms"][name] = round(_best_ms(lambda ids=ids: model(input_ids=ids, use_cache=True,
                                                                       logits_to_keep=1), repeats), 3)
    ids = torch.randint(0, vocab, (1, max(prompt_tokens.values())), device=dev)
    from transformers import LogitsProcessorList

    per = []
    for _ in range(max(2, repeats)):
        clock = StepClock()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=decode_tokens,
                       min_new_tokens=decode_tokens, do_sample=False, pad_token_id=0, eos_token_id=None,
                       logits_processor=LogitsProcessorList([clock]))
        per.append((clock.stamps[-1] - clock.stamps[0]) * 1000 / (len(clock.stamps) - 1))
    out["decode_ms_per_token"] = round(min(per), 3)
    return out


@torch.no_grad()
def time_head(hidden: int, vocab: int, dtype: torch.dtype, repeats: int) -> float:
    w = torch.full((vocab, hidden), 0.01, dtype=dtype)
    x = torch.full((1, hidden), 0.01, dtype=dtype)
    return round(_best_ms(lambda: x @ w.T, repeats), 3)  # w is freed on return


def _scale(shape: ArchShape, depths: dict[int, dict], head_ms: float) -> dict:
    """Full-depth estimate from the reduced depths: slope between the two depths per layer."""
    (l1, a), (l2, b) = sorted(depths.items())[0], sorted(depths.items())[-1]

    def per_layer(x1, x2):
        if l2 > l1 and x2 > x1:
            return (x2 - x1) / (l2 - l1)
        return x2 / l2  # noise made the slope useless: the deepest run's per-layer mean

    pre = {k: per_layer(a["prefill_ms"][k], b["prefill_ms"][k]) for k in b["prefill_ms"]}
    dec = per_layer(a["decode_ms_per_token"], b["decode_ms_per_token"])
    return {"per_layer_prefill_ms": {k: round(v, 3) for k, v in pre.items()},
            "per_layer_decode_ms": round(dec, 3), "head_ms_per_token": head_ms,
            "full_prefill_ms_estimate": {k: round(shape.layers * v + head_ms, 1) for k, v in pre.items()},
            "full_decode_ms_per_token_estimate": round(shape.layers * dec + head_ms, 1),
            "scaling": f"{shape.layers} x per-layer (slope between {l1} and {l2} layers) + LM head "
                       f"({shape.vocab} x {shape.hidden}, one position)"}


def run_cpu(cfg: ArchBenchConfig) -> dict:
    first = cfg.shapes[0]
    probe = {}
    for name in cfg.dtypes:
        dt = getattr(torch, name)
        m = _model(first, 1, SMALL_VOCAB, dt)
        probe[name] = time_model(m, {"longest": max(cfg.prompt_tokens.values())}, cfg.decode_tokens, cfg.repeats)
        del m
        gc.collect()
    speed = {n: p["prefill_ms"]["longest"] + cfg.decode_tokens * p["decode_ms_per_token"] for n, p in probe.items()}
    dtype_name = min(speed, key=speed.get)
    dtype = getattr(torch, dtype_name)
    shapes = {}
    for shape in cfg.shapes:
        depths = {}
        for n_layers in cfg.cpu_layers:
            m = _model(shape, n_layers, SMALL_VOCAB, dtype)
            depths[n_layers] = time_model(m, cfg.prompt_tokens, cfg.decode_tokens, cfg.repeats)
            depths[n_layers]["layer_parameters"] = sum(p.numel() for n, p in m.named_parameters()
                                                       if ".layers." in n) // n_layers
            del m
            gc.collect()
        head = time_head(shape.hidden, shape.vocab, dtype, cfg.repeats)
        est = _scale(shape, depths, head)
        full = est["full_prefill_ms_estimate"]
        est["prefill_ratios"] = {f"{a}_over_{b}": ratio(full[a], full[b]) for a, b in
                                 (("gag", "base"), ("gag", "gag_no_slots"), ("gag", "rag_k3")) if a in full and b in full}
        shapes[shape.name] = {"shape": shape.model_dump(), "depths": depths, **est}
    return {"dtype_probe": {"shape": first.name, "layers": 1, **probe, "chosen": dtype_name}, "shapes": shapes}


# ---------------------------------------------------------------- CUDA (not run on a CPU machine)
@torch.no_grad()
def cuda_ceilings() -> dict:
    n = 1 << 30  # 1 GiB of bf16
    src = torch.empty(n // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ms = _best_ms(lambda: dst.copy_(src), 10)
    bw = 2 * n / (ms / 1000)  # read + write
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    mm = _best_ms(lambda: a @ a, 10)
    return {"copy_bandwidth_gb_s": round(bw / 1e9, 1), "bf16_matmul_tflops": round(2 * 8192 ** 3 / (mm / 1000) / 1e12, 1)}


def cuda_stage3_mfu(model, peak_tflops: float, batch: int = 8, seq: int = 256) -> dict:
    """Stage III's step through the frozen base: forward on injected embeddings, backward to them
    (no weight gradients): about 4 x parameters x tokens FLOPs (2 forward + 2 for input grads)."""
    model.requires_grad_(False)
    emb = model.get_input_embeddings()
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device="cuda")

    def step():
        x = emb(ids).detach().requires_grad_(True)
        loss = model(inputs_embeds=x, labels=ids, use_cache=False).loss
        loss.backward()

    ms = _best_ms(step, 3)
    n_params = sum(p.numel() for p in model.parameters())
    flops = 4 * n_params * batch * seq
    return {"batch": batch, "seq": seq, "step_ms": round(ms, 1), "tflops": round(flops / (ms / 1000) / 1e12, 1),
            "mfu_vs_measured_bf16_matmul": round(flops / (ms / 1000) / 1e12 / peak_tflops, 3),
            "flops_model": "4 x params x tokens (forward + input gradients; the base is frozen)"}


def run_cuda(cfg: ArchBenchConfig) -> dict:
    ceil = cuda_ceilings()
    out = {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda, "ceilings": ceil, "shapes": {}}
    for shape in cfg.shapes:
        model = _model(shape, shape.layers, shape.vocab, torch.bfloat16, "cuda")
        t = time_model(model, cfg.prompt_tokens, cfg.decode_tokens, cfg.repeats)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        roofline_ms = weight_bytes / (ceil["copy_bandwidth_gb_s"] * 1e9) * 1000
        r = {**t, "weight_bytes": weight_bytes, "decode_roofline_ms_per_token": round(roofline_ms, 3),
             "decode_fraction_of_roofline": ratio(roofline_ms, t["decode_ms_per_token"]),
             "target_decode_fraction": ">= 0.5"}
        if shape.name.startswith("qwen3_8b"):
            with torch.enable_grad():
                r["stage3_mfu"] = cuda_stage3_mfu(model, ceil["bf16_matmul_tflops"])
        out["shapes"][shape.name] = r
        del model
        gc.collect()
        torch.cuda.empty_cache()
    return out


def run_arch(cfg: ArchBenchConfig, out: Path) -> dict:
    set_threads(cfg.threads)
    cpu = run_cpu(cfg)
    cuda = run_cuda(cfg) if torch.cuda.is_available() and cfg.cuda_full_size else {"skipped": "no CUDA"}
    result = {"config": cfg.model_dump(), "cpu": cpu, "cuda": cuda}
    probe = cpu["dtype_probe"]
    lines = [f"CPU, random weights, reduced depth {cfg.cpu_layers} at full width; dtype probe on one "
             f"{probe['shape']} layer: " + ", ".join(f"{d}: prefill {probe[d]['prefill_ms']['longest']} ms, "
                                                     f"decode {probe[d]['decode_ms_per_token']} ms/token"
                                                     for d in cfg.dtypes) + f" -> {probe['chosen']}.", ""]
    rows = []
    for name, s in cpu["shapes"].items():
        rows.append({"shape": name, "per_layer_decode_ms": s["per_layer_decode_ms"], "head_ms": s["head_ms_per_token"],
                     "full_decode_ms_per_token_est": s["full_decode_ms_per_token_estimate"],
                     **{f"full_prefill_{k}_ms_est": v for k, v in s["full_prefill_ms_estimate"].items()},
                     **s["prefill_ratios"]})
    lines += md_table(rows, list(rows[0].keys()))
    lines += ["", f"Prompt lengths timed: {cfg.prompt_tokens}.", "",
              f"CUDA: {cuda.get('skipped') or cuda.get('gpu')}"]
    write_outputs(out, "arch", result, lines)
    return result
