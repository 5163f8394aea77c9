"""Put shims in place inside a peer's modules, and take them out again.

``Patch(prefix, replacements)`` replaces, in every imported module whose name starts with
``prefix``, each attribute that *is* one of the original objects (``{original: shim}``), so
names imported with ``from ... import`` (e.g. monai.networks.nets.voxelmorph's ``DVF2DDF``)
are swapped too. It applies at construction; ``restore()`` (or leaving the ``with`` block)
puts every original back. Objects built while the patch is active keep their shim layers.
"""
from __future__ import annotations

import sys


class Patch:
    def __init__(self, prefix: str, replacements: dict):
        self._undo: list[tuple[object, str, object]] = []
        for name, module in list(sys.modules.items()):
            if module is None or not (name == prefix or name.startswith(prefix + ".")):
                continue
            for attr, value in list(vars(module).items()):
                for original, shim in replacements.items():
                    if value is original:
                        setattr(module, attr, shim)
                        self._undo.append((module, attr, original))

    @property
    def active(self) -> bool:
        return bool(self._undo)

    def restore(self) -> None:
        """Put the originals back (idempotent)."""
        while self._undo:
            module, attr, original = self._undo.pop()
            setattr(module, attr, original)

    def __enter__(self) -> "Patch":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
