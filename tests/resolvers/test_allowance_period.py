"""The allowance period remembers the last month asked about: the same answers as without it.

Random sequences of moments (any UTC offset, month ends to the microsecond, back and forth, the
year's end) are asked in order, so the remembered month is tried against moments in it, before
it, after it and in other offsets.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import example, given
from hypothesis import strategies as st

from resolvers.ledger.allowances import allowance_period, month_of

OFFSETS = st.sampled_from(
    [UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=12)), timezone(timedelta(0))]
)
MONTH_ENDS = st.builds(
    lambda year, month, microseconds, tz: (
        datetime(year, month, 1, tzinfo=UTC) + timedelta(microseconds=microseconds)
    ).astimezone(tz),
    st.integers(2000, 2100),
    st.integers(1, 12),
    st.integers(-2, 2),
    OFFSETS,
)
MOMENTS = st.datetimes(
    min_value=datetime(2000, 1, 2), max_value=datetime(2100, 12, 30), timezones=OFFSETS
)


@example([datetime(2027, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), datetime(2028, 1, 1, tzinfo=UTC)])
@given(st.lists(MONTH_ENDS | MOMENTS, min_size=1, max_size=30))
def test_the_remembered_month_answers_as_a_new_one(moments: list[datetime]) -> None:
    for now in moments:
        start, end = allowance_period(now)
        assert (start, end) == month_of(now)
        assert start <= now < end
        assert start.tzinfo is UTC and (start.day, start.hour, start.microsecond) == (1, 0, 0)
