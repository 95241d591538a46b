from kinject.prompts import gag_messages, general_messages, knowledge_messages, render, with_answer
from kinject.tokenizer import GAG_TOKEN


def test_gag_prompt_matches_spec():
    msgs = gag_messages("What is X?", 4, instruction="You are a catalysis expert.")
    assert msgs[0]["content"] == (
        "You are a catalysis expert.\n"
        "Please answer the following question based on the knowledge provided.\n"
        "Question: What is X?\nKnowledge: " + GAG_TOKEN * 4 + "\n"
    )


def test_knowledge_and_general_share_question_line():
    k = knowledge_messages("Q?", "some passage")[0]["content"]
    g = general_messages("Q?")[0]["content"]
    assert "Question: Q?" in k and "Question: Q?" in g and "Knowledge: some passage" in k


def test_render_with_answer_ends_with_turn_end(tiny_tokenizer):
    text = render(tiny_tokenizer, with_answer(general_messages("Q?"), "42"), add_generation_prompt=False)
    assert text.endswith("<|im_start|>assistant\n42<|im_end|>\n")  # no space before a number
    prefix = render(tiny_tokenizer, general_messages("Q?"))
    assert prefix.endswith("<|im_start|>assistant\n") and text.startswith(prefix)
