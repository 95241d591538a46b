"""GRIP RL trainer pieces: rollout rows (retrieved text only in prompts), dynamic sampling (no
all-equal group reaches the loss), truncation masking, advantages, bad input."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from kinject.config import load_config
from kinject.errors import UserError
from kinject.grip.agent import AgentSettings
from kinject.grip.format import final_turn, plan_turn
from kinject.grip.rl import all_equal, group_advantages
from kinject.grip.rl_config import GripRLConfig
from kinject.grip.rl_rollout import TurnSample, TurnSampler, load_rl_records, run_outcome_episodes
from kinject.grip.rl_train import build_trainer, validate

PASSAGES = [
    ("1", "Zorblat was born in the city of Quimora.", "Zorblat"),
    ("2", "Quimora lies in the country of Vandelia.", "Quimora"),
    ("3", "Ostrel works for the Mirtan Company.", "Ostrel"),
]
QA = [
    {"question": "Where was Zorblat born?", "answer": ["Quimora"]},
    {"question": "Which country is Quimora in?", "answer": ["Vandelia"]},
    {"question": "Who employs Ostrel?", "answer": ["Mirtan Company"]},
]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    from kinject.retrieval.index import build_index

    d = tmp_path_factory.mktemp("rlidx")
    tsv = d / "passages.tsv"
    tsv.write_text("id\ttext\ttitle\n" + "".join(f"{i}\t{t}\t{ti}\n" for i, t, ti in PASSAGES))
    build_index(tsv, d / "index", progress=False)
    return d / "index"


@pytest.fixture(scope="module")
def retriever(index_dir):
    from kinject.retrieval import open_index

    r = open_index(index_dir)
    yield r
    r.close()


class ScriptedSampler(TurnSampler):
    """Turns from a script instead of a model, tokenized like sampled ones (test double of the policy)."""

    def __init__(self, tokenizer, script, truncate=lambda text: False):
        self.tokenizer, self.script, self.truncate = tokenizer, script, truncate
        self.end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def __call__(self, prompts):
        out = []
        for p in prompts:
            text = self.script(p)
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
            cut = self.truncate(text)
            out.append(TurnSample(self.tokenizer(p, add_special_tokens=False).input_ids,
                                  ids if cut else ids + [self.end], text, cut))
        return out


def question_of(prompt: str) -> str:
    return prompt.split("Question:", 1)[1].split("\n", 1)[0].split("<|im_end|>", 1)[0].strip()


def plan_then_answer(answers):
    """Round 1: plan with the question as query; round 2: answer with next(answers[question])."""
    def script(prompt: str) -> str:
        q = question_of(prompt)
        if "[1]." not in prompt:
            return plan_turn("not sure", q)
        return final_turn(next(answers[q]))
    return script


def test_outcome_rollouts_put_retrieved_text_only_in_prompts(tiny_tokenizer, retriever):
    answers = {r["question"]: itertools.repeat(r["answer"][0]) for r in QA}
    sampler = ScriptedSampler(tiny_tokenizer, plan_then_answer(answers))
    recs = [{"question": r["question"], "golds": r["answer"]} for r in QA]
    rollouts = run_outcome_episodes(sampler, retriever, recs, AgentSettings(max_rounds=4, top_k=2))
    for ro, rec in zip(rollouts, QA, strict=True):
        assert [len(t.completion_ids) > 0 for t in ro.turns] == [True, True]
        assert ro.n_retrievals == 1 and ro.turn_kinds == ["plan", "final"]
        assert ro.answer == rec["answer"][0]
        second_prompt = tiny_tokenizer.decode(ro.turns[1].prompt_ids)
        hits = [t for _, t, _ in PASSAGES if t in second_prompt]
        assert hits, "the retrieved passages are in the next round's prompt"
        for turn in ro.turns:  # ... and never in a completion (so never in the loss)
            completion = tiny_tokenizer.decode(turn.completion_ids)
            assert not any(t in completion for _, t, _ in PASSAGES)
            assert "Reference Text" not in completion


def test_group_advantages_and_all_equal():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 1.0, 0.0], [2.0, 2.0, 2.0, 2.0]]))
    std = torch.tensor([1.0, 0.0, 1.0, 0.0]).std()
    assert torch.allclose(adv[0], torch.tensor([0.5, -0.5, 0.5, -0.5]) / (std + 1e-4))
    assert torch.all(adv[1] == 0)
    assert all_equal([1.1, 1.1, 1.1]) and not all_equal([1.1, 1.0])


def _cfg(tmp_path, tiny_model_dir, index_dir, *extra):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in QA))
    return load_config(None, [f"model={tiny_model_dir}", f"data.train={data}", f"retrieval.index={index_dir}",
                              "rollout.group_size=4", "rollout.prompts_per_step=2", "rollout.max_new_tokens=16",
                              "overlong.enabled=false", "optim.max_steps=1", *extra], expect=GripRLConfig)


def _trainer(cfg, tmp_path, tiny_model_dir, retriever, records):
    from kinject.models import load_causal_lm

    model, tok = load_causal_lm(tiny_model_dir)
    settings = AgentSettings(max_rounds=cfg.rollout.max_rounds, top_k=2, max_new_tokens=16)
    return build_trainer(cfg, model, tok, records, retriever, settings, tmp_path / "out"), tok


def test_dynamic_sampling_no_all_equal_group_reaches_the_loss(tmp_path, tiny_model_dir, index_dir, retriever):
    cfg = _cfg(tmp_path, tiny_model_dir, index_dir, "rollout.max_resample_batches=3")
    records = [{"question": r["question"], "golds": r["answer"]} for r in QA]
    trainer, tok = _trainer(cfg, tmp_path, tiny_model_dir, retriever, records)
    # Q0 always right, Q1 alternates right/wrong, Q2 always wrong: only Q1's groups have signal
    answers = {QA[0]["question"]: itertools.repeat("Quimora"),
               QA[1]["question"]: itertools.cycle(["Vandelia", "nowhere"]),
               QA[2]["question"]: itertools.repeat("nobody")}
    trainer._sampler = ScriptedSampler(tok, plan_then_answer(answers))
    inputs = [{"prompt": QA[i]["question"], "idx": i} for i in (0, 2) for _ in range(4)]  # TRL repeats G times
    batch = trainer._generate_and_score_completions(inputs)
    mask = batch["completion_mask"]
    in_loss = mask.sum(dim=1) > 0
    assert in_loss.any(), "resampling found Q1's informative groups"
    for row in torch.nonzero(in_loss).flatten().tolist():
        prompt = tok.decode(batch["prompt_ids"][row][batch["prompt_mask"][row].bool()])
        assert question_of(prompt) == QA[1]["question"]
        assert batch["advantages"][row] != 0
    assert int(batch["num_items_in_batch"]) == int(mask.sum())
    m = trainer._metrics["train"]
    assert trainer.totals["filtered"] >= 2  # at least the first batch's Q0 and Q2 groups were dropped
    assert m["groups_filtered_share"][-1] == trainer.totals["filtered"] / trainer.totals["groups"]
    assert m["retrievals_per_episode"][-1] == 1.0


def test_all_equal_batch_has_an_empty_loss_mask(tmp_path, tiny_model_dir, index_dir, retriever):
    cfg = _cfg(tmp_path, tiny_model_dir, index_dir, "rollout.max_resample_batches=1")
    records = [{"question": r["question"], "golds": r["answer"]} for r in QA]
    trainer, tok = _trainer(cfg, tmp_path, tiny_model_dir, retriever, records)
    trainer._sampler = ScriptedSampler(tok, plan_then_answer({r["question"]: itertools.repeat("x") for r in QA}))
    batch = trainer._generate_and_score_completions([{"prompt": "", "idx": i} for i in (0, 1) for _ in range(4)])
    assert batch["completion_mask"].sum() == 0 and torch.all(batch["advantages"] == 0)
    assert trainer._metrics["train"]["groups_filtered_share"][-1] == 1.0
    assert trainer._metrics["train"]["rollout_batches"][-1] == 2  # one refill batch was tried
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); we call the loss directly
    loss = trainer._compute_loss(trainer.model, batch)
    loss.backward()
    assert float(loss) == 0.0
    assert all(p.grad is None or torch.all(p.grad == 0) for p in trainer.model.parameters())


def test_without_dynamic_sampling_equal_groups_stay_with_zero_advantage(tmp_path, tiny_model_dir, index_dir,
                                                                         retriever):
    cfg = _cfg(tmp_path, tiny_model_dir, index_dir, "rollout.dynamic_sampling=false")
    records = [{"question": r["question"], "golds": r["answer"]} for r in QA]
    trainer, tok = _trainer(cfg, tmp_path, tiny_model_dir, retriever, records)
    trainer._sampler = ScriptedSampler(tok, plan_then_answer({r["question"]: itertools.repeat("x") for r in QA}))
    batch = trainer._generate_and_score_completions([{"prompt": "", "idx": i} for i in (0, 1) for _ in range(4)])
    assert batch["completion_mask"].sum() > 0 and torch.all(batch["advantages"] == 0)
    assert batch["prompt_ids"].shape[0] == 2 * 4 * 2  # one row per turn: 2 prompts x G=4 x 2 rounds


def test_truncated_episodes_are_masked(tmp_path, tiny_model_dir, index_dir, retriever):
    cfg = _cfg(tmp_path, tiny_model_dir, index_dir, "rollout.dynamic_sampling=false")
    records = [{"question": r["question"], "golds": r["answer"]} for r in QA]
    trainer, tok = _trainer(cfg, tmp_path, tiny_model_dir, retriever, records)
    answers = {r["question"]: itertools.cycle([r["answer"][0], "rambling on"]) for r in QA}
    trainer._sampler = ScriptedSampler(tok, plan_then_answer(answers), truncate=lambda t: "rambling" in t)
    batch = trainer._generate_and_score_completions([{"prompt": "", "idx": 0} for _ in range(4)])
    # episodes alternate: correct (2 rows in the loss) / truncated (both rows masked)
    per_row = (batch["completion_mask"].sum(dim=1) > 0).tolist()
    assert sum(per_row) == 4 and len(per_row) == 8
    assert trainer._metrics["train"]["completions/clipped_ratio"][-1] == 0.5


def test_group_size_one_is_an_error(tmp_path, tiny_model_dir, index_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, index_dir, "rollout.group_size=1")
    with pytest.raises(UserError, match="DAPO needs groups"):
        validate(cfg)


def test_outcome_needs_an_index(tmp_path, tiny_model_dir, index_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, index_dir, "retrieval.index=null")
    with pytest.raises(UserError, match="retrieval.index"):
        validate(cfg)


def test_unparseable_reference_turns_are_skipped_and_counted(tmp_path):
    f = tmp_path / "imit.jsonl"
    rows = [{"question": "q1", "target": final_turn("a")},
            {"question": "q2", "target": "no control tokens at all"},
            {"question": "q3", "target": plan_turn("part", "query"), "intermediary": "i", "references": ["p1"]},
            {"question": "q4", "output": 7}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_rl_records(str(f), "imitation")
    assert data.skipped == 2 and [r["question"] for r in data.records] == ["q1", "q3"]
    assert data.records[1]["references"] == ["p1"] and data.records[1]["intermediary"] == "i"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[1]) + "\n")
    with pytest.raises(UserError, match="no usable RL records"):
        load_rl_records(str(bad), "imitation")


def test_eval_rows_cover_the_world_subsets(tmp_path, tiny_model_dir, retriever):
    from kinject.grip.rl_eval import evaluate_agent
    from kinject.models import load_causal_lm

    f = tmp_path / "wiki" / "qa_test.jsonl"
    f.parent.mkdir()
    rows = [{**QA[0], "hops": 1, "popularity": "popular"}, {**QA[1], "hops": 2}, {**QA[2], "popularity": "longtail"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model, tok = load_causal_lm(tiny_model_dir)
    results, preds = evaluate_agent(model, tok, retriever, f, "grip", AgentSettings(max_new_tokens=4))
    assert {(r.dataset, r.n) for r in results} == {("wiki", 3), ("wiki_popular", 1), ("wiki_2hop", 1),
                                                   ("wiki_longtail", 1)}
    assert {r.metric for r in results} == {"em", "f1", "cover_em", "avg_retrievals"}
    assert all(r.split == "test" and r.method == "grip" for r in results)
    assert len(preds) == 3 and all("n_retrievals" in p and "em" in p for p in preds)


def test_turn_sampler_keeps_the_sampled_ids(tiny_tokenizer, tiny_model_dir):
    from kinject.models import load_causal_lm
    from kinject.prompts import render

    model, tok = load_causal_lm(tiny_model_dir)
    torch.manual_seed(0)
    sampler = TurnSampler(model, tok, max_new_tokens=5, batch_size=2)
    prompts = [render(tok, [{"role": "user", "content": q["question"]}]) for q in QA]
    for p, s in zip(prompts, sampler(prompts), strict=True):
        assert s.prompt_ids == tok(p, add_special_tokens=False).input_ids  # left padding removed
        assert 1 <= len(s.completion_ids) <= 5
        if s.truncated:
            assert len(s.completion_ids) == 5 and not set(s.completion_ids) & set(sampler.stops)
        else:  # ends with exactly one stop id, which is not in the text
            assert s.completion_ids[-1] in sampler.stops
            assert not set(s.completion_ids[:-1]) & set(sampler.stops)
        body = s.completion_ids if s.truncated else s.completion_ids[:-1]
        assert s.text == tok.decode(body, skip_special_tokens=False).strip()
    assert model.training is False  # the sampler restores the mode it found


def test_overlong_reward_is_dapo_soft_punishment():
    from kinject.grip.reward import OutcomeSettings
    from kinject.grip.rl import make_reward_funcs

    funcs, weights = make_reward_funcs("outcome", OutcomeSettings(), overlong_max=10, overlong_cache=4,
                                       overlong_enabled=True, overlong_weight=0.5)
    assert [f.__name__ for f in funcs] == ["outcome_reward", "overlong_reward"] and weights == [1.0, 0.5]
    got = funcs[1](prompts=[""] * 4, completions=[""] * 4, completion_ids=[[0] * n for n in (6, 8, 10, 11)])
    assert got == [0.0, pytest.approx(-0.5), pytest.approx(-1.0), -1.0]
