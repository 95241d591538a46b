from kinject.generation import generate_texts
from kinject.models import load_causal_lm
from kinject.prompts import general_messages, render


def test_batched_equals_one_at_a_time(tiny_model_dir):
    model, tok = load_causal_lm(tiny_model_dir, device="cpu")
    prompts = [render(tok, general_messages(q)) for q in
               ["What is the capital of Norland?", "Who?", "Which catalyst reaches 93.5 % at 450 kelvin?"]]
    batched = generate_texts(model, tok, prompts, max_new_tokens=12, batch_size=3)
    single = [generate_texts(model, tok, [p], max_new_tokens=12)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.n_new_tokens for g in batched] == [g.n_new_tokens for g in single]
    assert all(0 < g.n_new_tokens <= 12 for g in batched)
    assert batched[2].n_prompt_tokens > batched[1].n_prompt_tokens
