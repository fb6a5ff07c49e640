"""The pure rules of analytics: what may be grouped on, when a group is too small to show,
how much one person can move a differentially private answer, and budget arithmetic.

Nothing here touches storage, the key store or the clock; the service passes plain values in.

Two protections, different in kind:

* **k-suppression** (every answer): a group with fewer than ``k`` distinct subjects is
  shown as ``suppressed`` with its counts ``null``. It stops casual reading-off of small
  groups but is not a formal guarantee (overlapping queries can be differenced).
* **Differential privacy** (``dp_epsilon``): every count gets discrete Laplace noise sized to
  the most one subject can change the whole answer (:func:`engagement_sensitivity`), and the
  epsilon is charged to the tenant's monthly budget. Under DP, suppression is decided on the
  *noisy* subject count, and the groups released are all the cells of domains fixed without
  looking at personal data, so neither the suppression pattern nor which groups exist leaks
  anything the noise does not cover.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from enum import StrEnum

from consentgate.errors import InvalidInput

DEFAULT_K = 10
K_MIN, K_MAX = 2, 1000
DEFAULT_MONTHLY_EPSILON = 10.0
MONTHLY_EPSILON_MAX = 100.0
QUERY_EPSILON_MIN, QUERY_EPSILON_MAX = 0.001, 100.0
MAX_PER_SUBJECT_MAX = 100
#: Most cells one DP answer may release (every cell gets noise, including empty ones).
MAX_CELLS = 10_000
MAX_DAYS = 366
MICRO = 1_000_000
DAY_US = 86_400 * MICRO

#: A message counts as sent when something left for the recipient (a fallback included).
SENT_ACTIONS = ("sent", "fallback")
#: Receipts that show delivery; a read receipt implies delivery.
DELIVERED_KINDS = ("delivered", "read")
READ_KIND = "read"
#: Counts released per group, in the order they sit in the noisy vector.
METRICS = ("subjects", "sent", "delivered", "read")

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")


class Dimension(StrEnum):
    """What engagement may be grouped by: a closed list, each a non-personal attribute."""

    DAY = "day"
    MODE = "mode"
    CONSENT_TYPE = "consent_type"
    TEMPLATE_ID = "template_id"
    CAMPAIGN = "campaign"


def parse_group_by(text: str | None) -> tuple[Dimension, ...]:
    """``"day,mode"`` → (DAY, MODE); empty → one group for everything."""
    if text is None or not text.strip():
        return ()
    allowed = ", ".join(d.value for d in Dimension)
    dims: list[Dimension] = []
    for item in text.split(","):
        try:
            dim = Dimension(item.strip())
        except ValueError:
            raise InvalidInput(
                f"group_by: allowed dimensions are {allowed}", field="group_by"
            ) from None
        if dim in dims:
            raise InvalidInput("group_by names a dimension twice", field="group_by")
        dims.append(dim)
    return tuple(dims)


@dataclass(frozen=True, slots=True)
class AnalyticsSettings:
    """A tenant's analytics settings. ``require_dp``: engagement and attribution counts are
    given only with noise, so the monthly budget bounds every count analytics releases (the
    join-token export is pseudonymous per-person data, outside any DP bound)."""

    k_threshold: int = DEFAULT_K
    monthly_epsilon_micro: int = int(DEFAULT_MONTHLY_EPSILON * MICRO)
    require_dp: bool = False

    @property
    def monthly_epsilon(self) -> float:
        return self.monthly_epsilon_micro / MICRO


DEFAULT_SETTINGS = AnalyticsSettings()


def validate_settings(
    k_threshold: int, monthly_epsilon: float, require_dp: bool
) -> AnalyticsSettings:
    if not K_MIN <= k_threshold <= K_MAX:
        raise InvalidInput(f"k_threshold must be between {K_MIN} and {K_MAX}", field="k_threshold")
    if not (math.isfinite(monthly_epsilon) and 0 <= monthly_epsilon <= MONTHLY_EPSILON_MAX):
        raise InvalidInput(
            f"monthly_epsilon must be between 0 and {MONTHLY_EPSILON_MAX:g}",
            field="monthly_epsilon",
        )
    return AnalyticsSettings(k_threshold, epsilon_micro(monthly_epsilon, up=False), require_dp)


def check_query_epsilon(value: float, *, field: str = "dp_epsilon") -> float:
    if not (math.isfinite(value) and QUERY_EPSILON_MIN <= value <= QUERY_EPSILON_MAX):
        raise InvalidInput(
            f"{field} must be between {QUERY_EPSILON_MIN:g} and {QUERY_EPSILON_MAX:g}",
            field=field,
        )
    return value


def epsilon_micro(value: float, *, up: bool = True) -> int:
    """Epsilon in micro-units, exact on the decimal the caller wrote (0.3 → 300000). A
    charge rounds up and a limit rounds down, so rounding never favours spending."""
    micro = Decimal(repr(float(value))) * MICRO
    return int(micro.to_integral_value(rounding=ROUND_CEILING if up else ROUND_FLOOR))


def can_charge(spent_micro: int, charge_micro: int, limit_micro: int) -> bool:
    return charge_micro > 0 and spent_micro + charge_micro <= limit_micro


def suppressed(subjects: float, k: int) -> bool:
    """A group is shown only when it holds at least ``k`` distinct subjects."""
    return subjects < k


def engagement_sensitivity(max_per_subject: int) -> int:
    """The L1 sensitivity of one engagement answer under adding or removing one subject.

    Each subject keeps at most ``max_per_subject`` of its sent messages in the query (its
    earliest; the choice depends on that subject's rows alone). Each kept message adds at
    most 1 to ``sent``, ``delivered`` and ``read`` of its group, and the subject adds 1 to
    ``subjects`` of each group it has a kept message in, at most ``max_per_subject`` groups.
    The four count vectors together therefore move by at most ``4 × max_per_subject``."""
    return len(METRICS) * max_per_subject


#: Attribution releases (subjects sent to, converted subjects): a subject moves each by ≤ 1.
ATTRIBUTION_SENSITIVITY = 2


def check_max_per_subject(value: int) -> int:
    if not 1 <= value <= MAX_PER_SUBJECT_MAX:
        raise InvalidInput(
            f"max_per_subject must be between 1 and {MAX_PER_SUBJECT_MAX}",
            field="max_per_subject",
        )
    return value


# -- months and days ---------------------------------------------------------------------------


def month_of(instant: datetime) -> str:
    t = instant.astimezone(UTC)
    return f"{t.year:04d}-{t.month:02d}"


def parse_month(text: str | None, now: datetime, *, field: str = "month") -> str:
    """A calendar month ``YYYY-MM`` (UTC) that is not in the future."""
    if not isinstance(text, str) or not _MONTH.match(text):
        raise InvalidInput(f"{field} must be a calendar month YYYY-MM", field=field)
    if text > month_of(now):
        raise InvalidInput(f"{field} lies in the future", field=field)
    return text


def month_range_us(month: str) -> tuple[int, int]:
    """[start, end) of a month in epoch microseconds."""
    year, mon = int(month[:4]), int(month[5:])
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC)
    return _us(start), _us(end)


def month_of_us(micros: int) -> str:
    return month_of(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros))


def _us(instant: datetime) -> int:
    delta = instant - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * MICRO + delta.microseconds


def day_label(day_number: int) -> str:
    """Days since the epoch → ``YYYY-MM-DD`` (UTC)."""
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=day_number)).strftime("%Y-%m-%d")


def days_in(from_us: int, to_us: int) -> list[int]:
    """Every UTC day (days since the epoch) that meets the window [from, to)."""
    if to_us <= from_us:
        raise InvalidInput("to must be later than from", field="to")
    first, last = from_us // DAY_US, (to_us - 1) // DAY_US
    if last - first + 1 > MAX_DAYS:
        raise InvalidInput(f"the window spans more than {MAX_DAYS} days", field="to")
    return list(range(first, last + 1))


def cell_count(domains: Sequence[Sequence[object]]) -> int:
    return math.prod(len(d) for d in domains)


# -- join tokens -------------------------------------------------------------------------------


def encode_token(mac: bytes) -> str:
    """A join token: the 32-byte HMAC, base64url without padding (43 characters)."""
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def check_tokens(tokens: Sequence[object], *, field: str = "tokens") -> list[str]:
    """Each token must be the canonical encoding of 32 bytes; returned de-duplicated."""
    seen: dict[str, None] = {}
    for i, token in enumerate(tokens):
        if not isinstance(token, str) or not _TOKEN.match(token):
            raise InvalidInput("a join token is 43 base64url characters", field=f"{field}[{i}]")
        try:
            raw = base64.urlsafe_b64decode(token + "=")
        except (binascii.Error, ValueError):
            raise InvalidInput(
                "a join token is 43 base64url characters", field=f"{field}[{i}]"
            ) from None
        if encode_token(raw) != token:
            raise InvalidInput("a join token is not canonically encoded", field=f"{field}[{i}]")
        seen[token] = None
    return list(seen)
