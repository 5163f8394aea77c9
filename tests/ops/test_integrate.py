"""integrate_svf (scaling and squaring) and resize_field: what the op contract
(tests/test_op_contract.py: parity with the reference for every padding, step count and
checkpoint setting, gradients, opcheck, compile, NaN, strides, size-1 axes, bad input) does not
hold: float32 gradients across kinks, the CPU's AVX2 blocks and threads, the checkpoint planner
and executor, memory, diffeomorphism and inversion by exp(-v), far positions, NaN gradients,
half precision, and resize_field against VoxelMorph's ResizeTransform (fastreg.bench.peer_kernels)
and its identities."""
import pytest
import torch

import fastreg
from fastreg.bench.peer_kernels import resize_field as peer_resize_field
from fastreg.bench.peer_kernels import vxm_jacdet, vxm_legacy_resize
from fastreg.data import random_smooth_field
from fastreg.reference import integrate as ref
from fastreg.reference.warp import compose
from conftest import BLOCK_PATTERNS
from grad_checks import assert_grad_close_but_kinks

PADDINGS = ("zeros", "border", "reflection")
SHAPES = {2: (9, 11), 3: (6, 7, 5)}


def velocity(ndim, device, dtype=torch.float64, batch=2, magnitude=3.0, shape=None):
    shape = shape or SHAPES[ndim]
    return random_smooth_field(shape, batch=batch, magnitude=magnitude, spacing=3, dtype=dtype, device=device)


def assert_close(actual, expected, rtol):
    scale = expected.abs().max().clamp_min(1.0).item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


def forward_backward(fn, v, weight):
    v = v.detach().clone().requires_grad_(True)
    out = fn(v)
    (grad,) = torch.autograd.grad((out * weight).sum(), v)
    return out.detach(), grad


# --- parity with the reference ----------------------------------------------------------


@pytest.mark.parametrize("ndim", (2, 3))
@pytest.mark.parametrize("padding", PADDINGS)
def test_float32_long_rows_match_reference(backend, device, ndim, padding):
    """Rows of 8+ voxels take the CPU's AVX2 blocks (forward and backward) where their cells
    are interior and the scalar path elsewhere; magnitude 6 makes both common."""
    skip_in_interpreter(backend, device)
    shape = (13, 45) if ndim == 2 else (7, 9, 37)
    v = velocity(ndim, device, dtype=torch.float32, magnitude=6.0, shape=shape)
    weight = torch.randn_like(v)
    out, grad = forward_backward(lambda x: fastreg.integrate_svf(x, 6, padding), v, weight)
    out_ref, grad_ref = forward_backward(lambda x: ref.integrate_svf(x, 6, padding), v.double(), weight.double())
    assert_close(out.double(), out_ref, rtol=2e-5)
    assert_grad_close_but_kinks(grad.double(), grad_ref, rtol=2e-4)


@pytest.mark.parametrize("pattern", BLOCK_PATTERNS)
@pytest.mark.parametrize("shape", [(7, 40), (5, 6, 40)])
@pytest.mark.parametrize("padding", ("zeros", "border"))
def test_float32_block_read_patterns(backend, device, block_field, pattern, shape, padding):
    """One step (u = v / 2 follows the pattern) through every way an AVX2 block reads and
    scatters its cell rows (conftest.BLOCK_PATTERNS): values and gradients of the reference."""
    skip_in_interpreter(backend, device)
    v = 2 * block_field(pattern, shape, device=device)
    weight = torch.randn_like(v)
    out, grad = forward_backward(lambda x: fastreg.integrate_svf(x, 1, padding), v, weight)
    out_ref, grad_ref = forward_backward(lambda x: ref.integrate_svf(x, 1, padding), v.double(), weight.double())
    assert_close(out.double(), out_ref, rtol=2e-5)
    assert_close(grad.double(), grad_ref, rtol=2e-5)


def test_forward_is_bit_identical_across_thread_counts():
    if "cpu" not in fastreg.available_backends():
        pytest.skip("compiled extension not built")
    threads = torch.get_num_threads()
    v = velocity(3, "cpu", dtype=torch.float32, magnitude=5.0, shape=(12, 10, 41))
    try:
        outs = []
        for n in (1, 2, 5):
            torch.set_num_threads(n)
            with fastreg.use_backend("cpu"):
                outs.append(fastreg.integrate_svf(v, 7))
        assert all(torch.equal(outs[0], o) for o in outs[1:])
    finally:
        torch.set_num_threads(threads)


def test_zero_steps_returns_v(backend, device):
    v = velocity(3, device)
    assert fastreg.integrate_svf(v, 0) is v


@pytest.mark.parametrize("padding", PADDINGS)
def test_checkpoints_give_identical_results(backend, device, padding):
    from fastreg._checkpoint import checkpoint_plan

    if backend == "triton" and device.type == "cpu" and padding != "zeros":
        pytest.skip("interpreter: about 20 s per padding; the schedule does not depend on it")
    v = velocity(3, device, magnitude=4.0)
    weight = torch.randn_like(v)
    assert checkpoint_plan(10, 1)[1] and checkpoint_plan(10, 2)[1]  # these plans push fields
    keep_all = {s: forward_backward(lambda x: fastreg.integrate_svf(x, s, padding, checkpoints=None), v, weight)
                for s in (7, 10)}
    for steps, checkpoints in ((7, 0), (7, 1), (7, 2), (7, 3), (10, 1), (10, 2)):
        out, grad = keep_all[steps]
        out_ck, grad_ck = forward_backward(lambda x: fastreg.integrate_svf(x, steps, padding, checkpoints), v, weight)
        assert torch.equal(out, out_ck)
        if backend == "cpu":  # deterministic scatter: bit-identical
            assert torch.equal(grad, grad_ck)
        else:  # atomic scatter: the order of additions varies
            assert_close(grad, grad_ck, rtol=1e-12)


def simulate_plan(steps, keep, pushes):
    """Runs the backward's snapshot stack (integrate_loop.h) on indices: (extra steps, most
    fields stored at once (kept ones stay allocated to the end), the step indices
    differentiated in order, the pushes never made)."""
    stack, queue, extra, most, order = [0, *keep], list(pushes), 0, len(keep), []
    for k in range(steps - 1, -1, -1):
        while stack[-1] > k:
            stack.pop()
        while queue and stack[-1] < queue[0] <= k:
            extra += queue[0] - stack[-1]
            stack.append(queue.pop(0))
            most = max(most, len(keep) + sum(1 for i in stack if i not in keep and i > 0))
        extra += k - stack[-1]
        order.append(k)
    return extra, most, order, queue


def revolve_cost(steps, slots):
    """Fewest extra forward steps to reverse `steps` steps from their first field with
    `slots` fields freed after use, by exhaustive recursion over every split."""
    if steps <= 1:
        return 0
    best = steps * (steps - 1) // 2
    for j in range(1, steps) if slots > 0 else ():
        best = min(best, j + revolve_cost(steps - j, slots - 1) + revolve_cost(j, slots))
    return best


def best_plan_cost(steps, slots):
    """Over every set of kept fields: the segments they cut, each reversed with the rest."""
    import itertools

    best = revolve_cost(steps, slots)
    for kept in range(1, min(slots, steps - 1) + 1):
        for keep in itertools.combinations(range(1, steps), kept):
            bounds = (0, *keep, steps)
            best = min(best, sum(revolve_cost(b - a, slots - kept) for a, b in zip(bounds, bounds[1:])))
    return best


@pytest.mark.parametrize("steps", range(1, 10))
def test_checkpoint_plan_is_optimal_and_within_budget(steps):
    from fastreg._checkpoint import checkpoint_plan

    for slots in range(0, steps + 1):
        keep, pushes = checkpoint_plan(steps, slots)
        extra, most, order, left = simulate_plan(steps, keep, pushes)
        assert order == list(range(steps - 1, -1, -1)) and not left  # every push is used
        assert most <= slots
        assert extra == best_plan_cost(steps, slots), (slots, keep, pushes)
    assert checkpoint_plan(steps, steps)[0] == tuple(range(1, steps))  # all kept: no recomputation
    assert simulate_plan(steps, (), ())[0] == steps * (steps - 1) // 2


def test_explicit_keep_and_pushes_give_identical_results():
    """The C++ executor is correct for any snapshot set, not only the plan's."""
    if "cpu" not in fastreg.available_backends():
        pytest.skip("compiled extension not built")
    v = velocity(2, "cpu")
    g = torch.randn_like(v)
    out, saved = torch.ops.fastreg.integrate_svf_forward(v, 6, 1, [1, 2, 3, 4, 5])
    grad = torch.ops.fastreg.integrate_svf_backward(g, v, saved, 6, 1, [1, 2, 3, 4, 5], [])
    for keep, pushes in [([], []), ([3], []), ([2, 5], [4, 1]), ([1], [5, 3])]:
        out_k, saved_k = torch.ops.fastreg.integrate_svf_forward(v, 6, 1, keep)
        assert torch.equal(out_k, out) and torch.equal(saved_k, saved[[k - 1 for k in keep]])
        assert torch.equal(torch.ops.fastreg.integrate_svf_backward(g, v, saved_k, 6, 1, keep, pushes), grad)
    with pytest.raises(RuntimeError, match="keep"):
        torch.ops.fastreg.integrate_svf_forward(v, 6, 1, [3, 2])
    _, saved_4 = torch.ops.fastreg.integrate_svf_forward(v, 6, 1, [4])
    with pytest.raises(RuntimeError, match="pushes"):  # step 9 of 6
        torch.ops.fastreg.integrate_svf_backward(g, v, saved_4, 6, 1, [4], [9])


def test_no_grad_keeps_no_fields():
    if "cpu" not in fastreg.available_backends():
        pytest.skip("compiled extension not built")
    v = velocity(3, "cpu")
    with fastreg.use_backend("cpu"):
        _, saved_grad = torch.ops.fastreg.integrate_svf_forward(v, 4, 0, [1, 2, 3])
        out, saved = torch.ops.fastreg.integrate_svf_forward(v, 4, 0, [])
        assert saved.shape == (0, *v.shape) and saved_grad.shape == (3, *v.shape)
        assert torch.equal(out, fastreg.integrate_svf(v, 4))


def test_peak_memory_follows_checkpoints():
    """Forward+backward allocates checkpoints + 4 fields (output, two gradients, the field
    differentiated or two while advancing; the caller's gradient is not counted), and
    steps + 2 when every field is kept (the field differentiated is a kept one), plus the
    CPU backward's halos."""
    if "cpu" not in fastreg.available_backends():
        pytest.skip("compiled extension not built")
    from fastreg.bench.timing import backward_call, forward_call, peak_memory

    v = velocity(3, "cpu", dtype=torch.float32, batch=1, shape=(24, 20, 16))
    with fastreg.use_backend("cpu"):
        for checkpoints, fields in ((0, 4), (1, 5), (2, 6), (None, 7 + 2)):
            call, reset = backward_call(lambda v: fastreg.integrate_svf(v, 7, checkpoints=checkpoints), {"v": v}, ("v",))
            peak = peak_memory(call, reset, torch.device("cpu"))
            if peak is None:
                pytest.skip("the profiler exposes no memory events")
            # + the backward's halos (contributions crossing a thread's chunk: a few slices)
            assert fields - 0.05 <= peak / v.nbytes <= fields + 0.5, (checkpoints, peak / v.nbytes)
        with torch.no_grad():  # the output and one working field
            call, reset = forward_call(lambda v: fastreg.integrate_svf(v, 7), {"v": v})
            assert peak_memory(call, reset, torch.device("cpu")) / v.nbytes == pytest.approx(2, abs=0.05)


# --- properties -----------------------------------------------------------------------------


def skip_in_interpreter(backend, device):
    if backend == "triton" and device.type == "cpu":
        pytest.skip("interpreter: large fields are slow; the parity tests cover the Triton kernels")


def jacobian_det(disp):
    """VoxelMorph's det(I + grad u) (np.gradient) of a field on any device, as a tensor."""
    return torch.from_numpy(vxm_jacdet(disp.cpu().numpy()))


@pytest.mark.parametrize("ndim", (2, 3))
def test_smooth_velocity_gives_positive_jacobian(backend, device, ndim):
    skip_in_interpreter(backend, device)
    shape, spacing, magnitude = ((40, 40), 8, 2.0) if ndim == 2 else ((20, 20, 20), 10, 1.8)
    v = random_smooth_field(shape, batch=2, magnitude=magnitude, spacing=spacing, dtype=torch.float64, device=device)
    # The velocity taken as a displacement folds (det <= 0 somewhere); its exponential does
    # not. Border padding: zero padding makes the field jump to 0 at the edge of the grid.
    assert (jacobian_det(v) <= 0).any()
    assert (jacobian_det(fastreg.integrate_svf(v, 7, "border")) > 0).all()


def test_exp_of_minus_v_inverts_exp_of_v(backend, device):
    skip_in_interpreter(backend, device)
    v = random_smooth_field((24, 24, 24), batch=1, magnitude=1.0, spacing=12, dtype=torch.float64, device=device)
    forward, inverse = fastreg.integrate_svf(v, 7), fastreg.integrate_svf(-v, 7)
    inner = (slice(None), slice(None)) + (slice(4, -4),) * 3  # away from the padded border

    def relative(residual, stat):
        return (stat(residual[inner].abs()) / stat(forward[inner].abs())).item()

    residual = compose(forward, inverse)  # displacement of exp(v) o exp(-v): ~0
    assert relative(residual, torch.amax) < 0.1 and relative(residual, torch.mean) < 0.02
    # The first-order inverse -v is far worse: the test tells an inverse from a near miss.
    assert relative(compose(forward, -v), torch.mean) > 0.05


# --- edge cases ----------------------------------------------------------------------------


def test_large_displacements_far_out_of_bounds(backend, device):
    v = velocity(3, device, magnitude=40.0)
    weight = torch.randn_like(v)
    for padding in PADDINGS:
        out, grad = forward_backward(lambda x: fastreg.integrate_svf(x, 3, padding), v, weight)
        out_ref, grad_ref = forward_backward(lambda x: ref.integrate_svf(x, 3, padding), v, weight)
        assert_close(out, out_ref, rtol=1e-9)
        assert_close(grad, grad_ref, rtol=1e-9)


def test_nan_propagates(backend, device):
    """The backward keeps a NaN in its batch item (the op contract checks the values)."""
    v = velocity(3, device, dtype=torch.float32, batch=2)
    v[0, 1, 2, 3, 1] = float("nan")
    v.requires_grad_(True)
    (grad,) = torch.autograd.grad(fastreg.integrate_svf(v, 3).nansum(), v)
    assert torch.isfinite(grad[1]).all()


def test_multithreaded_chunks_match_reference_and_are_deterministic():
    """The CPU backward splits the voxels over threads and routes contributions that leave
    a chunk through halos: large displacements cross many chunks and batch items."""
    if "cpu" not in fastreg.available_backends():
        pytest.skip("compiled extension not built")
    threads = torch.get_num_threads()
    v = random_smooth_field((14, 15, 16), batch=3, magnitude=12.0, spacing=4, dtype=torch.float64)
    weight = torch.randn_like(v)
    try:
        for padding in PADDINGS:
            _, grad_ref = forward_backward(lambda x: ref.integrate_svf(x, 4, padding), v, weight)
            for n in (1, 3, 8):
                torch.set_num_threads(n)
                with fastreg.use_backend("cpu"):
                    runs = [forward_backward(lambda x: fastreg.integrate_svf(x, 4, padding), v, weight)[1] for _ in range(2)]
                assert torch.equal(runs[0], runs[1])
                assert_close(runs[0], grad_ref, rtol=1e-10)
    finally:
        torch.set_num_threads(threads)


def test_half_precision_accumulates_in_float32(backend, device):
    if device.type == "cpu" and backend == "triton":
        pytest.skip("interpreter: float16 arithmetic is emulated slowly; covered on GPU")
    v = velocity(3, device, dtype=torch.float32)
    for dtype, tol in ((torch.float16, 1e-2), (torch.bfloat16, 4e-2)):
        x = v.to(dtype).requires_grad_(True)
        out = fastreg.integrate_svf(x, 4)
        assert out.dtype == dtype
        assert_close(out.double(), ref.integrate_svf(x.detach().double(), 4), rtol=tol)
        (grad,) = torch.autograd.grad(out.float().sum(), x)
        assert grad.dtype == dtype and torch.isfinite(grad).all()


# --- resize_field -----------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", (2, 3))
@pytest.mark.parametrize("factor", (2.0, 0.5))
def test_resize_scale_factor_is_voxelmorph_resize(ndim, factor):
    u = velocity(ndim, "cpu", shape=(8, 10, 6)[:ndim])
    expected = vxm_legacy_resize(u, factor)
    out = fastreg.resize_field(u, scale_factor=factor)
    assert out.shape[2:] == tuple(int(s * factor) for s in u.shape[2:])
    assert_close(out, expected, rtol=1e-12)


def test_resize_size_rescales_each_axis_by_grid_ratio():
    u = velocity(3, "cpu", shape=(9, 5, 7))
    assert fastreg.resize_field(u, scale_factor=1) is u and fastreg.resize_field(u, size=u.shape[2:]) is u  # identity
    out = fastreg.resize_field(u, size=(17, 9, 4))
    assert_close(out, peer_resize_field(u, size=(17, 9, 4)), rtol=1e-12)
    # A constant displacement of d voxels is d * (new - 1) / (old - 1) voxels on the new grid.
    const = torch.ones(1, 2, 5, 9, dtype=torch.float64) * torch.tensor([1.0, 2.0], dtype=torch.float64).view(1, 2, 1, 1)
    resized = fastreg.resize_field(const, size=(9, 5))
    assert torch.allclose(resized[:, 0], torch.full_like(resized[:, 0], 2.0))
    assert torch.allclose(resized[:, 1], torch.full_like(resized[:, 1], 1.0))
