"""`kinject serve` as a real process on tiny random models: the openai client talks to it, then
SIGTERM while requests are in flight: they all finish (200), then the process exits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import yaml
from unit.mixed_world import build_mixed_world, options_of
from unit.test_ppr_data import questions

CLI = [sys.executable, "-m", "kinject.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_tokenizer, tiny_model_dir):
    root = tmp_path_factory.mktemp("serve_cli")
    world = build_mixed_world(root, tiny_tokenizer, tiny_model_dir)
    cfg = {"kind": "serve", "pipeline": json.loads(options_of(world).model_dump_json()),
           "batching": {"max_batch_size": 8, "max_wait_ms": 1000}, "max_tokens_cap": 4}
    (root / "serve.yaml").write_text(yaml.safe_dump(cfg))
    return root / "serve.yaml"


@pytest.mark.slow
def test_serve_process_openai_client_and_graceful_sigterm(config):
    import openai

    port = free_port()
    env = {**os.environ, "KINJECT_API_KEY": "k", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*CLI, "serve", "--config", str(config), "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < end, proc.stdout.read() if proc.poll() else "timeout"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
        assert "gag-materials" in [m.id for m in client.models.list()]
        resp = client.chat.completions.create(model="kinject-mixed", messages=[
            {"role": "user", "content": questions("materials", 1, seed=5)[0]}])
        assert resp.model_extra["kinject"]["route"] == "materials"
        codes: list[int] = []

        def one(q):
            codes.append(httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": "Bearer k"}, timeout=60,
                                    json={"model": "kinject-mixed", "messages": [{"role": "user", "content": q}]}
                                    ).status_code)

        threads = [threading.Thread(target=one, args=(q,)) for q in questions("adjuvant", 4, seed=6)]
        for t in threads:
            t.start()
        while httpx.get(f"{url}/health").json()["queues"].get("kinject-mixed", {}).get("in_flight", 0) < 4:
            assert time.monotonic() < end + 60
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)  # all 4 are in the server, their batch not yet run
        for t in threads:
            t.join(60)
        # uvicorn re-raises the signal after its graceful shutdown (supervisors see it)
        assert proc.wait(60) in (0, -signal.SIGTERM)
        assert codes == [200] * 4
        assert "Application shutdown complete" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
