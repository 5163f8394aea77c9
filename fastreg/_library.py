"""The one way op families register their torch.library ops (below fastreg/ops and fastreg/triton).

Naming: a family's kernels are named ``<op>_<forward|backward|...>`` (``warp_forward``,
``jacobian_stats``); the C++ op is ``fastreg::<kernel>`` (its schema in csrc/bindings.cpp)
and the Triton op, same schema, ``fastreg::<kernel>_triton``. The op names, the kernels'
names without the suffix (``warp``, ``integrate_svf``, ``vfa_attention``, ``jacobian_stats``),
key ``fastreg._backend.select`` (``sample``, ``compose`` and ``invert_field`` run ``warp``).

A family declares itself once (``Family``, in fastreg/ops/<family>.py): its public ops, its
GPU default, the fake kernel of every kernel and, per differentiable forward kernel, an
``Autograd`` spec. ``register`` then registers the fakes and the autograd formula for the
C++ ops (when the extension is loaded) and for the Triton ops (when Triton can run: the
family's ops module imports fastreg/triton/<family>.py first, which defines them with
``triton_op``), the same way for every family. Triton launchers are defined with the
``triton_op`` decorator of this module: ``torch.library.triton_op`` (kernels wrapped by
``wrap_triton``, so torch.compile sees into them) on a GPU, an opaque
``torch.library.custom_op`` under ``TRITON_INTERPRET=1`` (interpreted kernels cannot be traced).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fastreg import _backend, _extension


@dataclass(frozen=True)
class Autograd:
    """How a forward kernel is differentiated by its backward kernel.

    The forward kernel's inputs are ``inputs`` tensors that receive gradients, then
    non-tensor arguments; its first output is differentiable, any further outputs are not
    (saved for the backward by index in ``saved_outputs``). The backward kernel is called as
    ``backward(grad_out, *inputs' tensors, *saved outputs, *backward_args(*arguments)[,
    output_mask])`` (``output_mask``, one bool per input, when ``output_mask`` is True; it
    then returns one tensor per input, else the gradient of the single input). A backward
    run with ``create_graph=True`` instead differentiates ``reference(*inputs, *arguments)``
    (the same mathematics in plain torch) with ``_backend.differentiable_backward``. The
    backward kernel's fake is made here: each gradient has its input's shape (shape (0,)
    where ``output_mask`` asks for none).
    """

    forward: str
    backward: str
    reference: Callable[..., torch.Tensor]
    inputs: int = 1
    saved_outputs: tuple[int, ...] = ()
    output_mask: bool = True
    backward_args: Callable[..., tuple] | None = None


@dataclass(frozen=True)
class Family:
    """An op family: ``name`` (the module name in fastreg/ops, fastreg/triton, fastreg/reference
    and csrc), the fake kernel of every kernel that is not a backward (kernel name -> fake), the
    autograd specs and the backend its ops prefer on a GPU."""

    name: str
    fakes: dict[str, Callable]
    autograd: tuple[Autograd, ...] = ()
    gpu_default: str = "cuda"

    @property
    def ops(self) -> tuple[str, ...]:
        """Its ops, the keys of ``_backend.select``: the names of the kernels with fakes without
        ``_forward``."""
        return tuple(kernel.removesuffix("_forward") for kernel in self.fakes)

    @property
    def kernels(self) -> tuple[str, ...]:
        """Every kernel's name: those with fakes, then the backward kernels."""
        return (*self.fakes, *(spec.backward for spec in self.autograd))


def op_name(kernel: str, backend: str) -> str:
    """``fastreg::<kernel>`` on the C++ backends ("cpu", "cuda"), ``fastreg::<kernel>_triton``
    on "triton"."""
    return f"fastreg::{_unqualified(kernel, backend)}"


def kernel(name: str, backend: str):
    """The op (a torch.ops.fastreg packet) of kernel ``name`` on ``backend``."""
    return getattr(torch.ops.fastreg, _unqualified(name, backend))


def _unqualified(kernel: str, backend: str) -> str:
    return f"{kernel}_triton" if backend == "triton" else kernel


def triton_runnable() -> bool:
    """Triton is installed and can run here (a GPU, or CPU tensors under TRITON_INTERPRET=1):
    the families' Triton ops are then defined at import."""
    return _backend.triton_available() and (torch.cuda.is_available() or _backend.triton_interpret())


def triton_op(name: str):
    """Decorator defining the launcher ``fn`` as the op ``fastreg::<name>_triton`` (no
    mutated arguments; its schema from ``fn``'s annotations)."""
    define = torch.library.custom_op if _backend.triton_interpret() else torch.library.triton_op
    return lambda fn: define(op_name(name, "triton"), fn, mutates_args=())


def register(family: Family) -> None:
    """Register ``family``'s fakes and autograd for its C++ ops when the extension is loaded
    and for its Triton ops when Triton can run and the family has them (their module must be
    imported before), and its GPU default for ``_backend.select``."""
    for op in family.ops:
        _backend.GPU_DEFAULT[op] = family.gpu_default
    backends = ["cpu"] if _extension.AVAILABLE else []
    if triton_runnable() and all(hasattr(torch.ops.fastreg, _unqualified(k, "triton")) for k in family.kernels):
        backends.append("triton")
    for backend in backends:
        for name, fake in family.fakes.items():
            torch.library.register_fake(op_name(name, backend))(fake)
        for spec in family.autograd:
            _register_autograd(spec, backend)


def _register_autograd(spec: Autograd, backend: str) -> None:
    backward_op = kernel(spec.backward, backend)
    n = spec.inputs

    @torch.library.register_fake(op_name(spec.backward, backend))
    def fake_backward(grad_out, *args):
        if not spec.output_mask:
            return args[0].new_empty(args[0].shape)
        return tuple(x.new_empty(x.shape) if need else x.new_empty((0,)) for x, need in zip(args[:n], args[-1]))

    def setup_context(ctx, inputs, output):
        outputs = output if isinstance(output, tuple) else (output,)
        if len(outputs) > 1:
            ctx.mark_non_differentiable(*outputs[1:])
            ctx.set_materialize_grads(False)  # else autograd allocates zeros for the other outputs
        ctx.save_for_backward(*inputs[:n], *(outputs[i] for i in spec.saved_outputs))
        ctx.arguments = tuple(inputs[n:])
        ctx.backward_args = tuple(spec.backward_args(*ctx.arguments)) if spec.backward_args else ctx.arguments

    def backward(ctx, grad, *_grad_not_differentiable):
        if grad is None:
            return (None,) * (n + len(ctx.arguments))
        saved = ctx.saved_tensors
        need = [bool(x) for x in ctx.needs_input_grad[:n]]
        if torch.is_grad_enabled():  # create_graph=True
            grads = _backend.differentiable_backward(
                lambda *x: spec.reference(*x, *ctx.arguments), saved[:n], need, grad
            )
        elif spec.output_mask:
            grads = backward_op(grad, *saved, *ctx.backward_args, need)
        else:
            grads = (backward_op(grad.contiguous(), *saved, *ctx.backward_args),)
        return (*(g if k else None for g, k in zip(grads, need)), *(None,) * len(ctx.arguments))

    torch.library.register_autograd(op_name(spec.forward, backend), backward, setup_context=setup_context)
