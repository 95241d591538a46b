"""Causal LMs and tokenizers from LOCAL directories, and a tiny-model factory.

Nothing is downloaded: every loader passes `local_files_only=True` (the `kinject` command also
sets `HF_HUB_OFFLINE=1`; importing kinject as a library leaves the environment alone), and a path
that does not exist is a one-line `UserError` naming it (a hub id like `Qwen/Qwen3-8B` included).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kinject.errors import UserError
from kinject.io import atomic_dir

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available (use device=cpu or auto)")
    return torch.device(device)


def resolve_dtype(dtype: str = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """auto: bf16 on CUDA, fp32 on CPU (CPU bf16 matmuls are slow and lossy for tiny models)."""
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise UserError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(table)}")
    return table[dtype]


def check_model_dir(path: str | os.PathLike, need_tokenizer: bool = False) -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(
            f"model path does not exist: {path} (kinject loads models from local directories only)"
        )
    if not p.is_dir():
        raise UserError(f"model path is not a directory: {path}")
    cfg = p / "config.json"
    if not cfg.is_file():
        raise UserError(f"not a model directory (no config.json): {path}")
    try:
        json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"malformed config.json in {path}: {e.msg}") from None
    if need_tokenizer and not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"model directory has no tokenizer files: {path}")
    return p


def quiet_transformers() -> None:
    """No weight-loading progress bars: they would stand before a one-line `error:` message."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    p = Path(path)
    if not p.is_dir():
        raise UserError(f"tokenizer path does not exist: {path}")
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"directory has no tokenizer files: {path}")
    try:
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load tokenizer from {path}: {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(
    path: str | os.PathLike, device: str = "auto", dtype: str = "auto", with_tokenizer: bool = True
):
    """Load (model, tokenizer) from a local HF directory; model in eval mode on `device`."""
    from transformers import AutoModelForCausalLM

    p = check_model_dir(path, need_tokenizer=with_tokenizer)
    quiet_transformers()
    dev = resolve_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(p), dtype=resolve_dtype(dtype, dev), local_files_only=True
        )
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot load model from {path}: {str(e).splitlines()[0]}") from None
    model.to(dev).eval()
    tok = load_tokenizer(p) if with_tokenizer else None
    return model, tok


@dataclass
class TinySpec:
    """Shape of a tiny model. head_dim and intermediate are explicit: Qwen3Config's defaults
    (head_dim=128, intermediate=22016) are for the 8B model, not for a 64-wide toy."""

    arch: str = "qwen3"
    vocab: int = 1000
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int | None = None
    intermediate: int | None = None
    max_positions: int = 512
    tie_embeddings: bool = True

    def to_config(self):
        from transformers import LlamaConfig, Qwen3Config

        if self.hidden % self.heads:
            raise UserError(f"hidden size {self.hidden} is not divisible by heads {self.heads}")
        common = dict(
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads or self.heads,
            head_dim=self.hidden // self.heads,
            intermediate_size=self.intermediate or 4 * self.hidden,
            max_position_embeddings=self.max_positions,
            tie_word_embeddings=self.tie_embeddings,
            rope_theta=10000.0,
        )
        if self.arch == "qwen3":
            return Qwen3Config(**common)
        if self.arch == "llama":
            return LlamaConfig(**common)
        raise UserError(f"unknown architecture {self.arch!r}; use qwen3 or llama")


def make_tiny_model(spec: TinySpec, tokenizer=None, seed: int = 0):
    """A randomly initialized causal LM of the given shape (vocab grown to fit the tokenizer)."""
    from transformers import AutoModelForCausalLM

    if tokenizer is not None:
        spec.vocab = max(spec.vocab, len(tokenizer))
    config = spec.to_config()
    if tokenizer is not None:
        config.pad_token_id = tokenizer.pad_token_id
        config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def set_generation_stops(model, tokenizer) -> None:
    """Generation stops at end of turn or end of document; pad with the pad token."""
    from kinject.tokenizer import stop_token_ids

    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def save_model(model, tokenizer, out: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Save model + tokenizer as a normal HF directory, atomically."""
    quiet_transformers()
    with atomic_dir(out) as tmp:
        to_save = model
        if dtype is not None and dtype != next(model.parameters()).dtype:
            import copy

            to_save = copy.deepcopy(model).to(dtype)
        if tokenizer is not None:
            set_generation_stops(to_save, tokenizer)
            tokenizer.save_pretrained(str(tmp))
        to_save.save_pretrained(str(tmp), safe_serialization=True)
    return Path(out)


def add_special_tokens(model, tokenizer, tokens) -> list[str]:
    """Add the `tokens` a pretrained tokenizer lacks as special tokens; grow the embeddings only
    when an id falls outside them. Returns the tokens added.

    The original rows stay bit-identical (resize copies them; a test checks it). The new rows
    start at zero, not transformers' sampled mean: kinject overwrites or re-initializes their
    inputs (`<GAG>` rows are replaced by slots, GRIP's control tokens get word means), and with
    tied embeddings a zero row gives the new token a logit of exactly 0, so a frozen base never
    starts emitting a token it was not trained on because of a random draw."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if not missing:
        return []
    tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight[rows:] = 0
            out = model.get_output_embeddings()
            if out is not None:
                out.weight[rows:] = 0
                if getattr(out, "bias", None) is not None:
                    out.bias[rows:] = 0
    return missing


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def model_info(path: str | os.PathLike) -> dict[str, Any]:
    p = check_model_dir(path)
    cfg = json.loads((p / "config.json").read_text())
    model, tok = load_causal_lm(p, device="cpu", dtype="float32",
                                with_tokenizer=any((p / f).is_file() for f in TOKENIZER_FILES))
    info = {
        "path": str(p),
        "architecture": (cfg.get("architectures") or [cfg.get("model_type")])[0],
        "model_type": cfg.get("model_type"),
        "parameters": count_parameters(model),
        "stored_dtype": cfg.get("dtype") or cfg.get("torch_dtype"),
        "hidden_size": cfg.get("hidden_size"),
        "layers": cfg.get("num_hidden_layers"),
        "heads": cfg.get("num_attention_heads"),
        "vocab_size": cfg.get("vocab_size"),
        "max_positions": cfg.get("max_position_embeddings"),
        "weights_bytes": sum(f.stat().st_size for f in p.glob("*.safetensors")),
    }
    if tok is not None:
        info["tokenizer_size"] = len(tok)
        info["special_tokens"] = sorted(set(tok.all_special_tokens))
        info["has_chat_template"] = bool(getattr(tok, "chat_template", None))
    return info
