"""The `kinject` command: one Typer app, `kinject <group> <command>`.

Thin by design: commands parse arguments and call library functions. Groups live next to the
code they drive: any `kinject.<pkg>.cli` module with a `register(app)` function is discovered,
so a new component adds its commands without editing this file. User errors (`UserError`)
print one `error: ...` line and exit 2.

The command runs offline: `main` sets the Hugging Face offline variables before any model
library is imported (`offline_environment`). Importing `kinject` as a library sets nothing; its
loaders pass `local_files_only=True` themselves.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import sys
from pathlib import Path
from typing import Annotated

import typer

import kinject
from kinject.benchcli import bench_app
from kinject.cliargs import Overrides
from kinject.errors import UserError

app = typer.Typer(
    name="kinject",
    help="Inject private domain knowledge into frozen LLMs (GAG + PPR, GRIP) and evaluate it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
model_app = typer.Typer(help="Local causal LMs: create tiny models, import GGUF models, inspect checkpoints.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect configs: resolved values after overrides.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(config_app, name="config")
app.add_typer(bench_app, name="bench")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")]


def echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


@model_app.command("tiny")
def model_tiny(
    out: Annotated[Path, typer.Option("--out", help="output directory")],
    arch: Annotated[str, typer.Option(help="qwen3 or llama")] = "qwen3",
    hidden: Annotated[int, typer.Option(help="hidden size")] = 64,
    layers: Annotated[int, typer.Option(help="decoder layers")] = 2,
    heads: Annotated[int, typer.Option(help="attention heads")] = 4,
    vocab: Annotated[int, typer.Option(help="vocabulary size (BPE trained on a built-in sample)")] = 1000,
    seed: Annotated[int, typer.Option(help="init seed")] = 0,
) -> None:
    """Create a randomly initialized tiny causal LM with a working tokenizer."""
    from kinject.models import TinySpec, make_tiny_model, save_model
    from kinject.tokenizer import BUILTIN_SAMPLE, train_tokenizer

    tok = train_tokenizer(BUILTIN_SAMPLE * 4, vocab_size=vocab, min_frequency=1)
    spec = TinySpec(arch=arch, vocab=vocab, hidden=hidden, layers=layers, heads=heads)
    model = make_tiny_model(spec, tokenizer=tok, seed=seed)
    save_model(model, tok, out)
    typer.echo(f"saved {arch} model ({sum(p.numel() for p in model.parameters()):,} parameters) to {out}")


@model_app.command("import")
def model_import_cmd(
    source: Annotated[str, typer.Argument(help="a .gguf file, or a packaged model name (smollm2-135m-instruct)")],
    out: Annotated[Path, typer.Option("--out", help="output checkpoint directory")],
    dtype: Annotated[str, typer.Option(help="stored dtype: float32 or bfloat16")] = "float32",
    force: Annotated[bool, typer.Option("--force", help="rebuild even when up to date")] = False,
) -> None:
    """Import a GGUF model into a dense local Hugging Face checkpoint (offline)."""
    from kinject.model_import import import_gguf

    manifest = import_gguf(source, out, dtype=dtype, force=force)
    echo_json(manifest)


@model_app.command("info")
def model_info_cmd(path: Annotated[Path, typer.Argument(help="local model directory")]) -> None:
    """Architecture, parameter count, dtype, vocab and special tokens of a local model."""
    from kinject.models import model_info

    echo_json(model_info(path))


@config_app.command("show")
def config_show(config: ConfigOpt = None, overrides: Overrides = None) -> None:
    """Print the resolved config (file + overrides), validated against its kind."""
    from kinject.config import dump_config, load_config

    if config is None:
        raise UserError("config show needs --config FILE")
    typer.echo(dump_config(load_config(config, overrides or [])), nl=False)


@config_app.command("kinds")
def config_kinds() -> None:
    """List the registered config kinds and the class behind each."""
    from kinject.config import discover_configs

    for kind, cls in sorted(discover_configs().items()):
        typer.echo(f"{kind}\t{cls.__module__}.{cls.__name__}")


@app.command("version")
def version() -> None:
    """Print the kinject version."""
    typer.echo(kinject.__version__)


def discover_groups(root: typer.Typer) -> None:
    """Register every `kinject.<pkg>.cli.register(app)` found in the package."""
    for mod in sorted(pkgutil.iter_modules(kinject.__path__), key=lambda m: m.name):
        if not mod.ispkg:
            continue
        name = f"kinject.{mod.name}.cli"
        if importlib.util.find_spec(name) is None:
            continue
        module = importlib.import_module(name)
        register = getattr(module, "register", None)
        if callable(register):
            register(root)


# Modules outside `kinject.<pkg>.cli` that register commands: kept explicit.
for _name in ("kinject.recipes.engine",):
    importlib.import_module(_name).register(app)
discover_groups(app)


# Weights and datasets load from local paths only: a hub name must fail fast, never download.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def offline_environment() -> None:
    """Set the offline variables in this process (and so in every worker it starts), keeping any
    value the user set. Must run before `huggingface_hub` is imported, which reads them once."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def main() -> None:
    from kinject.log import setup_logging

    offline_environment()
    setup_logging()
    try:
        app()
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(UserError.exit_code)
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
