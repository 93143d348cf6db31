"""Seeded synthetic paths (perpmargin.stress.synthetic): determinism, statistics, crashes."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from perpmargin.errors import DataError
from perpmargin.stress.paths import PricePath
from perpmargin.stress.scenarios import load_scenario
from perpmargin.stress.synthetic import (
    YEAR_MS,
    GarchParams,
    block_bootstrap,
    crash,
    fit_garch,
    garch,
    gbm,
    merton,
    shock,
)

MIN = 60_000
Z = 5.0  # two-sided tolerance in standard errors: a false alarm has probability ~6e-7
GARCH_TRUE = GarchParams(mu=2e-5, omega=4e-8, alpha=0.08, beta=0.9, nu=6.0, dist="t", step_ms=MIN)


def _btc() -> PricePath:
    return load_scenario("2020-03-12-btc")["BTCUSDT"]


MODELS: dict[str, Callable[[int], PricePath]] = {
    "gbm": lambda seed: gbm("X", s0=100.0, mu=0.1, sigma=0.9, steps=500, step_ms=MIN, seed=seed),
    "merton": lambda seed: merton(
        "X",
        s0=100.0,
        mu=0.0,
        sigma=0.5,
        jump_intensity=5000.0,
        jump_mean=-0.01,
        jump_std=0.02,
        steps=500,
        step_ms=MIN,
        seed=seed,
    ),
    "garch": lambda seed: garch("X", GARCH_TRUE, s0=100.0, steps=500, seed=seed),
    "bootstrap": lambda seed: block_bootstrap(_btc(), steps=500, block=20, seed=seed),
}


def _arrays(p: PricePath) -> list[np.ndarray]:
    return [p.ts_ms, p.open, p.high, p.low, p.close, p.volume]


@pytest.mark.parametrize("model", list(MODELS), ids=lambda m: f"{m} with the same seed gives identical arrays")
def test_same_seed_same_path(model: str) -> None:
    a, b = MODELS[model](11), MODELS[model](11)
    assert all(np.array_equal(x, y) for x, y in zip(_arrays(a), _arrays(b), strict=True))


@pytest.mark.parametrize("model", list(MODELS), ids=lambda m: f"{m} with another seed gives another path")
def test_different_seed_different_path(model: str) -> None:
    a, b = MODELS[model](11), MODELS[model](12)
    assert not np.array_equal(a.close, b.close)


def test_gbm_log_returns_match_their_sampling_distribution() -> None:
    mu, sigma, n, step = 0.3, 0.9, 50_000, MIN
    p = gbm("X", s0=50_000.0, mu=mu, sigma=sigma, steps=n + 1, step_ms=step, seed=3)
    r = p.log_returns()
    dt = step / YEAR_MS
    var = sigma**2 * dt
    assert abs(r.mean() - (mu - sigma**2 / 2) * dt) <= Z * math.sqrt(var / n)
    # Var of the sample variance of n normals: 2σ⁴/(n − 1).
    assert abs(r.var(ddof=1) - var) <= Z * var * math.sqrt(2 / (n - 1))
    assert p.open[0] == 50_000.0
    assert np.array_equal(p.open[1:], p.close[:-1])
    assert np.all(p.high >= np.maximum(p.open, p.close))
    assert np.all(p.low <= np.minimum(p.open, p.close))
    assert np.any(p.high > np.maximum(p.open, p.close))  # sub-steps give real intrabar ranges


def test_merton_jump_count_is_poisson_and_drift_is_compensated() -> None:
    lam, jm, js, sigma, mu, n = 20_000.0, -0.004, 0.006, 0.4, 0.5, 20_000
    p = merton(
        "X", s0=100.0, mu=mu, sigma=sigma, jump_intensity=lam, jump_mean=jm, jump_std=js, steps=n, step_ms=MIN, seed=5
    )
    dt = MIN / YEAR_MS
    expected = lam * dt * n
    assert abs(int(p.meta["jumps"]) - expected) <= Z * math.sqrt(expected)
    # E[log return] = (mu − λk − σ²/2)dt + λ·dt·jm; its variance (σ² + λ(jm² + js²))dt.
    k = math.expm1(jm + js * js / 2)
    mean = (mu - lam * k - sigma**2 / 2) * dt + lam * dt * jm
    var = (sigma**2 + lam * (jm**2 + js**2)) * dt
    r = np.diff(np.log(np.concatenate(([100.0], p.close))))
    assert abs(r.mean() - mean) <= Z * math.sqrt(var / n)


def test_zero_jump_intensity_merton_is_gbm_in_distribution_and_draws_no_jumps() -> None:
    p = merton(
        "X",
        s0=100.0,
        mu=0.1,
        sigma=0.5,
        jump_intensity=0.0,
        jump_mean=-0.1,
        jump_std=0.1,
        steps=100,
        step_ms=MIN,
        seed=1,
    )
    assert p.meta["jumps"] == "0"


@pytest.mark.parametrize(
    ("truth", "steps"),
    [
        pytest.param(
            GarchParams(mu=2e-5, omega=4e-8, alpha=0.08, beta=0.9, nu=None, dist="normal", step_ms=MIN),
            8_000,
            id="a normal GARCH fit recovers omega, alpha, beta within 5 standard errors",
        ),
        pytest.param(
            GARCH_TRUE, 3_000, id="a Student-t GARCH fit recovers omega, alpha, beta, nu within 5 standard errors"
        ),
    ],
)
def test_garch_fit_recovers_the_parameters_of_a_long_simulated_path(truth: GarchParams, steps: int) -> None:
    sim = garch("X", truth, s0=100.0, steps=steps, seed=21)
    fit = fit_garch(sim, dist="t" if truth.dist == "t" else "normal")
    names = ("omega", "alpha", "beta") + (("nu",) if truth.dist == "t" else ())
    for name in names:
        true, got = getattr(truth, name), getattr(fit, name)
        assert abs(got - true) <= Z * fit.std_err[name], (name, true, got, fit.std_err[name])
    assert fit.dist == truth.dist
    assert fit.step_ms == MIN
    assert fit.n_obs == steps - 1
    assert fit.persistence < 1


def test_garch_simulated_variance_matches_the_unconditional_variance() -> None:
    p = GarchParams(mu=0.0, omega=1e-6, alpha=0.05, beta=0.8, nu=None, dist="normal", step_ms=MIN)
    r = garch("X", p, s0=100.0, steps=40_001, seed=4).log_returns()
    # Loose bound: GARCH returns are autocorrelated in square, so allow 10 % (≫ the iid error 1 %).
    assert abs(r.var() / p.unconditional_variance - 1) < 0.10


def test_garch_fits_a_real_crash_day_and_simulates_from_it() -> None:
    path = load_scenario("2024-08-05")["BTCUSDT"]
    fit = fit_garch(path)
    assert 0 < fit.alpha < 1
    assert 0 < fit.beta < 1
    assert fit.persistence < 1
    assert fit.nu is not None
    sim = garch("BTCUSDT", fit, s0=float(path.close[0]), steps=1440, seed=2)
    assert len(sim) == 1440
    assert sim.step_ms == path.step_ms


def test_fit_garch_needs_enough_returns() -> None:
    with pytest.raises(DataError, match="at least 100 returns"):
        fit_garch(PricePath(**_short()))  # type: ignore[arg-type]


def _short() -> dict[str, object]:
    c = np.linspace(100, 101, 50)
    return {
        "symbol": "X",
        "ts_ms": MIN * np.arange(50, dtype=np.int64),
        "open": c,
        "high": c,
        "low": c,
        "close": c,
        "volume": np.ones(50),
        "step_ms": MIN,
    }


def test_block_bootstrap_uses_only_historical_candles_in_blocks() -> None:
    hist = _btc()
    block = 25
    out = block_bootstrap(hist, steps=1000, block=block, seed=9)
    n = len(hist) - 1
    prev = hist.close[:-1]
    shapes = np.stack([hist.open[1:] / prev, hist.high[1:] / prev, hist.low[1:] / prev, hist.close[1:] / prev])
    out_prev = np.concatenate(([hist.close[0]], out.close[:-1]))
    got = np.stack([out.open / out_prev, out.high / out_prev, out.low / out_prev, out.close / out_prev])
    # Every block of `block` output candles is a run of consecutive historical candles (wrapping
    # around the end): the same four shape ratios (to float rounding) and the same volumes.
    for b in range(0, 1000, block):
        g = got[:, b : b + block]
        starts = [s for s in range(n) if np.allclose(shapes[:, (s + np.arange(g.shape[1])) % n], g, rtol=1e-12, atol=0)]
        assert starts, f"block at {b} is not a run of historical candles"
        run = (starts[0] + np.arange(g.shape[1])) % n
        assert np.array_equal(out.volume[b : b + block], hist.volume[1:][run])
    assert out.ts_ms[0] == hist.ts_ms[0]
    assert len(out) == 1000


def test_block_bootstrap_of_a_block_as_long_as_history_is_a_rotation() -> None:
    hist = _btc()
    n = len(hist) - 1
    out = block_bootstrap(hist, steps=n, block=n, seed=1)
    r_hist = np.sort(np.diff(np.log(hist.close)))
    r_out = np.sort(np.diff(np.log(np.concatenate(([hist.close[0]], out.close)))))
    assert np.allclose(r_hist, r_out, rtol=0, atol=1e-12)


# --- deterministic crashes --------------------------------------------------------------------


def test_linear_crash_reaches_its_bottom_and_recovers_the_stated_share() -> None:
    s0, drop, rec = 60_000.0, 0.5, 0.3
    p = crash("BTCUSDT", s0=s0, drop=drop, minutes=1440, steps=1500, recover=rec, recover_minutes=30)
    assert p.close[1439] == pytest.approx(s0 * (1 - drop), rel=1e-12)  # close of minute 1440
    assert p.close[719] == pytest.approx(s0 * (1 - drop / 2), rel=1e-12)  # halfway, linear
    assert p.low.min() == pytest.approx(s0 * (1 - drop), rel=1e-12)
    assert p.close[-1] == pytest.approx(s0 * (1 - drop * (1 - rec)), rel=1e-12)
    assert np.all(np.diff(p.close[:1440]) < 0)


def test_exponential_crash_falls_at_a_constant_log_rate_after_its_start() -> None:
    p = crash("SOLUSDT", s0=150.0, drop=0.8, minutes=5, steps=20, start_step=3, shape="exponential")
    r = np.diff(np.log(p.close))
    assert np.all(p.close[:3] == 150.0)
    assert np.allclose(r[2:7], math.log(0.2) / 5, rtol=1e-12)
    assert p.close[-1] == pytest.approx(30.0, rel=1e-12)


def test_a_bottom_inside_a_candle_is_the_candle_low() -> None:
    # Fall over 2.5 minutes then full recovery over 2.5: the bottom lies inside candle 2.
    p = crash("X", s0=100.0, drop=0.5, minutes=2.5, steps=8, recover=1.0, recover_minutes=2.5)
    assert p.low[2] == pytest.approx(50.0, rel=1e-12)
    assert p.open[2] > 50.0
    assert p.close[2] > 50.0


def test_shock_on_a_real_path_keeps_candles_before_its_start() -> None:
    path = _btc()
    out = shock(path, drop=0.3, minutes=10, start_step=100)
    for col in ("open", "high", "low", "close"):
        assert np.array_equal(getattr(out, col)[:100], getattr(path, col)[:100])
    assert out.close[109] == pytest.approx(path.close[109] * 0.7, rel=1e-12)
    assert np.all(out.close[110:] == pytest.approx(path.close[110:] * 0.7, rel=1e-12))


BAD: list[object] = [
    pytest.param(
        lambda: gbm("X", s0=-1.0, mu=0, sigma=0.5, steps=10, step_ms=MIN, seed=1), id="a negative s0 is refused"
    ),
    pytest.param(
        lambda: gbm("X", s0=1.0, mu=0, sigma=-0.5, steps=10, step_ms=MIN, seed=1), id="a negative sigma is refused"
    ),
    pytest.param(
        lambda: gbm("X", s0=1.0, mu=0, sigma=0.5, steps=1, step_ms=MIN, seed=1), id="fewer than 2 steps are refused"
    ),
    pytest.param(lambda: gbm("X", s0=1.0, mu=0, sigma=0.5, steps=10, step_ms=0, seed=1), id="a zero step is refused"),
    pytest.param(
        lambda: gbm("X", s0=1.0, mu=0, sigma=0.5, steps=10, step_ms=MIN, seed=-1), id="a negative seed is refused"
    ),
    pytest.param(
        lambda: gbm("X", s0=1.0, mu=float("nan"), sigma=0.5, steps=10, step_ms=MIN, seed=1), id="a NaN drift is refused"
    ),
    pytest.param(
        lambda: gbm("X", s0=1.0, mu=0, sigma=1e6, steps=10, step_ms=MIN, seed=1), id="an overflowing path is refused"
    ),
    pytest.param(
        lambda: merton(
            "X", s0=1.0, mu=0, sigma=0.1, jump_intensity=-1, jump_mean=0, jump_std=0.1, steps=10, step_ms=MIN, seed=1
        ),
        id="a negative jump intensity is refused",
    ),
    pytest.param(
        lambda: garch("X", GarchParams(0, 1e-6, 0.5, 0.6, None, "normal", MIN), s0=1.0, steps=10, seed=1),
        id="a non-stationary GARCH is refused",
    ),
    pytest.param(
        lambda: garch("X", GarchParams(0, 1e-6, 0.1, 0.8, 2.0, "t", MIN), s0=1.0, steps=10, seed=1),
        id="a Student t with nu ≤ 2 is refused",
    ),
    pytest.param(lambda: block_bootstrap(_btc(), steps=10, block=0, seed=1), id="a zero block is refused"),
    pytest.param(
        lambda: block_bootstrap(_btc(), steps=10, block=10**6, seed=1), id="a block longer than history is refused"
    ),
    pytest.param(lambda: crash("X", s0=1.0, drop=1.0, minutes=5, steps=10), id="a 100 % drop is refused"),
    pytest.param(lambda: crash("X", s0=1.0, drop=0.5, minutes=0, steps=10), id="an instant fall is refused"),
    pytest.param(
        lambda: crash("X", s0=1.0, drop=0.5, minutes=5, steps=10, recover=0.5),
        id="a recovery without a duration is refused",
    ),
    pytest.param(
        lambda: crash("X", s0=1.0, drop=0.5, minutes=5, steps=10, recover=1.5, recover_minutes=5),
        id="recovering more than the drop is refused",
    ),
    pytest.param(
        lambda: shock(_btc(), drop=0.5, minutes=5, start_step=10**6), id="a shock after the path ends is refused"
    ),
]


@pytest.mark.parametrize("call", BAD)
def test_bad_model_input_raises_data_error(call: Callable[[], object]) -> None:
    with pytest.raises(DataError):
        call()


@given(
    drop=st.floats(0.01, 0.95),
    minutes=st.floats(0.5, 300),
    start=st.integers(0, 400),
    recover=st.floats(0, 1),
    recover_minutes=st.floats(1, 200),
    shape=st.sampled_from(["linear", "exponential"]),
)
def test_shock_keeps_every_candle_valid_and_ends_at_the_stated_level(
    drop: float, minutes: float, start: int, recover: float, recover_minutes: float, shape: str
) -> None:
    path = _BTC
    out = shock(
        path,
        drop=drop,
        minutes=minutes,
        start_step=start,
        recover=recover,
        recover_minutes=recover_minutes,
        shape=shape,  # type: ignore[arg-type]
    )  # PricePath's own checks: low ≤ open, close ≤ high, prices > 0
    assert np.array_equal(out.close[:start], path.close[:start])
    end_ms = round(minutes * 60_000) + round(recover_minutes * 60_000)
    done = (path.ts_ms + MIN - path.ts_ms[start]) >= end_ms
    assert np.allclose(out.close[done], path.close[done] * (1 - drop * (1 - recover)), rtol=1e-9)
    assert np.all(out.low <= path.low)


_BTC = load_scenario("2020-03-12-btc")["BTCUSDT"]
