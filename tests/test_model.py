"""Tests of the stepwise-EM Gaussian mixture (:mod:`streamdetect.model`) and its river adapter."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from scipy.optimize import linear_sum_assignment

from streamdetect.model import Explanation, NotFittedError, StepwiseGMM

# A known 3-component mixture in 2-D (well separated, correlated covariances).
WEIGHTS = np.array([0.5, 0.3, 0.2])
MEANS = np.array([[0.0, 0.0], [6.0, 5.0], [-5.0, 7.0]])
COVS = np.array([[[1.0, 0.3], [0.3, 1.0]], [[0.5, 0.0], [0.0, 2.0]], [[1.5, -0.4], [-0.4, 0.8]]])
CHOLS = np.linalg.cholesky(COVS)


def sample(n: int, rng: np.random.Generator, shift: Any = 0.0) -> np.ndarray:
    z = rng.choice(3, size=n, p=WEIGHTS)
    return MEANS[z] + shift + np.einsum("nij,nj->ni", CHOLS[z], rng.normal(size=(n, 2)))


def true_log_likelihood(X: np.ndarray, shift: Any = 0.0) -> np.ndarray:
    """log p(x) under the generating mixture (shifted by ``shift``)."""
    diff = X[:, None, :] - (MEANS + shift)[None]
    prec = np.linalg.inv(COVS)
    maha = np.einsum("nki,kij,nkj->nk", diff, prec, diff)
    logdet = np.linalg.slogdet(COVS)[1]
    log_joint = np.log(WEIGHTS) - 0.5 * (2 * np.log(2 * np.pi) + logdet + maha)
    top = log_joint.max(axis=1)
    return np.log(np.exp(log_joint - top[:, None]).sum(axis=1)) + top


def match(model: StepwiseGMM, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(model rows, true rows) of the Hungarian matching of the component means."""
    cost = ((model.means_[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
    return linear_sum_assignment(cost)


def assert_healthy(model: StepwiseGMM) -> None:
    """Finite parameters, weights summing to one, symmetric positive-definite covariances."""
    assert np.isfinite(model.weights_).all() and np.isfinite(model.means_).all()
    assert model.weights_.sum() == pytest.approx(1.0)
    cov = model.covariances_
    assert np.isfinite(cov).all()
    np.testing.assert_allclose(cov, cov.transpose(0, 2, 1), rtol=1e-12, atol=0)
    for c in cov:
        assert np.linalg.eigvalsh(c).min() > 0
        np.linalg.cholesky(c)  # raises if not positive definite


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return sample(6000, np.random.default_rng(0))


# ----------------------------------------------------------------------------- batch fit
def test_fit_matches_sklearn_log_likelihood(data: np.ndarray) -> None:
    from sklearn.mixture import GaussianMixture

    model = StepwiseGMM(n_components=3, n_init=3, seed=0).fit(data)
    ref = GaussianMixture(3, covariance_type="full", n_init=3, random_state=0).fit(data)
    ours, theirs = model.score(data), ref.score(data)
    assert abs(ours - theirs) <= 0.005 * abs(theirs)
    assert model.mean_log_likelihood_ == pytest.approx(ours)
    # the per-row log-likelihoods agree too, not just their mean
    np.testing.assert_allclose(model.score_samples(data[:500]), ref.score_samples(data[:500]), atol=0.02)
    assert_healthy(model)


def test_fit_matches_sklearn_on_offset_scaled_values(data: np.ndarray) -> None:
    # values of order 1e4 (the model standardises internally; its reg_covar is in those units)
    from sklearn.mixture import GaussianMixture

    X = data * 3.0 + 1e4
    model = StepwiseGMM(n_components=3, seed=1).fit(X)
    ref = GaussianMixture(3, covariance_type="full", n_init=3, random_state=1).fit(X)
    assert abs(model.score(X) - ref.score(X)) <= 0.005 * abs(ref.score(X))


def test_batch_em_steps_on_outer_products_equal_the_centred_steps(data: np.ndarray) -> None:
    # Batch EM reads its fixed batch through the rows' outer products; the stepwise path uses the
    # centred forms. Both must give the same log-probabilities and statistics (rows standardised,
    # as the fit standardises the warm-up, with some far from the centre).
    from streamdetect.model import _em

    rng = np.random.default_rng(4)
    X = np.vstack([data[:700], sample(50, rng, shift=30.0)])
    ZT = ((X - X.mean(axis=0)) / X.std(axis=0)).T
    resp = rng.dirichlet(np.ones(3), size=len(X)).T * rng.uniform(0.5, 2.0, size=len(X))
    batch = _em._outer_products(ZT)
    centred = _em._estimate_statistics(ZT, resp)
    expanded = _em._statistics_of_products_moments(batch, resp @ batch.stack.T)
    for a, b in zip(expanded, centred, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    derived = _em._m_step(centred, reg_covar=1e-6)
    ZT1 = np.vstack([ZT, np.ones(len(X))])
    np.testing.assert_allclose(
        _em._coefficients(batch, derived) @ batch.stack,
        _em._estimate_weighted_log_prob(ZT1, derived),
        rtol=1e-10,
        atol=1e-9,
    )


def _compiled_coefficients(batch: Any, stats: Any, reg_covar: float) -> np.ndarray | None:
    """The compiled ``coefficients`` of the M-step of ``stats`` (None where it gives up)."""
    from streamdetect.model import _em

    coef = np.empty((len(stats.s0), batch.stack.shape[0]))
    reg = _em._diagonal(reg_covar, stats.mean.shape[1])
    ok = _em._em_kernels.coefficients(stats.s0, stats.mean, stats.scatter, reg, *batch.pairs, batch.doubled, coef)
    return coef if ok else None


def test_compiled_m_step_gives_numpys_parameters_and_leaves_repairs_to_it(data: np.ndarray) -> None:
    from streamdetect.model import _em

    rng = np.random.default_rng(5)
    ZT = ((data - data.mean(axis=0)) / data.std(axis=0)).T[:, :800]
    batch = _em._outer_products(ZT)
    stats = _em._estimate_statistics(ZT, rng.dirichlet(np.ones(4), size=ZT.shape[1]).T)
    np.testing.assert_allclose(
        _compiled_coefficients(batch, stats, 1e-6),  # type: ignore[arg-type]
        _em._coefficients(batch, _em._m_step_numpy(stats, 1e-6)),
        rtol=1e-12,
        atol=1e-12,
    )
    compiled, reference = _em._m_step(stats, 1e-6, 0.5), _em._m_step_numpy(stats, 1e-6, 0.5)
    for name in ("log_weights", "means", "covariances", "prec_chol", "log_det", "mean_prec", "proj", "const"):
        np.testing.assert_allclose(getattr(compiled, name), getattr(reference, name), rtol=1e-12, atol=1e-12)
    # A component on a line (singular covariance, no regularisation): numpy's M-step repairs it.
    flat = stats._replace(scatter=stats.scatter.copy())
    flat.scatter[1] = stats.s0[1] * np.outer([1.0, 2.0], [1.0, 2.0])
    assert _compiled_coefficients(batch, flat, 0.0) is None
    assert np.isfinite(_em._coefficients(batch, _em._m_step_numpy(flat, 0.0))).all()
    assert _em._m_step(flat, 0.0).repaired[1]  # the compiled M-step hands the repair to numpy


def test_coefficients_of_moments_are_those_of_their_statistics_to_the_bit(data: np.ndarray) -> None:
    # Batch EM's iterations go from the responsibilities' moments to the next coefficients in one
    # compiled call: the same numbers, bit for bit, as forming the statistics with numpy first
    # (a fit's chosen K and EM path must not move), including a component with no mass.
    from streamdetect.model import _em

    rng = np.random.default_rng(6)
    ZT = ((data - data.mean(axis=0)) / data.std(axis=0)).T[:, :900]
    batch = _em._outer_products(ZT)
    resp = rng.dirichlet(np.ones(4), size=ZT.shape[1]).T * rng.uniform(0.5, 2.0, size=ZT.shape[1])
    resp[2] = 0.0
    moments = resp @ batch.stack.T
    stats = _em._statistics_of_products_moments(batch, moments)
    np.testing.assert_array_equal(
        _em._coefficients_of_moments(batch, moments, 1e-6), _compiled_coefficients(batch, stats, 1e-6)
    )
    # Two rows of ones (all the mass on one point): no covariance without regularisation, so the
    # compiled call gives up and numpy's M-step repairs it, as for the statistics.
    point = np.ones((2, 50))
    one = _em._outer_products(point)
    point_moments = np.ones((1, 50)) @ one.stack.T
    repaired = _em._coefficients_of_moments(one, point_moments, 0.0)
    assert np.isfinite(repaired).all()
    point_stats = _em._statistics_of_products_moments(one, point_moments)
    assert _compiled_coefficients(one, point_stats, 0.0) is None
    np.testing.assert_array_equal(repaired, _em._coefficients(one, _em._m_step_numpy(point_stats, 0.0)))


def test_auto_chooses_three_components_by_bic(data: np.ndarray) -> None:
    model = StepwiseGMM(n_components="auto", max_components=6, seed=0).fit(data)
    assert model.n_components_ == 3
    assert set(model.bic_) == {1, 2, 3, 4, 5, 6}
    assert min(model.bic_, key=model.bic_.__getitem__) in (3, 4)
    # one blob: one component
    blob = np.random.default_rng(3).normal(size=(3000, 3))
    assert StepwiseGMM(n_components="auto", seed=0).fit(blob).n_components_ == 1


def test_warmup_through_partial_fit(data: np.ndarray) -> None:
    model = StepwiseGMM(n_components=3, warmup=1000, seed=0)
    with pytest.raises(NotFittedError, match="warm-up"):
        model.anomaly_score(data[:5])
    assert np.isnan(model.partial_fit(data[:600])).all()
    assert not model.is_fitted and model.n_buffered_ == 600
    assert np.isnan(model.partial_fit(data[600:1000])).all()  # completes the warm-up: batch fit
    assert model.is_fitted and model.n_updates_ == 0
    nll = model.partial_fit(data[1000:1500])
    assert np.isfinite(nll).all() and model.n_updates_ == 1


# ----------------------------------------------------------------------------- stepwise learning
def test_stepwise_recovers_known_mixture_from_a_long_stream() -> None:
    rng = np.random.default_rng(42)
    model = StepwiseGMM(n_components=3, warmup=2000, seed=0)
    n = 0
    while n < 120_000:
        model.partial_fit(sample(1000, rng))
        n += 1000
    assert model.n_updates_ == 118 and model.n_samples_seen_ == 120_000
    rows, cols = match(model, MEANS)
    assert np.abs(model.weights_[rows] - WEIGHTS[cols]).max() < 0.02
    sd = np.sqrt(np.diagonal(COVS, axis1=1, axis2=2))[cols]
    assert (np.abs(model.means_[rows] - MEANS[cols]) / sd).max() < 0.1
    np.testing.assert_allclose(model.covariances_[rows], COVS[cols], atol=0.1)


def test_partial_fit_returns_pre_update_nll(data: np.ndarray) -> None:
    model = StepwiseGMM(n_components=3, seed=0).fit(data[:3000])
    batch = data[3000:3500]
    before = model.anomaly_score(batch)
    clone = StepwiseGMM.from_state(model.to_state())
    np.testing.assert_array_equal(model.partial_fit(batch), before)  # reuses the scored E-step
    np.testing.assert_array_equal(clone.partial_fit(batch), before)  # computes it again: same bits
    assert clone.to_state() == model.to_state()
    assert not np.array_equal(model.anomaly_score(batch), before)  # the model has moved


def test_sample_weight_zero_excludes_rows(data: np.ndarray) -> None:
    a = StepwiseGMM(n_components=3, seed=0).fit(data[:3000])
    b = StepwiseGMM.from_state(a.to_state())
    batch = data[3000:3500]
    junk = np.full((50, 2), 40.0)
    a.partial_fit(batch)
    w = np.r_[np.ones(len(batch)), np.zeros(len(junk))]
    nll = b.partial_fit(np.vstack([batch, junk]), sample_weight=w)
    assert nll[-50:].min() > nll[:-50].max()  # the junk is still scored
    np.testing.assert_allclose(b.means_, a.means_, rtol=1e-12)
    with pytest.raises(ValueError, match="sample_weight"):
        b.partial_fit(batch, sample_weight=-np.ones(len(batch)))


def _recovery_batches(step_floor: float, boost: float | None = None) -> tuple[int, np.ndarray]:
    """Batches until the pre-update batch mean log-likelihood is back near its optimum after a shift.

    The stream shifts every cluster by (2, -2) (about 2 sd). ``step_exponent=1`` makes the decaying
    step ``1 / (t + t0)`` fall well below the floor before the shift (about 1/200), so after it the
    floor sets the pace. Recovered: the mean of 5 consecutive batches within 0.1 nats of the mean
    log-likelihood of the *true* post-shift mixture on the same batches.
    """
    rng = np.random.default_rng(7)
    model = StepwiseGMM(n_components=3, warmup=2000, step_exponent=1.0, step_floor=step_floor, seed=0)
    for _ in range(200):
        model.partial_fit(sample(500, rng))
    shift = np.array([2.0, -2.0])
    gaps = []
    if boost is not None:
        model.boost(boost, 20.0)
    for _ in range(250):
        batch = sample(500, rng, shift)
        ll = -model.partial_fit(batch)
        gaps.append(true_log_likelihood(batch, shift).mean() - ll.mean())
        assert_healthy(model)
    gap = np.convolve(np.array(gaps), np.ones(5) / 5, mode="valid")
    recovered = np.flatnonzero(gap < 0.1)
    return (int(recovered[0]) + 5 if len(recovered) else 10**9), gap


def test_step_floor_bounds_recovery_after_abrupt_shift() -> None:
    fast, gap_fast = _recovery_batches(step_floor=0.05)
    slow, gap_slow = _recovery_batches(step_floor=0.005)
    assert gap_fast[0] > 1.0  # the shift really hurt: more than a nat per point at first
    assert fast <= 120  # bounded by the floor: memory ~ 1 / 0.05 = 20 batches
    assert slow > 2 * fast  # a lower floor recovers much slower
    assert gap_slow[fast] > 0.3
    # it stays recovered (no collapse or oscillation afterwards)
    assert gap_fast[fast:].max() < 0.25
    # boost() (what the detector does on score drift) speeds the low-floor model up
    boosted, _ = _recovery_batches(step_floor=0.005, boost=10.0)
    assert boosted < slow


# ----------------------------------------------------------------------------- degenerate inputs
@pytest.mark.parametrize(
    "case",
    ["constant_feature", "duplicated_rows", "huge_values", "one_point", "integer_grid", "tiny_spread"],
)
def test_degenerate_inputs_stay_finite_and_positive_definite(case: str) -> None:
    rng = np.random.default_rng(5)
    base = sample(3000, rng)
    if case == "constant_feature":
        X = np.column_stack([base, np.full(len(base), 7.0)])
    elif case == "duplicated_rows":
        X = np.repeat(base[:300], 10, axis=0)
    elif case == "huge_values":
        X = base * 1e9 + 1e12
    elif case == "one_point":
        X = np.tile([[3.0, -1.0, 1e6]], (3000, 1))
    elif case == "integer_grid":
        X = np.round(np.abs(base)).clip(0, 3)  # a handful of distinct values per feature
    else:
        X = 1.0 + base * 1e-10
    model = StepwiseGMM(n_components=3, warmup=1000, seed=0)
    for i in range(0, len(X), 250):
        nll = model.partial_fit(X[i : i + 250])
        if model.n_updates_:
            assert np.isfinite(nll).all()
    assert model.is_fitted
    assert_healthy(model)
    assert np.isfinite(model.anomaly_score(X)).all()
    assert np.isfinite(model.mean_log_likelihood_)
    far = X[:3] + 10 * np.abs(X[:3]) + 1.0
    assert np.isfinite(model.anomaly_score(far)).all()
    expl = model.explain(X[:5])
    assert np.isfinite(expl.z).all() and np.isfinite(expl.expected).all()
    if case == "one_point":
        assert model.n_components_ == 1  # one distinct row: one component, not three copies
        assert model.means_[0].tolist() == [3.0, -1.0, 1e6]


def test_huge_values_give_the_same_model_as_standard_units() -> None:
    rng = np.random.default_rng(8)
    X = sample(4000, rng)
    small = StepwiseGMM(n_components=3, seed=0).fit(X)
    big = StepwiseGMM(n_components=3, seed=0).fit(X * 1e9 + 1e12)
    np.testing.assert_allclose(np.sort(big.weights_), np.sort(small.weights_), atol=1e-6)
    # log p changes by exactly the Jacobian, -d log(1e9)
    np.testing.assert_allclose(big.score(X * 1e9 + 1e12), small.score(X) - 2 * np.log(1e9), rtol=1e-6)


def test_non_finite_rows_are_scored_nan_and_not_learned(data: np.ndarray) -> None:
    model = StepwiseGMM(n_components=3, seed=0).fit(data[:3000])
    twin = StepwiseGMM.from_state(model.to_state())
    batch = data[3000:3100].copy()
    bad = batch.copy()
    bad[[3, 50], 0] = [np.nan, np.inf]
    nll = model.partial_fit(bad)
    assert np.isnan(nll[[3, 50]]).all() and np.isfinite(np.delete(nll, [3, 50])).all()
    twin.partial_fit(np.delete(batch, [3, 50], axis=0))
    np.testing.assert_allclose(model.means_, twin.means_, rtol=1e-12)
    assert model.predict(bad)[3] == -1 and np.isnan(model.score_samples(bad)[50])
    with pytest.raises(ValueError, match="features"):
        model.partial_fit(np.ones((4, 3)))


def test_dead_component_is_reseeded() -> None:
    rng = np.random.default_rng(11)
    model = StepwiseGMM(n_components=3, warmup=3000, step_floor=0.2, seed=0)
    model.partial_fit(sample(3000, rng))
    assert model.n_reseeds_ == 0
    # only the first cluster from now on: the other two components starve
    for _ in range(60):
        z = rng.normal(size=(500, 2)) @ CHOLS[0].T + MEANS[0]
        model.partial_fit(z)
        assert_healthy(model)
    assert model.n_reseeds_ >= 1
    assert model.weights_.min() > 1e-3 / 2  # re-seeded components are alive again
    assert len(model.weights_) == 3


# ----------------------------------------------------------------------------- explain, boost
def test_explain_points_at_the_deviating_feature(data: np.ndarray) -> None:
    model = StepwiseGMM(n_components=3, seed=0).fit(data)
    x = np.array([[6.0, 5.0 + 12.0], [0.0, 0.0]])
    e = model.explain(x)
    assert isinstance(e, Explanation)
    assert e.component.tolist() == model.predict(x).tolist()
    np.testing.assert_array_equal(e.expected, model.means_[e.component])
    k = int(e.component[0])
    assert model.means_[k] == pytest.approx(MEANS[1], abs=0.2)
    sd = np.sqrt(np.diagonal(model.covariances_[k]))
    np.testing.assert_allclose(e.z[0], (x[0] - model.means_[k]) / sd)
    assert abs(e.z[0, 1]) > 5 > abs(e.z[0, 0])
    assert np.abs(e.z[1]).max() < 0.5


def test_boost_raises_and_decays_the_step_floor(data: np.ndarray) -> None:
    model = StepwiseGMM(n_components=3, step_floor=0.01, seed=0).fit(data)
    batches = sample(1000, np.random.default_rng(2)).reshape(4, 250, 2)
    model.partial_fit(batches[0])
    assert model.step_ == pytest.approx(250 / 6000)  # t0 makes the first step weigh m / N_warmup
    model.boost(10.0, half_life=2.0)
    assert model.step_floor_ == pytest.approx(0.1)
    model.partial_fit(batches[1])
    assert model.step_ == pytest.approx(0.1)
    model.partial_fit(batches[2])  # one update later: the extra has decayed by 0.5 ** (1 / 2)
    assert model.step_ == pytest.approx(0.01 * (1 + 9 * 0.5**0.5))
    model.boost(2.0, half_life=2.0)  # weaker than the boost in progress: ignored
    model.partial_fit(batches[3])
    assert model.step_ == pytest.approx(0.01 * (1 + 9 * 0.5))
    with pytest.raises(ValueError):
        model.boost(0.5, 1.0)


# ----------------------------------------------------------------------------- state and merge
def _plain(obj: Any) -> bool:
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_plain(v) for v in obj)
    return obj is None or isinstance(obj, bool | int | float | str)


def test_state_round_trips_bit_exactly_through_orjson(data: np.ndarray) -> None:
    model = StepwiseGMM(n_components="auto", warmup=1500, seed=3)
    model.partial_fit(data[:1500])
    model.partial_fit(data[1500:2500])
    state = model.to_state()
    assert state["format"] == "streamdetect.StepwiseGMM" and state["version"] == 1
    assert _plain(state)
    copy = StepwiseGMM.from_state(orjson.loads(orjson.dumps(state)))
    assert copy.to_state() == state
    probe = data[2500:3000]
    np.testing.assert_array_equal(copy.anomaly_score(probe), model.anomaly_score(probe))
    # continued learning (including a re-seed's random draw) stays identical on both copies
    rng = np.random.default_rng(0)
    for i in range(2500, 6000, 500):
        batch = data[i : i + 500]
        if i == 4000:
            batch = batch + rng.normal(0, 30, batch.shape)
        np.testing.assert_array_equal(copy.partial_fit(batch), model.partial_fit(batch))
    np.testing.assert_array_equal(copy.anomaly_score(probe), model.anomaly_score(probe))
    assert orjson.dumps(copy.to_state()) == orjson.dumps(model.to_state())


def test_state_of_a_model_still_in_warmup_round_trips(data: np.ndarray) -> None:
    model = StepwiseGMM(n_components=3, warmup=1000, learn_batch=64, seed=0)
    model.partial_fit(data[:300])
    for row in data[300:340]:
        model.learn_one({"x": float(row[0]), "y": float(row[1])})
    copy = StepwiseGMM.from_state(orjson.loads(orjson.dumps(model.to_state())))
    assert not copy.is_fitted and copy.n_buffered_ == 300
    for m in (model, copy):
        m.partial_fit(data[340:1200])
    np.testing.assert_array_equal(copy.anomaly_score(data[:100]), model.anomaly_score(data[:100]))
    with pytest.raises(ValueError, match="unsupported model state"):
        StepwiseGMM.from_state({**model.to_state(), "version": 99})


def test_merge_adds_sufficient_statistics(data: np.ndarray) -> None:
    a = StepwiseGMM(n_components=3, reg_covar=0.0, seed=0).fit(data[:3000])
    b = StepwiseGMM(n_components=3, reg_covar=0.0, seed=1).fit(data[3000:] + 0.2)
    merged = a.merge(b, weight=0.25)
    rows, cols = linear_sum_assignment(((a.means_[:, None] - b.means_[None]) ** 2).sum(axis=2))
    perm = cols[np.argsort(rows)]

    def moments(m: StepwiseGMM, order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w, mu, cov = m.weights_[order], m.means_[order], m.covariances_[order]
        return w, w[:, None] * mu, w[:, None, None] * (cov + mu[:, :, None] * mu[:, None, :])

    sa, sb = moments(a, np.arange(3)), moments(b, perm)
    s0, s1, s2 = (0.75 * x + 0.25 * y for x, y in zip(sa, sb, strict=True))
    np.testing.assert_allclose(merged.weights_, s0, rtol=1e-10)
    mu = s1 / s0[:, None]
    np.testing.assert_allclose(merged.means_, mu, rtol=1e-9, atol=1e-12)
    cov = s2 / s0[:, None, None] - mu[:, :, None] * mu[:, None, :]
    np.testing.assert_allclose(merged.covariances_, cov, rtol=1e-7, atol=1e-9)
    assert merged.n_samples_seen_ == a.n_samples_seen_ + b.n_samples_seen_
    # the default weight is the sample share; models with different K become one bigger mixture
    even = a.merge(b)
    assert even.weights_.sum() == pytest.approx(1.0)
    c = StepwiseGMM(n_components=2, seed=0).fit(data[:2000])
    assert a.merge(c).n_components_ == 5
    with pytest.raises(ValueError, match="features"):
        a.merge(StepwiseGMM(n_components=1).fit(np.ones((10, 3)) + np.arange(30).reshape(10, 3)))


def test_merge_of_shards_scores_like_a_model_of_all_data(data: np.ndarray) -> None:
    a = StepwiseGMM(n_components=3, seed=0).fit(data[:3000])
    b = StepwiseGMM(n_components=3, seed=0).fit(data[3000:])
    merged = a.merge(b)
    whole = StepwiseGMM(n_components=3, seed=0).fit(data)
    assert merged.score(data) == pytest.approx(whole.score(data), abs=0.01)
    # and the merged model keeps learning
    merged.partial_fit(sample(500, np.random.default_rng(1)))
    assert_healthy(merged)


# ----------------------------------------------------------------------------- river-style API
def test_learn_one_score_one_learn_many(data: np.ndarray) -> None:
    model = StepwiseGMM(n_components=3, warmup=500, learn_batch=100, seed=0)
    for row in data[:1000]:
        model.learn_one({"x": float(row[0]), "y": float(row[1])})
    assert model.is_fitted and model.n_updates_ == 5  # 500 warm-up, then 5 batches of 100
    assert model.feature_names_in_ == ["x", "y"]
    normal, odd = {"y": 0.0, "x": 0.0}, {"x": 0.0, "y": 30.0}  # key order does not matter
    assert model.score_one(odd) > model.score_one(normal)
    assert model.score_one(normal) == pytest.approx(float(model.anomaly_score(np.zeros((1, 2)))[0]))
    model.learn_many(data[1000:1500])
    assert model.n_updates_ == 6
    with pytest.raises(KeyError, match="y"):
        model.score_one({"x": 1.0})
    fresh = StepwiseGMM(n_components=1)
    with pytest.raises(NotFittedError):
        fresh.score_one({"x": 1.0})


class _SyntheticCreditCard:
    """Stands in for ``river.datasets.CreditCard`` (a 150 MB download) in river's checks.

    Same shape: 30 numeric features (``Time``, ``V1``..``V28``, ``Amount``) and a rare positive class.
    """

    def take(self, n: int) -> Any:
        rng = np.random.default_rng(0)
        names = ["Time", *(f"V{i}" for i in range(1, 29)), "Amount"]
        for i in range(n):
            fraud = bool(rng.random() < 0.02)
            v = rng.normal(0.0, 1.0, 28) + (4.0 if fraud else 0.0)
            amount = float(rng.lognormal(3.0, 1.0)) * (10.0 if fraud else 1.0)
            yield {**dict(zip(names, [float(i), *v.tolist(), amount], strict=True))}, fraud


def test_river_adapter_passes_check_estimator(monkeypatch: pytest.MonkeyPatch) -> None:
    from river import base, checks, datasets

    from streamdetect.model.river_adapter import RiverGMM

    monkeypatch.setattr(datasets, "CreditCard", _SyntheticCreditCard)
    for params in RiverGMM._unit_test_params():
        model = RiverGMM(**params)
        assert isinstance(model, base.AnomalyDetector)
        names = [check.__name__ for check in checks.yield_checks(model)]
        assert "check_roc_auc" in names and "check_pickling" in names
        checks.check_estimator(model)


def test_river_adapter_scores_anomalies_higher() -> None:
    from streamdetect.model.river_adapter import RiverGMM

    rng = np.random.default_rng(4)
    det = RiverGMM(n_components=3, warmup=500, learn_batch=50, seed=0)
    assert det.score_one({"a": 1.0, "b": 2.0}) == 0.0  # before the warm-up fit
    for row in sample(2000, rng):
        det.learn_one({"a": float(row[0]), "b": float(row[1])})
    assert det.model.is_fitted and det.model.n_components_ == 3
    assert det.score_one({"a": 0.0, "b": 20.0}) > det.score_one({"a": 0.0, "b": 0.0}) + 10
    assert np.isfinite(det.score_one({"a": 0.0}))  # a missing feature is imputed


# ----------------------------------------------------------------------------- docs
def test_docs_model_example_runs() -> None:
    text = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_constructor_validation() -> None:
    for kwargs in (
        {"n_components": 0},
        {"n_components": "many"},
        {"step_exponent": 0.5},
        {"step_floor": 0.0},
        {"reg_covar": -1.0},
        {"min_variance": -0.1},
        {"min_variance": [0.1, float("nan")]},
        {"warmup": 1},
    ):
        with pytest.raises(ValueError):
            StepwiseGMM(**kwargs)


def test_state_of_a_model_that_has_seen_nothing_round_trips():
    # The detector checkpoints its model before the warm-up fit: no data, no width yet.
    m = StepwiseGMM(n_components=2, seed=1)
    clone = StepwiseGMM.from_state(orjson.loads(orjson.dumps(m.to_state())))
    assert not clone.is_fitted and clone.get_params() == m.get_params()


def test_a_feature_that_barely_moved_in_the_warm_up_keeps_the_variance_floor_given() -> None:
    """A feature at 0 in all warm-up rows but for rounding noise: without a floor in input units
    the internal standardisation makes its components' spread that noise, and a move of 0.3
    costs thousands; with ``min_variance`` 0.01 it is three standard deviations."""
    rng = np.random.default_rng(3)
    X = np.column_stack([rng.normal(size=3000), rng.normal(0.0, 1e-4, 3000)])
    moved = np.array([[0.0, 0.3], [0.0, 0.0]])
    bare = StepwiseGMM(n_components=2, reg_covar=0.05, warmup=3000, seed=0).fit(X)
    floored = StepwiseGMM(n_components=2, reg_covar=0.05, min_variance=[0.0, 0.01], warmup=3000, seed=0).fit(X)

    def surprise(model: StepwiseGMM) -> float:  # log-likelihood lost by the move
        return float(np.diff(model.score_samples(moved))[0])

    assert surprise(bare) > 1000.0
    assert surprise(floored) == pytest.approx(0.5 * 3.0**2, rel=0.05)
    assert np.all(np.diagonal(floored.covariances_, axis1=1, axis2=2)[:, 1] >= 0.01 * (1 - 1e-9))
    assert floored.covariances_[:, 0, 0] == pytest.approx(bare.covariances_[:, 0, 0], rel=0.05)  # the other left alone
    clone = StepwiseGMM.from_state(orjson.loads(orjson.dumps(floored.to_state())))
    assert clone.min_variance == (0.0, 0.01)
    np.testing.assert_array_equal(clone.score_samples(moved), floored.score_samples(moved))
    floored.partial_fit(X[:500])
    assert np.all(np.diagonal(floored.covariances_, axis1=1, axis2=2)[:, 1] >= 0.01 * (1 - 1e-9))
    with pytest.raises(ValueError, match="min_variance has 3 values for 2 features"):
        StepwiseGMM(n_components=2, min_variance=[0.0, 0.01, 0.0], warmup=3000).fit(X)


def test_a_state_saved_before_min_variance_existed_restores_without_a_floor(data: np.ndarray) -> None:
    m = StepwiseGMM(n_components=2, warmup=500, seed=0).fit(data[:500])
    state = orjson.loads(orjson.dumps(m.to_state()))
    del state["params"]["min_variance"]
    old = StepwiseGMM.from_state(state)
    assert old.min_variance == 0.0
    np.testing.assert_array_equal(old.score_samples(data[500:600]), m.score_samples(data[500:600]))
