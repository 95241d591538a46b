"""The injected base: a frozen causal LM whose `<GAG>` placeholder embeddings are overwritten.

Prompt (the GAG paper's): the user turn `{instruction}\\n{request}\\nQuestion: {q}\\nKnowledge:
<GAG>x S\\n` through the base's chat template (`kinject.prompts.gag_messages`), then the
assistant prefix. The S placeholder embeddings are overwritten in place by the injector's S
vectors, and the base runs on `inputs_embeds` (training forward, batched generation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kinject.errors import UserError
from kinject.log import get_logger
from kinject.prompts import assistant_text, gag_messages, render, with_answer
from kinject.runs import model_fingerprint
from kinject.tokenizer import GAG_TOKEN, IM_END

log = get_logger(__name__)


def ensure_gag_token(model, tokenizer) -> bool:
    """Add `<GAG>` as a special token when the tokenizer lacks it (resizing the embeddings
    only if its id falls outside them). Returns True when it was added (and logs it)."""
    from kinject.models import add_special_tokens

    rows = model.get_input_embeddings().weight.shape[0]
    if not add_special_tokens(model, tokenizer, [GAG_TOKEN]):
        return False
    msg = f"added {GAG_TOKEN} to the base tokenizer (id {tokenizer.convert_tokens_to_ids(GAG_TOKEN)})"
    if model.get_input_embeddings().weight.shape[0] > rows:
        msg += f"; resized the base's embeddings {rows} -> {len(tokenizer)} rows"
    log.info(msg)
    return True


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # [B, T] right padded
    attention_mask: torch.Tensor
    labels: torch.Tensor  # -100 except answer tokens + end of turn

    @property
    def answer_mask(self) -> torch.Tensor:
        return self.labels != -100

    def to(self, device) -> TrainBatch:
        return TrainBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))


@dataclass
class SplitTrainBatch(TrainBatch):
    """A TrainBatch cut at the first `<GAG>`: the prefix (left padded) does not depend on the
    slots, so it runs once without a graph and only the suffix (slots, assistant prefix, answer;
    right padded, in `input_ids`/`attention_mask`/`labels`) runs with gradients."""

    prefix_ids: torch.Tensor | None = None  # [B, P] left padded
    prefix_mask: torch.Tensor | None = None

    def to(self, device) -> SplitTrainBatch:
        return SplitTrainBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device),
                               self.prefix_ids.to(device), self.prefix_mask.to(device))


def _pad(rows: list[list[int]], value: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


class InjectedBase:
    def __init__(self, model, tokenizer, num_slots: int, instruction: str = "", answer_format: str = ""):
        if num_slots < 1:
            raise UserError(f"number of slots must be >= 1 (got {num_slots})")
        self.model, self.tokenizer = model, tokenizer
        self.num_slots = num_slots
        self.instruction = instruction
        self.answer_format = answer_format  # the answer-format help line (prompts.py); the injector records it
        self.added_gag = ensure_gag_token(model, tokenizer)
        self.gag_id = tokenizer.convert_tokens_to_ids(GAG_TOKEN)
        end = tokenizer.convert_tokens_to_ids(IM_END) if IM_END in tokenizer.get_vocab() else None
        self.end_id = end if end is not None else tokenizer.eos_token_id
        model.requires_grad_(False)
        model.eval()

    @classmethod
    def load(cls, path, num_slots: int, device: str = "auto", dtype: str = "auto", instruction: str = "",
             answer_format: str = ""):
        from kinject.models import load_causal_lm

        model, tok = load_causal_lm(path, device=device, dtype=dtype)
        return cls(model, tok, num_slots, instruction, answer_format)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def identity(self) -> dict:
        """What an injector records about the base it was trained for; `fingerprint` is that of
        the directory the base was loaded from (`kinject.runs.model_fingerprint`), the same for
        fp32 and bf16 loads of one checkpoint."""
        return {"model_type": self.model.config.model_type, "hidden_size": self.hidden_size,
                "num_layers": self.model.config.num_hidden_layers, "vocab": len(self.tokenizer),
                "fingerprint": model_fingerprint(self.model)}

    # ------------------------------------------------------------------ prompts
    def prompt_text(self, question: str, instruction: str | None = None) -> str:
        """The GAG prompt; `instruction` (e.g. a row's domain instruction) overrides the default."""
        instr = self.instruction if instruction is None else instruction
        return render(self.tokenizer, gag_messages(question, self.num_slots, instr, self.answer_format))

    def encode_train(self, questions: Sequence[str], answers: Sequence[str], max_length: int = 512,
                     instructions: Sequence[str | None] | None = None) -> TrainBatch:
        """Prompt + answer + end of turn, right padded; labels on the answer and end of turn."""
        rows, labels = [], []
        instructions = instructions or [None] * len(questions)
        for q, a, ins in zip(questions, answers, instructions, strict=True):
            p, ans = self._train_tokens(q, a, ins)
            if len(p) >= max_length:
                raise UserError(f"GAG prompt of {len(p)} tokens does not fit max_length {max_length}: {q[:60]!r}")
            ans = list(ans[: max_length - len(p)])
            rows.append(list(p) + ans)
            labels.append([-100] * len(p) + ans)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        lab = torch.full_like(ids, -100)
        for i, (r, lb) in enumerate(zip(rows, labels)):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
            lab[i, : len(r)] = torch.tensor(lb)
        return TrainBatch(ids, mask, lab)

    def _train_tokens(self, question: str, answer: str, instruction: str | None) -> tuple[tuple, tuple]:
        """(prompt ids with the assistant prefix, answer ids + end of turn): exactly what the chat
        template renders for with_answer(...) (checked by a unit test). Memoized: a training run
        revisits each row every epoch and rendering the template dominated the batch preparation."""
        key = (question, answer, instruction)
        cache = self.__dict__.setdefault("_token_cache", {})
        if key not in cache:
            p = self._ids(self.prompt_text(question, instruction))
            cache[key] = (tuple(p), tuple(self._ids(assistant_text(self.tokenizer, answer))) + (self.end_id,))
        return cache[key]

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_train_split(self, questions: Sequence[str], answers: Sequence[str], max_length: int = 512,
                           instructions: Sequence[str | None] | None = None) -> SplitTrainBatch:
        """`encode_train`'s rows cut at the first `<GAG>` (see SplitTrainBatch)."""
        pre, suf, lab = [], [], []
        instructions = instructions or [None] * len(questions)
        for q, a, ins in zip(questions, answers, instructions, strict=True):
            p, ans = self._train_tokens(q, a, ins)
            if len(p) >= max_length:
                raise UserError(f"GAG prompt of {len(p)} tokens does not fit max_length {max_length}: {q[:60]!r}")
            k = p.index(self.gag_id)
            ans = list(ans[: max_length - len(p)])
            pre.append(list(p[:k]))
            suf.append(list(p[k:]) + ans)
            lab.append([-100] * (len(p) - k) + ans)
        prefix_ids, prefix_mask = _pad(pre, self.tokenizer.pad_token_id, left=True)
        input_ids, mask = _pad(suf, self.tokenizer.pad_token_id)
        labels, _ = _pad(lab, -100)
        return SplitTrainBatch(input_ids, mask, labels, prefix_ids, prefix_mask)

    def full_text(self, question: str, answer: str) -> str:
        return render(self.tokenizer, with_answer(gag_messages(question, self.num_slots, self.instruction, self.answer_format), answer),
                      add_generation_prompt=False)

    # ------------------------------------------------------------------ injection
    def embed(self, input_ids: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the S `<GAG>` rows of each sequence overwritten by `z [B, S, d]`."""
        emb = self.model.get_input_embeddings()(input_ids)
        where = input_ids == self.gag_id
        counts = where.sum(1)
        if not bool((counts == self.num_slots).all()):
            raise ValueError(f"each prompt must hold {self.num_slots} {GAG_TOKEN} tokens, found {counts.tolist()}")
        if tuple(z.shape) != (input_ids.shape[0], self.num_slots, emb.shape[-1]):
            raise ValueError(f"z shape {tuple(z.shape)} != {(input_ids.shape[0], self.num_slots, emb.shape[-1])}")
        emb[where] = z.reshape(-1, emb.shape[-1]).to(emb.dtype)  # in place, row-major = slot order
        return emb

    def forward(self, z: torch.Tensor, batch: TrainBatch, hidden: bool = False):
        """Base outputs on the injected embeddings (gradients flow to z, never to the base)."""
        batch = batch.to(self.device)
        return self.model(inputs_embeds=self.embed(batch.input_ids, z), attention_mask=batch.attention_mask,
                          output_hidden_states=hidden, use_cache=False)

    def final_states(self, z: torch.Tensor, batch: TrainBatch) -> torch.Tensor:
        """The decoder's final (normed) states `[B, T, d]` on the injected embeddings, without the
        LM head: training scores only the answer positions (`answer_logits`), a few percent of T,
        so the full-vocabulary projection of every prompt position is skipped."""
        batch = batch.to(self.device)
        decoder = self.model.get_decoder()
        if isinstance(batch, SplitTrainBatch):
            # the prefix's keys/values once, without a graph; RoPE scores depend on relative
            # positions only, so its left padding leaves the real tokens' states unchanged
            with torch.no_grad():
                cache = decoder(input_ids=batch.prefix_ids, attention_mask=batch.prefix_mask,
                                use_cache=True).cache
            mask = torch.cat([batch.prefix_mask, batch.attention_mask], dim=1)
            return decoder(inputs_embeds=self.embed(batch.input_ids, z), attention_mask=mask,
                           cache=cache, use_cache=True).last_hidden_state
        return decoder(inputs_embeds=self.embed(batch.input_ids, z), attention_mask=batch.attention_mask,
                       use_cache=False).last_hidden_state

    def answer_logits(self, states: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, targets) of the labelled next-token predictions only: `[N, V]`, `[N]`."""
        labels = labels.to(states.device)
        pred = labels[:, 1:] != -100
        return self.model.get_output_embeddings()(states[:, :-1][pred]), labels[:, 1:][pred]

    @torch.no_grad()
    def generate(self, questions: Sequence[str], z: torch.Tensor, max_new_tokens: int = 32,
                 batch_size: int = 16, instructions: Sequence[str | None] | None = None, **generate_kwargs):
        """Batched greedy answers given `z [N, S, d]`: left-padded prompts, `generate(inputs_embeds=...)`."""
        from kinject.generation import generate_from_embeds

        tok = self.tokenizer
        old = tok.padding_side
        tok.padding_side = "left"
        out = []
        instructions = instructions or [None] * len(questions)
        try:
            for i in range(0, len(questions), batch_size):
                texts = [self.prompt_text(q, ins) for q, ins in
                         zip(questions[i:i + batch_size], instructions[i:i + batch_size], strict=True)]
                enc = tok(texts, return_tensors="pt",
                          padding=True, add_special_tokens=False).to(self.device)
                emb = self.embed(enc["input_ids"], z[i:i + batch_size].to(self.device))
                out += generate_from_embeds(self.model, tok, emb, enc["attention_mask"], max_new_tokens,
                                            **generate_kwargs)
        finally:
            tok.padding_side = old
        return out
