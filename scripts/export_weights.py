"""Write a `fastreg train` checkpoint as a shipped weights file and print its sha256.

    python scripts/export_weights.py runs/unireg-2d/checkpoints/best.pt unireg-2d [--half]

The model is rebuilt from the run's recipe.toml (fastreg.models.load_checkpoint); its
architecture and arguments must be the registry entry's (fastreg/models/weights.py WEIGHTS).
The state dict (float16 with ``--half``) goes to fastreg/weights/<file> through a temporary
name and a rename, so a failed export never leaves a partial file. Paste the printed sha256
into the registry entry; `fastreg.models.load(name)` then verifies it.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

from fastreg.models import load_checkpoint
from fastreg.models.registry import model_class
from fastreg.models.weights import WEIGHTS, WEIGHTS_DIR, sha256


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="a checkpoint file or training run folder")
    p.add_argument("name", choices=sorted(WEIGHTS), help="the shipped name it becomes")
    p.add_argument("--half", action="store_true", help="store floating-point tensors as float16")
    args = p.parse_args(argv)
    entry = WEIGHTS[args.name]
    model = load_checkpoint(args.checkpoint)
    expected = model_class(entry.architecture)
    if not isinstance(model, expected):
        p.error(f"{args.checkpoint}: a {type(model).__name__} checkpoint, but {args.name} is {expected.__name__}")
    state = {k: (v.half() if args.half and v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items()}
    target = WEIGHTS_DIR / entry.file
    fd, tmp = tempfile.mkstemp(dir=WEIGHTS_DIR, suffix=".part")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"{target}: {target.stat().st_size / 2**20:.2f} MiB, sha256 {sha256(target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
