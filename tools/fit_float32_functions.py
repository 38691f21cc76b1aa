"""The fitted coefficients of nbnet/kernels/fast_math.py's float32 exp and tanh, remade.

    python tools/fit_float32_functions.py

Prints one JSON object: for exp, q with exp(r) = 1 + r + r^2 q(r) on |r| <= ln2 / 2; for
tanh, p with tanh(x) = x + x^3 p(x^2) on |x| <= 0.625; each a list of coefficients from the
constant term up, with its largest relative error in float64 on a fine grid. The fit is
least squares on the relative error at Chebyshev nodes, reweighted toward the largest
error a few times (each round multiplies a node's weight by the square root of its error
over the largest), which brings the fit close to the minimax one.
"""

import json

import numpy as np

NODES = 20_000
ROUNDS = 8


def fit_relative(function, low, high, degree):
    """Coefficients c (constant term first) of a polynomial approximating ``function`` on
    [low, high] with a small largest relative error."""
    t = np.cos(np.pi * (np.arange(NODES) + 0.5) / NODES) * (high - low) / 2 + (high + low) / 2
    target = function(t)
    powers = np.stack([t ** k for k in range(degree + 1)], axis=1)
    weights = np.ones(NODES)
    for _ in range(ROUNDS):
        scaled = weights / np.abs(target)
        coefficients, *_ = np.linalg.lstsq(powers * scaled[:, None], target * scaled, rcond=None)
        error = np.abs(powers @ coefficients - target) / np.abs(target)
        weights = weights * np.sqrt(error / error.max()) + 1e-12
    return coefficients


def main():
    half_ln2 = np.log(2.0) / 2
    exp_q = fit_relative(lambda r: (np.expm1(r) - r) / r ** 2, -half_ln2, half_ln2, 4)
    r = np.linspace(-half_ln2, half_ln2, 100_001)
    exp_error = np.max(np.abs(1 + r + r * r * np.polyval(exp_q[::-1], r) - np.exp(r)) / np.exp(r))

    small = 0.625
    tanh_p = fit_relative(lambda s: (np.tanh(np.sqrt(s)) / np.sqrt(s) - 1) / s, 1e-8, small * small, 4)
    x = np.linspace(1e-4, small, 100_001)
    tanh_error = np.max(np.abs(x + x ** 3 * np.polyval(tanh_p[::-1], x * x) - np.tanh(x)) / np.tanh(x))
    print(json.dumps({"exp_q": exp_q.tolist(), "exp_max_relative_error": exp_error,
                      "tanh_p": tanh_p.tolist(), "tanh_small_below": small,
                      "tanh_max_relative_error": tanh_error}, indent=1))


if __name__ == "__main__":
    main()
