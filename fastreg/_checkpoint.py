"""Checkpointing of integrate_svf's squaring steps: the planner (which intermediate fields the
forward keeps and the backward pushes, for a budget of fields), used for every backend, and
the executor of the backward sweep over any step kernels (``backward_sweep``: the Triton
backward runs it; the C++ backward runs the same schedule in csrc/integrate/integrate_loop.h,
which this package may not change). Step k maps u_k to u_{k+1}; u_0 = v is always at hand.
"""
from __future__ import annotations

from typing import Callable

import torch


def checkpoint_plan(steps: int, checkpoints: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The checkpointing schedule of ``steps`` squaring steps with ``checkpoints`` fields.

    Returns ``(keep, pushes)``, both of step indices k in [1, steps - 1] (u_k is the field
    before step k; u_0 = v is always at hand):
      keep    the fields the forward stores for the backward (increasing); autograd holds
              them until the backward ends;
      pushes  the fields the backward stores while it recomputes, in the order it makes them
              (each freed once the steps above it are done).
    The backward reverses the steps from the last: for step k it drops the stored fields
    above k, makes the next ``pushes`` entries that lie between the highest stored field
    and k (each advanced from the one below), then advances from the highest stored field
    to u_k. At most ``checkpoints`` fields are stored at once: len(keep) + the pushes alive.

    Minimal recomputation: the kept fields cut the steps into segments, each reversed from
    its first field with the s = checkpoints - len(keep) slots left, by binomial
    checkpointing (Griewank and Walther's revolve):
      F(L, s) = min(F(L, s - 1), min_j  j + F(L - j, s - 1) + F(j, s)),  F(1, s) = 0,
      F(L, 0) = L (L - 1) / 2  (every field of the segment recomputed from its start).
    The number kept and the cuts minimise the sum of F over the segments; ties go to fewer
    kept fields, then to the shorter first segment and the smaller j.
    """
    slots = max(min(checkpoints, steps - 1), 0)
    if slots == steps - 1:  # every field kept
        return tuple(range(1, steps)), ()
    if torch.compiler.is_compiling():  # traced once into constants; no cache to mutate (or guard)
        return _plan(steps, slots)
    key = (steps, slots)
    if key not in _PLANS:  # a dict, not functools.lru_cache, which torch.compile warns about
        _PLANS[key] = _plan(steps, slots)
    return _PLANS[key]


_PLANS: dict[tuple[int, int], tuple[tuple[int, ...], tuple[int, ...]]] = {}


def _plan(steps: int, slots: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    best = None  # (extra steps, kept, segment lengths)
    for kept in range(slots + 1):
        table = _revolve_table(steps, slots - kept)
        cost, lengths = _best_cuts(steps, kept, [row[slots - kept][0] for row in table])
        if best is None or cost < best[0]:
            best = (cost, kept, lengths, table)
    _, kept, lengths, table = best
    keep: list[int] = []
    pushes: list[int] = []

    def reverse(start: int, length: int, free: int) -> None:
        while free > 0 and table[length][free][1] == 0:
            free -= 1  # this segment gains nothing from its last slot
        if length <= 1 or free == 0:
            return
        j = table[length][free][1]
        pushes.append(start + j)
        reverse(start + j, length - j, free - 1)
        reverse(start, j, free)

    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    keep.extend(starts[1:])
    for start, length in reversed(list(zip(starts, lengths))):  # the backward's order
        reverse(start, length, slots - kept)
    return tuple(keep), tuple(pushes)


def _revolve_table(steps: int, slots: int) -> list[list[tuple[int, int]]]:
    """table[L][s] = (F(L, s), its split j; 0: the s-th slot is not used) for L <= steps."""
    table = [[(0, 0)] * (slots + 1) for _ in range(steps + 1)]
    for length in range(2, steps + 1):
        table[length][0] = (length * (length - 1) // 2, 0)
        for s in range(1, slots + 1):
            best = (table[length][s - 1][0], 0)
            for j in range(1, length):
                cost = j + table[length - j][s - 1][0] + table[j][s][0]
                if cost < best[0]:
                    best = (cost, j)
            table[length][s] = best
    return table


def _best_cuts(steps: int, kept: int, cost: list[int]) -> tuple[int, list[int]]:
    """Cuts steps into kept + 1 positive lengths minimising sum(cost[length])."""
    if kept >= steps:
        return (1 << 62), []
    # best[i, k]: (cost, lengths) of the first i steps in k + 1 segments (plain loops: the
    # planner runs under torch.compile's tracing too)
    best = {(i, 0): (cost[i], [i]) for i in range(1, steps + 1)}
    for k in range(1, kept + 1):
        for i in range(k + 1, steps + 1):
            for length in range(1, i - k + 1):
                before_cost, before = best[i - length, k - 1]
                option = (before_cost + cost[length], before + [length])
                if (i, k) not in best or option < best[i, k]:
                    best[i, k] = option
    return best[steps, kept]


def backward_sweep(
    grad: torch.Tensor,
    v: torch.Tensor,
    saved,
    steps: int,
    keep: list[int],
    pushes: list[int],
    advance: Callable[[torch.Tensor, int, int], torch.Tensor],
    step_backward: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
) -> torch.Tensor:
    """The gradient with respect to v of the last field, given ``grad`` of it: the steps
    reversed from the last, each through ``step_backward(grad, u_k, k)`` -> the gradient
    with respect to u_k. u_k comes from the nearest stored field below k: v, the ``saved``
    fields u_k for k in ``keep`` (increasing), and the ``pushes`` made on the way
    (``checkpoint_plan``'s order); ``advance(u_j, j, k)`` recomputes u_k from u_j (u_j itself
    when k == j)."""
    snapshots = [(0, v), *zip(keep, saved)]
    following = iter(pushes)
    nxt = next(following, None)
    for k in range(steps - 1, -1, -1):
        while snapshots[-1][0] > k:
            snapshots.pop()
        while nxt is not None and snapshots[-1][0] < nxt <= k:
            snapshots.append((nxt, advance(snapshots[-1][1], snapshots[-1][0], nxt)))
            nxt = next(following, None)
        grad = step_backward(grad, advance(snapshots[-1][1], snapshots[-1][0], k), k)
    return grad
