"""Training: one generic loop (``fit``) for every model, with exact resume and torchrun DDP.

  loop.py         fit(model, data, loss, *, steps, ...) and FitResult
  stream.py       the data protocol (indexed streams for exact resume), each rank's batches
  checkpoint.py   atomic checkpoints, their contents and the checks before resuming
  validate.py     validation metrics through fastreg.metrics
  objective.py    pair_loss: fastreg.nn's (fixed, warped, disp) losses as fit's loss(batch, disp)
  log.py          CSV and TensorBoard logs
  distributed.py  torchrun process groups (NCCL on GPU, gloo on CPU)
Recipes (fastreg.recipes) and ``fastreg train`` (fastreg.cli.train) build the arguments of
``fit`` from a TOML file.
"""
from fastreg.train.loop import FitResult, fit
from fastreg.train.stream import Shuffled

__all__ = ["fit", "FitResult", "Shuffled"]
