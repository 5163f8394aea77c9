"""Run MONAI's own Warp tests (tests/networks/blocks/warp/test_warp.py of a MONAI checkout)
with MONAI's ``Warp`` replaced by ``fastreg.compat.monai.Warp``.

    python scripts/monai_warp_tests.py /path/to/MONAI        # needs `pip install parameterized`

The checkout provides only its ``tests`` package (the installed monai is the one tested
against); its ``setUp`` downloads an MRI
that only ``test_itk_benchmark`` reads (skipped without itk), so setUp is skipped here and
nothing is downloaded. Exit status 0 when every test passes.
"""
from __future__ import annotations

import sys
import unittest
from pathlib import Path


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not (Path(args[0]) / "tests" / "networks" / "blocks" / "warp" / "test_warp.py").is_file():
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    sys.path.append(str(Path(args[0]).resolve()))  # its tests package; monai itself stays the installed one
    import fastreg.compat.monai as shim
    import tests.networks.blocks.warp.test_warp as monai_tests

    monai_tests.Warp = shim.Warp
    monai_tests.TestWarp.setUp = lambda self: None
    suite = unittest.defaultTestLoader.loadTestsFromModule(monai_tests)
    return 0 if unittest.TextTestRunner(verbosity=2).run(suite).wasSuccessful() else 1


if __name__ == "__main__":
    raise SystemExit(main())
