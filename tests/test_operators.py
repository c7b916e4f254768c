"""LinearOperator base: shapes, adjoints, composition, power-method norm, devices."""

from __future__ import annotations

import pytest
import torch

from pet_dl.errors import GeometryError
from pet_dl.operators import (
    CompositeOperator,
    DiagonalOperator,
    LinearOperator,
    MatrixOperator,
    adjointness_error,
)


def _matrix(generator: torch.Generator, m: int = 7, n: int = 6) -> torch.Tensor:
    return torch.randn(m, n, generator=generator, dtype=torch.float64)


def test_matrix_operator_matches_dense_product(generator: torch.Generator) -> None:
    a = _matrix(generator, 6, 12)
    op = MatrixOperator(a, in_shape=(3, 4), out_shape=(2, 3))
    x = torch.randn(5, 3, 4, generator=generator, dtype=torch.float64)
    expected = (x.reshape(5, 12) @ a.T).reshape(5, 2, 3)
    torch.testing.assert_close(op(x), expected, rtol=1e-12, atol=0)
    y = torch.randn(5, 2, 3, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(op.adjoint(y), (y.reshape(5, 6) @ a).reshape(5, 3, 4))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_adjointness_of_composites(generator: torch.Generator, dtype, tol) -> None:
    a = MatrixOperator(_matrix(generator, 7, 6).to(dtype))
    b = MatrixOperator(_matrix(generator, 6, 5).to(dtype))
    d = DiagonalOperator(torch.rand(7, generator=generator, dtype=dtype) + 0.5)
    for op in (a, d, d @ a @ b, (a @ b).T, a.T @ d):
        assert adjointness_error(op, generator, dtype) <= tol


def test_adjointness_error_detects_a_wrong_adjoint(generator: torch.Generator) -> None:
    class Wrong(MatrixOperator):
        def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
            return 1.01 * super()._adjoint(y)

    op = Wrong(torch.rand(4, 3, generator=generator, dtype=torch.float64))
    assert adjointness_error(op, generator) == pytest.approx(0.01, rel=1e-6)


def test_composition_applies_inner_first(generator: torch.Generator) -> None:
    a, b = _matrix(generator, 4, 6), _matrix(generator, 6, 3)
    comp = MatrixOperator(a) @ MatrixOperator(b)
    assert isinstance(comp, CompositeOperator)
    assert comp.in_shape == (3,) and comp.out_shape == (4,)
    x = torch.randn(3, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(comp(x), a @ (b @ x))
    torch.testing.assert_close(
        comp.T(torch.ones(4, dtype=torch.float64)), b.T @ (a.T @ torch.ones(4, dtype=torch.float64))
    )
    with pytest.raises(GeometryError, match="cannot compose"):
        MatrixOperator(b) @ MatrixOperator(a)


def test_transpose_twice_is_the_operator(generator: torch.Generator) -> None:
    op = MatrixOperator(_matrix(generator))
    assert op.T.T is op
    assert op.T.in_shape == op.out_shape


def test_power_method_norm_matches_largest_singular_value(generator: torch.Generator) -> None:
    a = _matrix(generator, 9, 6)
    sigma = torch.linalg.matrix_norm(a, ord=2).item()
    op = MatrixOperator(a)
    assert op.norm(num_iterations=200, generator=generator) == pytest.approx(sigma, rel=1e-8)
    # seeded: same generator state -> same estimate; fewer iterations underestimate
    few = [op.norm(3, torch.Generator().manual_seed(5)) for _ in range(2)]
    assert few[0] == few[1] and few[0] <= sigma * (1 + 1e-12)
    d = DiagonalOperator(torch.tensor([1.0, -3.0, 2.0], dtype=torch.float64))
    assert d.norm(100) == pytest.approx(3.0, rel=1e-8)


def test_shape_errors_name_the_problem(generator: torch.Generator) -> None:
    op = MatrixOperator(_matrix(generator, 4, 6), in_shape=(2, 3))
    with pytest.raises(GeometryError, match=r"\(\*batch, 2, 3\), got \(3, 2\)"):
        op(torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(GeometryError, match="adjoint"):
        op.adjoint(torch.zeros(5, dtype=torch.float64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        op([1.0, 2.0])  # type: ignore[arg-type]
    d = DiagonalOperator(torch.ones(2, 3), shape=(3,))
    with pytest.raises(GeometryError, match="broadcast"):
        d(torch.ones(4, 3))


def test_batched_diagonal_acts_per_item(generator: torch.Generator) -> None:
    w = torch.rand(2, 5, generator=generator, dtype=torch.float64)
    d = DiagonalOperator(w, shape=(5,))
    x = torch.rand(2, 5, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(d(x), w * x)
    assert adjointness_error(d, generator) <= 1e-12


def test_to_moves_buffers_and_subclass_apply_still_works(device: torch.device) -> None:
    op = MatrixOperator(torch.eye(3, dtype=torch.float64) * 2) @ DiagonalOperator(
        torch.arange(3, dtype=torch.float64)
    )
    moved = op.to(device=device, dtype=torch.float32)
    assert moved.reference() == (torch.float32, device)
    y = moved(torch.ones(3, device=device))
    torch.testing.assert_close(y.cpu(), torch.tensor([0.0, 2.0, 4.0]))


def test_forward_holds_no_state(generator: torch.Generator) -> None:
    op = MatrixOperator(_matrix(generator))
    before = {k: v.clone() for k, v in op.state_dict().items()}
    x = torch.randn(6, generator=generator, dtype=torch.float64)
    first = op(x)
    torch.testing.assert_close(op(x), first, rtol=0, atol=0)
    for k, v in op.state_dict().items():
        assert torch.equal(v, before[k])


def test_autograd_gradient_is_the_adjoint(generator: torch.Generator) -> None:
    a = _matrix(generator, 5, 4)
    op = MatrixOperator(a) @ DiagonalOperator(
        torch.rand(4, generator=generator, dtype=torch.float64)
    )
    x = torch.randn(4, generator=generator, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, generator=generator, dtype=torch.float64)
    (op(x) * y).sum().backward()
    torch.testing.assert_close(x.grad, op.adjoint(y))


def test_base_class_requires_implementations() -> None:
    class Empty(LinearOperator):
        pass

    with pytest.raises(NotImplementedError):
        Empty((2,), (2,))(torch.zeros(2))


def test_operator_hooks_leave_nn_module_apply_alone(generator: torch.Generator) -> None:
    """Subclasses implement _forward/_adjoint; nn.Module._apply (behind .to()) is not touched,
    so moving an operator to another dtype moves its buffers and it still applies."""
    from torch import nn

    for cls in (MatrixOperator, DiagonalOperator, CompositeOperator):
        assert cls._apply is nn.Module._apply
    a = torch.rand(3, 4, generator=generator)
    op = MatrixOperator(a).to(torch.float64)
    x = torch.rand(4, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(op(x), a.double() @ x)
    torch.testing.assert_close(op.adjoint(op(x)), a.double().T @ (a.double() @ x))
