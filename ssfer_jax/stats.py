"""Statistics over seeds: t-intervals of a mean and the paired comparison of two methods.

In semi-supervised FER the spread between seeds is larger than the differences between
methods (issue #16), so a comparison has to say how sure it is. Seed k of every method
starts from the same initial weights and the same labeled split, which makes per-seed
differences the quantity to study: ``paired(a, b)`` gives their mean with a Student-t
95 % interval and a two-sided sign-flip permutation p-value (no normality assumed), and
``describe(values)`` the same interval for one method's mean.

Pure Python and numpy: the Student-t quantile is computed here (bisection on the t CDF,
through the regularised incomplete beta function as a continued fraction) rather than
taken from scipy, which the project does not depend on.

    describe([0.61, 0.58, 0.66])   # {"n": 3, "mean": ..., "std": ..., "ci95": [lo, hi], ...}
    paired(dta_snl_top1, fixmatch_top1)   # {"mean_diff": ..., "ci95": ..., "p_signflip": ...}
"""

from __future__ import annotations

import math

import numpy as np

EXACT_MAX_N = 16            # up to 2^16 sign patterns are enumerated; beyond, Monte Carlo
MC_DRAWS = 100_000          # random sign patterns of the Monte-Carlo test
MC_SEED = 0                 # fixed, so a table is the same every time it is made
_TIE_RTOL = 1e-9            # |sum| within this (relative) of the observed counts as a tie


def _betainc(a: float, b: float, x: float) -> float:
  """The regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1.

  The continued fraction of I_x(a, b) converges fast for x < (a + 1) / (a + b + 2); above
  that the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) is used. The fraction is evaluated with
  the modified Lentz method."""
  if x <= 0.0:
    return 0.0
  if x >= 1.0:
    return 1.0
  if x > (a + 1.0) / (a + b + 2.0):
    return 1.0 - _betainc(b, a, 1.0 - x)
  log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
               + a * math.log(x) + b * math.log1p(-x))
  tiny, eps = 1e-300, 1e-15
  # K = 1 + d1 / (1 + d2 / (1 + ...)); I_x(a, b) = front / (a K).
  f, c, d = 1.0, 1.0, 0.0
  for j in range(1, 20_000):
    m = j // 2
    if j % 2:  # odd terms d_{2m+1}
      dj = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
    else:      # even terms d_{2m}
      dj = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
    d = 1.0 + dj * d
    d = 1.0 / (d if abs(d) > tiny else tiny)
    c = 1.0 + dj / c
    c = c if abs(c) > tiny else tiny
    delta = c * d
    f *= delta
    if abs(delta - 1.0) < eps:
      break
  return math.exp(log_front) / (a * f)


def t_cdf(t: float, df: float) -> float:
  """P(T <= t) for Student's t with ``df`` degrees of freedom (``math.inf``: the normal)."""
  if math.isinf(df):
    return 0.5 * (1.0 + math.erf(t / math.sqrt(2.0)))
  tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
  return 1.0 - tail if t >= 0 else tail


def t_quantile(q: float, df: float) -> float:
  """The ``q`` quantile of Student's t with ``df`` > 0 degrees of freedom (``math.inf``:
  the standard normal), by bisection on ``t_cdf``; e.g. ``t_quantile(0.975, 9)`` = 2.262."""
  if not 0.0 < q < 1.0:
    raise ValueError(f"t_quantile: q={q} must be in (0, 1)")
  if not df > 0:
    raise ValueError(f"t_quantile: df={df} must be > 0")
  if q == 0.5:
    return 0.0
  if q < 0.5:
    return -t_quantile(1.0 - q, df)
  lo, hi = 0.0, 1.0
  while t_cdf(hi, df) < q:
    lo, hi = hi, hi * 2.0
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    if t_cdf(mid, df) < q:
      lo = mid
    else:
      hi = mid
    if hi - lo <= 1e-13 * hi:
      break
  return 0.5 * (lo + hi)


def _finite(values) -> list[float]:
  """The finite numbers of ``values`` as floats (None and NaN/inf left out)."""
  return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def describe(values) -> dict:
  """n, mean, sample std (ddof=1), the 95 % t-interval of the mean, the values, min and max.

  None and non-finite entries (a metric a method does not log) are left out and not
  counted. With one value std and ci95 are None; with none, every statistic is None."""
  vals = _finite(values)
  n = len(vals)
  out = {"n": n, "mean": None, "std": None, "ci95": None, "values": vals,
         "min": min(vals) if vals else None, "max": max(vals) if vals else None}
  if n == 0:
    return out
  out["mean"] = mean = math.fsum(vals) / n
  if n >= 2:
    out["std"] = std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    half = t_quantile(0.975, n - 1) * std / math.sqrt(n)
    out["ci95"] = [mean - half, mean + half]
  return out


def mean_std_text(values, scale: float = 1.0, digits: int = 2) -> str:
  """"mean ± std" of the finite ``values`` times ``scale`` (just the mean for one value,
  "—" for none): a table cell."""
  d = describe(values)
  if d["mean"] is None:
    return "—"
  text = f"{d['mean'] * scale:.{digits}f}"
  return text + (f" ± {d['std'] * scale:.{digits}f}" if d["std"] is not None else "")


def _signflip_exact(diffs: np.ndarray) -> float:
  """Two-sided p of the sign-flip test over all 2^n sign patterns."""
  n = len(diffs)
  bits = (np.arange(2 ** n)[:, None] >> np.arange(n)) & 1
  return float(np.mean(_at_least(diffs, (1 - 2 * bits) @ diffs)))


def _signflip_mc(diffs: np.ndarray, draws: int, seed: int) -> float:
  """Two-sided p of the sign-flip test from ``draws`` random sign patterns, as
  (hits + 1) / (draws + 1) so that the observed pattern counts and p is never 0."""
  rng = np.random.default_rng(seed)
  hits, done = 0, 0
  while done < draws:
    k = min(10_000, draws - done)
    signs = 1.0 - 2.0 * rng.integers(0, 2, size=(k, len(diffs)))
    hits += int(_at_least(diffs, signs @ diffs).sum())
    done += k
  return (hits + 1) / (draws + 1)


def _at_least(diffs: np.ndarray, sums: np.ndarray) -> np.ndarray:
  """Which signed sums are at least as far from 0 as the observed sum of ``diffs`` (a tie
  up to the float rounding of another summation order counts as at least as far)."""
  tol = _TIE_RTOL * max(float(np.abs(diffs).sum()), 1e-300)
  return np.abs(sums) >= abs(math.fsum(diffs)) - tol


def paired(a, b, *, draws: int = MC_DRAWS, seed: int = MC_SEED) -> dict:
  """Paired comparison of method A against reference B from per-seed results in the same
  seed order: the differences d = a - b, their mean with its 95 % t-interval, and the
  two-sided sign-flip permutation p-value of the mean difference (under "no difference"
  each d is as likely to have either sign): exact over all 2^n sign patterns for
  n <= ``EXACT_MAX_N``, else from ``draws`` seeded random patterns ("p_method" says which).

  Pairs where either value is None or non-finite are left out. Zero differences are ties
  (all zero: p = 1); with one pair std and ci95 are None; with none, p is None too."""
  if len(a) != len(b):
    raise ValueError(f"paired: {len(a)} results of the method against {len(b)} of the "
                     "reference; pass one value per seed for both, in the same seed order")
  diffs = np.array([float(x) - float(y) for x, y in zip(a, b)
                    if _finite([x]) and _finite([y])], dtype=np.float64)
  d = describe(diffs)
  n = d["n"]
  out = {"n": n, "mean_diff": d["mean"], "std_diff": d["std"], "ci95": d["ci95"],
         "diffs": d["values"], "p_signflip": None, "p_method": None,
         "wins": int((diffs > 0).sum()), "losses": int((diffs < 0).sum()),
         "ties": int((diffs == 0).sum())}
  if n == 0:
    return out
  if n <= EXACT_MAX_N:
    out["p_signflip"], out["p_method"] = _signflip_exact(diffs), f"exact ({2 ** n} sign patterns)"
  else:
    out["p_signflip"] = _signflip_mc(diffs, draws, seed)
    out["p_method"] = f"monte carlo ({draws} random sign patterns, seed {seed})"
  return out
