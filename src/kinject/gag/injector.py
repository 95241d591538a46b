"""The injector: memories -> S vectors in the base's embedding space.

`Injector` = optional `AttentionSlotPooler` (pooling: attention, over per-token trajectories)
+ `LayerMixer` + `GatedResidualProjector` (+ `SemanticHead`, used only by L_sem in training).
Saved as `injector.safetensors` + `injector.json` (its `InjectorConfig`: expert dims, base
dims, layers, slots, the background spec of its training memories, ...). Every mismatch
between an injector and what it is used with (a memory store, a base model) is a one-line
`UserError` naming both sides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from kinject.config import StrictModel
from kinject.errors import UserError
from kinject.gag.modules import (
    AttentionSlotPooler,
    GatedResidualProjector,
    LayerMixer,
    SemanticHead,
)
from kinject.io import atomic_dir, write_json_atomic
from kinject.memory.spec import BackgroundSpec
from kinject.runs import fingerprints_conflict

WEIGHTS_FILE = "injector.safetensors"
CONFIG_FILE = "injector.json"


class InjectorConfig(StrictModel):
    expert_hidden: int
    base_hidden: int
    layers: list[str]
    slots: int
    # stored: read the store's compressed slots; attention: learned queries over trajectories
    pooling: Literal["stored", "attention"] = "stored"
    store_pooling: str = "segment_softmax"  # how the store's slots were made (pooling: stored)
    tau: float = 1.0  # the store's softmax temperature (online memories must be made the same way)
    semantic_dim: int = 0  # 0 = no semantic head
    mixer_clamp: float | None = 10.0
    attention_dim: int = 64
    attention_heads: int = 1  # heads per slot, each with its own value projection (pooling: attention)
    residual_mix: bool = False  # heads > 1: also add a one-head mix of whole token states
    expert: str = ""
    expert_fingerprint: str = ""  # of the expert that wrote the training memories
    base: dict = {}  # identity of the base it was trained for (see InjectedBase.identity)
    answer_format: str = ""  # the answer-format help line of the base prompt it was trained with
    # how the expert was asked for the memories it was trained on last (copied from that store);
    # online backgrounds are written the same way. None: trained before specs were recorded
    background_spec: BackgroundSpec | None = None


def _mismatch(pairs: dict[str, tuple], left: str, right: str) -> str | None:
    diffs = [f"{k} {a!r} ({left}) vs {b!r} ({right})" for k, (a, b) in pairs.items() if a != b]
    return "; ".join(diffs) or None


class Injector(nn.Module):
    def __init__(self, config: InjectorConfig, seed: int = 0):
        super().__init__()
        if config.slots < 1:
            raise UserError(f"injector slots must be >= 1 (got {config.slots})")
        if config.pooling == "attention" and (config.attention_heads < 1 or config.expert_hidden % config.attention_heads):
            raise UserError(f"injector.attention_heads {config.attention_heads} must divide the expert width "
                            f"{config.expert_hidden}")
        if config.pooling == "attention" and config.residual_mix and config.attention_heads == 1:
            raise UserError("injector.residual_mix adds a one-head mix to several heads: set "
                            "injector.attention_heads > 1 (e.g. 8) or residual_mix: false")
        self.config = config
        L = len(config.layers)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(seed)
            self.pooler = (AttentionSlotPooler(config.expert_hidden, config.slots, config.attention_dim, seed,
                                               config.attention_heads, config.residual_mix)
                           if config.pooling == "attention" else None)
            self.mixer = LayerMixer(L, config.slots, config.mixer_clamp)
            self.projector = GatedResidualProjector(config.expert_hidden, config.base_hidden)
            self.semantic_head = (SemanticHead(config.base_hidden, config.semantic_dim)
                                  if config.semantic_dim else None)
        self.float()  # fp32 always (as in the GAG paper)

    @property
    def needs_trajectories(self) -> bool:
        return self.pooler is not None

    def slots_of(self, slots: torch.Tensor | None = None, traj: torch.Tensor | None = None,
                 traj_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Memories `[B, L, S, d_e]`: the stored slots, or the learned pooling of trajectories."""
        if self.pooler is not None:
            if traj is None or traj_mask is None:
                raise ValueError("an attention-pooling injector needs trajectories and their mask")
            return self.pooler(traj.to(self.device), traj_mask.to(self.device))
        if slots is None:
            raise ValueError("this injector reads stored slots: pass slots [B, L, S, d]")
        return slots.to(self.device).float()

    def forward(self, slots: torch.Tensor | None = None, traj: torch.Tensor | None = None,
                traj_mask: torch.Tensor | None = None) -> torch.Tensor:
        """-> `z [B, S, d_b]` (float32), one vector per `<GAG>` placeholder."""
        return self.projector(self.mixer(self.slots_of(slots, traj, traj_mask)))

    @property
    def device(self) -> torch.device:
        return self.mixer.logits.device

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ io
    def save(self, out: str | Path) -> Path:
        from safetensors.torch import save_file

        with atomic_dir(out) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(tmp / WEIGHTS_FILE))
            write_json_atomic(tmp / CONFIG_FILE, self.config.model_dump())
        return Path(out)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Injector:
        from safetensors.torch import load_file

        p = Path(path)
        cfg = read_config(p)
        try:
            state = load_file(str(p / WEIGHTS_FILE))
        except Exception as e:  # safetensors errors on a damaged file
            raise UserError(f"cannot read injector {p}: {str(e).splitlines()[0]}") from None
        inj = cls(cfg)
        missing, unexpected = inj.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserError(f"injector {p}: weights do not fit its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
        return inj.to(device)

    # ------------------------------------------------------------------ compatibility
    def check_store(self, meta, where: str = "memory store") -> None:
        """A store (`StoreMeta`) must give the expert dims and layer keys this injector was built for."""
        pairs = {"expert_hidden": (self.config.expert_hidden, meta.expert_hidden),
                 "layers": (self.config.layers, meta.layers)}
        if fingerprints_conflict(self.config.expert_fingerprint, meta.expert_fingerprint):
            pairs["expert_fingerprint"] = (self.config.expert_fingerprint, meta.expert_fingerprint)
        if self.pooler is None:
            pairs["slots"] = (self.config.slots, meta.slots)
            pairs["pooling"] = (self.config.store_pooling, meta.pooling)
            pairs["tau"] = (self.config.tau, meta.tau)
        diff = _mismatch(pairs, "injector", where)
        if diff:
            raise UserError(f"memory store does not match the injector: {diff}")
        if self.pooler is not None and not meta.trajectories:
            raise UserError(f"the injector pools trajectories (pooling: attention) but {where} keeps none "
                            "(build it with keep_trajectories: true)")

    def check_base(self, identity: dict, where: str = "base") -> None:
        """The base must be the one the injector was trained for (dims, depth, vocab, weights)."""
        mine = self.config.base
        if not mine:
            return
        pairs = {k: (mine.get(k), identity.get(k)) for k in mine}
        if not fingerprints_conflict(str(mine.get("fingerprint") or ""), str(identity.get("fingerprint") or "")):
            pairs.pop("fingerprint", None)  # unknown or of an older format: proves nothing
        diff = _mismatch(pairs, "injector", where)
        if diff:
            raise UserError(f"injector was trained for another base: {diff}")


def read_config(path: str | Path) -> InjectorConfig:
    """An injector directory's `injector.json` (its weights are not read)."""
    p = Path(path)
    if not (p / CONFIG_FILE).is_file() or not (p / WEIGHTS_FILE).is_file():
        raise UserError(f"not an injector directory (needs {CONFIG_FILE} and {WEIGHTS_FILE}): {p}")
    try:
        return InjectorConfig.model_validate_json((p / CONFIG_FILE).read_text())
    except ValueError as e:  # pydantic errors on a damaged file
        raise UserError(f"cannot read injector {p}: {str(e).splitlines()[0]}") from None


def memory_batch(injector: Injector, store, ids: list[str]) -> dict[str, torch.Tensor]:
    """The forward kwargs for `ids` from a memory store: stored slots or padded trajectories."""
    if injector.needs_trajectories:
        traj, mask = store.trajectories(ids)
        return {"traj": traj, "traj_mask": mask}
    return {"slots": store.get_batch(ids)}
