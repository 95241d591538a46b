"""The memory store: compressed slots per question, on disk, readable by id or by batch.

Layout of a store directory:
    store.json      what the memories are: expert (path, hidden size, layers), layer keys,
                    slots, pooling, tau, dtype, whether trajectories are kept, the background
                    spec (system prompt, request, length cap: `kinject.memory.spec`), and per
                    shard its rows, byte size and sha256
    index.jsonl     one row per memory: id, question, background, n_tokens, shard, row
    shards/shard-NNNNN.safetensors
                    `slots` [N, L, S, d] (float16 / bfloat16 / float32) and, when the store
                    keeps trajectories (learned pooling on the tiny world), the ragged
                    per-token states as `traj` [sum T, L, d] + `traj_offsets` [N + 1]

Shards are append-only; each write is atomic (shard file, then store.json, then index), so an
interrupted build resumes by skipping the ids already indexed. Reads are memory-mapped
(`safetensors.safe_open`); a missing, truncated or corrupt shard is a one-line error naming it
(size check on open, header/shape/dtype checks, sha256 in `verify`), never zero-filled data.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from kinject.config import StrictModel
from kinject.errors import UserError
from kinject.io import file_sha256, iter_jsonl, write_json_atomic, write_jsonl_atomic
from kinject.memory.spec import BackgroundSpec

STORE_FILE = "store.json"
INDEX_FILE = "index.jsonl"
SHARD_DIR = "shards"
FORMAT_VERSION = 1
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
INDEX_FIELDS = ("id", "question", "background", "n_tokens", "shard", "row")


class ShardInfo(StrictModel):
    rows: int
    bytes: int
    sha256: str


class StoreMeta(StrictModel):
    """What a store holds; two stores (or a store and an injector) are compatible when these agree."""

    format_version: int = FORMAT_VERSION
    expert: str = ""
    expert_hidden: int
    expert_layers: int = 0
    expert_fingerprint: str = ""
    layers: list[str]
    slots: int
    pooling: str = "segment_softmax"
    tau: float = 1.0
    dtype: str = "float16"
    trajectories: bool = False
    # memories without decoding (memory build source: prefill): the answer prefix read after each
    # question; None: the states of backgrounds (generated or given)
    prefill_prefix: str | None = None
    # how the expert was asked for the backgrounds; None: a store built before specs were recorded
    background_spec: BackgroundSpec | None = None
    shards: dict[str, ShardInfo] = {}

    def signature(self) -> dict:
        """The fields that must match between stores that are merged or resumed."""
        sig = {k: getattr(self, k) for k in
               ("expert_hidden", "expert_fingerprint", "layers", "slots", "pooling", "tau", "dtype",
                "trajectories", "prefill_prefix")}
        return {**sig, "background_spec": self.background_spec and self.background_spec.model_dump()}


def _mismatch(a: dict, b: dict, what_a: str, what_b: str) -> str | None:
    from kinject.runs import fingerprints_conflict

    def differ(k: str) -> bool:
        if k == "expert_fingerprint":  # an unknown or older-format fingerprint proves nothing
            return fingerprints_conflict(a[k], b.get(k) or "")
        if k == "background_spec":  # nor does a store that predates recorded specs
            return a[k] is not None and b.get(k) is not None and a[k] != b[k]
        return a[k] != b.get(k)

    diffs = [f"{k}: {a[k]!r} ({what_a}) vs {b[k]!r} ({what_b})" for k in a if differ(k)]
    return "; ".join(diffs) or None


def read_meta(root: Path) -> StoreMeta:
    """A store's `store.json` (nothing else is read)."""
    path = root / STORE_FILE
    if not path.is_file():
        raise UserError(f"not a memory store (no {STORE_FILE}): {root} (build one with `kinject memory build`)")
    try:
        return StoreMeta.model_validate_json(path.read_text())
    except ValueError as e:
        raise UserError(f"corrupt {path}: {str(e).splitlines()[0]}") from None


class MemoryStore:
    """Open with `MemoryStore(dir)`; create with `MemoryStore.create(dir, meta)`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / STORE_FILE
        self.meta = read_meta(self.root)
        if self.meta.dtype not in DTYPES:
            raise UserError(f"{meta_path}: unknown dtype {self.meta.dtype!r}; use one of {', '.join(DTYPES)}")
        self.records: list[dict] = []
        self._by_id: dict[str, int] = {}
        if (self.root / INDEX_FILE).is_file():
            for rec in iter_jsonl(self.root / INDEX_FILE, required=INDEX_FIELDS):
                if rec["shard"] not in self.meta.shards:
                    raise UserError(f"{self.root / INDEX_FILE}: id {rec['id']!r} points to unknown shard {rec['shard']!r}")
                self._by_id[rec["id"]] = len(self.records)
                self.records.append(rec)
        self._handles: dict[str, object] = {}

    # ----------------------------------------------------------------- creation / writing
    @classmethod
    def create(cls, root: str | Path, meta: StoreMeta) -> MemoryStore:
        """A new empty store, or the existing one at `root` if its meta agrees (resume)."""
        root = Path(root)
        if (root / STORE_FILE).is_file():
            store = cls(root)
            diff = _mismatch(meta.signature(), store.meta.signature(), "config", str(root))
            if diff:
                raise UserError(f"existing memory store {root} was built differently: {diff} "
                                "(use another out dir or delete it)")
            return store
        if root.exists() and any(root.iterdir()):
            raise UserError(f"output directory {root} exists and is not a memory store (choose another out)")
        if meta.slots < 1:
            raise UserError(f"number of slots must be >= 1 (got {meta.slots})")
        (root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        write_json_atomic(root / STORE_FILE, meta.model_dump())
        return cls(root)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(L, S, d) of one memory."""
        return len(self.meta.layers), self.meta.slots, self.meta.expert_hidden

    @property
    def background_spec(self) -> BackgroundSpec | None:
        """How the expert was asked for this store's backgrounds (`store_background_spec`)."""
        return _spec_of(self.root, self.meta)

    def _next_shard_name(self) -> str:
        return f"shard-{len(self.meta.shards):05d}.safetensors"

    def add(
        self,
        records: Sequence[dict],
        slots: torch.Tensor,
        trajectories: Sequence[torch.Tensor] | None = None,
    ) -> str:
        """Append one shard: `records` (id, question, background, n_tokens), `slots` [N, L, S, d]."""
        from safetensors.torch import save_file

        from kinject.io import atomic_path

        n = len(records)
        if n == 0:
            return ""
        if tuple(slots.shape) != (n, *self.shape):
            raise ValueError(f"slots shape {tuple(slots.shape)} != {(n, *self.shape)}")
        dup = [r["id"] for r in records if r["id"] in self._by_id]
        if dup:
            raise ValueError(f"ids already stored: {dup[:3]}")
        dtype = DTYPES[self.meta.dtype]
        tensors = {"slots": slots.to(dtype).contiguous()}
        if self.meta.trajectories:
            if trajectories is None or len(trajectories) != n:
                raise ValueError("this store keeps trajectories: pass one [L, T, d] per record")
            # ragged rows concatenated along T, with offsets: [sum T, L, d]
            lengths = [int(t.shape[1]) for t in trajectories]
            L, _, d = self.shape
            flat = [t.permute(1, 0, 2) for t in trajectories]
            tensors["traj"] = (torch.cat(flat) if sum(lengths) else torch.zeros(0, L, d)).to(dtype).contiguous()
            tensors["traj_offsets"] = torch.tensor([0, *lengths]).cumsum(0)
        name = self._next_shard_name()
        path = self.root / SHARD_DIR / name
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))
        self.meta.shards[name] = ShardInfo(rows=n, bytes=path.stat().st_size, sha256=file_sha256(path))
        write_json_atomic(self.root / STORE_FILE, self.meta.model_dump())
        for row, r in enumerate(records):
            rec = {"id": str(r["id"]), "question": r["question"], "background": r.get("background", ""),
                   "n_tokens": int(r.get("n_tokens", 0)), "shard": name, "row": row}
            self._by_id[rec["id"]] = len(self.records)
            self.records.append(rec)
        write_jsonl_atomic(self.root / INDEX_FILE, self.records)
        return name

    # ----------------------------------------------------------------- reading
    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, id_: str) -> bool:
        return id_ in self._by_id

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.records]

    def record(self, id_: str) -> dict:
        if id_ not in self._by_id:
            raise UserError(f"memory store {self.root} has no memory for id {id_!r} (build memories for this data first)")
        return self.records[self._by_id[id_]]

    def _shard(self, name: str):
        """Open (memory-mapped) and validate a shard once; a broken shard is named in the error."""
        if name in self._handles:
            return self._handles[name]
        from safetensors import safe_open

        path = self.root / SHARD_DIR / name
        info = self.meta.shards[name]
        if not path.is_file():
            raise UserError(f"memory shard missing: {path} (rebuild the store)")
        size = path.stat().st_size
        if size != info.bytes:
            raise UserError(f"memory shard truncated or changed: {path} has {size} bytes, store.json says {info.bytes} (rebuild the store)")
        try:
            h = safe_open(str(path), framework="pt")
            keys = set(h.keys())
            shape = tuple(h.get_slice("slots").get_shape())
        except Exception as e:  # safetensors raises its own error type for bad headers
            raise UserError(f"corrupt memory shard {path}: {str(e).splitlines()[0]}") from None
        want = (info.rows, *self.shape)
        if shape != want:
            raise UserError(f"corrupt memory shard {path}: slots shape {shape}, expected {want}")
        dtype = h.get_slice("slots").get_dtype()
        if dtype != {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}[self.meta.dtype]:
            raise UserError(f"corrupt memory shard {path}: dtype {dtype}, store.json says {self.meta.dtype}")
        if self.meta.trajectories and not {"traj", "traj_offsets"} <= keys:
            raise UserError(f"corrupt memory shard {path}: no trajectories although store.json says it keeps them")
        self._handles[name] = h
        return h

    def get(self, id_: str) -> torch.Tensor:
        """Slots `[L, S, d]` of one memory (store dtype)."""
        rec = self.record(id_)
        row = rec["row"]
        return self._shard(rec["shard"]).get_slice("slots")[row:row + 1][0]

    def get_batch(self, ids: Sequence[str], dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """Slots `[B, L, S, d]` for ids, in order."""
        out = torch.stack([self.get(i) for i in ids]) if ids else torch.zeros(0, *self.shape)
        return out.to(dtype) if dtype is not None else out

    def trajectory(self, id_: str) -> torch.Tensor:
        """Per-token states `[L, T, d]` (stores that keep trajectories only)."""
        if not self.meta.trajectories:
            raise UserError(f"memory store {self.root} keeps no trajectories (build it with keep_trajectories: true)")
        rec = self.record(id_)
        h = self._shard(rec["shard"])
        off = h.get_slice("traj_offsets")[rec["row"]:rec["row"] + 2].tolist()
        return h.get_slice("traj")[off[0]:off[1]].permute(1, 0, 2)

    def trajectories(self, ids: Sequence[str], dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded `[B, L, Tmax, d]` and a bool mask `[B, Tmax]` (True = real token)."""
        L, _, d = self.shape
        return pad_trajectories([self.trajectory(i) for i in ids], L, d, dtype)

    # ----------------------------------------------------------------- checks / stats
    def verify(self) -> None:
        """Full check: every indexed shard opens, has the recorded size, shape and sha256."""
        for name in sorted({r["shard"] for r in self.records}):
            self._shard(name)
            path = self.root / SHARD_DIR / name
            if file_sha256(path) != self.meta.shards[name].sha256:
                raise UserError(f"corrupt memory shard {path}: sha256 differs from store.json (rebuild the store)")

    def stats(self) -> dict:
        L, S, d = self.shape
        n = len(self.records)
        used = {r["shard"] for r in self.records}
        total = sum(self.meta.shards[s].bytes for s in used)
        tokens = [r["n_tokens"] for r in self.records]
        itemsize = torch.tensor([], dtype=DTYPES[self.meta.dtype]).element_size()
        mean_t = sum(tokens) / n if n else 0.0
        full = mean_t * L * d * itemsize  # a full trajectory per sample at the same dtype and layers
        slot_bytes = L * S * d * itemsize
        return {
            "dir": str(self.root), "n": n, "shards": len(used), "layers": self.meta.layers,
            "slots": S, "expert_hidden": d, "dtype": self.meta.dtype, "pooling": self.meta.pooling,
            "trajectories_kept": self.meta.trajectories, "bytes_on_disk": total,
            "bytes_per_sample": round(total / n, 1) if n else 0.0,
            "slot_bytes_per_sample": slot_bytes,
            "mean_tokens": round(mean_t, 2),
            "full_trajectory_bytes_per_sample": round(full, 1),
            "full_over_slots_ratio": round(full / slot_bytes, 2) if slot_bytes else 0.0,
        }

    def token_histogram(self, bins: int = 8) -> list[tuple[int, int, int]]:
        """(low, high, count) buckets of generated token counts."""
        tokens = [r["n_tokens"] for r in self.records]
        if not tokens:
            return []
        lo, hi = min(tokens), max(tokens)
        width = max(1, -(-(hi - lo + 1) // bins))
        out = []
        for b in range(lo, hi + 1, width):
            out.append((b, b + width - 1, sum(b <= t < b + width for t in tokens)))
        return out


def _spec_of(root: Path, meta: StoreMeta) -> BackgroundSpec | None:
    if meta.background_spec is not None:
        return meta.background_spec
    # built before specs were recorded: the config its `kinject memory build` manifest holds
    from kinject.runs import read_manifest

    cfg = (read_manifest(root) or {}).get("config") or {}
    if cfg.get("kind") != "memory_build":
        return None
    from kinject.memory.config import MemoryBuildConfig

    try:
        return MemoryBuildConfig.model_validate(cfg).background_spec()
    except ValueError:  # a config of another version: nothing to go by
        return None


def store_background_spec(root: str | Path) -> BackgroundSpec | None:
    """The background spec of the store at `root` (its `store.json` alone, no index read): the
    recorded one; for a store built before specs were recorded, the one its build manifest's
    config implies; None when neither says."""
    root = Path(root)
    return _spec_of(root, read_meta(root))


def pad_trajectories(states: Sequence[torch.Tensor], layers: int, dim: int,
                     dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token states `[L, T_i, d]` -> right-padded `[B, L, Tmax, d]` and a bool mask `[B, Tmax]`
    (True = real token; Tmax >= 1 so an empty trajectory still has a column): the attention
    pooler's input, for stored and online memories alike."""
    tmax = max([t.shape[1] for t in states] + [1])
    x = torch.zeros(len(states), layers, tmax, dim, dtype=dtype)
    mask = torch.zeros(len(states), tmax, dtype=torch.bool)
    for i, t in enumerate(states):
        x[i, :, :t.shape[1]] = t.to(dtype)
        mask[i, :t.shape[1]] = True
    return x, mask


def merge_stores(target: str | Path, parts: Sequence[str | Path], order: Sequence[str] | None = None,
                 remove_parts: bool = False) -> MemoryStore:
    """Append the shards of `parts` (e.g. one store per rank) to the store at `target`.

    Shard files are moved/copied as they are (no re-packing); index rows get new shard names;
    ids already in the target are skipped. `order` (ids) sorts the merged index, e.g. back into
    question-file order after `rank::world_size` sharding.
    """
    stores = [MemoryStore(p) for p in parts]
    if not stores:
        raise UserError("nothing to merge: no part stores given")
    meta = stores[0].meta.model_copy(update={"shards": {}})
    out = MemoryStore.create(target, meta)
    for st in stores:
        diff = _mismatch(st.meta.signature(), out.meta.signature(), str(st.root), str(out.root))
        if diff:
            raise UserError(f"cannot merge memory stores built differently: {diff}")
        for name in st.meta.shards:
            recs = [r for r in st.records if r["shard"] == name and r["id"] not in out]
            if not recs:
                continue
            st._shard(name)  # validate before adopting it
            new = out._next_shard_name()
            src, dst = st.root / SHARD_DIR / name, out.root / SHARD_DIR / new
            (shutil.move if remove_parts else shutil.copyfile)(src, dst)
            out.meta.shards[new] = st.meta.shards[name]
            write_json_atomic(out.root / STORE_FILE, out.meta.model_dump())
            for r in recs:
                rec = {**r, "shard": new}
                out._by_id[rec["id"]] = len(out.records)
                out.records.append(rec)
            write_jsonl_atomic(out.root / INDEX_FILE, out.records)
    if order is not None:
        pos = {i: k for k, i in enumerate(order)}
        out.records.sort(key=lambda r: pos.get(r["id"], len(pos)))
        out._by_id = {r["id"]: k for k, r in enumerate(out.records)}
        write_jsonl_atomic(out.root / INDEX_FILE, out.records)
    if remove_parts:
        for st in stores:
            shutil.rmtree(st.root, ignore_errors=True)
    return out


def row_question(row: dict, where: str = "row") -> str:
    """The question of a data row: `question`, or `input` (the Stage II `{instruction, input,
    output}` rows of the world's domain QA files)."""
    for key in ("question", "input"):
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return value
    raise UserError(f"{where}: no non-empty `question` (or `input`) field")


def item_id(row: dict) -> str:
    """The key joining a data row to its memory: its `id`, else a hash of the question text."""
    if row.get("id") not in (None, ""):
        return str(row["id"])
    return "q-" + hashlib.sha1(row_question(row).encode("utf-8")).hexdigest()[:16]
