"""Output folders of the CLI: refuse to clobber results, and write a folder all at once.

``check_out(out, force)`` refuses an existing non-empty ``out`` without ``force`` and an
unwritable parent; ``staging(out)`` yields a hidden folder next to ``out`` that replaces
``out`` on success and is removed on failure, so a failed command never leaves a partial
output folder.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"--out: {out} already holds results; pass --force to replace them")
    parent = out.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f"--out: cannot create {out}: {parent} is not a writable folder")


class staging:
    """A hidden folder next to ``out``; on success it replaces ``out``, on failure it is removed."""

    def __init__(self, out: Path):
        self.out = out.resolve()

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.staging."))
        return self.path

    def __exit__(self, kind, value, traceback):
        if kind is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return False
        old = None
        if self.out.exists():
            old = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.old."))
            os.replace(self.out, old / "out")
        os.replace(self.path, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False
