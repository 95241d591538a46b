"""Prototype banks: per domain, k-means centroids of its encoded offline questions.

A banks directory holds one bank per domain plus an index:

    BANKS_DIR/banks.json              format, encoder (kind, path, id, dim), domain order
    BANKS_DIR/<domain>.safetensors    "prototypes": float32 [k, dim], rows L2-normalized
    BANKS_DIR/<domain>.json           domain, encoder id, dim, k, source file + sha256, created,
                                      prototypes_sha256 (of the tensor's bytes), threshold
                                      (after `kinject ppr calibrate`)
    BANKS_DIR/calibration.json        how the thresholds were chosen and what they cost

Every load checks a bank (`check_prototypes`): finite values, unit-norm rows, shape, and the
checksum recorded at build time, so a bank edited by hand or corrupted on disk is refused
instead of silently attracting every question.

Adding or removing a domain rewrites no other bank: the directory is copied to a temporary
sibling, changed there, and swapped in only on success (`kinject.io.atomic_dir`), so a failed
add/remove leaves the existing banks intact.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from kinject.encoders import Encoder, EncoderConfig, same_encoder
from kinject.errors import UserError
from kinject.io import atomic_dir, file_sha256, iter_jsonl, require_file, write_json_atomic
from kinject.ppr.config import PPRConfig
from kinject.ppr.encoders import count_over, cpu_threads, load_encoder

INDEX = "banks.json"
FORMAT = "kinject-ppr-banks/1"
TENSOR = "prototypes"
CALIBRATION = "calibration.json"
NORM_TOLERANCE = 1e-3  # |‖row‖ - 1| above it: not a bank this code wrote
DOMAIN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class Bank:
    domain: str
    prototypes: np.ndarray  # [k, dim] float32, rows L2-normalized
    meta: dict

    @property
    def k(self) -> int:
        return int(self.prototypes.shape[0])


@dataclass
class DomainQuestions:
    domain: str
    questions: list[str]  # distinct, after sampling
    source: Path
    sha256: str
    n_records: int


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_domain_name(name: str) -> str:
    if not DOMAIN_RE.match(name or ""):
        raise UserError(
            f"bad domain name {name!r}: use letters, digits, '_', '-', '.' (it names the bank's files)"
        )
    return name


def parse_domain_args(items: Sequence[str]) -> list[tuple[str, Path]]:
    """`--domain NAME=FILE` values -> [(name, path)]; a name given twice is an error."""
    out: list[tuple[str, Path]] = []
    for item in items:
        name, sep, file = item.partition("=")
        if not sep or not file:
            raise UserError(f"--domain {item!r} must look like NAME=FILE (e.g. materials=offline/materials.jsonl)")
        name = check_domain_name(name.strip())
        if any(n == name for n, _ in out):
            raise UserError(f"domain {name!r} is given twice in --domain; give each domain once")
        out.append((name, require_file(file.strip(), f"questions file for domain {name!r}")))
    if not out:
        raise UserError("no domains given: add --domain NAME=FILE (at least one)")
    return out


def read_questions(domain: str, path: Path, max_questions: int, seed: int) -> DomainQuestions:
    """Distinct questions of a JSONL file with a `question` field (seeded sample above the cap)."""
    seen: dict[str, None] = {}
    n = 0
    for n, row in enumerate(iter_jsonl(path, required=["question"]), 1):
        q = row["question"]
        if not isinstance(q, str) or not q.strip():
            raise UserError(f"{path}: record {n} has an empty or non-text 'question'")
        seen.setdefault(q.strip(), None)
    if n == 0:
        raise UserError(f"{path}: no questions for domain {domain!r} (empty file)")
    questions = list(seen)
    if len(questions) > max_questions:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(questions), size=max_questions, replace=False))
        questions = [questions[i] for i in keep]
    return DomainQuestions(domain, questions, path, file_sha256(path), n)


def kmeans_prototypes(emb: np.ndarray, k: int, n_init: int, seed: int) -> tuple[np.ndarray, float]:
    """k-means (scikit-learn) on unit vectors -> re-normalized centroids, and the inertia.

    k is capped by the number of distinct embeddings (so a small domain gets one prototype
    per question instead of empty clusters). When k reaches that number the distinct
    embeddings themselves are the prototypes (what k-means would converge to, without running
    it): the exemplar bank of `configs/ppr/tiny.yaml`."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    _, first = np.unique(np.round(emb, 6), axis=0, return_index=True)
    n_distinct = len(first)
    if k >= n_distinct:
        cent = emb[np.sort(first)].astype(np.float32)
        cent /= np.clip(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12, None)
        return cent, 0.0
    k_eff = max(1, k)
    with threadpool_limits(limits=cpu_threads()):
        km = KMeans(n_clusters=k_eff, n_init=n_init, random_state=seed).fit(emb)
    cent = km.cluster_centers_.astype(np.float32)
    cent /= np.clip(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12, None)
    return cent, float(km.inertia_)


def prototypes_sha256(protos: np.ndarray) -> str:
    """Checksum of the prototypes' float32 bytes (not the file's: its header may change)."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(protos, dtype="<f4").tobytes()).hexdigest()


def check_prototypes(protos: np.ndarray, meta: dict, dim: int | None = None) -> str | None:
    """What is wrong with a bank's prototypes, or None."""
    expect_dim = dim if dim is not None else meta.get("dim")
    if protos.ndim != 2 or protos.shape[0] != meta.get("k") or protos.shape[1] != expect_dim:
        return f"has shape {list(protos.shape)}, metadata says k={meta.get('k')}, dim={expect_dim}"
    if not np.all(np.isfinite(protos)):
        return "has non-finite values"
    norms = np.linalg.norm(protos.astype(np.float64), axis=1)
    worst = float(np.max(np.abs(norms - 1.0))) if len(norms) else 0.0
    if worst > NORM_TOLERANCE:
        return f"has rows that are not unit-norm (|norm - 1| up to {worst:.3g} > {NORM_TOLERANCE:g})"
    expected = meta.get("prototypes_sha256")
    if not expected:
        return "has no prototypes_sha256 in its metadata (built by an older version)"
    if prototypes_sha256(protos) != expected:
        return "does not match the checksum recorded when it was built (changed on disk)"
    return None


def build_bank(dq: DomainQuestions, encoder: Encoder, cfg: PPRConfig, progress: bool = True) -> Bank:
    emb = encoder.encode(dq.questions, progress=progress)
    over = count_over(encoder, dq.questions)
    protos, inertia = kmeans_prototypes(emb, cfg.k, cfg.n_init, cfg.seed)
    meta = {
        "domain": dq.domain,
        "encoder_id": encoder.id,
        "encoder_kind": encoder.kind,
        "dim": int(encoder.dim),
        "k": int(protos.shape[0]),
        "k_requested": cfg.k,
        "n_init": cfg.n_init,
        "seed": cfg.seed,
        "n_records": dq.n_records,
        "n_questions": len(dq.questions),
        "n_truncated": len(over),
        "inertia": round(inertia, 6),
        "source_file": str(dq.source.resolve()),
        "source_sha256": dq.sha256,
        "prototypes_sha256": prototypes_sha256(protos),
        "created": _now(),
    }
    return Bank(dq.domain, protos, meta)


def save_bank(bank: Bank, directory: Path) -> None:
    from safetensors.numpy import save_file

    save_file({TENSOR: np.ascontiguousarray(bank.prototypes, dtype=np.float32)},
              str(directory / f"{bank.domain}.safetensors"),
              metadata={"domain": bank.domain, "encoder_id": bank.meta["encoder_id"]})
    write_json_atomic(directory / f"{bank.domain}.json", bank.meta)


def _corrupt(banks_dir: Path, what: str) -> UserError:
    return UserError(
        f"banks dir {banks_dir}: {what}; rebuild it with `kinject ppr build` "
        "(or `ppr remove` + `ppr add` the domain)"
    )


def load_bank(banks_dir: Path, domain: str, encoder_id: str | None = None, dim: int | None = None) -> Bank:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    tensor_f, meta_f = banks_dir / f"{domain}.safetensors", banks_dir / f"{domain}.json"
    for f in (tensor_f, meta_f):
        if not f.is_file():
            raise _corrupt(banks_dir, f"missing file {f.name} for domain {domain!r}")
    try:
        meta = json.loads(meta_f.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except (json.JSONDecodeError, ValueError, UnicodeDecodeError) as e:
        raise _corrupt(banks_dir, f"corrupt {meta_f.name} ({e})") from None
    try:
        protos = load_file(str(tensor_f))[TENSOR]
    except (SafetensorError, KeyError, OSError, ValueError) as e:
        raise _corrupt(banks_dir, f"corrupt {tensor_f.name} ({str(e).splitlines()[0] or type(e).__name__})") from None
    if encoder_id is not None and not same_encoder(str(meta.get("encoder_id")), encoder_id):
        raise UserError(
            f"bank {domain!r} in {banks_dir} was built with encoder {meta.get('encoder_id')!r}, "
            f"not {encoder_id!r}: its prototypes are not comparable; route with the bank's encoder "
            "or rebuild the bank with this one"
        )
    problem = check_prototypes(protos, meta, dim)
    if problem:
        raise _corrupt(banks_dir, f"{tensor_f.name} {problem}")
    threshold = meta.get("threshold")
    if threshold is not None and not (isinstance(threshold, (int, float)) and np.isfinite(threshold)):
        raise _corrupt(banks_dir, f"{meta_f.name} has a bad threshold {threshold!r}")
    return Bank(domain, protos.astype(np.float32, copy=False), meta)


# ---------------------------------------------------------------- the banks directory


def read_index(banks_dir: str | Path) -> dict:
    d = Path(banks_dir)
    f = d / INDEX
    if not d.is_dir():
        raise UserError(f"banks dir not found: {d} (build one with `kinject ppr build`)")
    if not f.is_file():
        raise UserError(f"not a PPR banks dir: {d} has no {INDEX} (build one with `kinject ppr build`)")
    try:
        index = json.loads(f.read_text(encoding="utf-8"))
        ok = (isinstance(index, dict) and index.get("format") == FORMAT
              and isinstance(index.get("encoder"), dict) and isinstance(index.get("domains"), list))
    except (json.JSONDecodeError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise _corrupt(d, f"corrupt {INDEX}")
    return index


def encoder_config_of(index: dict, base: EncoderConfig | None = None) -> EncoderConfig:
    """The encoder a banks dir was built with (batch size/device from `base`)."""
    base = base or EncoderConfig()
    enc = index["encoder"]
    return base.model_copy(update={"kind": enc["kind"], "path": enc.get("path"),
                                   "max_length": enc.get("max_length", base.max_length)})


def _encoder_entry(encoder: Encoder) -> dict:
    cfg = encoder.config
    path = None if cfg.path is None else str(Path(cfg.path).resolve())
    return {"kind": encoder.kind, "path": path, "id": encoder.id, "dim": int(encoder.dim),
            "max_length": int(encoder.max_length)}


def _write_index(directory: Path, encoder_entry: dict, domains: list[str], cfg: PPRConfig, created: str) -> None:
    write_json_atomic(directory / INDEX, {
        "format": FORMAT,
        "encoder": encoder_entry,
        "domains": domains,
        "k": cfg.k, "n_init": cfg.n_init, "max_questions": cfg.max_questions, "seed": cfg.seed,
        "created": created,
        "updated": _now(),
    })


def build_banks(domains: list[tuple[str, Path]], out: str | Path, cfg: PPRConfig,
                encoder: Encoder | None = None, progress: bool = True) -> list[Bank]:
    """Build every domain's bank into a fresh `out` (replaced atomically when complete).
    Inputs are validated before the encoder (`cfg.encoder` unless given) is loaded."""
    out = Path(out)
    if out.exists() and not (out / INDEX).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not a PPR banks dir; choose an empty or new directory")
    questions = [read_questions(n, p, cfg.max_questions, cfg.seed) for n, p in domains]  # validate all first
    encoder = encoder or load_encoder(cfg.encoder)
    banks = []
    with atomic_dir(out) as tmp:
        for dq in questions:
            bank = build_bank(dq, encoder, cfg, progress=progress)
            save_bank(bank, tmp)
            banks.append(bank)
        _write_index(tmp, _encoder_entry(encoder), [b.domain for b in banks], cfg, _now())
    return banks


def _copy_into(src: Path, dst: Path, skip: set[str]) -> None:
    for f in src.iterdir():
        if f.is_file() and f.name not in skip and not f.name.startswith("."):
            shutil.copy2(f, dst / f.name)


def add_domain(banks_dir: str | Path, name: str, path: Path, cfg: PPRConfig,
               encoder: Encoder | EncoderConfig | None = None, progress: bool = True) -> Bank:
    """Add one domain's bank; the other banks' files are copied byte for byte. The encoder
    defaults to the banks' own; another one is refused."""
    d = Path(banks_dir)
    index = read_index(d)
    name = check_domain_name(name)
    if name in index["domains"]:
        raise UserError(f"domain {name!r} is already in {d}; `kinject ppr remove` it first to rebuild it")
    dq = read_questions(name, require_file(path, f"questions file for domain {name!r}"),
                        cfg.max_questions, cfg.seed)
    if encoder is None or isinstance(encoder, EncoderConfig):
        encoder = load_encoder(encoder or encoder_config_of(index, cfg.encoder))
    if not same_encoder(str(index["encoder"].get("id")), encoder.id):
        raise UserError(
            f"banks in {d} were built with encoder {index['encoder'].get('id')!r}, not {encoder.id!r}: "
            "add the domain with the banks' encoder (omit --encoder)"
        )
    for other in index["domains"]:  # refuse to extend a broken dir
        load_bank(d, other, encoder_id=encoder.id, dim=encoder.dim)
    bank = build_bank(dq, encoder, cfg, progress=progress)
    with atomic_dir(d) as tmp:
        _copy_into(d, tmp, skip={INDEX})
        save_bank(bank, tmp)
        write_json_atomic(tmp / INDEX, {**index, "domains": [*index["domains"], name], "updated": _now()})
    return bank


def remove_domain(banks_dir: str | Path, name: str) -> list[str]:
    """Remove one domain's bank; returns the remaining domains."""
    d = Path(banks_dir)
    index = read_index(d)
    if name not in index["domains"]:
        raise UserError(f"domain {name!r} is not in {d} (domains: {', '.join(index['domains'])})")
    rest = [x for x in index["domains"] if x != name]
    if not rest:
        raise UserError(f"{name!r} is the only domain in {d}; a router needs at least one bank")
    with atomic_dir(d) as tmp:
        _copy_into(d, tmp, skip={INDEX, f"{name}.safetensors", f"{name}.json"})
        index = {**index, "domains": rest, "updated": _now()}
        write_json_atomic(tmp / INDEX, index)
    return rest


def write_thresholds(banks_dir: str | Path, thresholds: dict[str, float], report: dict) -> None:
    """Record calibrated per-domain thresholds in the banks' metadata and the report in
    `calibration.json` (atomic: temp dir + swap; the tensors are copied byte for byte)."""
    d = Path(banks_dir)
    index = read_index(d)
    unknown = sorted(set(thresholds) - set(index["domains"]))
    if unknown:
        raise UserError(f"thresholds for domains not in {d}: {', '.join(unknown)}")
    metas = {}
    for name in index["domains"]:
        bank = load_bank(d, name)  # refuse to calibrate a broken dir
        meta = {k: v for k, v in bank.meta.items() if k != "threshold"}
        if name in thresholds:
            meta["threshold"] = round(float(thresholds[name]), 6)
        metas[name] = meta
    with atomic_dir(d) as tmp:
        _copy_into(d, tmp, skip={CALIBRATION})
        for name, meta in metas.items():
            write_json_atomic(tmp / f"{name}.json", meta)
        write_json_atomic(tmp / CALIBRATION, report)


def build_bank_like(name: str, questions: str | Path, like: str | Path, out: str | Path) -> Path:
    """One domain's bank, built into a fresh banks dir `out` with the encoder and settings
    (k, n_init, max_questions, seed) of the banks dir `like`, so it can join `like`'s router."""
    index = read_index(like)
    cfg = PPRConfig(encoder=encoder_config_of(index), **{k: index[k] for k in ("k", "n_init", "max_questions", "seed")
                                                         if k in index})
    encoder = load_encoder(cfg.encoder)
    if not same_encoder(str(index["encoder"].get("id")), encoder.id):
        raise UserError(f"the encoder of {like} loads as {encoder.id!r}, not {index['encoder'].get('id')!r}")
    build_banks([(check_domain_name(name), require_file(questions, f"questions file for domain {name!r}"))],
                out, cfg, encoder, progress=False)
    return Path(out)
