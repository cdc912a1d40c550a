"""Which steps get spot-checked: the rate holds, the choice is keyed, and a cheater is
caught as fast as 1 - (1 - p*f)^n says (a simulation)."""

from __future__ import annotations

import bisect
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from potluck.verify.sampling import Sampler, detection_probability, steps_for_confidence

SECRET = bytes(range(32))


def binomial_bound(n: int, p: float, sigmas: float = 5.0) -> float:
    return sigmas * math.sqrt(n * p * (1 - p))


def test_rate_zero_never_checks_and_rate_one_always_does() -> None:
    never, always = Sampler(0.0, SECRET), Sampler(1.0, SECRET)
    for session in ("a", "b", ""):
        for hop in range(3):
            for step in range(500):
                assert not never.should_check(session, hop, step)
                assert always.should_check(session, hop, step)


@pytest.mark.parametrize("rate", [-0.01, 1.01, float("nan")])
def test_a_rate_outside_0_1_is_refused(rate: float) -> None:
    with pytest.raises(ValueError):
        Sampler(rate)


@given(
    session=st.text(max_size=40),
    hop=st.integers(0, 2**31),
    step=st.integers(0, 2**31),
    secret=st.binary(max_size=64),
)
def test_draws_lie_in_0_1(session: str, hop: int, step: int, secret: bytes) -> None:
    assert 0.0 <= Sampler(0.5, secret).draw(session, hop, step) < 1.0


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5, 0.9])
def test_the_empirical_rate_is_within_binomial_tolerance(rate: float) -> None:
    sampler = Sampler(rate, SECRET)
    n = 20_000
    hits = sum(sampler.should_check(f"s{i % 40}", i % 3, i) for i in range(n))
    assert abs(hits - n * rate) <= binomial_bound(n, rate)


def test_draws_are_uniform() -> None:
    """Ten equal bins of 20,000 draws each hold 2,000 +- 5 sigma."""
    sampler = Sampler(0.5, SECRET)
    n, bins = 20_000, 10
    counts = [0] * bins
    for step in range(n):
        counts[int(sampler.draw("uniform", 0, step) * bins)] += 1
    for count in counts:
        assert abs(count - n / bins) <= binomial_bound(n, 1 / bins)


def test_the_same_secret_reproduces_every_choice() -> None:
    a, b = Sampler(0.3, SECRET), Sampler(0.3, bytes(SECRET))
    for step in range(2000):
        assert a.draw("sess", 1, step) == b.draw("sess", 1, step)
        assert a.should_check("sess", 1, step) == b.should_check("sess", 1, step)


def test_different_secrets_choose_independently() -> None:
    """Two secrets at p = 0.5 agree on about half of 4,000 steps, as independent coins do."""
    a, b = Sampler(0.5, SECRET), Sampler(0.5, SECRET[::-1])
    n = 4000
    agree = sum(a.should_check("s", 0, i) == b.should_check("s", 0, i) for i in range(n))
    assert abs(agree - n / 2) <= binomial_bound(n, 0.5)
    # a fresh sampler draws its own secret
    c, d = Sampler(0.5), Sampler(0.5)
    assert [c.draw("s", 0, i) for i in range(8)] != [d.draw("s", 0, i) for i in range(8)]


def test_the_draw_depends_on_session_hop_and_step() -> None:
    sampler = Sampler(0.5, SECRET)
    keys = [("s", 0, 0), ("t", 0, 0), ("s", 1, 0), ("s", 0, 1), ("s/0", 0, 0), ("s", 10, 0)]
    draws = {sampler.draw(*key) for key in keys}
    assert len(draws) == len(keys)


# -- detection probability ---------------------------------------------------------------


def test_detection_probability_values() -> None:
    assert detection_probability(0.1, 0.1, 0) == 0.0
    assert detection_probability(0.1, 0.1, 1) == pytest.approx(0.01)
    assert detection_probability(0.1, 0.1, 459) == pytest.approx(1 - 0.99**459)
    assert detection_probability(1.0, 1.0, 1) == 1.0
    assert detection_probability(0.0, 0.5, 10_000) == 0.0
    assert steps_for_confidence(0.1, 0.1, 0.99) == 459  # ln(0.01) / ln(0.99) = 458.2
    assert steps_for_confidence(0.5, 1.0, 0.75) == 2  # exactly 0.75 after 2 steps
    assert steps_for_confidence(1.0, 1.0, 0.999) == 1
    assert steps_for_confidence(0.1, 0.1, 0.0) == 0


@pytest.mark.parametrize(
    ("rate", "fraction", "confidence"),
    [(0.0, 0.5, 0.9), (0.5, 0.0, 0.9), (0.1, 0.1, 1.0), (0.1, 0.1, -0.1), (1.5, 0.1, 0.5)],
)
def test_steps_for_confidence_refuses_impossible_questions(
    rate: float, fraction: float, confidence: float
) -> None:
    with pytest.raises(ValueError):
        steps_for_confidence(rate, fraction, confidence)


@given(
    rate=st.floats(1e-3, 1.0),
    fraction=st.floats(1e-3, 1.0),
    confidence=st.floats(0.0, 0.999999),
)
def test_steps_for_confidence_is_the_least_n_that_reaches_it(
    rate: float, fraction: float, confidence: float
) -> None:
    n = steps_for_confidence(rate, fraction, confidence)
    assert detection_probability(rate, fraction, n) >= confidence
    if n > 0:
        assert detection_probability(rate, fraction, n - 1) < confidence


@given(rate=st.floats(1e-3, 0.999), fraction=st.floats(1e-3, 1.0), n=st.integers(1, 5000))
def test_steps_for_confidence_inverts_detection_probability(
    rate: float, fraction: float, n: int
) -> None:
    confidence = detection_probability(rate, fraction, n)
    if confidence < 1.0:
        assert steps_for_confidence(rate, fraction, confidence) <= n


# -- the simulation -------------------------------------------------------------------------

TRIALS = 1000
RATE, FRACTION = 0.1, 0.1
MAX_STEPS = 3000  # P(not caught within 3000 steps) = 0.99**3000 ~ 8e-14


def steps_to_detection() -> list[int]:
    """For each trial, a session of a server corrupting each step with probability
    FRACTION (its own coin, which never sees the secret), checked by a client's Sampler at
    RATE: the number of steps up to and including the first corrupted step that is checked."""
    sampler = Sampler(RATE, b"simulation secret")
    cheater = random.Random(20251122)
    found = []
    for trial in range(TRIALS):
        session = f"trial-{trial}"
        for step in range(MAX_STEPS):
            corrupted = cheater.random() < FRACTION
            if corrupted and sampler.should_check(session, 0, step):
                found.append(step + 1)
                break
        else:
            found.append(MAX_STEPS + 1)  # never caught (not expected)
    return found


def test_simulated_detection_matches_1_minus_1_minus_pf_to_the_n() -> None:
    steps = sorted(steps_to_detection())
    assert len(steps) == TRIALS and max(steps) <= MAX_STEPS
    q = RATE * FRACTION

    def empirical(n: int) -> float:
        return bisect.bisect_right(steps, n) / TRIALS

    # pointwise: each F(n) is a binomial proportion over TRIALS trials, within 4 sigma
    for n in (1, 10, 25, 50, 100, 150, 200, 300, 459, 600, 1000):
        expected = detection_probability(RATE, FRACTION, n)
        sigma = math.sqrt(expected * (1 - expected) / TRIALS)
        assert abs(empirical(n) - expected) <= 4 * sigma + 1 / TRIALS, (n, empirical(n), expected)
    # Kolmogorov-Smirnov over every n: sup |F_emp - F| below the 1% critical value
    # 1.63 / sqrt(TRIALS) (conservative for a discrete distribution)
    worst = max(
        abs(empirical(n) - detection_probability(RATE, FRACTION, n)) for n in range(1, MAX_STEPS)
    )
    assert worst <= 1.63 / math.sqrt(TRIALS), worst
    # the mean of a geometric variable is 1/q, with standard deviation sqrt(1-q)/q
    mean = sum(steps) / TRIALS
    assert abs(mean - 1 / q) <= 4 * math.sqrt(1 - q) / q / math.sqrt(TRIALS)
    # 99% of cheaters are caught within steps_for_confidence(0.99) steps
    assert empirical(steps_for_confidence(RATE, FRACTION, 0.99)) >= 0.99 - 4 * math.sqrt(
        0.99 * 0.01 / TRIALS
    )
