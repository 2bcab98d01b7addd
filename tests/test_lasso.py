"""The mu-lasso solver: feasibility, KKT optimality within the stated tolerance, brute-force agreement."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from an8flower.baselines.lasso import frank_wolfe_gap, nonneg_l1_lasso, project_nonneg_l1_ball
from an8flower.errors import UsageError


def _problem(seed: int, n: int, m: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, m, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, k, (n,), generator=gen)
    return x, torch.nn.functional.one_hot(labels, k).double()


def _brute_force(x: np.ndarray, y: np.ndarray, mu: float) -> tuple[np.ndarray, float]:
    """Exact solution by enumerating supports S and whether the L1 constraint is active.

    The optimum lies in the relative interior of some face {w_S > 0, w_rest = 0, [1^T w = mu]};
    there it is the minimiser of the quadratic restricted to that face (an unconstrained or an
    equality-constrained least squares), so the best feasible candidate over all faces is optimal.
    """
    m = x.shape[1]
    best_w, best_f = np.zeros(m), float(y @ y)
    for size in range(1, m + 1):
        for support in itertools.combinations(range(m), size):
            xs = x[:, support]
            g = xs.T @ xs
            b = xs.T @ y
            cands = [np.linalg.solve(g, b)]
            kkt = np.block([[2 * g, np.ones((size, 1))], [np.ones((1, size)), np.zeros((1, 1))]])
            cands.append(np.linalg.solve(kkt, np.concatenate([2 * b, [mu]]))[:size])
            for ws in cands:
                if (ws > 0).all() and ws.sum() <= mu + 1e-12:
                    f = float(np.sum((xs @ ws - y) ** 2))
                    if f < best_f:
                        best_w = np.zeros(m)
                        best_w[list(support)] = ws
                        best_f = f
    return best_w, best_f


def test_projection_matches_definition() -> None:
    v = torch.tensor([[3.0, 0.2, -1.0], [1.0, 0.3, -2.0], [-0.5, 0.1, 4.0]], dtype=torch.float64)
    p = project_nonneg_l1_ball(v, 2.0)
    # column 0: positive part (3, 1) sums to 4 > 2 -> simplex projection, theta = 1 -> (2, 0, 0)
    # column 1: positive part sums to 0.6 <= 2 -> unchanged; column 2: (0, 0, 4) -> (0, 0, 2)
    expected = torch.tensor([[2.0, 0.2, 0.0], [0.0, 0.3, 0.0], [0.0, 0.1, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(p, expected)
    # (1.5, 1.2) -> theta = 0.35 -> (1.15, 0.85)
    torch.testing.assert_close(
        project_nonneg_l1_ball(torch.tensor([1.5, 1.2, 0.1], dtype=torch.float64), 2.0),
        torch.tensor([1.15, 0.85, 0.0], dtype=torch.float64),
    )


def test_projection_is_the_nearest_feasible_point() -> None:
    """Variational inequality: <v - p, s - p> <= 0 for every feasible s (checked on the vertices)."""
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(7, 20, generator=gen, dtype=torch.float64) * 3
    mu = 2.5
    p = project_nonneg_l1_ball(v, mu)
    assert (p >= 0).all() and (p.sum(0) <= mu + 1e-12).all()
    vertices = torch.cat([torch.zeros(7, 1, dtype=torch.float64), mu * torch.eye(7, dtype=torch.float64)], 1)
    for j in range(v.shape[1]):
        inner = (v[:, j : j + 1] - p[:, j : j + 1]).T @ (vertices - p[:, j : j + 1])
        assert inner.max() <= 1e-10


@pytest.mark.parametrize("seed,n,m,k,mu", [(0, 200, 30, 6, 1.0), (1, 150, 60, 4, 10.0), (2, 40, 80, 3, 5.0)])
def test_feasible_and_kkt_within_tolerance(seed: int, n: int, m: int, k: int, mu: float) -> None:
    x, y = _problem(seed, n, m, k)
    tol = 1e-6
    res = nonneg_l1_lasso(x, y, mu, tol=tol)
    w = res.weights
    assert res.converged
    assert (w >= 0).all()
    assert (w.sum(0) <= mu * (1 + 1e-12)).all()
    # Recompute the gradient and the KKT residuals independently of the solver.
    g = 2 * x.T @ (x @ w - y)
    lam = (-g.amin(0)).clamp(min=0)
    scale = tol * y.pow(2).sum(0)
    stationarity = (w * (g + lam)).sum(0)  # each term >= 0
    slackness = lam * (mu - w.sum(0))
    assert (g + lam >= -1e-12).all()
    assert (stationarity >= -1e-9).all() and (slackness >= -1e-9).all()
    assert (stationarity + slackness <= scale).all()
    torch.testing.assert_close(frank_wolfe_gap(g, w, mu), stationarity + slackness)
    torch.testing.assert_close(res.objective, (x @ w - y).pow(2).sum(0))


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_on_small_problems(seed: int) -> None:
    gen = torch.Generator().manual_seed(100 + seed)
    m = 2 + seed % 4  # 2..5 features
    x = torch.randn(25, m, generator=gen, dtype=torch.float64)
    y = torch.randn(25, 2, generator=gen, dtype=torch.float64)
    mu = [0.3, 1.0, 4.0][seed % 3]
    res = nonneg_l1_lasso(x, y, mu, tol=1e-10)
    for j in range(2):
        w_ref, f_ref = _brute_force(x.numpy(), y[:, j].numpy(), mu)
        # f(w) - f* <= gap <= tol * ||y||^2, and the problem is strongly convex (X full column rank).
        assert float(res.objective[j]) - f_ref <= 1e-10 * float(y[:, j].pow(2).sum()) + 1e-12
        np.testing.assert_allclose(res.weights[:, j].numpy(), w_ref, atol=1e-4)


def test_columns_solved_jointly_equal_columns_solved_alone() -> None:
    x, y = _problem(3, 120, 25, 5)
    joint = nonneg_l1_lasso(x, y, 2.0, tol=1e-9).weights
    for j in range(5):
        alone = nonneg_l1_lasso(x, y[:, j], 2.0, tol=1e-9).weights[:, 0]
        torch.testing.assert_close(joint[:, j], alone, atol=1e-5, rtol=0)


def test_wide_problem_uses_power_iteration_and_still_converges() -> None:
    x, y = _problem(4, 30, 90, 3)  # m > N: the solver works on X, not the Gram matrix
    res = nonneg_l1_lasso(x, y, 3.0, tol=1e-6)
    exact = 2 * float(torch.linalg.matrix_norm(x, ord=2)) ** 2
    assert exact <= res.lipschitz <= exact * 1.02
    assert res.converged
    g = 2 * x.T @ (x @ res.weights - y)
    assert (frank_wolfe_gap(g, res.weights, 3.0) <= 1e-6 * y.pow(2).sum(0)).all()


def test_float32_input_returns_float32() -> None:
    x, y = _problem(5, 50, 10, 2)
    res = nonneg_l1_lasso(x.float(), y.float(), 1.0)
    assert res.weights.dtype == torch.float32 and res.weights.shape == (10, 2)


def test_bad_input() -> None:
    x, y = _problem(6, 10, 4, 2)
    with pytest.raises(UsageError, match="mu"):
        nonneg_l1_lasso(x, y, 0.0)
    with pytest.raises(UsageError, match="y must have shape"):
        nonneg_l1_lasso(x, y[:5], 1.0)
    with pytest.raises(UsageError, match="finite"):
        nonneg_l1_lasso(x * float("nan"), y, 1.0)
