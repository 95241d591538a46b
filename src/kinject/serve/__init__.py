"""An OpenAI-compatible HTTP server over the mixed-domain pipeline (`kinject serve`).

- `config.py`  ServeConfig (the pipeline's paths, batching, limits, keys)
- `batcher.py` the asyncio micro-batcher (one per served model; bounded queue, max wait)
- `models.py`  what `model` names: kinject-mixed, kinject-grip, base, rag, gag-<domain>, extras
- `app.py`     the FastAPI app: /v1/chat/completions (JSON + SSE), /v1/models, /health, /admin
- `streaming.py` token streaming for `stream: true` (one request per model call)
- `loadtest.py` + `cli.py`: `kinject serve`, `kinject bench serve`
- `reliability.py` `kinject bench reliability`: load, malformed requests, hot-plug stall, restart, routing
"""
