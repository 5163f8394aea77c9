"""fastreg.nio: neural instance optimization and instance optimization of a field.

The models are small pyramids defined here (subclasses of RegistrationModel with 1, 2 and 3
levels), so these tests need none of fastreg's trained models.
"""
import copy
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastreg
from fastreg import nio
from fastreg.data.fields import random_smooth_field
from fastreg.data.intensities import min_max
from fastreg.models import RegistrationModel
from fastreg.nn.losses import loss_for
from fastreg.reference.lncc import voxelmorph_ncc
from fastreg.reference.warp import warp as reference_warp


class Pyramid(RegistrationModel):
    """LapIRN-like toy: level k of L sees both images at 1/2^(L-k) resolution, the moving one
    warped by the field of the levels before, and adds a residual field of that resolution
    upsampled to full resolution. A frozen stem, a batch norm (buffers) and a buffer gain
    make the "never modified" checks meaningful."""

    def __init__(self, ndim: int = 2, num_levels: int = 3, width: int = 6):
        super().__init__()
        self.ndim, self.num_levels, self.multiple = ndim, num_levels, 2 ** (num_levels - 1)
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        self.stem = conv(2, width, 3, padding=1).requires_grad_(False)
        self.norm = (nn.BatchNorm2d if ndim == 2 else nn.BatchNorm3d)(width)
        self.heads = nn.ModuleList(conv(width, ndim, 3, padding=1) for _ in range(num_levels))
        self.register_buffer("gain", torch.tensor(0.5))

    def predict(self, fixed, moving, levels):
        pool = F.avg_pool2d if self.ndim == 2 else F.avg_pool3d
        disp = None
        for k in range(levels):
            factor = 2 ** (self.num_levels - 1 - k)
            moved = moving if disp is None else fastreg.warp(moving, disp)
            x = torch.cat([fixed, moved], 1)
            x = pool(x, factor) if factor > 1 else x
            residual = self.heads[k](F.leaky_relu(self.norm(self.stem(x)), 0.2)) * self.gain
            up = fastreg.resize_field(residual, size=fixed.shape[2:])
            disp = up if disp is None else disp + up
        return disp


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These images are tiny: one thread is fastest, and on a shared, loaded machine two
    threads spin-wait on each other (10-50x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smooth_image(shape, batch=1, dtype=torch.float32):
    """(batch, 1, *shape) smooth random image in [0, 1] (coarse noise upsampled)."""
    return min_max(random_smooth_field(shape, batch=batch, spacing=4, dtype=dtype)[:, :1])


def known_pair(shape, batch=1, dtype=torch.float32, magnitude=1.5):
    """(fixed, moving, true field): fixed = moving warped by the field."""
    moving = smooth_image(shape, batch, dtype)
    truth = random_smooth_field(shape, batch=batch, magnitude=magnitude, spacing=12, dtype=dtype)
    return fastreg.warp(moving, truth), moving, truth


def rms(a, b, margin=3):
    inner = (slice(None), slice(None)) + (slice(margin, -margin),) * (a.dim() - 2)
    return (a - b)[inner].square().mean().sqrt().item()


def snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        {n: m.training for n, m in model.named_modules()},
    )


@pytest.mark.parametrize("shape", [(20, 18), (10, 12, 9)])
def test_loss_written_out(shape):
    """(1 - lam)(1 - LNCC_7) + lam ||grad u||^2 from the plain-torch oracles (grid_sample warp,
    VoxelMorph's legacy convolution NCC) and the regulariser written out."""
    fixed, moving, _ = known_pair(shape, batch=2, dtype=torch.float64)
    disp = random_smooth_field(shape, batch=2, magnitude=2.0, spacing=5, dtype=torch.float64)
    loss, similarity, regulariser = nio._loss(fixed, moving, disp, 0.3, 7)
    moved = reference_warp(moving, disp)
    ndim = len(shape)
    for i in range(2):
        ncc = voxelmorph_ncc(fixed[i : i + 1], moved[i : i + 1], [7] * ndim)
        u = disp[i]
        diffs = [u[(slice(None),) * (1 + a) + (slice(1, None),)] - u[(slice(None),) * (1 + a) + (slice(None, -1),)]
                 for a in range(ndim)]
        grad = sum(d.square().mean() for d in diffs) / ndim
        torch.testing.assert_close(similarity[i], 1 + ncc)
        torch.testing.assert_close(regulariser[i], grad)
        torch.testing.assert_close(loss[i], 0.7 * (1 + ncc) + 0.3 * grad)
    preset = loss_for("nio")  # lam 0.4: the training package's loss of the same name
    default = nio._loss(fixed, moving, disp, 0.4, 7)[0]
    mi = nio._loss(fixed, moving, disp, 0.4, 7, "mi")[0]
    for i in range(2):
        pair = slice(i, i + 1)
        moved = fastreg.warp(moving[pair], disp[pair])
        torch.testing.assert_close(default[i], preset(fixed[pair], moved, disp[pair]))
        torch.testing.assert_close(mi[i], loss_for("nio", similarity="mi")(fixed[pair], moved, disp[pair]))


def test_default_levels():
    assert [nio.default_levels(n) for n in (1, 2, 3, 4, 5)] == [(1,), (1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5)]


def test_model_never_modified():
    model = Pyramid(2, 3).train()
    model(*known_pair((16, 16))[:2])  # batch-norm statistics move in train mode
    before = snapshot(model)
    fixed, moving, _ = known_pair((16, 16), batch=2)
    fixed.requires_grad_(True)
    result = nio.optimize(model, fixed, moving, iterations=(3, 2, 2), lr=1e-2, return_weights=True)
    assert fixed.grad is None and not result.disp.requires_grad
    fixed = fixed.detach()
    after = snapshot(model)
    assert before[1] == after[1] and before[2] == after[2]
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert all(p.grad is None for p in model.parameters())
    for i, weights in enumerate(result.weights):
        assert torch.equal(weights["stem.weight"], model.stem.weight)  # frozen stays frozen
        assert not torch.equal(weights["heads.0.weight"], model.heads[0].weight)
        adapted = copy.deepcopy(model).eval()
        adapted.load_state_dict(weights)
        with torch.no_grad():
            torch.testing.assert_close(adapted(fixed[i : i + 1], moving[i : i + 1]), result.disp[i : i + 1])


def test_deterministic_on_cpu():
    model = Pyramid(2, 2)
    fixed, moving, _ = known_pair((16, 20))
    a = nio.optimize(model, fixed, moving, iterations=(4, 3), lr=1e-2)
    b = nio.optimize(model, fixed, moving, iterations=(4, 3), lr=1e-2)
    assert torch.equal(a.disp, b.disp) and torch.equal(a.log["loss"], b.log["loss"])


@pytest.mark.parametrize("ndim, levels, shape", [(2, 3, (40, 36)), (3, 2, (16, 20, 16))])
def test_loss_decreases_and_field_approaches_truth(ndim, levels, shape):
    model = Pyramid(ndim, levels)
    fixed, moving, truth = known_pair(shape)
    with torch.no_grad():
        initial = model(fixed, moving)
    iterations = (40, 30, 20)[:levels]
    result = nio.optimize(model, fixed, moving, iterations=iterations, lr=3e-2)
    loss = result.log["loss"][:, 0]
    assert loss.shape == (sum(iterations),) and result.stopped == "done"
    last = result.log["stage"] == levels - 1
    assert loss[last][-1] < loss[last][0]
    final_loss = nio._loss(fixed, moving, result.disp, 0.4, 7)[0]
    assert final_loss < nio._loss(fixed, moving, initial, 0.4, 7)[0]
    # the toy pyramid is a weak model: over many seeds the error drops by 15-60 %
    assert rms(result.disp, truth) < 0.9 * rms(initial, truth)


def test_half_steps_in_bfloat16_and_return_a_float32_field():
    """half=True: every step's network runs under bfloat16 autocast (its convolutions see
    bfloat16 inputs), the field comes back float32 from the adapted weights, the caller's
    model is untouched, and the run still lowers the loss and approaches the true field."""
    model = Pyramid(2, 3)
    fixed, moving, truth = known_pair((40, 36))
    with torch.no_grad():
        initial = model(fixed, moving)
    before = snapshot(model)  # after the call above: train mode updates the norm's statistics
    seen = []
    hook = model.heads[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    try:
        half = nio.optimize(model, fixed, moving, iterations=(40, 30, 20), lr=3e-2, half=True)
    finally:
        hook.remove()
    assert half.disp.dtype == torch.float32
    # the private copy runs the hooks it inherited: bfloat16 while stepping
    assert torch.bfloat16 in seen
    assert all(torch.equal(a, b) for a, b in zip(before[0].values(), snapshot(model)[0].values()))
    assert nio._loss(fixed, moving, half.disp, 0.4, 7)[0] < nio._loss(fixed, moving, initial, 0.4, 7)[0]
    assert rms(half.disp, truth) < 0.9 * rms(initial, truth)
    with pytest.raises(TypeError, match="half"):
        nio.optimize(model, fixed, moving, half=1)


def test_mutual_information_registers_across_contrasts():
    """The moving image under a non-monotonic lookup table: with similarity "mi", NIO lowers
    its loss and 1 - NMI, and IO moves the field towards the truth (to 0.43-0.84 of the
    initial error over 40 draws)."""
    model = Pyramid(2, 2)
    fixed, moving, truth = known_pair((40, 36))
    moving = (torch.sin(7.0 * moving) + 1.0) / 2.0  # up, down and up again over [0, 1]
    with torch.no_grad():
        initial = model(fixed, moving)
    result = nio.optimize(model, fixed, moving, iterations=(40, 30), lr=3e-2, similarity="mi")
    assert result.log["loss"][-1, 0] < result.log["loss"][0, 0]
    assert result.log["similarity"][-1, 0] < result.log["similarity"][0, 0]
    io = nio.instance_optimize(initial, fixed, moving, iterations=100, lr=0.1, grid=5, similarity="mi")
    assert rms(io.disp, truth) < 0.9 * rms(initial, truth)


def test_instance_optimize_dense_and_grid():
    fixed, moving, truth = known_pair((40, 40), batch=2)
    start = 0.3 * truth + 0.2 * random_smooth_field((40, 40), batch=2, spacing=10)
    for grid in (None, 5):
        result = nio.instance_optimize(start, fixed, moving, iterations=60, lr=0.05, grid=grid)
        assert result.disp.shape == start.shape and result.log["loss"].shape == (60, 2)
        for i in range(2):
            assert rms(result.disp[i : i + 1], truth[i : i + 1]) < 0.8 * rms(start[i : i + 1], truth[i : i + 1])


def test_zero_iterations_give_the_model_prediction():
    model = Pyramid(2, 2).train()
    fixed, moving, _ = known_pair((16, 24), batch=2)
    result = nio.optimize(model, fixed, moving, iterations=(0, 0))
    with torch.no_grad():
        expected = copy.deepcopy(model).eval()(fixed, moving)
    torch.testing.assert_close(result.disp, expected)
    assert result.log["loss"].shape == (0, 2) and result.stopped == "done"


def test_max_seconds():
    model = Pyramid(2, 3)
    fixed, moving, _ = known_pair((32, 32))
    limit = 0.5
    start = time.perf_counter()
    result = nio.optimize(model, fixed, moving, iterations=(10**6, 10, 10), max_seconds=limit)
    elapsed = time.perf_counter() - start
    seconds = result.log["seconds"]
    assert result.stopped == "max_seconds" and 0 < len(seconds) < 10**6
    assert (seconds[:-1] < limit).all()  # no step starts after the limit
    assert elapsed < limit + 5.0  # the last step and the final prediction (loaded machine)
    assert result.disp.shape == (1, 2, 32, 32) and torch.isfinite(result.disp).all()


def test_stages_run_their_levels():
    model = Pyramid(2, 3)
    fixed, moving, _ = known_pair((16, 16))
    result = nio.optimize(model, fixed, moving, iterations=(3, 2, 1), lr=1e-2)
    assert result.log["levels"].tolist() == [1, 1, 1, 2, 2, 3]
    assert result.log["stage"].tolist() == [0, 0, 0, 1, 1, 2]
    # one stage with the coarsest level only: the finer heads get no gradient
    only = nio.optimize(model, fixed, moving, iterations=(4,), levels=(1,), lr=1e-2, return_weights=True)
    weights = only.weights[0]
    assert not torch.equal(weights["heads.0.weight"], model.heads[0].weight)
    assert torch.equal(weights["heads.1.weight"], model.heads[1].weight)
    assert torch.equal(weights["heads.2.weight"], model.heads[2].weight)


def test_tol_ends_stages_early_and_callback_stops():
    model = Pyramid(2, 2)
    fixed, moving, _ = known_pair((16, 16))
    result = nio.optimize(model, fixed, moving, iterations=(200, 200), lr=1e-6, tol=1e-2)
    counts = torch.bincount(result.log["stage"], minlength=2).tolist()
    assert counts == [nio.TOL_EVERY + 1] * 2  # lr too small to improve 1 % in 10 steps
    seen = []
    stop = nio.optimize(model, fixed, moving, iterations=(5, 5), callback=lambda info: seen.append(info) or len(seen) == 7)
    assert stop.stopped == "callback" and len(stop.log["loss"]) == 7
    assert [s["levels"] for s in seen] == [1] * 5 + [2] * 2


def test_batched_equals_sequential():
    model = Pyramid(2, 3).double()
    fixed, moving, _ = known_pair((24, 20), batch=3, dtype=torch.float64)
    batched = nio.optimize(model, fixed, moving, iterations=(6, 4, 3), lr=1e-2, return_weights=True)
    for i in range(3):
        one = nio.optimize(model, fixed[i : i + 1], moving[i : i + 1], iterations=(6, 4, 3), lr=1e-2)
        torch.testing.assert_close(batched.disp[i : i + 1], one.disp, rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(batched.log["loss"][:, i : i + 1], one.log["loss"], rtol=1e-7, atol=1e-9)


def test_bad_input():
    model = Pyramid(2, 3)
    fixed, moving, _ = known_pair((16, 16))
    with pytest.raises(TypeError, match="model"):
        nio.optimize(nn.Conv2d(2, 2, 3), fixed, moving)
    flat = Pyramid(2, 3)
    flat.num_levels = 0
    with pytest.raises(ValueError, match="num_levels"):
        nio.optimize(flat, fixed, moving)
    with pytest.raises(ValueError, match="moving"):
        nio.optimize(model, fixed, moving[..., :12])
    with pytest.raises(ValueError, match="fixed"):
        nio.optimize(model, fixed[:, :, None], moving[:, :, None])
    with pytest.raises(ValueError, match="iterations: expected 3 counts"):
        nio.optimize(model, fixed, moving, iterations=(10, 10))
    with pytest.raises(ValueError, match="levels"):
        nio.optimize(model, fixed, moving, levels=(2, 1), iterations=(1, 1))
    with pytest.raises(ValueError, match="levels"):
        nio.optimize(model, fixed, moving, levels=(1, 4), iterations=(1, 1))
    bad = moving.clone()
    bad[0, 0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="moving: expected finite"):
        nio.optimize(model, fixed, bad)
    with pytest.raises(TypeError, match="fixed: expected dtype"):
        nio.optimize(model, fixed.double(), moving.double())
    with pytest.raises(ValueError, match="window"):
        nio.optimize(model, fixed, moving, window=6)
    with pytest.raises(ValueError, match="lam"):
        nio.optimize(model, fixed, moving, lam=1.5)
    with pytest.raises(ValueError, match="similarity: expected one of"):
        nio.optimize(model, fixed, moving, similarity="ncc")
    with pytest.raises(ValueError, match="max_seconds"):
        nio.optimize(model, fixed, moving, max_seconds=-1.0)
    disp = random_smooth_field((16, 16))
    with pytest.raises(ValueError, match="disp"):
        nio.instance_optimize(disp[..., :8], fixed, moving)
    with pytest.raises(TypeError, match="iterations"):
        nio.instance_optimize(disp, fixed, moving, iterations=2.5)
    with pytest.raises(ValueError, match="grid"):
        nio.instance_optimize(disp, fixed, moving, grid=0)
    with pytest.raises(ValueError, match="fixed: expected finite"):
        nio.instance_optimize(disp, fixed * float("inf"), moving)


@pytest.mark.parametrize("name", fastreg.models.available())
def test_registry_models(name):
    """Every registered model that exists on this branch runs through NIO (its default stages,
    one step each) and comes out unmodified."""
    try:
        model = fastreg.models.create(name, ndim=2)
    except (ImportError, AttributeError) as exc:  # the model's module has not landed here
        pytest.skip(f"{name}: {exc}")
    fixed, moving, _ = known_pair((32, 32))
    before = snapshot(model)
    stages = nio.default_levels(model.num_levels)
    result = nio.optimize(model, fixed, moving, iterations=(1,) * len(stages), lr=1e-3)
    assert result.disp.shape == (1, 2, 32, 32) and torch.isfinite(result.disp).all()
    assert result.log["levels"].tolist() == list(stages)
    after = snapshot(model)
    assert before[1:] == after[1:] and all(torch.equal(before[0][k], after[0][k]) for k in before[0])


def test_a_long_run_keeps_its_resident_memory_flat():
    """Per-step log tensors once pinned the allocator's freed blocks: the resident size of an
    IO run grew by about a field per step (+130 MiB over these 200 steps). Measured in a
    fresh process."""
    import subprocess
    import sys

    code = """
import torch, fastreg
from fastreg import nio
torch.set_num_threads(1)
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) // 1024
S = (48, 48, 32)
fixed, moving, base = torch.rand(1, 1, *S), torch.rand(1, 1, *S), torch.randn(1, 3, *S)
seen = []
nio.instance_optimize(base, fixed, moving, iterations=200, callback=lambda info: seen.append(rss()) and None)
print(seen[20], max(seen[20:]))
"""
    if not sys.platform.startswith("linux"):
        pytest.skip("/proc/self/status")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    early, peak = (int(v) for v in out.stdout.split()[-2:])
    assert peak - early < 60  # MiB
