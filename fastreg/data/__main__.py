"""``python -m fastreg.data --preview out.png [--kind labelm|synthmorph] [--pairs N] [--seed S]``:
a sheet of generated training pairs, one row per pair (fixed, moving, the true field's
deformation grid and Jacobian determinant; 3-D pairs are cut at the middle slice)."""
from __future__ import annotations

import argparse
import sys

import torch


def _sheet(kind: str, pairs: int, seed: int, size: int):
    from matplotlib.figure import Figure

    from fastreg import viz
    from fastreg.data import LabelMPairs, SynthMorphPairs

    generator = torch.Generator().manual_seed(seed)
    if kind == "labelm":
        stream = LabelMPairs(size, multimodal=True, batch_size=pairs)
        batch = stream.draw(generator)
        columns = [("fixed", batch["fixed"]), ("moving (mono-modal)", batch["moving_mono"]),
                   ("moving (Multi-LabelM)", batch["moving"])]
    else:
        stream = SynthMorphPairs((size,) * 3, batch_size=pairs, with_disp=True)
        batch = stream.draw(generator)
        columns = [("fixed", batch["fixed"]), ("moving", batch["moving"]),
                   ("fixed labels", batch["fixed_labels"].float()), ("moving labels", batch["moving_labels"].float())]
    width = len(columns) + 2
    fig = Figure(figsize=(viz.PANEL_INCHES * width, viz.PANEL_INCHES * pairs))
    for row in range(pairs):
        for col, (title, images) in enumerate(columns):
            ax = fig.add_subplot(pairs, width, row * width + col + 1)
            viz.image(images[row:row + 1], ax, title=title if row == 0 else None,
                      cmap="tab20" if "labels" in title else "gray")
        disp = batch["disp"][row:row + 1]
        viz.deformation_grid(disp, fig.add_subplot(pairs, width, row * width + width - 1),
                             background=batch["moving"][row:row + 1], spacing=max(4, size // 24),
                             title="disp: moving -> fixed" if row == 0 else None)
        viz.jacobian_map(disp, fig.add_subplot(pairs, width, row * width + width))
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastreg.data", description=__doc__.split("\n")[0])
    parser.add_argument("--preview", required=True, metavar="OUT.png", help="PNG file to write")
    parser.add_argument("--kind", choices=("labelm", "synthmorph"), default="labelm")
    parser.add_argument("--pairs", type=int, default=3, help="pairs (rows) to draw (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=None,
                        help="image size: 224 (labelm, 224^2) or 128 (synthmorph, 128^3) by default")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.seed < 0 or (args.size is not None and args.size < 16):
        parser.error("--pairs must be >= 1, --seed >= 0 and --size >= 16")
    if not args.preview.lower().endswith(".png"):
        parser.error(f"--preview: expected a .png file, got {args.preview!r}")
    size = args.size or (224 if args.kind == "labelm" else 128)
    from fastreg import viz

    try:
        viz.save_figure(_sheet(args.kind, args.pairs, args.seed, size), args.preview)
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote {args.preview}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
