"""Stage III: train the injector through a frozen base (the GAG paper), with accelerate.

Phases run in order: `alignment` (general-domain items, optional) then `domain`. Each phase
has its own AdamW (weight decay from the config) and linear warmup/decay schedule; the same
injector carries over. Only injector parameters are trainable: the base is frozen
(`requires_grad_(False)`, eval mode) and a test proves it stays bit-identical.

The loop is accelerate's: the injector, optimizer and schedule go through `prepare`, the loss
through `backward`, and checkpoints (`checkpoints/ckpt-NNNNNN/`) are `save_state` /
`load_state` folders (optimizer, scheduler, each rank's RNG states) plus the injector in its
own format (`injector/`) and `state.json` (phase, step). Batches are a pure function of
(seed, phase, step) (one permutation per epoch), so a resumed run equals an uninterrupted one.
Under torchrun the injector is wrapped in DDP: each rank takes `batch[rank::world]` and
backward averages the gradients across ranks.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from kinject.errors import UserError
from kinject.eval.data import gold_answers
from kinject.gag.base import InjectedBase
from kinject.gag.config import PhaseConfig, Stage3Config
from kinject.gag.injector import WEIGHTS_FILE, Injector, InjectorConfig, memory_batch
from kinject.gag.losses import diversity_loss, masked_mean, semantic_loss
from kinject.io import read_jsonl, write_json_atomic, write_jsonl_atomic
from kinject.log import get_logger
from kinject.memory.store import MemoryStore, item_id, row_question

log = get_logger(__name__)

CKPT_DIR = "checkpoints"
TERMS = ("loss", "nll", "sem", "div")


def semantic_encoder(path: str | None):
    """The frozen sentence encoder whose embedding of the gold answer is the `L_sem` target (CPU;
    `L_sem` is a cosine, so the encoder's normalized rows serve as they are)."""
    from kinject.encoders import EncoderConfig, load_encoder

    return load_encoder(EncoderConfig(path=path, device="cpu", batch_size=128, max_length=None))


@dataclass
class Phase:
    name: str
    cfg: PhaseConfig
    rows: list[dict]
    store: MemoryStore
    targets: torch.Tensor | None = None


def load_phase(name: str, cfg: PhaseConfig) -> Phase:
    store = MemoryStore(cfg.memory)
    rows = []
    for k, r in enumerate(read_jsonl(cfg.data), 1):
        where = f"{cfg.data}: record {k}"
        rows.append({"id": item_id(r), "question": row_question(r, where),
                     "answer": gold_answers(r, where)[0],  # the training target: the first gold answer
                     "instruction": r.get("instruction")})
    rows = rows[: cfg.limit] if cfg.limit else rows
    missing = [r["id"] for r in rows if r["id"] not in store]
    if missing:
        raise UserError(f"{cfg.data}: {len(missing)} of {len(rows)} rows have no memory in {cfg.memory} "
                        f"(first id {missing[0]!r}); build memories for this file with `kinject memory build`")
    return Phase(name, cfg, rows, store)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The rows of global batch `step`: epoch-wise permutations, deterministic from the seed."""
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[k * batch_size:(k + 1) * batch_size].tolist()


def stage3_losses(injector: Injector, base: InjectedBase, rows: list[dict], store: MemoryStore,
                  targets: torch.Tensor | None, w_sem: float, w_div: float, max_length: int = 512,
                  model: torch.nn.Module | None = None) -> dict:
    """All loss terms for one batch of rows (`id, question, answer`, optional `instruction`).
    `model`: the injector as `accelerate.prepare` wrapped it (under torchrun, DDP syncs the
    gradients of what runs through its forward)."""
    z = (model or injector)(**memory_batch(injector, store, [r["id"] for r in rows]))
    tb = base.encode_train_split([r["question"] for r in rows], [r["answer"] for r in rows], max_length,
                           [r.get("instruction") for r in rows]).to(base.device)
    use_sem = w_sem > 0 and injector.semantic_head is not None and targets is not None
    states = base.final_states(z.to(base.device), tb)
    logits, gold = base.answer_logits(states, tb.labels)
    nll = F.cross_entropy(logits.float(), gold).to(injector.device)  # = nll_loss on the full logits
    if use_sem:
        pooled = masked_mean(states, tb.answer_mask).to(injector.device)
        sem = semantic_loss(injector.semantic_head(pooled), targets)
    else:
        sem = torch.zeros((), device=injector.device)
    div = diversity_loss(z)
    return {"loss": nll + w_sem * sem + w_div * div, "nll": nll, "sem": sem, "div": div}


# ---------------------------------------------------------------------------- checkpoints
def save_checkpoint(acc, out: Path, state: dict, history: list[dict], keep: int) -> Path:
    """Every rank calls this (each writes its RNG state); the folder appears only once complete."""
    root = out / CKPT_DIR
    path = root / f"ckpt-{state['global_step']:06d}"
    tmp = root / f".{path.name}.tmp"  # one name for all ranks
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(tmp)
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_json_atomic(tmp / "state.json", state)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        write_jsonl_atomic(out / "history.jsonl", history)
        for old in sorted(root.glob("ckpt-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def latest_checkpoint(out: Path) -> Path | None:
    done = [p for p in sorted((out / CKPT_DIR).glob("ckpt-*")) if (p / "state.json").is_file()]
    if done and (done[-1] / "optimizer.safetensors").is_file():  # written before checkpoints were accelerate's
        raise UserError(f"{done[-1]} is a Stage III checkpoint of an older format, which cannot be resumed; remove "
                        f"{out / CKPT_DIR} to train from the start (init_injector: {done[-1] / 'injector'} starts "
                        f"from its weights)")
    return done[-1] if done else None


# ---------------------------------------------------------------------------- trainer
class Stage3Trainer:
    def __init__(self, cfg: Stage3Config, base: InjectedBase | None = None):
        from accelerate import DataLoaderConfiguration, DistributedDataParallelKwargs

        from kinject.distributed import make_accelerator

        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.out = Path(cfg.out)
        self.phases = [load_phase(n, p) for n, p in (("alignment", cfg.alignment), ("domain", cfg.domain))
                       if p is not None]
        if not self.phases:
            raise UserError("gag train: the config has neither an `alignment` nor a `domain` phase")
        # the global batch is split across ranks (one schedule step per optimizer step); the
        # semantic head runs outside the DDP forward, or not at all: a static graph allows both
        self.accelerator = make_accelerator(
            dataloader_config=DataLoaderConfiguration(split_batches=True),
            kwargs_handlers=[DistributedDataParallelKwargs(static_graph=True)])
        self.accelerator.register_save_state_pre_hook(self._save_injector)
        self.accelerator.register_load_state_pre_hook(self._load_injector)
        metas = [(f"{p.name} memory store {p.store.root}", p.store.meta) for p in self.phases]
        if base is None:
            device = str(self.accelerator.device) if cfg.device == "auto" else cfg.device
            slots = metas[0][1].slots
            base = InjectedBase.load(cfg.base, slots, device, cfg.base_dtype, cfg.instruction,
                                     answer_format=cfg.answer_format)
        self.base = base
        self.injector = self._make_injector(metas)
        self.base.model.requires_grad_(False)
        self.targets_needed = cfg.w_sem > 0

    def _make_injector(self, metas) -> Injector:
        ckpt = latest_checkpoint(self.out)
        if ckpt is not None:
            inj = Injector.load(ckpt / "injector")
        elif self.cfg.init_injector:
            inj = Injector.load(self.cfg.init_injector)
        else:
            meta = metas[0][1]
            sem_dim = 0
            if self.cfg.w_sem > 0:
                self.encoder = semantic_encoder(self.cfg.encoder)
                sem_dim = self.encoder.dim
            inj = Injector(InjectorConfig(
                expert_hidden=meta.expert_hidden, base_hidden=self.base.hidden_size, layers=list(meta.layers),
                slots=meta.slots, pooling=self.cfg.injector.pooling, store_pooling=meta.pooling, tau=meta.tau,
                semantic_dim=sem_dim, mixer_clamp=self.cfg.injector.mixer_clamp,
                attention_dim=self.cfg.injector.attention_dim,
                attention_heads=self.cfg.injector.attention_heads, residual_mix=self.cfg.injector.residual_mix,
                expert=meta.expert,
                expert_fingerprint=meta.expert_fingerprint, base=self.base.identity(),
                answer_format=self.base.answer_format,
            ), seed=self.cfg.seed)
        inj.check_base(self.base.identity(), f"base {self.cfg.base}")
        if inj.config.answer_format != self.base.answer_format:
            raise UserError(f"the injector was trained with answer_format {inj.config.answer_format!r}, this run "
                            f"uses {self.base.answer_format!r}; set answer_format to the injector's")
        for where, meta in metas:
            inj.check_store(meta, where)
        if inj.config.slots != self.base.num_slots:
            raise UserError(f"injector has {inj.config.slots} slots but the base prompt has {self.base.num_slots} placeholders")
        if self.cfg.w_sem > 0 and inj.semantic_head is None:
            raise UserError("w_sem > 0 but the injector has no semantic head (it was trained with w_sem: 0)")
        # online backgrounds must be written like the memories it learns last (the domain phase's)
        inj.config.background_spec = self.phases[-1].store.background_spec
        return inj.to(self.accelerator.device)

    def _targets(self, phase: Phase) -> torch.Tensor | None:
        if not self.targets_needed:
            return None
        if phase.targets is None:
            if getattr(self, "encoder", None) is None:
                self.encoder = semantic_encoder(self.cfg.encoder)
            if self.encoder.dim != self.injector.config.semantic_dim:
                raise UserError(f"semantic encoder dim {self.encoder.dim} ({self.encoder.path}) vs injector "
                                f"semantic head {self.injector.config.semantic_dim}")
            phase.targets = torch.from_numpy(self.encoder.encode([r["answer"] for r in phase.rows]))
        return phase.targets

    def _save_injector(self, models, weights, out) -> None:
        """save_state hook: the checkpoint holds the injector once, in its own format (config + weights)."""
        if self.accelerator.is_main_process:
            self.injector.save(Path(out) / "injector")
        weights.clear()

    def _load_injector(self, models, ckpt) -> None:
        """load_state hook: the injector's weights come from the checkpoint's `injector/`."""
        from safetensors.torch import load_file

        self.injector.load_state_dict(load_file(str(Path(ckpt) / "injector" / WEIGHTS_FILE)))
        models.clear()

    def train(self, stop_after: int | None = None, progress: bool = True) -> dict:
        """Run (or resume) all phases; `stop_after` global steps simulates an interruption."""
        from rich.progress import Progress
        from transformers import get_linear_schedule_with_warmup

        cfg, acc = self.cfg, self.accelerator
        rank, world = acc.process_index, acc.num_processes
        ckpt = latest_checkpoint(self.out)
        state = json.loads((ckpt / "state.json").read_text()) if ckpt else {"phase": 0, "phase_step": 0, "global_step": 0}
        history = []
        if ckpt and (self.out / "history.jsonl").is_file():
            history = [h for h in read_jsonl(self.out / "history.jsonl", allow_empty=True)
                       if h["step"] <= state["global_step"]]
        resume_phase = state["phase"] if ckpt else None  # `state` moves on as phases finish
        if ckpt:
            log.info(f"resuming from {ckpt} (phase {state['phase']}, step {state['phase_step']})")
        params = [p for p in self.injector.parameters() if p.requires_grad]
        t0, steps_run = time.perf_counter(), 0
        for pi, phase in enumerate(self.phases):
            if pi < state["phase"]:
                continue
            targets = self._targets(phase)
            acc.free_memory()  # a fresh optimizer and schedule per phase; save_state holds this phase's only
            opt = torch.optim.AdamW(params, lr=phase.cfg.learning_rate, weight_decay=cfg.weight_decay)
            total = phase.cfg.max_steps
            sched = get_linear_schedule_with_warmup(opt, int(phase.cfg.warmup_ratio * total), max(total, 1))
            model, opt, sched = acc.prepare(self.injector, opt, sched)
            start = 0
            if ckpt and pi == resume_phase:  # the checkpoint's phase only, not every later one
                acc.load_state(ckpt)  # injector, optimizer, scheduler, RNG states
                start = state["phase_step"]
            self.injector.train()
            with Progress(disable=not progress or not acc.is_main_process, transient=True) as bar:
                task = bar.add_task(f"stage III {phase.name}", total=total, completed=start)
                for step in range(start, total):
                    if stop_after is not None and steps_run >= stop_after:
                        return {"stopped_at": state["global_step"]}
                    idx = batch_indices(len(phase.rows), phase.cfg.batch_size, step, cfg.seed + 7919 * pi)
                    rows = [phase.rows[i] for i in idx[rank::world]]
                    tgt = targets[idx[rank::world]] if targets is not None else None
                    losses = stage3_losses(self.injector, self.base, rows, phase.store, tgt, cfg.w_sem, cfg.w_div,
                                           cfg.max_length, model=model)
                    opt.zero_grad(set_to_none=True)
                    acc.backward(losses["loss"])
                    gnorm = acc.clip_grad_norm_(params, cfg.clip)
                    opt.step()
                    sched.step()
                    steps_run += 1
                    state = {"phase": pi, "phase_step": step + 1, "global_step": state["global_step"] + 1}
                    g = state["global_step"]
                    if (step + 1) % cfg.log_every == 0 or step + 1 == total or step == start:
                        terms = torch.stack([losses[k].detach().float() for k in TERMS])
                        if world > 1:  # log the mean over ranks, i.e. over the global batch
                            terms = acc.reduce(terms, reduction="mean")
                        row = {"step": g, "phase": phase.name, "lr": sched.get_last_lr()[0],
                               "grad_norm": float(gnorm), **dict(zip(TERMS, terms.tolist()))}
                        history.append(row)
                        bar.update(task, description=f"stage III {phase.name} loss {row['loss']:.3f}")
                    if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == total:
                        save_checkpoint(acc, self.out, state, history, cfg.keep_checkpoints)
                    bar.advance(task)
            if total == 0:
                state = {"phase": pi + 1, "phase_step": 0, "global_step": state["global_step"]}
            else:
                state = {**state, "phase": pi + 1, "phase_step": 0}
        secs = time.perf_counter() - t0
        metrics = {"global_steps": state["global_step"], "steps_this_run": steps_run,
                   "steps_per_s": round(steps_run / secs, 3) if steps_run else 0.0,
                   "injector_parameters": self.injector.trainable_parameters(),
                   "added_prompt_tokens": self.injector.config.slots}
        for name in {h["phase"] for h in history}:
            last = [h for h in history if h["phase"] == name][-1]
            metrics.update({f"{name}_final_{k}": round(last[k], 5) for k in TERMS})
        if acc.is_main_process:
            self.injector.save(self.out / "injector")
            write_jsonl_atomic(self.out / "history.jsonl", history)
            plot_losses(history, self.out / "loss_curves.png")
        return metrics


def plot_losses(history: list[dict], path: Path) -> Path | None:
    """One panel per loss term against the global step; dashed lines mark phase changes."""
    if not history:
        return None
    from kinject.plots import save_figure, subplots

    fig, axes = subplots(1, len(TERMS), figsize=(4 * len(TERMS), 3.2))
    steps = [h["step"] for h in history]
    changes = [h["step"] for a, h in zip(history, history[1:]) if a["phase"] != h["phase"]]
    for ax, term in zip(axes, TERMS):
        ax.plot(steps, [h[term] for h in history], lw=1.2)
        for c in changes:
            ax.axvline(c, ls="--", c="grey", lw=0.8)
        ax.set_title(term)
        ax.set_xlabel("step")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return path
