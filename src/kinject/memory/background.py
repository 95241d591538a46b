"""Expert background generation and the hidden states at every generated position.

Generation goes through the shared `kinject.generation.generate_texts` (batched greedy, KV
cache, left padding, stop at end of turn). The states are then read in one teacher-forced,
left-padded forward pass over prompt + generated ids (EOS excluded), with position ids from
the attention mask so padding changes nothing: the state at a generated position is exactly
the state the expert computed there while generating (tests check batched == one at a time).
The same function encodes a *given* background (alignment items whose knowledge statement is
supplied rather than generated), and reads memories without decoding (`prefill_traces`: the
states over the question and a fixed answer prefix, one forward pass, nothing generated).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kinject.memory.layers import check_layer_keys
from kinject.memory.spec import DEFAULT_MAX_NEW_TOKENS
from kinject.prompts import BACKGROUND_REQUEST, background_messages, render


@dataclass
class Trace:
    """One question's background: text, generated ids and states `[L, T, d]` (float32, CPU)."""

    text: str
    token_ids: tuple[int, ...]
    states: torch.Tensor

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


def background_prompts(tokenizer, questions: Sequence[str], system: str = "",
                       request: str = BACKGROUND_REQUEST) -> list[str]:
    return [render(tokenizer, background_messages(q, system, request)) for q in questions]


@torch.no_grad()
def continuation_states(
    model, tokenizer, prompts: Sequence[str], continuations: Sequence[Sequence[int]], layer_keys: Sequence[str]
) -> list[torch.Tensor]:
    """States `[L, T_i, d]` at the positions of each continuation (ids after the prompt)."""
    offsets = check_layer_keys(layer_keys, model.config.num_hidden_layers)
    rows = []
    for p, c in zip(prompts, continuations, strict=True):
        rows.append(tokenizer(p, add_special_tokens=False)["input_ids"] + list(c))
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):  # left padding: every continuation ends at the last column
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    dev = model.device
    # logits_to_keep=1: only states are needed; full logits would be [B, T, vocab] (GBs at Qwen scale)
    out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                output_hidden_states=True, use_cache=False, logits_to_keep=1)
    hs = out.hidden_states
    result = []
    for i, c in enumerate(continuations):
        T = len(c)
        layers = [hs[o][i, width - T:] if T else hs[o][i, :0] for o in offsets]
        result.append(torch.stack(layers).float().cpu())
    return result


def generate_backgrounds(
    model,
    tokenizer,
    questions: Sequence[str],
    layer_keys: Sequence[str],
    system: str = "",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 16,
    request: str = BACKGROUND_REQUEST,
) -> list[Trace]:
    """Greedy background per question + its per-token states for `layer_keys`."""
    from kinject.generation import generate_texts

    check_layer_keys(layer_keys, model.config.num_hidden_layers)
    prompts = background_prompts(tokenizer, questions, system, request)
    gens = generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    traces: list[Trace] = []
    for i in range(0, len(prompts), batch_size):
        chunk = gens[i:i + batch_size]
        states = continuation_states(model, tokenizer, prompts[i:i + batch_size],
                                     [g.token_ids for g in chunk], layer_keys)
        traces += [Trace(g.text, g.token_ids, s) for g, s in zip(chunk, states, strict=True)]
    return traces


def encode_backgrounds(
    model,
    tokenizer,
    questions: Sequence[str],
    backgrounds: Sequence[str],
    layer_keys: Sequence[str],
    system: str = "",
    batch_size: int = 16,
    request: str = BACKGROUND_REQUEST,
) -> list[Trace]:
    """States of a given background text read as the expert's answer (teacher forcing)."""
    check_layer_keys(layer_keys, model.config.num_hidden_layers)
    prompts = background_prompts(tokenizer, questions, system, request)
    ids = [tuple(tokenizer(b, add_special_tokens=False)["input_ids"]) for b in backgrounds]
    traces: list[Trace] = []
    for i in range(0, len(prompts), batch_size):
        states = continuation_states(model, tokenizer, prompts[i:i + batch_size], ids[i:i + batch_size], layer_keys)
        traces += [Trace(b, t, s) for b, t, s in zip(backgrounds[i:i + batch_size], ids[i:i + batch_size], states, strict=True)]
    return traces


def prefill_split(tokenizer, question: str, system: str = "", answer_prefix: str = "",
                  request: str = BACKGROUND_REQUEST) -> tuple[str, tuple[int, ...]]:
    """(head text, ids read) of one question's background prompt: the ids start at the question as
    the template wrote it and run through the end of the user turn, the assistant header and
    `answer_prefix`. The head (system prompt, request) is the same for every question, so its
    states carry nothing about it and are not read. A template that does not show the question
    verbatim: the whole prompt is read."""
    prompt = background_prompts(tokenizer, [question], system, request)[0]
    k = prompt.rfind(question) if question else -1
    head, tail = (prompt[:k], prompt[k:]) if k >= 0 else ("", prompt)
    return head, tuple(tokenizer(tail + answer_prefix, add_special_tokens=False)["input_ids"])


def prefill_traces(
    model,
    tokenizer,
    questions: Sequence[str],
    layer_keys: Sequence[str],
    system: str = "",
    answer_prefix: str = "",
    batch_size: int = 16,
    request: str = BACKGROUND_REQUEST,
) -> list[Trace]:
    """Memories without decoding: per question, the expert's states `[L, T, d]` over the question
    and `answer_prefix` (`prefill_split`), read in one teacher-forced forward pass per batch; no
    background is generated. The expert already knows the answer when it starts writing, so
    these states can carry it at the cost of one short prefill. `Trace.text` is the prefix (no
    background was written); `token_ids` are the ids read."""
    check_layer_keys(layer_keys, model.config.num_hidden_layers)
    splits = [prefill_split(tokenizer, q, system, answer_prefix, request) for q in questions]
    traces: list[Trace] = []
    for i in range(0, len(splits), batch_size):
        chunk = splits[i:i + batch_size]
        states = continuation_states(model, tokenizer, [h for h, _ in chunk], [t for _, t in chunk], layer_keys)
        traces += [Trace(answer_prefix, t, s) for (_, t), s in zip(chunk, states, strict=True)]
    return traces
