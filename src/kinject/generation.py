"""Batched greedy generation shared by every method (base, RAG, expert, text injection, GRIP).

Left padding so every row's last prompt token sits at the same position; generation stops at
end of turn / end of document (`stop_token_ids`). Results are identical to one-at-a-time
decoding (a unit test checks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kinject.tokenizer import stop_token_ids


@dataclass
class Generation:
    text: str
    n_prompt_tokens: int
    n_new_tokens: int
    # the generated ids, cut before the first stop token (memory construction needs the exact ids)
    token_ids: tuple[int, ...] = ()


def _batches(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


@torch.no_grad()
def generate_texts(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 32,
    skip_special_tokens: bool = True,
    extra_stop_ids: Sequence[int] = (),
    **generate_kwargs,
) -> list[Generation]:
    """Greedy-decode each prompt (already chat-rendered text); return the new text per prompt.

    `extra_stop_ids` end a row too (e.g. GRIP's `[SOLVED]`); the stop token is not in the text.
    """
    stops = stop_token_ids(tokenizer) + [i for i in extra_stop_ids if i not in stop_token_ids(tokenizer)]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[Generation] = []
    try:
        for chunk in _batches(list(prompts), batch_size):
            enc = tokenizer(list(chunk), return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(model.device)
            seqs = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
                **generate_kwargs,
            )
            new = seqs[:, enc["input_ids"].shape[1] :]
            out += _cut_at_stops(tokenizer, new, enc["attention_mask"], stops, skip_special_tokens)
    finally:
        tokenizer.padding_side = old_side
    return out


def _cut_at_stops(tokenizer, new, attention_mask, stops, skip_special_tokens) -> list[Generation]:
    out = []
    for row, mask in zip(new, attention_mask, strict=True):
        ids = row.tolist()
        # cut at the first stop token (rows that stopped early are padded afterwards)
        n = next((i for i, t in enumerate(ids) if t in stops), len(ids))
        text = tokenizer.decode(ids[:n], skip_special_tokens=skip_special_tokens)
        out.append(Generation(text.strip(), int(mask.sum()), n, tuple(ids[:n])))
    return out


@torch.no_grad()
def generate_from_embeds(
    model,
    tokenizer,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int = 32,
    skip_special_tokens: bool = True,
    **generate_kwargs,
) -> list[Generation]:
    """Greedy-decode one left-padded batch given as input embeddings (GAG's injected prompts)."""
    stops = stop_token_ids(tokenizer)
    new = model.generate(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id,
        **generate_kwargs,
    )  # with inputs_embeds only, generate returns the new tokens alone
    return _cut_at_stops(tokenizer, new, attention_mask, stops, skip_special_tokens)
