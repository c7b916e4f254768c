"""Linear operators as ``nn.Module``s: shapes, adjoints, composition, norms.

A :class:`LinearOperator` maps tensors of shape ``(*batch, *in_shape)`` to
``(*batch, *out_shape)``. Subclasses implement ``_forward`` and ``_adjoint``; the public
:meth:`LinearOperator.forward` and :meth:`LinearOperator.adjoint` check shapes first.
The adjoint is the plain Euclidean transpose (voxel sizes and bin widths live inside the
operator, not in the inner product). Operators hold no state that ``forward`` changes;
their fixed tensors are buffers so that ``.to(device)`` moves them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pet_dl.errors import GeometryError

__all__ = [
    "AdjointOperator",
    "CompositeOperator",
    "DiagonalOperator",
    "LinearOperator",
    "MatrixOperator",
    "adjointness_error",
]


def _check_tensor(x: object, expected: tuple[int, ...], where: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where} expects a torch.Tensor, got {type(x).__name__}")
    n = len(expected)
    if x.dim() < n or tuple(x.shape[x.dim() - n :]) != expected:
        raise GeometryError(
            f"{where} expects a tensor of shape (*batch, {', '.join(map(str, expected))}), "
            f"got {tuple(x.shape)}"
        )
    return x


class LinearOperator(nn.Module):
    """A linear map with declared input and output shapes and an exact adjoint.

    Subclasses implement ``_forward(x)`` and ``_adjoint(y)`` on tensors whose trailing
    dimensions are already checked (not ``_apply``: that is ``nn.Module``'s hook behind
    ``.to()``).

    Args:
        in_shape: shape of one input (without batch dimensions).
        out_shape: shape of one output (without batch dimensions).

    Example (a dense matrix as an operator; ``T`` is the adjoint as an operator)::

        >>> import torch
        >>> from pet_dl.operators import MatrixOperator
        >>> op = MatrixOperator(torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, 0.0]]))
        >>> op.in_shape, op.out_shape
        ((2,), (3,))
        >>> op(torch.tensor([1.0, 1.0]))
        tensor([3., 1., 3.])
        >>> op.adjoint(torch.ones(3))
        tensor([4., 3.])
        >>> op.T(torch.ones(3))
        tensor([4., 3.])
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        super().__init__()
        self.in_shape: tuple[int, ...] = tuple(int(s) for s in in_shape)
        self.out_shape: tuple[int, ...] = tuple(int(s) for s in out_shape)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement _forward")

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement _adjoint")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the operator: ``(*batch, *in_shape) -> (*batch, *out_shape)``."""
        _check_tensor(x, self.in_shape, f"{type(self).__name__}.forward")
        return self._forward(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply the adjoint: ``(*batch, *out_shape) -> (*batch, *in_shape)``."""
        _check_tensor(y, self.out_shape, f"{type(self).__name__}.adjoint")
        return self._adjoint(y)

    @property
    def T(self) -> LinearOperator:  # noqa: N802
        """The adjoint as an operator (``op.T.T`` applies like ``op``)."""
        return AdjointOperator(self)

    def __matmul__(self, other: LinearOperator) -> CompositeOperator:
        """Composition: ``(A @ B)(x) = A(B(x))``."""
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return CompositeOperator(self, other)

    def reference(self) -> tuple[torch.dtype, torch.device]:
        """The dtype and device of this operator's floating tensors (default dtype, CPU if none)."""
        for t in list(self.buffers()) + list(self.parameters()):
            if t.is_floating_point():
                return t.dtype, t.device
        return torch.get_default_dtype(), torch.device("cpu")

    @torch.no_grad()
    def norm(
        self,
        num_iterations: int = 30,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
    ) -> float:
        """The operator norm ``||A||_2`` by the power method on ``A^T A``.

        Args:
            num_iterations: power iterations (the estimate approaches the norm from below).
            generator: CPU generator for the random start vector; None: a fixed seed (0).
            dtype: working dtype; default the operator's.

        Returns:
            The estimate of the largest singular value (units of the operator).
        """
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
        ref_dtype, device = self.reference()
        dtype = dtype or ref_dtype
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        x = torch.rand(self.in_shape, generator=generator, dtype=torch.float64)
        x = (x / torch.linalg.vector_norm(x)).to(device=device, dtype=dtype)
        estimate = 0.0
        for _ in range(num_iterations):
            z = self.adjoint(self.forward(x))
            if z.shape != x.shape:  # batched weights broadcast x: the stacked operator
                z = z.reshape(-1, *self.in_shape).sum(0)
            n = float(torch.linalg.vector_norm(z))
            if n == 0.0:
                return 0.0
            estimate = math.sqrt(n)
            x = z / n
        return estimate

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}"


class AdjointOperator(LinearOperator):
    """The adjoint of an operator, as an operator (shares the operator's tensors)."""

    def __init__(self, op: LinearOperator) -> None:
        super().__init__(op.out_shape, op.in_shape)
        self.op = op

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.adjoint(x)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.op.forward(y)

    @property
    def T(self) -> LinearOperator:  # noqa: N802
        return self.op


class CompositeOperator(LinearOperator):
    """``(A @ B)(x) = A(B(x))``, adjoint ``B^T(A^T(y))``.

    Args:
        outer: ``A``, applied last.
        inner: ``B``, applied first; ``inner.out_shape`` must equal ``outer.in_shape``.
    """

    def __init__(self, outer: LinearOperator, inner: LinearOperator) -> None:
        if inner.out_shape != outer.in_shape:
            raise GeometryError(
                f"cannot compose: {type(inner).__name__} gives {inner.out_shape} but "
                f"{type(outer).__name__} takes {outer.in_shape}"
            )
        super().__init__(inner.in_shape, outer.out_shape)
        self.outer = outer
        self.inner = inner

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(self.inner(x))

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.inner.adjoint(self.outer.adjoint(y))


class MatrixOperator(LinearOperator):
    """A dense matrix ``(m, n)`` acting on flattened inputs (for tests of algorithms).

    Args:
        matrix: ``(m, n)`` tensor.
        in_shape: input shape with ``prod(in_shape) == n``; default ``(n,)``.
        out_shape: output shape with ``prod(out_shape) == m``; default ``(m,)``.
    """

    def __init__(
        self,
        matrix: torch.Tensor,
        in_shape: Sequence[int] | None = None,
        out_shape: Sequence[int] | None = None,
    ) -> None:
        if not isinstance(matrix, torch.Tensor) or matrix.dim() != 2:
            raise TypeError("MatrixOperator needs a 2-D torch.Tensor (m, n)")
        m, n = matrix.shape
        in_shape = tuple(in_shape) if in_shape is not None else (n,)
        out_shape = tuple(out_shape) if out_shape is not None else (m,)
        if math.prod(in_shape) != n or math.prod(out_shape) != m:
            raise GeometryError(
                f"matrix of shape {(m, n)} does not fit in_shape={in_shape}, out_shape={out_shape}"
            )
        super().__init__(in_shape, out_shape)
        self.register_buffer("matrix", matrix)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[: x.dim() - len(self.in_shape)]
        y = x.reshape(*batch, -1) @ self.matrix.T
        return y.reshape(*batch, *self.out_shape)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        batch = y.shape[: y.dim() - len(self.out_shape)]
        x = y.reshape(*batch, -1) @ self.matrix
        return x.reshape(*batch, *self.in_shape)


class DiagonalOperator(LinearOperator):
    """Elementwise multiplication by a fixed tensor (self-adjoint).

    Args:
        weight: ``(*shape)`` or, for a batch of operators, ``(B, *shape)``; trailing
            dimensions may be 1 (broadcast, e.g. over TOF bins). It multiplies inputs
            ``(*batch, *shape)`` with broadcasting.
        shape: the operator's shape; default ``weight.shape``.
    """

    def __init__(self, weight: torch.Tensor, shape: Sequence[int] | None = None) -> None:
        if not isinstance(weight, torch.Tensor):
            raise TypeError(
                f"DiagonalOperator weight must be a tensor, got {type(weight).__name__}"
            )
        shape = tuple(shape) if shape is not None else tuple(weight.shape)
        n = len(shape)
        tail = tuple(weight.shape[weight.dim() - n :]) if n else ()
        if weight.dim() < n or any(a not in (b, 1) for a, b in zip(tail, shape)):
            raise GeometryError(
                f"DiagonalOperator weight of shape {tuple(weight.shape)} does not broadcast to"
                f" (*batch, {', '.join(map(str, shape))})"
            )
        super().__init__(shape, shape)
        self.register_buffer("weight", weight)

    def _multiply(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.in_shape)
        a, b = x.shape[: x.dim() - n], self.weight.shape[: self.weight.dim() - n]
        # by hand: torch.broadcast_shapes imports sympy on first use (0.6 s of infer.py)
        if any(p != q and 1 not in (p, q) for p, q in zip(reversed(a), reversed(b))):
            raise GeometryError(
                f"{type(self).__name__}: input batch {tuple(a)} does not "
                f"broadcast with the weight batch {tuple(b)}"
            )
        return x * self.weight

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._multiply(x)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._multiply(y)


def adjointness_error(
    op: LinearOperator,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> float:
    """Relative adjointness error ``|<Ax, y> - <x, A^T y>| / |<Ax, y>|``.

    ``x`` and ``y`` are random and positive (uniform in (0, 1)), so the inner products
    have no cancellation and the ratio measures the relative mismatch.

    Args:
        op: the operator (its tensors should already have ``dtype``).
        generator: CPU generator for ``x`` and ``y``; None: a fixed seed (0).
        dtype: dtype of ``x`` and ``y``; default the operator's.

    Returns:
        The relative error (0 for an exact adjoint up to rounding).
    """
    ref_dtype, device = op.reference()
    dtype = dtype or ref_dtype
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x = torch.rand(op.in_shape, generator=generator, dtype=torch.float64)
        y = torch.rand(op.out_shape, generator=generator, dtype=torch.float64)
        x, y = x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)
        ax = op.forward(x)
        aty = op.adjoint(y)
        if ax.shape != y.shape:  # batched weights: compare the stacked operator
            y = y.expand_as(ax)
            aty = op.adjoint(y)
            x = x.expand_as(aty)
        lhs = torch.sum(ax.double() * y.double())
        rhs = torch.sum(x.double() * aty.double())
        return float(torch.abs(lhs - rhs) / torch.abs(lhs))
