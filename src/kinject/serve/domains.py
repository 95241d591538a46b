"""Hot-plugged domains: built off the serving path, persisted in a registry, replayed on start.

Adding a domain whose `bank` is a JSONL of questions builds the bank in a worker *process*
(one torch thread, `nice` 10): encoding and clustering never hold the model lock nor compete
with the model thread for the interpreter. The bank is written into a banks dir next to the
registry and loaded through `load_bank`, i.e. checked like any other bank.

The registry (`<config>.domains.json` beside the serve config, or `registry` in it) records
what the admin endpoints changed: domains added (with every field of the request, their bank
pointing at a built banks dir) and configured domains removed. It is rewritten atomically
after each change and replayed when the server starts, so a restart serves exactly the
domains served before it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from kinject.errors import UserError
from kinject.io import write_json_atomic

log = logging.getLogger("kinject.serve")

FORMAT = "kinject-serve-domains/1"
FIELDS = ("bank", "expert", "injector", "system", "instruction", "max_background_tokens", "memory")


def default_registry(config: Path) -> Path:
    return config.parent / f"{config.stem}.domains.json"


class Registry:
    """{"added": {name: {bank, expert, injector, ...}}, "removed": [name, ...]} in one JSON file."""

    def __init__(self, path: Path | None):
        self.path = None if path is None else Path(path)
        self.added: dict[str, dict] = {}
        self.removed: list[str] = []
        if self.path is not None and self.path.exists():
            import json

            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                ok = (isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("added"), dict)
                      and isinstance(data.get("removed"), list))
            except (ValueError, UnicodeDecodeError):
                ok = False
            if not ok:
                raise UserError(f"registry {self.path} is not a kinject domains registry; move it away to start "
                                "with the configured domains only")
            self.added, self.removed = data["added"], data["removed"]

    @property
    def banks_dir(self) -> Path:
        """Where banks built from JSONL go (kept: the registry points at them)."""
        if self.path is None:
            return Path(tempfile.mkdtemp(prefix="kinject-banks-"))
        return self.path.parent / f"{self.path.stem}.banks"

    def save(self) -> None:
        if self.path is not None:
            write_json_atomic(self.path, {"format": FORMAT, "added": self.added, "removed": self.removed})

    def record_add(self, name: str, fields: dict) -> None:
        self.added[name] = {k: (str(v) if isinstance(v, Path) else v) for k, v in fields.items() if k in FIELDS}
        self.removed = [n for n in self.removed if n != name]
        self.save()

    def record_remove(self, name: str, configured: bool) -> None:
        self.added.pop(name, None)
        if configured and name not in self.removed:
            self.removed.append(name)
        self.save()


def _worker_init() -> None:
    os.environ["KINJECT_TORCH_THREADS"] = "1"
    try:
        os.nice(10)
    except OSError:
        pass


def _build(name: str, questions: str, like: str, out: str) -> str:
    from kinject.ppr.banks import build_bank_like

    return str(build_bank_like(name, questions, like, out))


class BankBuilder:
    """One worker process (spawned on first use) that builds banks from JSONL."""

    def __init__(self):
        self._pool: ProcessPoolExecutor | None = None

    async def build(self, name: str, questions: Path, like: Path, out: Path) -> Path:
        import multiprocessing

        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_init)
        loop = asyncio.get_running_loop()
        try:
            return Path(await loop.run_in_executor(self._pool, _build, name, str(questions), str(like), str(out)))
        except BrokenProcessPool:  # the worker died (killed, out of memory): the next add starts a new one
            self.shutdown()
            raise

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def replay(models, registry: Registry, isolate: bool) -> None:
    """Apply the registry to freshly loaded models (at start, before serving)."""
    from kinject.mixed import DomainOptions, load_domain_bank

    pipe = models.pipeline
    for name in registry.removed:
        if name in pipe.routes or name in pipe.unavailable:
            pipe.remove_domain(name)
            log.info("registry: %s stays removed", name)
    for name, fields in registry.added.items():
        if name in pipe.routes or name in pipe.unavailable:
            pipe.remove_domain(name)  # the admin's version replaces the configured one
        try:
            opts = DomainOptions(**{k: v for k, v in fields.items() if k != "bank"})
            for f in ("bank", "expert", "injector"):
                if not Path(fields[f]).exists():
                    raise UserError(f"{f}: {fields[f]} does not exist")
            bank = load_domain_bank(fields["bank"], name, pipe.encoder)
            pipe.add_domain(name, bank, pipe.build_gag_route(name, opts))
            log.info("registry: re-added %s", name)
        except (UserError, OSError, KeyError) as e:
            why = f"registry {registry.path}: domain {name!r} cannot be re-added: {e}"
            if not isolate:
                raise UserError(why) from None
            pipe.unavailable[name] = why
            log.error("%s", why)
