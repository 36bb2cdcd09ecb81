"""The progressive confidence schedule of SSF-DAN (paper eq. 7)."""
from __future__ import annotations

from ._checks import as_finite_float, check_rho


def rho_schedule(iteration: int, total_iters: int, rho_upper: float = 0.8) -> float:
    """Eq. 7: the kept fraction grows linearly with training, capped at ``rho_upper``.

    ``rho_schedule(0, N)`` is 0: in the paper's schedule the first iteration keeps no pixel, so the adversarial
    and discriminator losses are exactly 0 there, and they stay small for the first iterations (one pixel per
    class and image once ``rho * N_c >= 1``).

    Shapes: n/a (scalars).
    """
    iteration = as_finite_float(iteration, "iteration")
    total_iters = as_finite_float(total_iters, "total_iters")
    if total_iters <= 0:
        raise ValueError(f"total_iters must be positive, got {total_iters:g}")
    if iteration < 0:
        raise ValueError(f"iteration must be non-negative, got {iteration:g}")
    rho_upper = check_rho(rho_upper, "rho_upper")
    return min(iteration / total_iters, rho_upper)
