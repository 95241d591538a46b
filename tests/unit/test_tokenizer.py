from kinject.tokenizer import GAG_TOKEN, GRIP_TOKENS, IM_END, answer_lead, stop_token_ids


def test_digits_are_single_tokens(tiny_tokenizer):
    toks = tiny_tokenizer.tokenize("efficiency 93.57 at 450")
    digit_toks = [t for t in toks if any(c.isdigit() for c in t)]
    assert digit_toks and all(len(t.replace("Ġ", "")) == 1 for t in digit_toks)


def test_roundtrip_and_specials(tiny_tokenizer):
    text = "Ferovia-7 has 93.5 % at 450 kelvin."
    assert tiny_tokenizer.decode(tiny_tokenizer(text).input_ids) == text
    for t in (GAG_TOKEN, *GRIP_TOKENS):
        assert len(tiny_tokenizer(t, add_special_tokens=False).input_ids) == 1
    assert tiny_tokenizer.convert_tokens_to_ids(IM_END) in stop_token_ids(tiny_tokenizer)


def test_chat_template_assistant_mask(tiny_tokenizer):
    msgs = [{"role": "user", "content": "Question: hi"}, {"role": "assistant", "content": "Answer 42"}]
    enc = tiny_tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True,
                                             return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    assistant = tiny_tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert assistant == " Answer 42" + IM_END
    assert mask[0] == 0


def test_an_answer_is_spelled_as_in_running_text(tiny_tokenizer):
    """The template writes assistant content after one space, so an answer's tokens are those of
    the same words inside a sentence; the generation prompt stays a token prefix of the turn."""
    from kinject.prompts import general_messages, render, with_answer

    def ids(text):
        return tiny_tokenizer(text, add_special_tokens=False).input_ids

    prompt = render(tiny_tokenizer, general_messages("Q?"))
    for answer, tail in [("Ferovia-7", " Ferovia-7"), ("93.5 %", "93.5 %"), (" spaced", " spaced"),
                         ("[ANSWER] Velmora[SOLVED]", "[ANSWER] Velmora[SOLVED]"), ("", "")]:
        full = render(tiny_tokenizer, with_answer(general_messages("Q?"), answer), add_generation_prompt=False)
        assert full == prompt + tail + IM_END + "\n" and answer_lead(answer) == tail
        assert ids(full)[: len(ids(prompt))] == ids(prompt)
        sentence = ids("It is" + tail)
        assert ids(full)[len(ids(prompt)) : len(ids(prompt)) + len(ids(tail))] == ids(tail)
        if tail and tail[0] == " ":
            assert sentence[-len(ids(tail)):] == ids(tail)  # the same pieces as inside a sentence
    # a number is written without the space: its digit tokens are those of running text anyway
    assert ids("It is 93.5 %")[-len(ids("93.5 %")):] == ids("93.5 %")
