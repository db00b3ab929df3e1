"""`freeze`: no merges inside declared windows (weekly, daily or a date range), DST-correct.

Windows are written in wall-clock time of one time zone. Each occurrence is turned into a UTC
interval by localising its start and end separately with zoneinfo, so a weekend window across a DST
change is 63 or 65 hours long, as the clock on the wall says. A wall time that does not exist
(the skipped hour in spring) lands just after the jump; an ambiguous one (autumn) is its first
occurrence.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass

import re2
from yaml.nodes import Node

from bot.policy.facts import MergeRequestFacts
from bot.policy.model import Outcome
from bot.policy.nodes import Ctx, suggest
from bot.policy.predicates.base import Predicate, register

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEKDAY = {name[:3]: index for index, name in enumerate(WEEKDAYS)} | {
    name: index for index, name in enumerate(WEEKDAYS)
}
_DATE = re2.compile(r"^(\d{4}-\d{2}-\d{2})(?:[ T](\d{1,2}:\d{2}(?::\d{2})?))?$")
_WEEKLY = re2.compile(r"^([A-Za-z]+)\.?,?\s+(\d{1,2}:\d{2}(?::\d{2})?)$")
_TIME = re2.compile(r"^(\d{1,2}:\d{2}(?::\d{2})?)$")
_HINT = (
    "a date (2026-12-20), a date and time (2026-12-20 16:00), "
    "a weekday and time (Fri 16:00) or a time of day (22:00)"
)
UTC = dt.UTC


def localize(naive: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """Wall-clock time in `tz` -> aware UTC (fold=0: gaps jump forward, folds take the first)."""
    return naive.replace(tzinfo=tz).astimezone(UTC)


@dataclass(frozen=True)
class Moment:
    """A parsed `from`/`to` value: kind is "date", "weekly" or "time"."""

    kind: str
    time: dt.time
    date: dt.date | None = None
    weekday: int = 0
    has_time: bool = True


def parse_moment(ctx: Ctx, node: Node, what: str) -> Moment | None:
    text = ctx.string(node, what)
    if text is None:
        return None
    text = text.strip()
    try:
        if match := _DATE.search(text):
            day = dt.date.fromisoformat(match.group(1))
            clock = match.group(2)
            time = _parse_time(clock) if clock else dt.time()
            return Moment("date", time, date=day, has_time=clock is not None)
        if match := _WEEKLY.search(text):
            day_name = match.group(1).lower()
            if day_name not in _WEEKDAY:
                ctx.error(
                    node, f"{what}: unknown weekday `{match.group(1)}`{suggest(day_name, WEEKDAYS)}"
                )
                return None
            return Moment("weekly", _parse_time(match.group(2)), weekday=_WEEKDAY[day_name])
        if match := _TIME.search(text):
            return Moment("time", _parse_time(match.group(1)))
    except ValueError as exc:
        ctx.error(node, f"{what}: `{text}` is not a valid date or time ({exc})")
        return None
    ctx.error(node, f"{what}: `{text}` must be {_HINT}")
    return None


def _parse_time(text: str) -> dt.time:
    hours, _, rest = text.partition(":")
    return dt.time.fromisoformat(f"{int(hours):02d}:{rest}")


class Window:
    """One freeze window; `intervals` lists its UTC occurrences near a moment."""

    __slots__ = ("label", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.label = f'"{name}"'

    def intervals(
        self, today: dt.date, tz: zoneinfo.ZoneInfo
    ) -> list[tuple[dt.datetime, dt.datetime]]:
        """UTC occurrences that may contain a moment of local day `today`, or follow it."""
        raise NotImplementedError


class DateRange(Window):
    """A one-off window between two dates (and times)."""

    __slots__ = ("span",)

    def __init__(self, name: str, start: dt.datetime, end: dt.datetime) -> None:
        super().__init__(name)
        self.span = [(start, end)]

    def intervals(
        self, today: dt.date, tz: zoneinfo.ZoneInfo
    ) -> list[tuple[dt.datetime, dt.datetime]]:
        return self.span


class Weekly(Window):
    """Every week from one weekday+time to another (may wrap over the weekend)."""

    __slots__ = ("minutes", "start", "weekday")

    def __init__(self, name: str, start: Moment, end: Moment) -> None:
        super().__init__(name)
        self.weekday, self.start = start.weekday, start.time
        begin = start.weekday * 1440 + start.time.hour * 60 + start.time.minute
        finish = end.weekday * 1440 + end.time.hour * 60 + end.time.minute
        self.minutes = dt.timedelta(minutes=(finish - begin) % (7 * 1440))

    def intervals(
        self, today: dt.date, tz: zoneinfo.ZoneInfo
    ) -> list[tuple[dt.datetime, dt.datetime]]:
        monday = today - dt.timedelta(days=today.weekday())
        spans = []
        for week in (-1, 0, 1):
            begin = dt.datetime.combine(
                monday + dt.timedelta(days=7 * week + self.weekday), self.start
            )
            spans.append((localize(begin, tz), localize(begin + self.minutes, tz)))
        return spans


class Daily(Window):
    """Every listed weekday (or every day) from a time to a time (next day if earlier)."""

    __slots__ = ("days", "end", "next_day", "start")

    def __init__(self, name: str, days: frozenset[int], start: dt.time, end: dt.time) -> None:
        super().__init__(name)
        self.days, self.start, self.end = days, start, end
        self.next_day = dt.timedelta(days=1 if end <= start else 0)

    def intervals(
        self, today: dt.date, tz: zoneinfo.ZoneInfo
    ) -> list[tuple[dt.datetime, dt.datetime]]:
        spans = []
        for offset in range(-1, 9):
            day = today + dt.timedelta(days=offset)
            if day.weekday() in self.days:
                begin = localize(dt.datetime.combine(day, self.start), tz)
                finish = localize(dt.datetime.combine(day + self.next_day, self.end), tz)
                if finish > begin:
                    spans.append((begin, finish))
        return spans


def compile_window(ctx: Ctx, node: Node, tz: zoneinfo.ZoneInfo) -> Window | None:
    entries = ctx.mapping(node, "a freeze window")
    if entries is None or not ctx.known_keys(
        entries, ("name", "from", "to", "days"), "a freeze window"
    ):
        return None
    name = ctx.string(entries["name"].node, "`name`") if "name" in entries else None
    start = parse_moment(ctx, entries["from"].node, "`from`") if "from" in entries else None
    end = parse_moment(ctx, entries["to"].node, "`to`") if "to" in entries else None
    if ("from" in entries and start is None) or ("to" in entries and end is None):
        return None
    days: frozenset[int] | None = None
    if "days" in entries:
        items = ctx.string_list(entries["days"].node, "`days`", single_ok=True)
        if items is None:
            return None
        picked = set()
        for text, item in items:
            key = text.strip().lower()
            if key not in _WEEKDAY:
                ctx.error(item, f"`days`: unknown weekday `{text}`{suggest(key, WEEKDAYS)}")
                return None
            picked.add(_WEEKDAY[key])
        days = frozenset(picked)
    if (start is None) != (end is None):
        ctx.error(node, "a freeze window needs both `from` and `to`")
        return None
    if start is None or end is None:
        if days is None:
            ctx.error(node, "a freeze window needs `from` and `to`, or `days`")
            return None
        label = name or ", ".join(WEEKDAYS[day][:3].title() for day in sorted(days))
        return Daily(label, days, dt.time(), dt.time())
    if start.kind != end.kind:
        ctx.error(
            entries["to"].node,
            f"`from` is a {_KIND[start.kind]} but `to` is a {_KIND[end.kind]}; "
            "write both the same way",
        )
        return None
    label = name or f"{entries['from'].node.value} to {entries['to'].node.value}"
    if days is not None and start.kind != "time":
        ctx.error(
            entries["days"].node,
            '`days` goes with times of day (from: "22:00"), not with dates or weekdays',
        )
        return None
    if start.kind == "date":
        assert start.date is not None and end.date is not None
        begin = localize(dt.datetime.combine(start.date, start.time), tz)
        end_day = end.date if end.has_time else end.date + dt.timedelta(days=1)
        finish = localize(dt.datetime.combine(end_day, end.time), tz)
        if finish <= begin:
            ctx.error(entries["to"].node, "the freeze window ends before it starts")
            return None
        return DateRange(label, begin, finish)
    if start.kind == "weekly":
        if (start.weekday, start.time) == (end.weekday, end.time):
            ctx.error(entries["to"].node, "the freeze window starts and ends at the same moment")
            return None
        return Weekly(label, start, end)
    if start.time == end.time:
        ctx.error(entries["to"].node, "the freeze window starts and ends at the same time")
        return None
    return Daily(label, days if days is not None else frozenset(range(7)), start.time, end.time)


_KIND = {"date": "date", "weekly": "weekday and time", "time": "time of day"}


Span = tuple[dt.datetime, dt.datetime, Window, int]  # start, end (UTC), window, its position


def compile_timezone(ctx: Ctx, node: Node) -> zoneinfo.ZoneInfo | None:
    name = ctx.string(node, "`timezone`")
    if name is None:
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        hint = suggest(name, zoneinfo.available_timezones())
        ctx.error(node, f"unknown timezone `{name}`{hint} (use an IANA name like Europe/Berlin)")
        return None


@register
class Freeze(Predicate):
    """`freeze: {timezone, windows: [...]}` — now is outside every freeze window."""

    key = "freeze"
    __slots__ = ("_cache", "tz", "windows")

    def __init__(
        self, name: str | None, line: int, tz: zoneinfo.ZoneInfo, windows: tuple[Window, ...]
    ) -> None:
        super().__init__(name, line)
        self.tz, self.windows = tz, windows
        # The occurrences depend only on the local day: keep the last day's (one entry, swapped
        # atomically, so concurrent evaluations at worst compute it twice).
        self._cache: tuple[dt.date, list[Span]] | None = None

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        entries = ctx.known(ctx.mapping(node, "`freeze`"), ("timezone", "windows"), "`freeze`")
        if entries is None:
            return None
        tz: zoneinfo.ZoneInfo | None = zoneinfo.ZoneInfo("UTC")
        if "timezone" in entries:
            tz = compile_timezone(ctx, entries["timezone"].node)
        if "windows" not in entries:
            ctx.error(node, "`freeze` needs `windows`")
            return None
        items = ctx.sequence(entries["windows"].node, "`freeze.windows`")
        if tz is None or items is None:
            return None
        windows = [compile_window(ctx, item, tz) for item in items]
        if any(window is None for window in windows):
            return None
        return cls(name, line, tz, tuple(window for window in windows if window is not None))

    def when(self, moment: dt.datetime) -> str:
        return f"{moment.astimezone(self.tz):%Y-%m-%d %H:%M} {self.tz.key}"

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        now = facts.now if facts.now.tzinfo is not None else facts.now.replace(tzinfo=UTC)
        today = now.astimezone(self.tz).date()
        cache = self._cache
        if cache is not None and cache[0] == today:
            spans = cache[1]
        else:
            spans = self._spans(today)
            self._cache = (today, spans)
        inside = [span for span in spans if span[0] <= now < span[1]]
        if inside:
            until = max(span[1] for span in inside)
            for begin, finish, _, _ in spans:  # sorted by start: extend over chained windows
                if begin <= until < finish:
                    until = finish
            window = min(inside, key=lambda span: span[3])[2]
            end = self.when(until)
            return self.outcome(
                False,
                f"in window {window.label} until {end}",
                fix=f"wait for the freeze to end at {end}",
                wake_at=until,
            )
        ahead = [span for span in spans if span[0] > now]
        if not ahead:
            return self.outcome(True, "outside every freeze window (none ahead)")
        begin, _, window, _ = ahead[0]  # sorted by start, then by the order they are listed
        start = self.when(begin)
        return self.outcome(
            True,
            f"outside every freeze window (next: {window.label} from {start})",
            negated_fix=f"wait for the freeze to start at {start}",
            wake_at=begin,
        )

    def _spans(self, today: dt.date) -> list[Span]:
        spans = [
            (begin, finish, window, index)
            for index, window in enumerate(self.windows)
            for begin, finish in window.intervals(today, self.tz)
        ]
        spans.sort(key=lambda span: (span[0], span[3]))
        return spans
