"""`kinject grip rl`: load the SFT checkpoint, build the DAPO trainer, train (resumable), plot, evaluate.

Output directory:
  checkpoints/checkpoint-N/   TRL checkpoints (model, optimizer, scheduler, RNG): a rerun resumes
  model/                      the final policy (atomic)
  metrics.jsonl, curves.png   per-step metrics and their plot
  results.jsonl               `grip` (the SFT start) and `grip_rl` on the eval files
  predictions/<method>__<dataset>__<split>.jsonl
  manifest.json               written last; a rerun with the same inputs skips
"""

from __future__ import annotations

import time
from pathlib import Path

from kinject.errors import UserError
from kinject.eval.results import ResultRow
from kinject.grip.rl_config import GripRLConfig

CHECKPOINTS = "checkpoints"


def validate(cfg: GripRLConfig) -> None:
    if cfg.rollout.group_size < 2:
        raise UserError(
            f"rollout.group_size is {cfg.rollout.group_size}: DAPO needs groups of >= 2 samples per prompt "
            "(advantages are normalised within a group); set rollout.group_size=8 as in the paper"
        )
    if cfg.rollout.prompts_per_step < 1:
        raise UserError("rollout.prompts_per_step must be >= 1")
    if cfg.reward == "outcome" and not cfg.retrieval.index:
        raise UserError("reward 'outcome' runs retrieval in the rollout: set retrieval.index to a "
                        "`kinject index build` directory")
    if cfg.overlong.enabled and not 0 <= cfg.overlong.cache < cfg.rollout.max_new_tokens:
        raise UserError("overlong.cache must be in [0, rollout.max_new_tokens)")


def last_checkpoint(out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    d = out / CHECKPOINTS
    return get_last_checkpoint(str(d)) if d.is_dir() else None


def run_grip_rl(cfg: GripRLConfig, out: str | Path, force: bool = False) -> dict:
    import torch

    from kinject.grip.agent import AgentSettings, check_control_tokens
    from kinject.models import load_causal_lm
    from kinject.runs import RunRecorder, inputs_hash, is_complete

    out = Path(out)
    validate(cfg)
    h = inputs_hash(cfg, cfg.model, cfg.data.train, *cfg.eval.files)
    if not force and is_complete(out, h):
        return {"skipped": True, "out": str(out)}
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    model, tok = load_causal_lm(cfg.model, device="auto", dtype="float32")
    check_control_tokens(tok)  # an SFT checkpoint without the control tokens: one error line
    from kinject.grip.rl_rollout import load_rl_records

    data = load_rl_records(cfg.data.train, cfg.reward, cfg.data.max_examples)
    retriever = None
    if cfg.retrieval.index:
        from kinject.retrieval import open_index

        retriever = open_index(cfg.retrieval.index)
    for f in cfg.eval.files:
        if not Path(f).is_file():
            raise UserError(f"eval file not found: {f} (eval.files in the config)")

    rec = RunRecorder(out, "grip rl", cfg, cfg.seed)
    rec.extra["skipped_reference_turns"] = data.skipped
    rec.extra["train_records"] = len(data.records)
    settings = AgentSettings(max_rounds=cfg.rollout.max_rounds, top_k=cfg.retrieval.top_k,
                             max_new_tokens=cfg.rollout.max_new_tokens, first_query=cfg.rollout.first_query)
    rows: list[ResultRow] = []
    preds: dict[str, list[dict]] = {}
    if cfg.eval.files and cfg.eval.include_start:
        with rec.timer("eval_sft"):
            _evaluate(model, tok, retriever, cfg, settings, "grip", rows, preds)

    trainer = build_trainer(cfg, model, tok, data.records, retriever, settings, out)
    resume = last_checkpoint(out)
    t0 = time.perf_counter()
    with rec.timer("train"):
        trainer.train(resume_from_checkpoint=resume)
    steps_run = trainer.state.global_step - (int(Path(resume).name.split("-")[-1]) if resume else 0)
    train_s = time.perf_counter() - t0

    from kinject.grip.rl_plot import write_metrics
    from kinject.models import save_model

    step_rows = write_metrics(trainer.state.log_history, out / "metrics.jsonl", out / "curves.png",
                              title=f"GRIP RL ({cfg.reward} reward)")
    policy = trainer.accelerator.unwrap_model(trainer.model)
    policy.eval()
    save_model(policy, tok, out / "model")
    if cfg.eval.files:
        with rec.timer("eval_rl"):
            _evaluate(policy, tok, retriever, cfg, settings, "grip_rl", rows, preds)
        _write_results(out, rows, preds)

    totals = trainer.totals
    rec.metrics.update({
        "steps": trainer.state.global_step,
        "wall_s_per_step": round(train_s / max(1, steps_run), 3),
        "share_groups_filtered": round(totals["filtered"] / max(1, totals["groups"]), 4),
        "retrievals_per_episode": round(totals["retrievals"] / max(1, totals["episodes"]), 4),
        "first_step_reward": step_rows[0]["reward"] if step_rows else None,
        "last_step_reward": step_rows[-1]["reward"] if step_rows else None,
        "results": [r.model_dump() for r in rows],
    })
    rec.write(inputs_hash=h)
    return {"skipped": False, "out": str(out), "metrics": rec.metrics}


def _evaluate(model, tok, retriever, cfg: GripRLConfig, settings, method: str, rows: list, preds: dict) -> None:
    from dataclasses import replace

    from kinject.grip.rl_eval import dataset_and_split, evaluate_agent

    if retriever is None:
        raise UserError("eval.files need retrieval.index (GRIP retrieves during evaluation)")
    s = replace(settings, batch_size=cfg.eval.batch_size)
    for f in cfg.eval.files:
        r, p = evaluate_agent(model, tok, retriever, f, method, s, cfg.eval.max_examples)
        rows += r
        preds["__".join((method, *dataset_and_split(f)))] = p


def _write_results(out: Path, rows: list[ResultRow], preds: dict[str, list[dict]]) -> None:
    from kinject.eval.results import write_results
    from kinject.io import write_jsonl_atomic

    for name, p in preds.items():
        write_jsonl_atomic(out / "predictions" / f"{name}.jsonl", p)
    write_results(out / "results.jsonl", rows, append=False)


def grpo_args(cfg: GripRLConfig, out: Path):
    from trl import GRPOConfig

    from kinject.distributed import trainer_device_kwargs

    device_kwargs = trainer_device_kwargs()
    G = cfg.rollout.group_size
    weights = [1.0] + ([cfg.overlong.weight] if cfg.overlong.enabled else [])
    return GRPOConfig(
        output_dir=str(out / CHECKPOINTS),
        # one generation batch per optimizer step: prompts_per_step groups of G samples
        per_device_train_batch_size=cfg.rollout.prompts_per_step * G,
        gradient_accumulation_steps=1,
        num_generations=G,
        num_iterations=1,
        max_completion_length=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        loss_type="dapo",
        epsilon=cfg.optim.epsilon,
        epsilon_high=cfg.optim.epsilon_high,
        beta=cfg.optim.beta,
        mask_truncated_completions=cfg.rollout.mask_truncated_completions,
        reward_weights=weights,
        learning_rate=cfg.optim.learning_rate,
        lr_scheduler_type=cfg.optim.lr_scheduler_type,
        warmup_steps=cfg.optim.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio
        weight_decay=cfg.optim.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.95,
        max_grad_norm=cfg.optim.max_grad_norm,
        max_steps=cfg.optim.max_steps,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        **device_kwargs,
    )


def build_trainer(cfg: GripRLConfig, model, tok, records: list[dict], retriever, settings, out: Path):
    from datasets import Dataset

    from kinject.grip.reward import OutcomeSettings
    from kinject.grip.rl import GripDAPOTrainer, make_reward_funcs

    funcs, _ = make_reward_funcs(
        cfg.reward, OutcomeSettings(**cfg.outcome.model_dump()), cfg.rollout.max_new_tokens,
        cfg.overlong.cache, cfg.overlong.enabled, cfg.overlong.weight)
    dataset = Dataset.from_list([{"prompt": r["question"], "idx": i} for i, r in enumerate(records)])
    tok.padding_side = "left"
    model.train()
    return GripDAPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=grpo_args(cfg, out),
        train_dataset=dataset,
        processing_class=tok,
        records=records,
        reward_mode=cfg.reward,
        group_size=cfg.rollout.group_size,
        agent_settings=settings,
        retriever=retriever,
        sample_kwargs={"temperature": cfg.rollout.temperature, "top_p": cfg.rollout.top_p},
        dynamic_sampling=cfg.rollout.dynamic_sampling,
        max_resample_batches=cfg.rollout.max_resample_batches,
        mask_truncated=cfg.rollout.mask_truncated_completions,
    )
