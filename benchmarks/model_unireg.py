"""UniReg 2-D: a training step and inference, fastreg against the same network written the
way its authors' code is written, in one process (paired, interleaved rounds).

  peer     the same modules and weights (frozen VGG16 block 1, FeatureUNet, head), NCHW
           float32 eager; the field resized by F.interpolate (x2 vectors), the moving image
           warped by F.grid_sample with a grid tensor (VoxelMorph's SpatialTransformer: an
           identity grid buffer + flow, normalised to [-1, 1], align_corners=True), the loss
           MSE + 0.01 * (|d_x u| + |d_y u|) summed over components with torch ops.
  fastreg  UniReg as shipped (fastreg.resize_field, fastreg.warp, fastreg.nn.loss_for("unireg"))
           plus the network variants named on the command line:
             cl       channels_last memory format for the model's weights and the images
                      (the 2-D network already runs its activations in channels_last)
             bf16     torch.autocast("cpu", torch.bfloat16) around the model's forward
             compile  torch.compile(model)
             nchw     the model's channels_last activations turned off (their worth)
A training step is forward + warp + loss + backward + Adam step (set_to_none zero_grad
first). Peak memory: bytes allocated by torch during one warm step above what was allocated
before it (fastreg.bench.timing.peak_memory: the profiler's allocation events on CPU).

  peer+bf16 the peer under the same autocast (what bf16 alone gives the authors' network)

Usage: python benchmarks/model_unireg.py [--batch 8] [--size 224] [--threads 2] [--rounds 3]
          [--variants fastreg,bf16,peer+bf16] [--profile] [--forward]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics

import torch
import torch.nn.functional as F

import fastreg
import fastreg.models
from fastreg.bench.timing import peak_memory, round_times
from fastreg.data import random_smooth_field


class PeerSpatialTransformer(torch.nn.Module):
    """VoxelMorph's SpatialTransformer (grid buffer + flow, normalised, grid_sample), written from its description."""

    def __init__(self, size):
        super().__init__()
        vectors = [torch.arange(s, dtype=torch.float32) for s in size]
        self.register_buffer("grid", torch.stack(torch.meshgrid(vectors, indexing="ij"))[None], persistent=False)

    def forward(self, src, flow):
        locs = self.grid + flow
        shape = flow.shape[2:]
        locs = torch.stack([2 * (locs[:, i] / (shape[i] - 1) - 0.5) for i in range(len(shape))], dim=1)
        locs = locs.permute(0, 2, 3, 1)[..., [1, 0]]
        return F.grid_sample(src, locs, align_corners=True, mode="bilinear")


def peer_loss(fixed, warped, flow):
    smooth = sum(torch.abs(torch.diff(flow, dim=a)).sum(1).mean() for a in (2, 3))
    return torch.mean((fixed - warped) ** 2) + 0.01 * smooth


class PeerUniReg(torch.nn.Module):
    """The network of ``model`` (its parameters) run the authors' way: VoxelMorph-like blocks
    (conv, out-of-place LeakyReLU; decoder: upsample, torch.cat with the skip, one conv), each
    image through the extractor on its own (torchvision's VGG ReLUs are in place, as in ours),
    the field upsampled with F.interpolate, the warp with grid_sample."""

    def __init__(self, model, size):
        super().__init__()
        self.model = model
        self.transformer = PeerSpatialTransformer(size)

    def forward(self, fixed, moving):
        m = self.model
        x = torch.cat([m.extractor(fixed.repeat(1, 3, 1, 1)), m.extractor(moving.repeat(1, 3, 1, 1))], dim=1)
        skips = []
        for k, block in enumerate(m.unet.encoder):
            x = F.leaky_relu(block.conv(x if k == 0 else F.max_pool2d(x, 2)), 0.2)
            skips.append(x)
        x = skips.pop()
        for block in m.unet.decoder:
            x = torch.cat([F.interpolate(x, scale_factor=2, mode="nearest"), skips.pop()], dim=1)
            weight = torch.cat([block.weight_up, block.weight_skip], dim=1)
            x = F.leaky_relu(F.conv2d(x, weight, block.bias, padding=1), 0.2)
        flow = m.head(x)
        return F.interpolate(flow * 2, scale_factor=2, mode="bilinear", align_corners=True)


def make_step(net, warp, loss_fn, fixed, moving, autocast=False):
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        ctx = torch.autocast("cpu", torch.bfloat16) if autocast else contextlib.nullcontext()
        with ctx:
            disp = net(fixed, moving)
        disp = disp.float()
        loss = loss_fn(fixed, warp(moving, disp), disp)
        loss.backward()
        optimizer.step()

    return step


def without_channels_last(fn):
    """fn with every ``Tensor.contiguous(memory_format=torch.channels_last)`` it makes (the
    model's own layout choice) turned into the default layout: what channels_last is worth."""
    original = torch.Tensor.contiguous

    def contiguous(self, memory_format=torch.contiguous_format):
        if memory_format == torch.channels_last:
            memory_format = torch.contiguous_format
        return original(self, memory_format=memory_format)

    def wrapped():
        torch.Tensor.contiguous = contiguous
        try:
            return fn()
        finally:
            torch.Tensor.contiguous = original

    return wrapped


def variants(args, fixed, moving):
    """name -> (training step on the batch, inference on its first pair) callables; every variant
    starts from the same weights."""
    base = fastreg.models.create("unireg")
    with torch.no_grad():
        base.head.weight.normal_(0, 1e-3)  # a non-trivial field (same for every variant)
    state = base.state_dict()
    out = {}
    for name in ["peer", *args.variants.split(",")]:
        model = fastreg.models.create("unireg")
        model.load_state_dict(state)
        parts = set(name.split("+"))
        f, m = fixed, moving
        if name.startswith("peer"):
            net = PeerUniReg(model, fixed.shape[2:])
            bf16 = "bf16" in parts

            def forward(net=net, bf16=bf16):
                with torch.autocast("cpu", torch.bfloat16) if bf16 else contextlib.nullcontext():
                    return net(fixed[:1], moving[:1])

            out[name] = (make_step(net, net.transformer, peer_loss, f, m, autocast=bf16), forward)
            continue
        if "cl" in parts:
            model = model.to(memory_format=torch.channels_last)
            f, m = f.contiguous(memory_format=torch.channels_last), m.contiguous(memory_format=torch.channels_last)
        net = torch.compile(model) if "compile" in parts else model
        loss_fn = fastreg.nn.loss_for("unireg")
        step = make_step(net, fastreg.warp, loss_fn, f, m, autocast="bf16" in parts)
        if "nchw" in parts:
            step = without_channels_last(step)

        def forward(net=net, f=f[:1], m=m[:1], bf16="bf16" in parts):
            with torch.autocast("cpu", torch.bfloat16) if bf16 else contextlib.nullcontext():
                return net(f, m)

        out[name] = (step, forward)
    return out


def profile_step(step):
    """Share of self CPU time per kind of op in one training step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    kinds = {"convolution": 0.0, "registration ops (warp, resize)": 0.0, "loss": 0.0, "optimizer": 0.0,
             "pool/upsample/cat/activations": 0.0, "other": 0.0}
    for e in prof.key_averages():
        name, t = e.key, e.self_cpu_time_total
        if "conv" in name or "mkldnn" in name:
            kinds["convolution"] += t
        elif name.startswith("fastreg::") or "grid_sampler" in name or "upsample_bilinear" in name:
            kinds["registration ops (warp, resize)"] += t
        elif any(k in name for k in ("_foreach", "Optimizer", "adam", "lerp", "addcdiv", "addcmul")):
            kinds["optimizer"] += t
        elif any(k in name for k in ("mse", "diff", "abs", "sgn", "sign", "mean", "pow", "sum", "mul", "sub")):
            kinds["loss"] += t
        elif any(k in name for k in ("pool", "upsample", "cat", "leaky", "relu", "threshold")):
            kinds["pool/upsample/cat/activations"] += t
        else:
            kinds["other"] += t
    total = sum(kinds.values())
    return {k: v / total for k, v in kinds.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="fastreg,bf16,peer+bf16")
    parser.add_argument("--profile", action="store_true", help="print the op shares of one step of each")
    parser.add_argument("--forward", action="store_true", help="also time the inference of one pair (no grad)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = (args.size, args.size)
    moving = torch.rand(args.batch, 1, *shape)
    fixed = fastreg.warp(moving, random_smooth_field(shape, args.batch, magnitude=3.0, spacing=32)).clamp(0, 1)
    runs = variants(args, fixed, moving)
    names = list(runs)
    print(f"UniReg 2-D {args.size}^2 batch {args.batch}, {args.threads} threads, torch {torch.__version__}; "
          f"{args.rounds} paired rounds after one warm-up step each; ratio = peer / variant")
    calls = [(runs[n][0], lambda: None) for n in names]
    for call, _ in calls:
        call()  # warm-up (Adam state, compile)
    times = round_times(calls, torch.device("cpu"), args.rounds)
    peaks = {n: peak_memory(runs[n][0], lambda: None, torch.device("cpu")) for n in names}
    peer = times[0]
    print(f"{'variant':<16}{'step s':>9}{'ratio':>8}{'peak MiB':>10}{'mem ratio':>11}")
    for n, t in zip(names, times):
        ratio = statistics.median(p / q for p, q in zip(peer, t))
        print(f"{n:<16}{statistics.median(t):>9.3f}{ratio:>8.2f}{peaks[n] / 2**20:>10.1f}"
              f"{peaks[n] / peaks['peer']:>11.2f}")
    if args.forward:
        pair = [(lambda n=n: _no_grad(runs[n][1]), lambda: None) for n in names]
        for call, _ in pair:
            call()
        ftimes = round_times(pair, torch.device("cpu"), args.rounds)
        print("inference of one pair (no grad):")
        for n, t in zip(names, ftimes):
            ratio = statistics.median(p / q for p, q in zip(ftimes[0], t))
            print(f"{n:<16}{statistics.median(t) * 1e3:>9.1f} ms{ratio:>8.2f}")
    if args.profile:
        for n in names:
            shares = profile_step(runs[n][0])
            print(n, ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))


def _no_grad(fn):
    with torch.no_grad():
        return fn()


if __name__ == "__main__":
    main()
