"""Synthetic price paths: seeded stochastic models, a fitted GARCH(1,1), block bootstrap and crashes.

Every random model draws from its own ``numpy.random.Generator(PCG64(seed))`` (never a global
state), in a fixed order, so the same arguments give bit-identical arrays on any machine with
the same NumPy stream (NumPy keeps ``Generator`` streams stable across releases).

Time unit: ``mu`` and ``sigma`` (and the Merton jump intensity) are **annualised** with a year
of 365 days of continuous trading (crypto never closes): a step of ``step_ms`` milliseconds is
``dt = step_ms / YEAR_MS`` years.

Candles: the continuous models (GBM, Merton) draw ``substeps`` sub-increments inside each
candle; ``open`` is the previous close (``s0`` for the first candle), ``close`` the last
sub-point, ``high``/``low`` the max/min of the open and every sub-point. GARCH, being a model of
step returns, gives ``open`` = previous close and ``high``/``low`` = max/min of open and close.
The bootstrap resamples whole historical candles (their shape relative to the previous close).

Prices here are market data (floats); they reach the engine through
:func:`perpmargin.stress.paths.to_price_str`, which rounds them to the market's tick.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from numpy.random import PCG64, Generator

from perpmargin.errors import DataError
from perpmargin.stress.paths import PricePath

__all__ = [
    "YEAR_MS",
    "GarchParams",
    "block_bootstrap",
    "crash",
    "crash_factor",
    "fit_garch",
    "garch",
    "gbm",
    "merton",
    "shock",
]

F64 = npt.NDArray[np.float64]

YEAR_MS = 365 * 86_400_000
"""Milliseconds in the model year (365 days of 24 h: crypto trades continuously)."""


def _rng(seed: int) -> Generator:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise DataError("seed must be a non-negative integer", seed=seed)
    return Generator(PCG64(int(seed)))


def _check(symbol: str, s0: float, steps: int, step_ms: int, start_ms: int = 0) -> None:
    if not isinstance(symbol, str) or not symbol:
        raise DataError("symbol must be a non-empty string")
    if not (isinstance(s0, int | float) and math.isfinite(s0) and s0 > 0):
        raise DataError("s0 must be a finite positive number", s0=s0)
    if not isinstance(steps, int) or steps < 2:
        raise DataError("steps must be an integer ≥ 2", steps=steps)
    if not isinstance(step_ms, int) or step_ms <= 0:
        raise DataError("step_ms must be a positive integer", step_ms=step_ms)
    if not isinstance(start_ms, int) or start_ms < 0:
        raise DataError("start_ms must be a non-negative integer", start_ms=start_ms)


def _finite(**values: float) -> None:
    for name, v in values.items():
        if not (isinstance(v, int | float) and math.isfinite(v)):
            raise DataError(f"{name} must be a finite number", **{name: v})


def _from_log_increments(
    symbol: str,
    s0: float,
    inc: F64,
    *,
    step_ms: int,
    start_ms: int,
    volume: float,
    source: str,
    meta: dict[str, str],
) -> PricePath:
    """Candles from log increments of shape ``(steps, substeps)`` (see the module docstring)."""
    steps, _m = inc.shape
    level = np.log(s0) + np.cumsum(inc.ravel()).reshape(inc.shape)
    log_close = level[:, -1]
    log_open = np.concatenate(([np.log(s0)], log_close[:-1]))
    log_high = np.maximum(log_open, level.max(axis=1))
    log_low = np.minimum(log_open, level.min(axis=1))
    if not np.all(np.isfinite(level)) or level.max() > 700 or level.min() < -700:
        raise DataError("the simulated path over- or underflows; check mu, sigma and the jump sizes")
    close = np.exp(log_close)
    open_ = np.concatenate(([float(s0)], close[:-1]))  # exactly the previous close (and s0)
    return PricePath(
        symbol=symbol,
        ts_ms=start_ms + step_ms * np.arange(steps, dtype=np.int64),
        open=open_,
        high=np.maximum(np.exp(log_high), np.maximum(open_, close)),
        low=np.minimum(np.exp(log_low), np.minimum(open_, close)),
        close=close,
        volume=np.full(steps, float(volume)),
        step_ms=step_ms,
        source=source,
        meta=meta,
    )


def gbm(
    symbol: str,
    *,
    s0: float,
    mu: float,
    sigma: float,
    steps: int,
    step_ms: int,
    seed: int,
    start_ms: int = 0,
    substeps: int = 10,
    volume: float = 0.0,
) -> PricePath:
    """Geometric Brownian motion, ``dS = mu S dt + sigma S dW`` (exact log-normal steps).

    With ``h = step_ms / YEAR_MS / substeps`` years, each sub-increment of ``ln S`` is
    ``(mu − sigma²/2) h + sigma √h Z``, ``Z ~ N(0, 1)`` drawn as one ``(steps, substeps)``
    array. So one candle's close-to-close log return is ``N((mu − sigma²/2) dt, sigma² dt)``
    with ``dt = step_ms / YEAR_MS``. ``mu``/``sigma`` are annualised (e.g. 0.8 = 80 %/yr).
    ``volume`` is a constant base-asset volume put on every candle (0 by default).
    """
    _check(symbol, s0, steps, step_ms, start_ms)
    _finite(mu=mu, sigma=sigma, volume=volume)
    if sigma < 0 or volume < 0 or not isinstance(substeps, int) or substeps < 1:
        raise DataError("need sigma ≥ 0, volume ≥ 0 and an integer substeps ≥ 1")
    rng = _rng(seed)
    h = step_ms / YEAR_MS / substeps
    z = rng.standard_normal((steps, substeps))
    inc = (mu - 0.5 * sigma * sigma) * h + sigma * math.sqrt(h) * z
    meta = {"model": "gbm", "seed": str(seed), "mu": repr(mu), "sigma": repr(sigma)}
    return _from_log_increments(
        symbol, s0, inc, step_ms=step_ms, start_ms=start_ms, volume=volume, source=f"gbm(seed={seed})", meta=meta
    )


def merton(
    symbol: str,
    *,
    s0: float,
    mu: float,
    sigma: float,
    jump_intensity: float,
    jump_mean: float,
    jump_std: float,
    steps: int,
    step_ms: int,
    seed: int,
    start_ms: int = 0,
    substeps: int = 10,
    volume: float = 0.0,
) -> PricePath:
    """Merton jump diffusion with compensated drift, so ``E[S_t] = S_0 e^{mu t}``.

    ``ln S`` moves by ``(mu − λk − sigma²/2) h + sigma √h Z + Σ_{i ≤ N} Y_i`` per sub-step of
    ``h`` years, with ``N ~ Poisson(λ h)``, ``Y_i ~ N(jump_mean, jump_std²)`` (log jump sizes)
    and ``k = exp(jump_mean + jump_std²/2) − 1``. ``λ = jump_intensity`` is jumps per year.
    Given ``N`` the jump sum is drawn as ``N·jump_mean + √N·jump_std·J``, ``J ~ N(0, 1)``.
    Draw order: ``Z`` (steps × substeps), then ``N``, then ``J``. ``meta["jumps"]`` is ΣN.
    """
    _check(symbol, s0, steps, step_ms, start_ms)
    _finite(mu=mu, sigma=sigma, jump_intensity=jump_intensity, jump_mean=jump_mean, jump_std=jump_std, volume=volume)
    if sigma < 0 or jump_intensity < 0 or jump_std < 0 or volume < 0:
        raise DataError("need sigma, jump_intensity, jump_std and volume ≥ 0")
    if not isinstance(substeps, int) or substeps < 1:
        raise DataError("substeps must be an integer ≥ 1", substeps=substeps)
    rng = _rng(seed)
    h = step_ms / YEAR_MS / substeps
    k = math.expm1(jump_mean + 0.5 * jump_std * jump_std)
    z = rng.standard_normal((steps, substeps))
    n = rng.poisson(jump_intensity * h, (steps, substeps))
    j = rng.standard_normal((steps, substeps))
    jumps = n * jump_mean + np.sqrt(n) * jump_std * j
    inc = (mu - jump_intensity * k - 0.5 * sigma * sigma) * h + sigma * math.sqrt(h) * z + jumps
    meta = {"model": "merton", "seed": str(seed), "jumps": str(int(n.sum()))}
    return _from_log_increments(
        symbol, s0, inc, step_ms=step_ms, start_ms=start_ms, volume=volume, source=f"merton(seed={seed})", meta=meta
    )


# --- GARCH(1,1) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GarchParams:
    """A GARCH(1,1) fitted to a path's close-to-close log returns, in **per-step** units.

    ``r_t = mu + e_t``, ``e_t = sigma_t z_t``, ``sigma_t² = omega + alpha e_{t−1}² + beta sigma_{t−1}²``;
    ``z`` is standard normal (``dist="normal"``) or Student t with ``nu`` degrees of freedom
    scaled to unit variance (``dist="t"``). ``step_ms`` is the step the returns were measured
    on; ``std_err`` the fit's standard errors (same units) by parameter name; ``scale`` the
    factor the returns were multiplied by for the optimiser.
    """

    mu: float
    omega: float
    alpha: float
    beta: float
    nu: float | None
    dist: str
    step_ms: int
    n_obs: int = 0
    loglik: float = float("nan")
    scale: float = 1.0
    std_err: dict[str, float] = field(default_factory=dict)

    @property
    def persistence(self) -> float:
        """``alpha + beta``; the process is covariance-stationary when it is < 1."""
        return self.alpha + self.beta

    @property
    def unconditional_variance(self) -> float:
        """``omega / (1 − alpha − beta)`` per step (``inf`` if not stationary)."""
        p = self.persistence
        return self.omega / (1.0 - p) if p < 1 else math.inf


def fit_garch(path: PricePath, *, dist: Literal["normal", "t"] = "t") -> GarchParams:
    """Fit a GARCH(1,1) to ``path``'s close-to-close log returns with the ``arch`` package.

    Mean model: constant (``mean="Constant"``); volatility ``GARCH(p=1, q=1)``; innovations
    Student t by default (crypto returns are fat-tailed) or normal. The returns are multiplied
    by ``scale = 1 / sample std`` before fitting (unit variance keeps the optimiser well
    conditioned; ``arch``'s own rescaling is off) and the results scaled back: ``mu / scale``,
    ``omega / scale²``; ``alpha``, ``beta``, ``nu`` are scale-free. Needs ≥ 100 returns; a
    failed or non-converged optimisation raises :class:`DataError`.
    """
    from arch import arch_model
    from arch.utility.exceptions import ConvergenceWarning

    r = path.log_returns()
    if len(r) < 100:
        raise DataError("fit_garch needs at least 100 returns", returns=len(r))
    sd = float(np.std(r))
    if not sd > 0:
        raise DataError("fit_garch: the returns have zero variance")
    scale = 1.0 / sd
    model = arch_model(r * scale, mean="Constant", vol="GARCH", p=1, q=1, dist=dist, rescale=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # transient overflow inside the optimiser's line search
        try:
            res = model.fit(disp="off")
        except ConvergenceWarning as exc:
            raise DataError(f"fit_garch: the optimiser did not converge ({exc})") from None
    if res.convergence_flag != 0:
        raise DataError("fit_garch: the optimiser did not converge", flag=res.convergence_flag)
    p = res.params
    se = res.std_err
    units = {"mu": 1 / scale, "omega": 1 / scale**2, "alpha[1]": 1.0, "beta[1]": 1.0, "nu": 1.0}
    std_err = {k.replace("[1]", ""): float(se[k]) * u for k, u in units.items() if k in se.index}
    return GarchParams(
        mu=float(p["mu"]) / scale,
        omega=float(p["omega"]) / scale**2,
        alpha=float(p["alpha[1]"]),
        beta=float(p["beta[1]"]),
        nu=float(p["nu"]) if dist == "t" else None,
        dist=dist,
        step_ms=path.step_ms,
        n_obs=len(r),
        loglik=float(res.loglikelihood),
        scale=scale,
        std_err=std_err,
    )


def garch(
    symbol: str,
    params: GarchParams,
    *,
    s0: float,
    steps: int,
    seed: int,
    step_ms: int | None = None,
    start_ms: int = 0,
    burn: int = 500,
    volume: float = 0.0,
) -> PricePath:
    """Simulate ``steps`` candles of the GARCH(1,1) ``params`` with a seeded generator.

    ``sigma²`` starts at the unconditional variance and the first ``burn`` steps are dropped.
    Innovations: ``N(0, 1)`` or ``t_nu · √((nu − 2)/nu)`` (unit variance), drawn as one array
    of ``burn + steps`` values. Log return ``r_t = mu + sigma_t z_t``; ``step_ms`` defaults to
    ``params.step_ms`` (the parameters are per step of the data they were fitted on).
    """
    step = params.step_ms if step_ms is None else step_ms
    _check(symbol, s0, steps, step, start_ms)
    _finite(mu=params.mu, omega=params.omega, alpha=params.alpha, beta=params.beta, volume=volume)
    if params.omega <= 0 or params.alpha < 0 or params.beta < 0 or params.persistence >= 1:
        raise DataError("GARCH needs omega > 0, alpha, beta ≥ 0 and alpha + beta < 1", persistence=params.persistence)
    if params.dist == "t" and (params.nu is None or not params.nu > 2):
        raise DataError("a Student-t GARCH needs nu > 2", nu=params.nu)
    if params.dist not in ("t", "normal"):
        raise DataError("dist must be 'normal' or 't'", dist=params.dist)
    if not isinstance(burn, int) or burn < 0:
        raise DataError("burn must be a non-negative integer", burn=burn)
    rng = _rng(seed)
    n = burn + steps
    if params.dist == "t":
        assert params.nu is not None
        z = rng.standard_t(params.nu, n) * math.sqrt((params.nu - 2.0) / params.nu)
    else:
        z = rng.standard_normal(n)
    r = np.empty(n)
    var = params.unconditional_variance
    w, a, b, mu = params.omega, params.alpha, params.beta, params.mu
    zl = z.tolist()
    out = r  # plain loop: the recursion is sequential; floats in IEEE order, identical everywhere
    for t in range(n):
        e = math.sqrt(var) * zl[t]
        out[t] = mu + e
        var = w + a * e * e + b * var
    inc = r[burn:].reshape(steps, 1)
    meta = {"model": "garch", "seed": str(seed), "dist": params.dist}
    return _from_log_increments(
        symbol, s0, inc, step_ms=step, start_ms=start_ms, volume=volume, source=f"garch(seed={seed})", meta=meta
    )


# --- block bootstrap ----------------------------------------------------------------------


def block_bootstrap(
    path: PricePath,
    *,
    steps: int,
    block: int,
    seed: int,
    s0: float | None = None,
    start_ms: int | None = None,
) -> PricePath:
    """Circular block bootstrap (Politis & Romano 1992) of ``path``'s candles.

    Each historical candle ``t ≥ 1`` is kept as its shape relative to the previous close:
    ``(open_t, high_t, low_t, close_t) / close_{t−1}`` and its volume. Blocks of ``block``
    consecutive candles start at uniform indices (``rng.integers``) and wrap around the end
    (so every historical candle has the same chance), and are chained from ``s0`` (default:
    the path's first close) until ``steps`` candles exist. Every output close-to-close return
    is a historical one; real intrabar ranges and opening gaps are kept.
    """
    n = len(path) - 1
    first = float(path.close[0]) if s0 is None else s0
    t0 = int(path.ts_ms[0]) if start_ms is None else start_ms
    _check(path.symbol, first, steps, path.step_ms, t0)
    if not isinstance(block, int) or not 1 <= block <= n:
        raise DataError("block must be an integer in [1, number of returns]", block=block, returns=n)
    rng = _rng(seed)
    prev = path.close[:-1]
    ratios = np.stack([path.open[1:] / prev, path.high[1:] / prev, path.low[1:] / prev, path.close[1:] / prev])
    n_blocks = -(-steps // block)
    starts = rng.integers(0, n, n_blocks)
    idx = ((starts[:, None] + np.arange(block)[None, :]) % n).ravel()[:steps]
    rc = ratios[3, idx]
    close = first * np.cumprod(rc)
    prev_close = np.concatenate(([first], close[:-1]))
    open_ = prev_close * ratios[0, idx]
    # A historical close equal to its high (or low) can land one ulp beyond it after the two
    # products; clamp so the candle invariant holds exactly.
    high = np.maximum(prev_close * ratios[1, idx], np.maximum(open_, close))
    low = np.minimum(prev_close * ratios[2, idx], np.minimum(open_, close))
    return PricePath(
        symbol=path.symbol,
        ts_ms=t0 + path.step_ms * np.arange(steps, dtype=np.int64),
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=path.volume[1:][idx].copy(),
        step_ms=path.step_ms,
        source=f"block_bootstrap({path.source or path.symbol}, block={block}, seed={seed})",
        meta={"model": "block_bootstrap", "seed": str(seed), "block": str(block), "indices_from": "1"},
    )


# --- deterministic crashes ----------------------------------------------------------------


def crash_factor(
    t_ms: F64 | npt.NDArray[np.int64],
    *,
    drop: float,
    fall_ms: int,
    recover: float = 0.0,
    recover_ms: int = 0,
    shape: Literal["linear", "exponential"] = "linear",
) -> F64:
    """Price multiplier at ``t_ms`` milliseconds after the crash starts.

    ``1`` before the start; over ``fall_ms`` it falls to ``1 − drop`` — linearly
    (``1 − drop·t/T``) or at a constant log rate (``(1 − drop)^{t/T}``); then it regains
    ``recover`` (share of the drop) over ``recover_ms`` — linearly, or geometrically for the
    exponential shape — and stays at ``1 − drop·(1 − recover)``.
    """
    if not (isinstance(drop, int | float) and 0 < drop < 1):
        raise DataError("drop must lie strictly between 0 and 1 (a share of the price)", drop=drop)
    if not (isinstance(recover, int | float) and 0 <= recover <= 1):
        raise DataError("recover must lie in [0, 1] (a share of the drop)", recover=recover)
    if not isinstance(fall_ms, int) or fall_ms <= 0:
        raise DataError("the fall must last a positive whole number of milliseconds", fall_ms=fall_ms)
    if not isinstance(recover_ms, int) or recover_ms < 0 or (recover > 0 and recover_ms == 0):
        raise DataError("a recovery needs a positive duration", recover_ms=recover_ms)
    if shape not in ("linear", "exponential"):
        raise DataError("shape must be 'linear' or 'exponential'", shape=shape)
    t = np.asarray(t_ms, dtype=np.float64)
    bottom = 1.0 - drop
    end = 1.0 - drop * (1.0 - recover)
    u = np.clip(t / fall_ms, 0.0, 1.0)
    v = np.clip((t - fall_ms) / recover_ms, 0.0, 1.0) if recover_ms else np.zeros_like(t)
    if shape == "linear":
        fall = 1.0 - drop * u
        rise = bottom + (end - bottom) * v
    else:
        fall = np.power(bottom, u)
        rise = bottom * np.power(end / bottom, v)
    out: F64 = np.where(t <= fall_ms, fall, rise)
    return out


def shock(
    path: PricePath,
    *,
    drop: float,
    minutes: float,
    start_step: int = 0,
    recover: float = 0.0,
    recover_minutes: float = 0.0,
    shape: Literal["linear", "exponential"] = "linear",
) -> PricePath:
    """Overlay a deterministic crash on ``path`` from candle ``start_step`` (see :func:`crash_factor`).

    Candle ``i`` spans ``[ts_i, ts_i + step)``; with ``f`` the factor: ``open·f(ts_i)``,
    ``close·f(ts_i + step)``, ``high·max f`` and ``low·min f`` over the candle (the max/min of
    the ends and any turning point inside: ``f`` is monotone between them), which keeps
    ``low ≤ open, close ≤ high``. ``minutes`` may be fractional (it is rounded to whole ms).
    """
    if not isinstance(start_step, int) or not 0 <= start_step < len(path):
        raise DataError("start_step must index a candle of the path", start_step=start_step)
    _finite(minutes=minutes, recover_minutes=recover_minutes)
    fall_ms = round(minutes * 60_000)
    rec_ms = round(recover_minutes * 60_000)
    t0 = int(path.ts_ms[start_step])
    rel_open = (path.ts_ms - t0).astype(np.float64)
    rel_close = rel_open + path.step_ms

    def f(t: F64) -> F64:
        return crash_factor(t, drop=drop, fall_ms=fall_ms, recover=recover, recover_ms=rec_ms, shape=shape)

    fo, fc = f(rel_open), f(rel_close)
    fmax, fmin = np.maximum(fo, fc), np.minimum(fo, fc)
    for bp in (0.0, float(fall_ms), float(fall_ms + rec_ms)):
        inside = (rel_open < bp) & (bp < rel_close)
        if inside.any():
            fb = f(np.full(int(inside.sum()), bp))
            fmax[inside] = np.maximum(fmax[inside], fb)
            fmin[inside] = np.minimum(fmin[inside], fb)
    meta = {**path.meta, "shock": f"drop={drop} minutes={minutes} start_step={start_step} recover={recover}"}
    return PricePath(
        symbol=path.symbol,
        ts_ms=path.ts_ms.copy(),
        open=path.open * fo,
        high=path.high * fmax,
        low=path.low * fmin,
        close=path.close * fc,
        volume=path.volume.copy(),
        step_ms=path.step_ms,
        source=f"shock({path.source or path.symbol})",
        meta=meta,
    )


def crash(
    symbol: str,
    *,
    s0: float,
    drop: float,
    minutes: float,
    steps: int,
    step_ms: int = 60_000,
    start_step: int = 0,
    recover: float = 0.0,
    recover_minutes: float = 0.0,
    shape: Literal["linear", "exponential"] = "linear",
    start_ms: int = 0,
    volume: float = 0.0,
) -> PricePath:
    """A deterministic crash from a flat price ``s0``: :func:`shock` applied to a flat path.

    E.g. incidents C9: ``crash("BTCUSDT", s0=60_000, drop=0.5, minutes=1440, steps=1440)``
    (−50 % in one day) and ``crash("SOLUSDT", s0=150, drop=0.8, minutes=5, steps=60)``
    (−80 % in five minutes). Close of candle ``i`` is ``s0·f((i + 1 − start_step)·step_ms)``.
    """
    _check(symbol, s0, steps, step_ms, start_ms)
    _finite(volume=volume)
    if volume < 0:
        raise DataError("volume must be ≥ 0", volume=volume)
    flat = np.full(steps, float(s0))
    base = PricePath(
        symbol=symbol,
        ts_ms=start_ms + step_ms * np.arange(steps, dtype=np.int64),
        open=flat,
        high=flat,
        low=flat,
        close=flat,
        volume=np.full(steps, float(volume)),
        step_ms=step_ms,
        source="crash",
        meta={"model": "crash"},
    )
    out = shock(
        base,
        drop=drop,
        minutes=minutes,
        start_step=start_step,
        recover=recover,
        recover_minutes=recover_minutes,
        shape=shape,
    )
    return PricePath(
        symbol=out.symbol,
        ts_ms=out.ts_ms,
        open=out.open,
        high=out.high,
        low=out.low,
        close=out.close,
        volume=out.volume,
        step_ms=out.step_ms,
        source=f"crash(drop={drop}, minutes={minutes})",
        meta=out.meta,
    )
