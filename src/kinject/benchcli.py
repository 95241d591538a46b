"""The one `kinject bench` group: every component adds its suite here (`@bench_app.command`).

Benchmarks are commands that write JSON (never timed tests); see each suite's help.
"""

import typer

bench_app = typer.Typer(help="Benchmarks: commands that measure and write JSON.", no_args_is_help=True)
