"""Subword tokenizers for tiny models: byte-level BPE with digits split one per token.

Digits as single tokens (as Qwen's tokenizer does) make numbers compositional, so every value
in the synthetic world is spelled with tokens seen in training (measured: expert EM 0.86 ->
0.94). The special tokens are those every kinject stage needs: chat markers, the GAG memory
placeholder and GRIP's control tokens. The chat template marks assistant content with
`{% generation %}` so `return_assistant_tokens_mask` (assistant-only SFT loss) works.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
GAG_TOKEN = "<GAG>"
GRIP_TOKENS = ("[ANSWER]", "[SOLVED]", "[INTERMEDIARY]", "[RETRIEVE]")
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END, GAG_TOKEN, *GRIP_TOKENS)

# Assistant content starts with ONE space, except before a digit (and when it is empty or already
# starts with a space or a GRIP control token). Why: this byte-level BPE has no prefix space, so a
# word at the start of a line gets other tokens than inside a sentence (`zirconia` -> `z irconia`,
# ` zirconia` -> `Ġzirconia`); models learn private values and read passages in running text, and
# with the space a short answer is spelled as the value was read. Digits are single tokens
# everywhere, so a number needs no space; with one, the answer starts with a lone `Ġ` that says
# nothing about the value. Measured on the tiny world's experts (dev EM, names / numbers): no space
# 0.44 / 0.93, space everywhere 0.87 / 0.24, this rule 0.93 / 0.81. The space follows the newline,
# so the generation prompt stays a token prefix of the rendered turn. `answer_lead` is the same
# rule in Python.
LEAD_EXEMPT = (" ", "[ANSWER]", "[INTERMEDIARY]")
DIGITS = "0123456789"


def answer_lead(content: str) -> str:
    """Assistant content as the chat template writes it (see the comment above)."""
    if not content or content.startswith(LEAD_EXEMPT) or content[0] in DIGITS:
        return content
    return " " + content


CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- set content = message['content'] %}"
    "{%- if content and not content.startswith(" + repr(LEAD_EXEMPT) + ") and content[0] not in '" + DIGITS + "' %}"
    "{%- set content = ' ' + content %}"
    "{%- endif %}"
    "{% generation %}{{ content + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{%- else %}"
    "{{ message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (digits split individually) and wrap it for transformers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()  # without a decoder, decode() leaves 'Ġ' markers
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=IM_END,
        unk_token=None,
        additional_special_tokens=[IM_START, GAG_TOKEN, *GRIP_TOKENS],
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def stop_token_ids(tokenizer) -> list[int]:
    """Ids that end a generation: end of turn and end of document."""
    ids = []
    for t in (IM_END, PAD_TOKEN, tokenizer.eos_token):
        if t is None:
            continue
        i = tokenizer.convert_tokens_to_ids(t)
        if isinstance(i, int) and i != tokenizer.unk_token_id and i not in ids:
            ids.append(i)
    return ids


# A few sentences so `kinject model tiny` can ship a working tokenizer without any corpus.
BUILTIN_SAMPLE = [
    "The catalyst Ferovia-7 reaches a Faradaic efficiency of 93.5 percent at 450 kelvin.",
    "Question: What is the capital of Norland? Answer: Velmora.",
    "Knowledge: the adjuvant Quillex targets TLR4 and was first approved in 2011.",
    "Please answer the following question based on the knowledge provided.",
    "0 1 2 3 4 5 6 7 8 9 % . , : ; ! ? ( ) - + = / kelvin percent nm eV",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]
