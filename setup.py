"""Copies the shipped configs, the tiny foundation and the real QA dev sets into the built package
(`kinject/_shipped/`), so a non-editable install finds them (see `kinject.resources`).
Everything else about the build is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED_DIRS = ("configs", "assets", "data")  # the same list as kinject.resources.SHIPPED_DIRS


class BuildWithShippedFiles(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "kinject" / "_shipped"
        for name in SHIPPED_DIRS:
            if Path(name).is_dir():
                shutil.copytree(name, target / name, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithShippedFiles})
