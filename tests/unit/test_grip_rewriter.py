"""The `openai` rewriter against a REAL local OpenAI-compatible server: a minimal FastAPI app on
loopback serving a tiny random model through `kinject.generation` (greedy), driven by the
`openai` client. The replies over HTTP must equal local greedy decoding of the same messages."""

import socket
import threading
import time

import pytest

from kinject.errors import UserError
from kinject.grip.config import RewriterConfig
from kinject.grip.rewriters import RewriteItem, make_rewriter, parse_rewrite, rewrite_messages


def chat_app(model, tok, seen: list):
    from fastapi import FastAPI

    from kinject.generation import generate_texts
    from kinject.prompts import render

    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(req: dict):
        seen.append(req)
        gen = generate_texts(model, tok, [render(tok, req["messages"])], max_new_tokens=req.get("max_tokens") or 16)[0]
        return {
            "id": f"chatcmpl-{len(seen)}", "object": "chat.completion", "created": int(time.time()),
            "model": req["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": gen.n_prompt_tokens, "completion_tokens": gen.n_new_tokens,
                      "total_tokens": gen.n_prompt_tokens + gen.n_new_tokens},
        }

    return app


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    import uvicorn

    from kinject.models import load_causal_lm

    model, tok = load_causal_lm(tiny_model_dir, device="cpu")
    seen: list = []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(chat_app(model, tok, seen), host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{port}/v1", model, tok, seen
    srv.should_exit = True
    th.join(timeout=10)


ITEMS = [
    RewriteItem("Which country is the birthplace of Arno Betz in?", ["Norland"], "Ostria",
                ["Arno Betz was born in Velmora.", "Quill Works has its head office in Ostria."]),
    RewriteItem("Where was Dana Frey born?", ["Tarsk"], "", []),
]


def test_openai_rewriter_over_real_server(server):
    from kinject.generation import generate_texts
    from kinject.prompts import render

    url, model, tok, seen = server
    rw = make_rewriter(RewriterConfig(kind="openai", url=url, model="tiny", max_tokens=12, concurrency=2))
    out = rw(ITEMS)
    expected = [g.text for g in generate_texts(model, tok, [render(tok, rewrite_messages(i)) for i in ITEMS],
                                               max_new_tokens=12, batch_size=1)]
    assert rw.raw == expected  # what the server generated came back through the client unchanged
    assert out == [parse_rewrite(t) for t in expected]
    assert len(seen) == 2 and {r["model"] for r in seen} == {"tiny"}
    assert all(r["temperature"] == 1.0 and r["max_tokens"] == 12 for r in seen)
    users = sorted(r["messages"][1]["content"] for r in seen)
    assert "[1]. Arno Betz was born in Velmora." in users[1] and "Ostria" in users[1]
    assert "Passages retrieved for the question:\n(none)" in users[0]


def test_unreachable_endpoint_is_a_user_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    rw = make_rewriter(RewriterConfig(kind="openai", url=f"http://127.0.0.1:{port}/v1", model="m", timeout_s=2))
    with pytest.raises(UserError, match="cannot reach"):
        rw(ITEMS[:1])
    with pytest.raises(UserError, match="needs rewriter.url"):
        make_rewriter(RewriterConfig(kind="openai"))


def test_parse_rewrite_forms():
    assert parse_rewrite("Fact: Arno Betz was born in Velmora.\nQuery: Where does Velmora lie?") == (
        "Arno Betz was born in Velmora.", "Where does Velmora lie?")
    assert parse_rewrite("[INTERMEDIARY] born in Velmora [RETRIEVE] Velmora country") == (
        "born in Velmora", "Velmora country")
    assert parse_rewrite("I think the answer is Norland") is None
    assert parse_rewrite("Fact: x\nQuery:   ") is None
