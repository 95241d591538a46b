"""`kinject ppr ...` (build, add, remove, route, eval) and `kinject bench ppr`.

The command forms are stable (scripts use them). Heavy imports stay inside commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kinject.cliargs import Overrides
from kinject.errors import UserError

ppr_app = typer.Typer(help="PPR routing: prototype banks per domain, nearest-prototype routing, evaluation.",
                      no_args_is_help=True)
from kinject.benchcli import bench_app  # noqa: E402  (the shared `kinject bench` group)

BanksOpt = Annotated[Path, typer.Option("--banks", help="banks directory (from `ppr build`)")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="PPR YAML config (configs/ppr/default.yaml)")]
EncoderOpt = Annotated[str | None, typer.Option(
    "--encoder", help="encoder: sentence-transformers | hf-mean:PATH | NAME:PATH | local model dir "
                      "(default: the config's, i.e. all-MiniLM-L6-v2)")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="encoding batch size")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:1")]
MarginOpt = Annotated[float | None, typer.Option("--margin", help="fall back to `general` when best - second < margin")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]
NoAbstainOpt = Annotated[bool, typer.Option("--no-abstain", help="ignore the banks' calibrated thresholds")]


def _config(config: Path | None, encoder: str | None = None, k: int | None = None,
            batch_size: int | None = None, device: str | None = None, margin: float | None = None,
            overrides: list[str] | None = None):
    """The PPR config: the file (or the defaults), then `key.sub=value` overrides, then the
    command's own options (which win)."""
    from kinject.config import load_config
    from kinject.ppr.config import PPRConfig
    from kinject.ppr.encoders import parse_encoder

    cfg = load_config(config, overrides or [], expect=PPRConfig)
    enc = cfg.encoder
    if encoder is not None:
        enc = parse_encoder(encoder, enc)
    upd = {k2: v for k2, v in (("batch_size", batch_size), ("device", device)) if v is not None}
    enc = enc.model_copy(update=upd)
    top = {"encoder": enc}
    if k is not None:
        if k < 1:
            raise UserError(f"--k must be >= 1, got {k}")
        top["k"] = k
    if margin is not None:
        if margin < 0:
            raise UserError(f"--margin must be >= 0, got {margin}")
        top["margin"] = margin
    return cfg.model_copy(update=top), encoder is not None


def _note(msg: str) -> None:
    typer.echo(f"note: {msg}", err=True)


def _bank_table(banks, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col in ("domain", "k", "questions", "truncated", "source"):
        t.add_column(col)
    for b in banks:
        m = b.meta
        t.add_row(b.domain, str(m["k"]), str(m["n_questions"]), str(m["n_truncated"]), Path(m["source_file"]).name)
    Console().print(t)


def _router_encoder(banks: Path, cfg, encoder_given: bool):
    """The encoder to route with: the banks' own, unless --encoder/--config names another
    (which must then produce the same encoder id, or loading the banks refuses it)."""
    from kinject.ppr.banks import encoder_config_of, read_index

    index = read_index(banks)
    return cfg.encoder if encoder_given else encoder_config_of(index, cfg.encoder)


@ppr_app.command("build")
def build(
    domain: Annotated[list[str], typer.Option("--domain", help="NAME=FILE (JSONL with a `question` field); repeat per domain")],
    out: Annotated[Path, typer.Option("--out", help="banks directory to create (replaced atomically)")],
    encoder: EncoderOpt = None,
    k: Annotated[int | None, typer.Option("--k", help="prototypes per domain (default 32)")] = None,
    config: ConfigOpt = None,
    overrides: Overrides = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Build one prototype bank per domain from its offline questions (k-means)."""
    from kinject.ppr.banks import build_banks, parse_domain_args
    from kinject.runs import RunRecorder

    cfg, _ = _config(config, encoder, k, batch_size, device, overrides=overrides)
    domains = parse_domain_args(domain)
    rec = RunRecorder(out, "ppr build", cfg, cfg.seed)
    with rec.timer("build"):
        banks = build_banks(domains, out, cfg, progress=not quiet)
    rec.metrics = {b.domain: {"k": b.k, "n_questions": b.meta["n_questions"]} for b in banks}
    rec.write()
    for b in banks:
        if b.meta["n_truncated"]:
            _note(f"{b.meta['n_truncated']} {b.domain} questions exceed the encoder's max length; truncated")
    _bank_table(banks, f"PPR banks in {out} (encoder {banks[0].meta['encoder_id']})")


@ppr_app.command("add")
def add(
    banks: BanksOpt,
    domain: Annotated[str, typer.Option("--domain", help="NAME=FILE: the new domain and its questions")],
    encoder: EncoderOpt = None,
    k: Annotated[int | None, typer.Option("--k", help="prototypes for this domain (default 32)")] = None,
    config: ConfigOpt = None,
    overrides: Overrides = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Add a domain's bank; the other banks stay untouched (atomic: temp dir + swap)."""
    from kinject.ppr.banks import add_domain, parse_domain_args, read_index
    from kinject.runs import RunRecorder

    cfg, given = _config(config, encoder, k, batch_size, device, overrides=overrides)
    [(name, path)] = parse_domain_args([domain])
    rec = RunRecorder(banks, "ppr add", cfg, cfg.seed)
    with rec.timer("add"):
        bank = add_domain(banks, name, path, cfg, _router_encoder(banks, cfg, given), progress=not quiet)
    if bank.meta["n_truncated"]:
        _note(f"{bank.meta['n_truncated']} {name} questions exceed the encoder's max length; truncated")
    rec.metrics = {name: {"k": bank.k, "n_questions": bank.meta["n_questions"]}}
    rec.write()
    _bank_table([bank], f"added to {banks}: now {', '.join(read_index(banks)['domains'])}")


@ppr_app.command("remove")
def remove(
    banks: BanksOpt,
    domain: Annotated[str, typer.Option("--domain", help="NAME of the domain to remove")],
) -> None:
    """Remove a domain's bank; the other banks stay untouched (atomic: temp dir + swap)."""
    from kinject.ppr.banks import remove_domain

    rest = remove_domain(banks, domain.strip())
    typer.echo(f"removed {domain} from {banks}; domains: {', '.join(rest)}")


@ppr_app.command("calibrate")
def calibrate_cmd(
    banks: BanksOpt,
    data: Annotated[Path, typer.Option("--data", help="held-out JSONL with `question` and a domain name in `domain`")],
    fraction: Annotated[float, typer.Option("--fraction", help="share of --data used to choose the thresholds "
                                                               "(the rest reports their cost)")] = 0.5,
    seed: Annotated[int, typer.Option("--seed", help="seed of the calibration/test split")] = 0,
    config: ConfigOpt = None,
    overrides: Overrides = None,
    device: DeviceOpt = None,
) -> None:
    """Choose each domain's abstention threshold on held-out questions; record it in the banks."""
    from kinject.io import require_file
    from kinject.ppr.banks import write_thresholds
    from kinject.ppr.calibrate import calibrate
    from kinject.ppr.evaluate import read_labelled
    from kinject.ppr.router import Router

    require_file(data, "--data file")
    cfg, _ = _config(config, None, device=device, overrides=overrides)
    rows = read_labelled(data)
    router = Router.from_pretrained(banks, _router_encoder(banks, cfg, False), abstain=False)
    report = calibrate(router, [r.question for r in rows], [r.label for r in rows], fraction, seed)
    report["data"] = str(data)
    write_thresholds(banks, report["thresholds"], report)
    t = report["test"]
    typer.echo(f"thresholds: {json.dumps(report['thresholds'])}")
    typer.echo(f"test split ({t['n']} questions): accuracy {t['without_abstention']['accuracy']} without, "
               f"{t['with_abstention']['accuracy']} with abstention (cost {t['accuracy_cost']})")
    for d, row in t["with_abstention"]["removed"].items():
        before = t["without_abstention"]["removed"][d]["to_other_specialist"]
        typer.echo(f"  {d} removed: {row['to_other_specialist']}/{row['n']} of its questions answered by another "
                   f"specialist (without abstention: {before})")
    typer.echo(f"wrote the thresholds into {banks} (calibration.json)")


@ppr_app.command("route")
def route(
    banks: BanksOpt,
    args: Annotated[list[str], typer.Argument(help="question(s) to route, and key.sub=value config overrides",
                                              show_default=False)],
    margin: MarginOpt = None,
    no_abstain: NoAbstainOpt = False,
    encoder: EncoderOpt = None,
    config: ConfigOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Route question(s): prints route, score and all scores as JSON (one object per question)."""
    from kinject.cliargs import split_overrides
    from kinject.ppr.router import Router

    question, overrides = split_overrides(args)
    if not question:
        raise UserError("ppr route: give at least one question")
    cfg, given = _config(config, encoder, device=device, margin=margin, overrides=overrides)
    router = Router.from_pretrained(banks, _router_encoder(banks, cfg, given), margin=cfg.margin, abstain=not no_abstain)
    decisions = router.route_batch(question)
    for q, d in zip(question, decisions):
        if d.truncated_from is not None:
            _note(f"query {q[:40]!r}... has {d.truncated_from} tokens, over the encoder's "
                  f"{router.encoder.max_length}: truncated to {router.encoder.max_length}")
        typer.echo(json.dumps({"question": q, **d.to_dict()}, ensure_ascii=False))


@ppr_app.command("eval")
def eval_cmd(
    banks: BanksOpt,
    data: Annotated[Path, typer.Option("--data", help="JSONL with `question` and a domain name in `domain` or `label`")],
    out: Annotated[Path, typer.Option("--out", help="output directory (results.jsonl, confusion matrix, ...)")],
    margin: MarginOpt = None,
    no_abstain: NoAbstainOpt = False,
    only: Annotated[list[str] | None, typer.Option("--only", help="evaluate only questions labelled with this domain (repeat)")] = None,
    dataset: Annotated[str | None, typer.Option(help="dataset name in results.jsonl (default: data file stem)")] = None,
    split: Annotated[str | None, typer.Option(help="split name in results.jsonl (default: data file's directory name)")] = None,
    n_latency: Annotated[int, typer.Option("--n-latency", help="queries timed one by one for latency_ms_p50")] = 200,
    encoder: EncoderOpt = None,
    config: ConfigOpt = None,
    overrides: Overrides = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Routing accuracy (micro, macro, per domain), confusion matrix (table + PNG), latency."""
    from kinject.eval.results import print_results
    from kinject.io import atomic_dir, require_file
    from kinject.ppr.evaluate import confusion_markdown, evaluate, read_labelled, write_eval
    from kinject.ppr.router import Router
    from kinject.runs import RunRecorder, inputs_hash

    require_file(data, "--data file")
    cfg, given = _config(config, encoder, batch_size=batch_size, device=device, margin=margin, overrides=overrides)
    rows = read_labelled(data, only)
    router = Router.from_pretrained(banks, _router_encoder(banks, cfg, given), margin=cfg.margin, abstain=not no_abstain)
    unknown = sorted({r.label for r in rows} - set(router.domains) - {"general"})
    if unknown:
        _note(f"labels with no bank in {banks}: {', '.join(unknown)} (their questions count as errors)")
    dataset = dataset or data.stem
    split = split or data.resolve().parent.name
    rec = RunRecorder(out, "ppr eval", cfg, cfg.seed)
    with rec.timer("evaluate"):
        res = evaluate(router, rows, n_latency=n_latency, progress=not quiet)
    with atomic_dir(out) as tmp:
        result_rows = write_eval(res, tmp, dataset, split)
        rec.metrics = {f"{r.dataset}/{r.metric}": r.value for r in result_rows}
        rec.extra = {"banks": str(banks), "domains": router.domains, "encoder_id": router.encoder.id}
        rec.write(out_dir=tmp, inputs_hash=inputs_hash(cfg, data, banks))
    if res.n_truncated:
        _note(f"{res.n_truncated} questions exceed the encoder's {router.encoder.max_length} tokens; truncated")
    print_results(result_rows, title=f"PPR routing on {data} ({len(rows)} questions)")
    typer.echo("confusion (rows gold, columns routed):")
    typer.echo(confusion_markdown(res), nl=False)
    typer.echo(f"wrote {out}/results.jsonl, confusion.png")


@bench_app.command("ppr")
def bench_ppr(
    out: Annotated[Path, typer.Option("--out", help="output directory (bench.json)")],
    banks: Annotated[Path | None, typer.Option("--banks", help="banks dir (default: built from --world)")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="JSONL of questions (default: the world's online file)")] = None,
    world: Annotated[Path | None, typer.Option("--world", help="a built world dir (default: build the tiny world under OUT)")] = None,
    n: Annotated[int, typer.Option("--n", help="queries per timed run")] = 2048,
    repeats: Annotated[int, typer.Option("--repeats", help="timed runs (median reported)")] = 3,
    config: ConfigOpt = None,
    overrides: Overrides = None,
    encoder: EncoderOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Routing throughput (queries/s, batched) and share of time outside the encoder -> bench.json.

    Torch threads: KINJECT_TORCH_THREADS (default min(2, cores)); on an oversubscribed CPU one
    thread was measured about 2x faster than two (spin-waiting threads)."""
    from kinject.io import iter_jsonl, write_json_atomic
    from kinject.ppr.bench import bench_routing
    from kinject.ppr.router import Router
    from kinject.ppr.world import banks_from_world, online_file

    cfg, given = _config(config, encoder, batch_size=batch_size, device=device, overrides=overrides)
    if banks is None or data is None:
        world_dir = world if world is not None else None
        built_banks, world_dir = banks_from_world(world_dir, out, cfg)
        banks = banks or built_banks
        data = data or online_file(world_dir)
    questions = [r["question"] for r in iter_jsonl(data, required=["question"])]
    if not questions:
        raise UserError(f"{data}: no questions")
    router = Router.from_pretrained(banks, _router_encoder(banks, cfg, given), margin=cfg.margin)
    res = bench_routing(router, questions, n=n, repeats=repeats)
    res.update({"banks": str(banks), "data": str(data)})
    write_json_atomic(out / "bench.json", res)
    typer.echo(json.dumps({k: v for k, v in res.items() if k != "runs_s"}, indent=2))


def register(app: typer.Typer) -> None:
    app.add_typer(ppr_app, name="ppr")
