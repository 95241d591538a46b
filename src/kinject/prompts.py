"""Every prompt kinject shows a model, in one place.

One format per role, shared by data generation (the world's pretraining and SFT examples),
training and inference, so what a model learns is exactly what it is later asked. Functions
return chat messages; `render` applies the tokenizer's chat template.

- closed-book answer (base only, the `general` route):   `general_messages`
- answer from knowledge (RAG passages, text injection of the expert's background, and GAG
  with `<GAG>` placeholders as the knowledge): `knowledge_messages`  (GAG Stage III)
- expert QA (Stage II SFT and `expert ask`):             `expert_messages`
- expert background generation (memory construction):   `background_messages`

`answer_format` is the answer-format help one evaluation gives every method alike (e.g.
"Answer with a short phrase only." for an instruct model that otherwise answers in sentences):
a line after the request, before the question, so GAG's placeholders stay at the end of the turn.
"""

from __future__ import annotations

from kinject.tokenizer import GAG_TOKEN, IM_END

GENERAL_REQUEST = "Please answer the following question."
KNOWLEDGE_REQUEST = "Please answer the following question based on the knowledge provided."
BACKGROUND_REQUEST = "Provide the background knowledge related to the following question."


def _join(*parts: str) -> str:
    return "\n".join(p for p in parts if p)


def general_messages(question: str, answer_format: str = "") -> list[dict]:
    return [{"role": "user", "content": _join(GENERAL_REQUEST, answer_format, f"Question: {question}")}]


def knowledge_messages(question: str, knowledge: str, instruction: str = "", answer_format: str = "") -> list[dict]:
    """`{instruction}\\n{request}\\n[{answer_format}\\n]Question: {q}\\nKnowledge: {knowledge}\\n` (the GAG paper's)."""
    content = _join(instruction, KNOWLEDGE_REQUEST, answer_format, f"Question: {question}",
                    f"Knowledge: {knowledge}") + "\n"
    return [{"role": "user", "content": content}]


def gag_knowledge(num_slots: int) -> str:
    return GAG_TOKEN * num_slots


def gag_messages(question: str, num_slots: int, instruction: str = "", answer_format: str = "") -> list[dict]:
    return knowledge_messages(question, gag_knowledge(num_slots), instruction, answer_format)


def expert_messages(instruction: str, question: str) -> list[dict]:
    """Stage II user turn: `instruction + "\\nQuestion: " + input` (the GAG paper's)."""
    return [{"role": "user", "content": f"{instruction}\nQuestion: {question}"}]


def background_messages(question: str, system: str = "", request: str = BACKGROUND_REQUEST) -> list[dict]:
    """`request` is recorded with the memories (`kinject.memory.spec`), so a store keeps the line it was asked with."""
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": _join(request, f"Question: {question}")}]


def with_answer(messages: list[dict], answer: str) -> list[dict]:
    return [*messages, {"role": "assistant", "content": answer}]


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Text of the chat-templated prompt (the assistant prefix appended when asked)."""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def assistant_text(tokenizer, answer: str) -> str:
    """The text the chat template writes for the assistant turn `answer`, before its end-of-turn
    marker: for code that tokenizes an answer apart from its prompt. The kinject template puts
    one space before the answer (see `kinject.tokenizer.CHAT_TEMPLATE`). Falls back to `answer`
    when the template's generation prompt is not a prefix of the rendered turn."""
    probe = [{"role": "user", "content": "?"}]
    prompt = render(tokenizer, probe)
    full = render(tokenizer, with_answer(probe, answer), add_generation_prompt=False)
    end = full.find(IM_END, len(prompt))
    if not full.startswith(prompt) or end < 0:
        return answer
    return full[len(prompt):end]
