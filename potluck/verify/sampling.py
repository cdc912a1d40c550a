"""Which steps a client spot-checks: unpredictable to servers, reproducible to the client. Pure.

A `Sampler` draws each `(session, hop, step)` with probability `rate` from an
HMAC-SHA256 keyed by a secret that never leaves the client, so a server
cannot tell from anything it sees which of its steps will be re-run, and the
checked server's traffic is the same whether or not a step is sampled.

A server that corrupts a fraction `f` of its steps is caught at each step
with probability `p * f`, so within `n` steps with probability
`1 - (1 - p * f) ** n` (`detection_probability`); `tests/verify` checks a
simulation against it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets

__all__ = ["Sampler", "detection_probability", "steps_for_confidence"]


class Sampler:
    """Chooses steps to spot-check at `rate`, from a secret key."""

    def __init__(self, rate: float, secret: bytes | None = None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"the spot-check rate must be in [0, 1], not {rate}")
        self.rate = rate
        self._secret = secret if secret is not None else secrets.token_bytes(32)

    def draw(self, session: str, hop: int, step: int) -> float:
        """A uniform number in [0, 1) for this step, fixed by the secret."""
        mac = hmac.new(self._secret, f"{session}/{hop}/{step}".encode(), hashlib.sha256)
        # 53 bits, exactly representable: 64 bits would round the top values up to 1.0
        return (int.from_bytes(mac.digest()[:8], "big") >> 11) / 2**53

    def should_check(self, session: str, hop: int, step: int) -> bool:
        return self.draw(session, hop, step) < self.rate


def _check_probabilities(rate: float, fraction: float) -> None:
    for name, value in (("rate", rate), ("fraction", fraction)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], not {value}")


def detection_probability(rate: float, fraction: float, steps: int) -> float:
    """Chance that a server corrupting `fraction` of steps is caught within `steps`."""
    _check_probabilities(rate, fraction)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, not {steps}")
    return 1.0 - (1.0 - rate * fraction) ** steps


def steps_for_confidence(rate: float, fraction: float, confidence: float) -> int:
    """The fewest steps within which such a server is caught with probability
    `confidence` (the least `n` with `detection_probability(...) >= confidence`)."""
    _check_probabilities(rate, fraction)
    if not 0.0 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0, 1), not {confidence}")
    q = rate * fraction
    if q <= 0:
        raise ValueError("nothing is ever caught at rate or fraction 0")
    if confidence == 0.0:
        return 0
    if q >= 1:
        return 1
    n = max(1, math.ceil(math.log1p(-confidence) / math.log1p(-q)))
    # the logarithms may round either way: settle on detection_probability's own answer
    while n > 1 and detection_probability(rate, fraction, n - 1) >= confidence:
        n -= 1
    while detection_probability(rate, fraction, n) < confidence:
        n += 1
    return n
