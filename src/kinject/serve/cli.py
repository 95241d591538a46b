"""`kinject serve` (the OpenAI-compatible server), `kinject bench serve` (its load test) and
`kinject bench reliability` (faults and load)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kinject.benchcli import bench_app
from kinject.cliargs import Overrides

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="serve YAML config (configs/serve/tiny.yaml)")]


def load_serve_config(config: Path, overrides: list[str] | None):
    from kinject.config import load_config
    from kinject.serve.config import ServeConfig

    return load_config(config, overrides or [], expect=ServeConfig)


def build_app(cfg):
    """Load every model (one-line errors for missing paths), then the app."""
    import torch

    from kinject.serve.app import create_app
    from kinject.serve.models import ServedModels

    torch.set_num_threads(cfg.threads)
    return create_app(cfg, ServedModels(cfg))


def serve(
    config: ConfigOpt,
    overrides: Overrides = None,
    host: Annotated[str | None, typer.Option("--host", help="bind address (default: the config's, 127.0.0.1)")] = None,
    # a string, checked here: a bad value is one `error:` line, not click's usage box
    port: Annotated[str | None, typer.Option("--port", help="port (default: the config's, 8000)")] = None,
) -> None:
    """Serve the mixed-domain pipeline over an OpenAI-compatible HTTP API (/v1/chat/completions).

    Domains added or removed with /admin/domains are kept in <config>.domains.json beside the
    config (`registry` in it to move it) and replayed on the next start."""
    from kinject.errors import UserError
    from kinject.serve.domains import default_registry
    from kinject.serve.runner import make_server

    if port is not None and not (port.isdigit() and 0 <= int(port) <= 65535):
        raise UserError(f"--port {port!r} must be a port number (0-65535)")
    cfg = load_serve_config(config, overrides)
    if cfg.registry is None:
        cfg = cfg.model_copy(update={"registry": default_registry(config)})
    app = build_app(cfg)
    make_server(app, host or cfg.host, cfg.port if port is None else int(port), cfg.graceful_timeout_s).run()


def bench_serve(
    config: ConfigOpt,
    out: Annotated[Path, typer.Option("--out", help="output directory (bench.json)")],
    overrides: Overrides = None,
    requests: Annotated[int, typer.Option("--requests", help="requests per run")] = 200,
    concurrency: Annotated[int, typer.Option("--concurrency", help="requests in flight")] = 32,
    model: Annotated[str, typer.Option("--model", help="served model to load")] = "kinject-mixed",
    data: Annotated[Path | None, typer.Option("--data", help="JSONL of questions (default: built-in mix)")] = None,
    max_seconds: Annotated[float, typer.Option("--max-seconds", help="time bound per run")] = 300.0,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="max batch sizes to compare")] = "1,16",
) -> None:
    """Loopback load test of the real server: batched vs unbatched throughput, p50/p99 -> bench.json."""
    from kinject.serve.loadtest import run_bench

    cfg = load_serve_config(config, overrides)
    sizes = [int(x) for x in batch_sizes.split(",") if x.strip()]
    res = run_bench(cfg, out, requests, concurrency, model, data, max_seconds, sizes)
    typer.echo(f"wrote {out / 'bench.json'} (batching gain x{res['batching_gain']:.2f})"
               if res.get("batching_gain") else f"wrote {out / 'bench.json'}")


def bench_reliability(
    config: ConfigOpt,
    out: Annotated[Path, typer.Option("--out", help="output directory (bench.json, summary.md)")],
    data: Annotated[Path, typer.Option("--data", help="labelled JSONL (question + domain): the load, the routing "
                                                     "accuracy and the added domain's bank")],
    overrides: Overrides = None,
    requests: Annotated[int, typer.Option("--requests", help="requests of the load run")] = 200,
    concurrency: Annotated[int, typer.Option("--concurrency", help="requests in flight")] = 32,
    model: Annotated[str, typer.Option("--model", help="served model to load")] = "kinject-mixed",
    max_seconds: Annotated[float, typer.Option("--max-seconds", help="time bound per run")] = 300.0,
    hotplug_from: Annotated[str | None, typer.Option(
        "--hotplug-from", help="configured domain whose expert and injector the added domain uses (default: the "
                               "first)")] = None,
    hotplug_bank: Annotated[Path | None, typer.Option(
        "--hotplug-bank", help="JSONL of questions the added domain's bank is built from, in the server's worker "
                               "process (default: the --data questions of --hotplug-from)")] = None,
) -> None:
    """Faults and load on the real server: load (lost/mismatched), malformed requests (each its 4xx),
    hot-plug stall, restart recovery, routing with/without abstention -> bench.json + summary.md.
    Exit 1 when a check fails."""
    from kinject.serve.reliability import run_reliability

    cfg = load_serve_config(config, overrides)
    res = run_reliability(cfg, out, data, requests, concurrency, model, max_seconds, hotplug_from,
                          hotplug_bank)
    typer.echo((out / "summary.md").read_text())
    typer.echo(f"wrote {out}/bench.json")
    if res["failed"]:
        typer.echo(f"failed checks: {', '.join(res['failed'])}", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    bench_app.command("serve")(bench_serve)
    bench_app.command("reliability")(bench_reliability)
