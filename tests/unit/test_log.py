"""kinject's messages: loggers under `kinject`, silent for a host program until it decides,
one handler on stderr from the command line (installed once; rich on a terminal)."""

from __future__ import annotations

import subprocess
import sys


def test_library_import_configures_nothing_and_the_cli_installs_one_handler():
    code = ("import logging, kinject.log as L, kinject.gag.base\n"
            "root = logging.getLogger('kinject')\n"
            "print([type(h).__name__ for h in root.handlers], L.get_logger('kinject.gag.base').name, "
            "L.get_logger('x').name)\n"
            "L.setup_logging(); L.setup_logging()\n"
            "print([type(h).__name__ for h in root.handlers])\n"
            "L.get_logger('kinject.demo').info('a message ' + 'x' * 200)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    first, second = res.stdout.splitlines()
    assert first == "['NullHandler'] kinject.gag.base kinject.x"
    assert second == "['NullHandler', '_StderrHandler']"  # idempotent; plain lines off a terminal
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].strip() == "a message " + "x" * 200  # stderr, one line, no decorations
