"""Demo stage `ppr` (order 40, side lane): banks from the world's offline questions, abstention
thresholds calibrated on half of the online mixed questions (`kinject ppr calibrate`), routing
accuracy on the online questions, the plug-and-play check and a throughput run."""

from __future__ import annotations

from pathlib import Path

from kinject.recipes.engine import DemoContext, stage
from kinject.resources import shipped

TINY_PPR = shipped("configs/ppr/tiny.yaml")  # exemplar banks, see the file


@stage("ppr", order=40, help="PPR routing: prototype banks, online accuracy, plug-and-play, throughput", lane="side")
def ppr_stage(ctx: DemoContext, out: Path) -> None:
    from kinject.config import load_config
    from kinject.encoders import encoder_dir
    from kinject.errors import UserError
    from kinject.io import atomic_dir, write_json_atomic
    from kinject.ppr.banks import build_banks, write_thresholds
    from kinject.ppr.bench import bench_routing
    from kinject.ppr.calibrate import calibrate
    from kinject.ppr.config import PPRConfig
    from kinject.ppr.encoders import MemoEncoder, load_encoder
    from kinject.ppr.evaluate import evaluate, plug_and_play, read_labelled, write_eval
    from kinject.ppr.router import Router
    from kinject.ppr.world import offline_files, online_file
    from kinject.runs import RunRecorder, inputs_hash, is_complete, read_manifest

    world = ctx.artifacts.get("world") or ctx.out / "world" / "world"
    if not Path(world).is_dir():
        raise UserError(f"ppr stage needs the world (run the `world` stage first): {world} not found")
    files, online = offline_files(world), online_file(world)
    cfg = load_config(TINY_PPR, expect=PPRConfig)
    # the demo reports throughput; `kinject bench ppr` is the real benchmark (2048 x 3 took 93 s here)
    quick = {"n": 256, "repeats": 1} if ctx.quick else {"n": 512, "repeats": 2}
    calib = {"fraction": 0.5, "seed": cfg.seed}
    h = inputs_hash({"ppr": cfg.model_dump(), **quick, "calibrate": calib}, *[f for _, f in files], online,
                    encoder_dir(cfg.encoder))
    if not is_complete(out, h):
        encoder = load_encoder(cfg.encoder)
        memo = MemoEncoder(encoder)  # banks and plug-and-play share the offline vectors; timings use `encoder`
        data = read_labelled(online)
        rec = RunRecorder(out, "demo ppr", cfg, cfg.seed)
        with atomic_dir(out) as tmp:
            with rec.timer("build_banks"):
                build_banks(files, tmp / "banks", cfg, memo)
            with rec.timer("calibrate"):
                report = calibrate(Router.from_pretrained(tmp / "banks", memo, abstain=False),
                                   [d.question for d in data], [d.label for d in data], **calib)
                report["data"] = str(online)
                write_thresholds(tmp / "banks", report["thresholds"], report)
            router = Router.from_pretrained(tmp / "banks", encoder)
            with rec.timer("evaluate"):
                res = evaluate(router, data, n_latency=64)
                (tmp / "eval").mkdir()
                write_eval(res, tmp / "eval", "mixed_domain", "online")
            with rec.timer("plug_and_play"):
                pp = plug_and_play(files, data, tmp / "plug_banks", cfg, memo)
                write_json_atomic(tmp / "plug_and_play.json", pp)
            with rec.timer("bench"):
                bench = bench_routing(router, [d.question for d in data], **quick)
                write_json_atomic(tmp / "bench.json", bench)
            rec.metrics = {
                "online_accuracy": res.accuracy, "online_macro_accuracy": res.macro_accuracy,
                "abstention_accuracy_cost": report["test"]["accuracy_cost"],
                "plug_and_play_drop_points": pp["drop_points"],
                "queries_per_s": bench["queries_per_s"],
                "share_outside_encoder": bench["share_outside_encoder"],
            }
            rec.write(out_dir=tmp, inputs_hash=h)
    m = (read_manifest(out) or {}).get("metrics", {})
    ctx.artifacts["ppr_banks"] = out / "banks"
    ctx.summary["ppr: online routing accuracy"] = round(m.get("online_accuracy", float("nan")), 4)
    ctx.summary["ppr: plug-and-play drop (points)"] = round(m.get("plug_and_play_drop_points", float("nan")), 3)
    ctx.summary["ppr: queries/s (batched)"] = round(m.get("queries_per_s", float("nan")), 1)
    ctx.summary["ppr: share of time outside encoder"] = round(m.get("share_outside_encoder", float("nan")), 4)
