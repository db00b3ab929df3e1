"""`freeze`: weekly, daily and date windows, DST edges in Europe/Berlin, and `wake_at`."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.policy import compile_rule, evaluate, load_policy_text, make_facts

UTC = dt.UTC
BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")

WEEKEND = """
freeze:
  timezone: Europe/Berlin
  windows:
    - {name: weekend, from: Fri 16:00, to: Mon 08:00}
"""
SHIPPED_STYLE = """
freeze:
  timezone: Europe/Berlin
  windows:
    - {name: weekend, from: Fri 16:00, to: Mon 08:00}
    - {name: year-end, from: 2026-12-20, to: 2027-01-04 08:00}
"""


def at(rule_text: str, now: str | dt.datetime):
    return compile_rule(rule_text).evaluate(make_facts(now=now))


def z(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_weekday_is_open_and_names_the_next_window() -> None:
    outcome = at(WEEKEND, "2026-06-10T10:00:00+02:00")
    assert outcome.passed
    assert outcome.evidence == (
        'freeze: outside every freeze window (next: "weekend" from 2026-06-12 16:00 Europe/Berlin)'
    )
    assert outcome.wake_at == z("2026-06-12T14:00:00+00:00")


def test_weekend_window_boundaries() -> None:
    assert at(WEEKEND, "2026-06-12T15:59:59+02:00").passed
    inside = at(WEEKEND, "2026-06-12T16:00:00+02:00")
    assert not inside.passed
    assert inside.evidence == 'freeze: in window "weekend" until 2026-06-15 08:00 Europe/Berlin'
    assert inside.fix == "wait for the freeze to end at 2026-06-15 08:00 Europe/Berlin"
    assert inside.wake_at == z("2026-06-15T06:00:00+00:00")
    assert not at(WEEKEND, "2026-06-14T23:59:00+02:00").passed
    assert not at(WEEKEND, "2026-06-15T07:59:59+02:00").passed
    assert at(WEEKEND, "2026-06-15T08:00:00+02:00").passed


def test_wake_at_is_aware_utc() -> None:
    outcome = at(WEEKEND, "2026-06-13T12:00:00+02:00")
    assert outcome.wake_at is not None
    assert outcome.wake_at.utcoffset() == dt.timedelta(0)


def test_spring_dst_weekend_is_63_hours() -> None:
    # Last Sunday of March 2026 is the 29th: clocks jump from 02:00 CET to 03:00 CEST.
    start = at(WEEKEND, "2026-03-27T15:00:00Z")  # Fri 16:00 CET
    assert not start.passed
    assert start.wake_at == z("2026-03-30T06:00:00+00:00")  # Mon 08:00 CEST
    assert start.wake_at - z("2026-03-27T15:00:00+00:00") == dt.timedelta(hours=63)
    assert at(WEEKEND, "2026-03-27T14:59:00Z").passed
    assert not at(WEEKEND, "2026-03-29T01:30:00Z").passed  # the skipped hour, mid-window
    assert not at(WEEKEND, "2026-03-30T05:59:00Z").passed  # 07:59 CEST
    assert at(WEEKEND, "2026-03-30T06:00:00Z").passed  # 08:00 CEST (would be 07:00 CET)


def test_autumn_dst_weekend_is_65_hours() -> None:
    # Last Sunday of October 2026 is the 25th: clocks go back from 03:00 CEST to 02:00 CET.
    start = at(WEEKEND, "2026-10-23T14:00:00Z")  # Fri 16:00 CEST
    assert not start.passed
    assert start.wake_at == z("2026-10-26T07:00:00+00:00")  # Mon 08:00 CET
    assert start.wake_at - z("2026-10-23T14:00:00+00:00") == dt.timedelta(hours=65)
    assert at(WEEKEND, "2026-10-23T13:59:00Z").passed
    assert not at(WEEKEND, "2026-10-26T06:59:00Z").passed  # 07:59 CET
    assert at(WEEKEND, "2026-10-26T07:00:00Z").passed


def test_wall_time_in_the_spring_gap_starts_after_the_jump() -> None:
    rule = """
freeze:
  timezone: Europe/Berlin
  windows: [{name: night, from: "02:30", to: "04:00"}]
"""
    # 02:30 does not exist on 2026-03-29; the window starts at the jump's far side (03:30 CEST).
    assert at(rule, "2026-03-29T01:15:00Z").passed  # 03:15 CEST
    inside = at(rule, "2026-03-29T01:30:00Z")  # 03:30 CEST
    assert not inside.passed
    assert inside.wake_at == z("2026-03-29T02:00:00+00:00")  # 04:00 CEST


def test_ambiguous_autumn_wall_time_is_its_first_occurrence() -> None:
    rule = """
freeze:
  timezone: Europe/Berlin
  windows: [{name: night, from: "02:00", to: "02:30"}]
"""
    assert not at(rule, "2026-10-25T00:15:00Z").passed  # 02:15 CEST, first pass
    assert at(rule, "2026-10-25T01:15:00Z").passed  # 02:15 CET, the repeated hour


def test_year_end_date_range() -> None:
    outcome = at(SHIPPED_STYLE, "2026-12-24T12:00:00+01:00")
    assert not outcome.passed
    assert outcome.evidence == ('freeze: in window "year-end" until 2027-01-04 08:00 Europe/Berlin')
    assert outcome.wake_at == z("2027-01-04T07:00:00+00:00")
    assert at(SHIPPED_STYLE, "2027-01-04T08:00:00+01:00").passed
    # A date alone starts at 00:00 local time.
    assert at(SHIPPED_STYLE, "2026-12-19T22:59:00Z").passed is False  # still the weekend
    assert not at(SHIPPED_STYLE, "2026-12-22T00:00:00+01:00").passed


def test_chained_windows_report_when_the_freeze_really_ends() -> None:
    outcome = at(SHIPPED_STYLE, "2026-12-19T12:00:00+01:00")  # Saturday before the holidays
    assert outcome.evidence == 'freeze: in window "weekend" until 2027-01-04 08:00 Europe/Berlin'
    assert outcome.wake_at == z("2027-01-04T07:00:00+00:00")


def test_date_only_end_is_inclusive() -> None:
    rule = """
freeze:
  timezone: Europe/Berlin
  windows: [{name: release, from: 2026-07-01, to: 2026-07-02}]
"""
    assert not at(rule, "2026-07-02T23:59:00+02:00").passed
    outcome = at(rule, "2026-07-01T00:00:00+02:00")
    assert outcome.evidence == 'freeze: in window "release" until 2026-07-03 00:00 Europe/Berlin'
    assert at(rule, "2026-07-03T00:00:00+02:00").passed
    assert at(rule, "2026-06-30T23:59:00+02:00").passed


def test_past_date_range_has_nothing_ahead() -> None:
    rule = "freeze: {windows: [{from: 2020-01-01, to: 2020-01-02}]}"
    outcome = at(rule, "2026-06-10T10:00:00Z")
    assert outcome.passed
    assert outcome.evidence == "freeze: outside every freeze window (none ahead)"
    assert outcome.wake_at is None


def test_unnamed_window_is_labelled_by_its_bounds_and_default_timezone_is_utc() -> None:
    rule = "freeze: {windows: [{from: Sat 00:00, to: Sun 12:00}]}"
    outcome = at(rule, "2026-06-13T10:00:00Z")
    assert (
        outcome.evidence == 'freeze: in window "Sat 00:00 to Sun 12:00" until 2026-06-14 12:00 UTC'
    )


def test_daily_window_on_some_days() -> None:
    rule = """
freeze:
  timezone: Europe/Berlin
  windows:
    - {name: nights, days: [mon, tue, wed, thu, fri], from: "20:00", to: "06:00"}
"""
    friday_night = at(rule, "2026-06-12T22:00:00+02:00")
    assert friday_night.evidence == (
        'freeze: in window "nights" until 2026-06-13 06:00 Europe/Berlin'
    )
    assert not at(rule, "2026-06-13T05:00:00+02:00").passed  # Friday's night, on Saturday
    assert at(rule, "2026-06-13T22:00:00+02:00").passed  # Saturday is not listed
    assert at(rule, "2026-06-10T12:00:00+02:00").passed


def test_whole_days_chain_over_the_weekend() -> None:
    rule = "freeze: {timezone: Europe/Berlin, windows: [{name: weekend, days: [sat, sun]}]}"
    outcome = at(rule, "2026-06-13T10:00:00+02:00")
    assert outcome.evidence == 'freeze: in window "weekend" until 2026-06-15 00:00 Europe/Berlin'
    assert at(rule, "2026-06-15T00:00:00+02:00").passed


def test_naive_now_is_utc() -> None:
    outcome = compile_rule(WEEKEND).evaluate(make_facts(now=dt.datetime(2026, 6, 12, 14, 0)))
    assert not outcome.passed


def test_verdict_wake_at_is_the_earliest_in_the_tree() -> None:
    policy = load_policy_text(
        """
require:
  - any:
      - labels: {any: [emergency]}
      - freeze: {timezone: Europe/Berlin, windows: [{from: Fri 16:00, to: Mon 08:00}]}
  - not:
      freeze: {windows: [{name: soon, from: 2026-06-11 00:00, to: 2026-06-12 00:00}]}
"""
    )
    verdict = evaluate(policy, make_facts(now="2026-06-10T10:00:00Z"))
    assert verdict.status == "failed"  # `not freeze` fails while outside the window
    assert verdict.wake_at == z("2026-06-11T00:00:00+00:00")


def test_freeze_evaluation_is_cached_per_local_day_but_correct_across_days() -> None:
    rule = compile_rule(WEEKEND)
    assert rule.evaluate(make_facts(now="2026-06-12T16:30:00+02:00")).passed is False
    assert rule.evaluate(make_facts(now="2026-06-10T16:30:00+02:00")).passed is True
    assert rule.evaluate(make_facts(now="2026-06-12T16:30:00+02:00")).passed is False


# --- properties --------------------------------------------------------------------------------

moments = st.datetimes(
    min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2035, 12, 31), timezones=st.just(UTC)
)
WEEKEND_RULE = compile_rule(WEEKEND)
FRIDAY_16 = 4 * 1440 + 16 * 60
MONDAY_08 = 8 * 60


def frozen_by_the_wall_clock(now: dt.datetime) -> bool:
    local = now.astimezone(BERLIN)
    minute = local.weekday() * 1440 + local.hour * 60 + local.minute
    return minute >= FRIDAY_16 or minute < MONDAY_08


@settings(max_examples=400, deadline=None)
@given(moments)
def test_weekend_freeze_agrees_with_the_wall_clock(now: dt.datetime) -> None:
    outcome = WEEKEND_RULE.evaluate(make_facts(now=now))
    assert outcome.passed is not frozen_by_the_wall_clock(now)


@settings(max_examples=300, deadline=None)
@given(moments)
def test_wake_at_is_the_next_change(now: dt.datetime) -> None:
    outcome = WEEKEND_RULE.evaluate(make_facts(now=now))
    wake = outcome.wake_at
    assert wake is not None and wake > now
    before = WEEKEND_RULE.evaluate(make_facts(now=wake - dt.timedelta(microseconds=1)))
    after = WEEKEND_RULE.evaluate(make_facts(now=wake))
    assert before.passed == outcome.passed
    assert after.passed != outcome.passed


@pytest.mark.parametrize(
    "text",
    [
        "freeze: {timezone: Europe/Berlin, windows: [{from: Fri 16:00, to: Mon 08:00}]}",
        "freeze: {windows: [{from: '22:00', to: '06:00'}]}",
        "freeze: {windows: [{days: [sat]}]}",
        "freeze: {windows: [{from: 2026-12-20 16:00, to: 2027-01-04}]}",
        "freeze: {windows: [{from: friday 16:00, to: MONDAY 8:00}]}",
    ],
)
def test_window_forms_compile(text: str) -> None:
    assert compile_rule(text).name == "freeze"
