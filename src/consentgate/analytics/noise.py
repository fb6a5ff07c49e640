"""Differentially private release of integer counts, through OpenDP's measurements.

The mechanism is OpenDP's ``make_laplace`` over a vector of 64-bit integers with the L1
distance: on an integer domain it is the discrete Laplace (geometric) mechanism, sampled
exactly in integer arithmetic (Canonne, Kamath and Steinke 2020), so there is no
floating-point attack surface (Mironov 2012) and the ``floating-point`` feature stays off.
OpenDP still gates ``make_laplace`` behind ``contrib`` (its proof has not finished OpenDP's
vetting), so that feature, and only it, is enabled here.

The scale comes from ``binary_search_param`` and the epsilon charged is the measurement's own
privacy map at the stated sensitivity: OpenDP, not this module, decides what a release costs.
A plan is built (and its cost charged) before any true count is released through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import opendp.prelude as dp

MECHANISM = "discrete_laplace"
_enabled = False


def _space() -> tuple[Any, Any]:
    global _enabled
    if not _enabled:
        dp.enable_features("contrib")
        _enabled = True
    return dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64")


@dataclass(frozen=True)
class LaplacePlan:
    """A discrete Laplace measurement for one release, and what it costs."""

    measurement: Any
    scale: float
    l1_sensitivity: int
    epsilon: float  # the privacy map at l1_sensitivity: what this release costs

    def release(self, counts: Sequence[int]) -> list[int]:
        """The counts with noise; clamping at zero afterwards is post-processing (free)."""
        if not counts:
            return []
        return [max(0, int(v)) for v in self.measurement([int(c) for c in counts])]


def plan_laplace(epsilon: float, l1_sensitivity: int) -> LaplacePlan:
    """The discrete Laplace measurement whose privacy loss at ``l1_sensitivity`` is at most
    ``epsilon`` (pure ε-DP: a MaxDivergence measure)."""
    space = _space()
    scale = float(
        dp.binary_search_param(
            lambda s: dp.m.make_laplace(*space, scale=s), d_in=l1_sensitivity, d_out=epsilon
        )
    )
    measurement = dp.m.make_laplace(*space, scale=scale)
    epsilon = float(measurement.map(l1_sensitivity))  # type: ignore[no-untyped-call]
    return LaplacePlan(measurement, scale, l1_sensitivity, epsilon)
