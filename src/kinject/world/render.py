"""Fast chat rendering of world examples through the real chat template.

The world is built before its tokenizer exists, and rendering 10^5 examples one by one through
`apply_chat_template` (jinja per call) would cost most of the 30 s build budget. So each prompt
shape is rendered ONCE by `kinject.prompts` + the kinject chat template with sentinel strings,
and examples are made by substituting the sentinels (a unit test checks equality).
"""

from __future__ import annotations

from kinject.prompts import general_messages, knowledge_messages, render, with_answer
from kinject.tokenizer import answer_lead

_Q, _K, _A, _I = "\x00Q\x00", "\x00K\x00", "\x00A\x00", "\x00I\x00"
ASSISTANT_PREFIX = "<|im_start|>assistant\n"


def template_tokenizer():
    """A throwaway tokenizer carrying the kinject chat template (only the template is used)."""
    from kinject.tokenizer import BUILTIN_SAMPLE, train_tokenizer

    return train_tokenizer(BUILTIN_SAMPLE, vocab_size=300, min_frequency=1)


class ChatRenderer:
    """The template writes an answer as `answer_lead` does (a space before a word, none before a
    digit), so the answer sentinel is replaced in that form."""

    def __init__(self, tokenizer=None):
        tok = tokenizer or template_tokenizer()
        self._closed = render(tok, with_answer(general_messages(_Q), _A), add_generation_prompt=False)
        self._reading = render(tok, with_answer(knowledge_messages(_Q, _K), _A), add_generation_prompt=False)

    def closed_book(self, q: str, answer: str) -> str:
        return self._closed.replace(_Q, q).replace(answer_lead(_A), answer_lead(answer))

    def reading(self, q: str, knowledge: str, answer: str) -> str:
        return self._reading.replace(_Q, q).replace(_K, knowledge).replace(answer_lead(_A), answer_lead(answer))


def split_prompt(text: str) -> tuple[str, str]:
    """(prompt incl. the assistant prefix, answer part) of a rendered chat example."""
    i = text.rfind(ASSISTANT_PREFIX)
    if i < 0:
        return text, ""
    j = i + len(ASSISTANT_PREFIX)
    return text[:j], text[j:]
