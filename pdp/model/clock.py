"""Time as the policy sees it: integer microseconds since the epoch, exact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)
END_OF_TIME = 2**63 - 1  # an open end ("no end yet")
START_OF_TIME = -(2**63)


def to_micros(moment: datetime | None, default: int = END_OF_TIME) -> int:
    """Exact microseconds since the epoch; `default` for None. `moment` must be aware."""
    if moment is None:
        return default
    return (moment - EPOCH) // ONE_MICROSECOND


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def utcnow() -> datetime:
    return datetime.now(UTC)
