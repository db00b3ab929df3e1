"""The predicates of policy language v1 (DESIGN 4.4), one class each.

Every class validates its YAML value in `compile` (load time) and judges facts in `evaluate`
(hot path: plain Python over precompiled RE2 programs). Evidence is one sentence, `fix` says what
would make a failing rule pass, `negated_fix` what would make a holding rule fail (for `not`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from yaml.nodes import Node

from bot.facts import ChangedFile, FactNeeds, GroupMembers, MergeRequestFacts
from bot.policy.model import MissingFactError, Outcome, UnreadableFact
from bot.policy.nodes import Ctx, suggest
from bot.policy.patterns import (
    NameGlobs,
    PathGlobs,
    Regex,
    compile_name_globs,
    compile_path_globs,
    compile_regex,
)
from bot.policy.registry import Predicate, clip, expect_true, listing, plural, register

# --- helpers shared by predicates -------------------------------------------------------------


def optional_fact(
    rule: Predicate, facts: MergeRequestFacts, value: Any, fact: str, what: str
) -> Any:
    """An optional fact's value; GitLab's refusal makes the rule undecided (UnreadableFact),
    a fact nobody fetched is a bug (MissingFactError)."""
    if value is None:
        if fact in facts.unreadable:
            raise UnreadableFact(fact, facts.unreadable[fact])
        raise MissingFactError(rule.name, what)
    return value


def changed_files(rule: Predicate, facts: MergeRequestFacts) -> tuple[ChangedFile, ...]:
    return optional_fact(rule, facts, facts.changed_files, "diffs", "changed files (diffs)")


def listed(facts: MergeRequestFacts) -> str:
    """How much of the change GitLab listed, for evidence: `GitLab listed 1000 of 1000+ files`."""
    count = len(facts.changed_files or ())
    if facts.changes_count and facts.changes_count != str(count):
        return f"GitLab listed {count} of {facts.changes_count} files"
    return f"GitLab listed {plural(count, 'file')}, but not every change"


SPLIT_FIX = "split the change into smaller merge requests that GitLab can list in full"


def changed_paths(files: tuple[ChangedFile, ...]) -> Iterator[str]:
    """Every path the change touches: both sides of a rename, deleted files too."""
    for changed in files:
        yield from changed.paths


def group_members(rule: Predicate, facts: MergeRequestFacts, group: str) -> GroupMembers:
    found = facts.group_members.get(group)
    return optional_fact(rule, facts, found, f"members of {group}", f"members of group {group}")


@dataclass(frozen=True)
class People:
    """`{users: [...], groups: [...], inherited: false}`: lower-case usernames and group paths.

    A group means its own members and its subgroups' members who can approve (Developer or
    higher, active); `inherited: true` also counts people GitLab lists for the group through a
    parent group or a group shared into it (`members/all`)."""

    users: frozenset[str] = frozenset()
    groups: tuple[str, ...] = ()
    inherited: bool = False

    @property
    def restricted(self) -> bool:
        return bool(self.users or self.groups)

    @property
    def needs(self) -> FactNeeds:
        return FactNeeds(groups=frozenset(self.groups))

    def phrase(self) -> str:
        """`acme/security or alice, bob` — who a rule accepts, for evidence and fixes."""
        parts = list(self.groups)
        if self.users:
            parts.append(", ".join(sorted(self.users)))
        return " or ".join(parts)

    def outsider(self) -> str:
        """`is not in acme/security` — why someone is not among the accepted people."""
        in_groups = f"in {' or '.join(self.groups)}"
        one_of = f"one of {', '.join(sorted(self.users))}"
        if self.users and self.groups:
            return f"is neither {in_groups} nor {one_of}"
        return f"is not {in_groups if self.groups else one_of}"

    def judge(self, rule: Predicate, facts: MergeRequestFacts, username: str) -> Membership:
        """Whether `username` (lower case) is one of these people, and why (not)."""
        if username in self.users:
            return Membership(True, "listed")
        unreadable: list[str] = []
        notes: list[str] = []
        for group in self.groups:
            try:
                members = group_members(rule, facts, group)
            except UnreadableFact as exc:
                unreadable.append(f"cannot read members of {group}: {exc.reason}")
                continue
            if username in members.members:
                return Membership(True, f"in {group}")
            if username in members.inherited:
                if self.inherited:
                    return Membership(True, f"in {group} (inherited)")
                notes.append(
                    f"is in {group} only through a parent or shared group "
                    "(`inherited: true` counts those)"
                )
            elif username in members.ineligible:
                notes.append(f"is {members.ineligible[username]} in {group}")
        if unreadable:
            return Membership(False, "; ".join(unreadable), unknown=True)
        return Membership(False, notes[0] if notes else self.outsider())


@dataclass(frozen=True)
class Membership:
    """One person against a `People` rule: counted or not, the phrase that says why, and whether
    it cannot be known (a group GitLab would not show)."""

    counted: bool
    why: str
    unknown: bool = False


def compile_people(ctx: Ctx, node: Node, what: str) -> People | None:
    """`{users: [...], groups: [...], inherited: bool}` -> People."""
    entries = ctx.mapping(node, what)
    if entries is not None and not entries:
        ctx.error(node, f"{what} needs `users`, `groups` or both")
        return None
    entries = ctx.known(entries, ("users", "groups", "inherited"), what)
    if entries is None:
        return None
    users: frozenset[str] = frozenset()
    groups: tuple[str, ...] = ()
    inherited: bool | None = False
    ok = True
    if "users" in entries:
        items = ctx.string_list(entries["users"].node, f"`{what}.users`", single_ok=True)
        ok = ok and items is not None
        users = frozenset(name.lstrip("@").lower() for name, _ in items or ())
    if "groups" in entries:
        items = ctx.string_list(entries["groups"].node, f"`{what}.groups`", single_ok=True)
        ok = ok and items is not None
        groups = tuple(dict.fromkeys(name.strip("/").lower() for name, _ in items or ()))
    if "inherited" in entries:
        inherited = ctx.boolean(entries["inherited"].node, f"`{what}.inherited`")
        ok = ok and inherited is not None
    if ok and not (users or groups):
        ctx.error(node, f"{what} needs `users`, `groups` or both")
        return None
    return People(users, groups, bool(inherited)) if ok else None


# --- text ------------------------------------------------------------------------------------


@register
class Title(Predicate):
    """`title: regex` — the MR title matches (RE2 search; anchor with ^ yourself)."""

    key = "title"
    __slots__ = ("regex",)

    def __init__(self, name: str | None, line: int, regex: Regex) -> None:
        super().__init__(name, line)
        self.regex = regex

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        regex = compile_regex(ctx, node, f"`{cls.key}`")
        return None if regex is None else cls(name, line, regex)

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        title = facts.title
        if self.regex.search(title):
            return self.outcome(
                True,
                f"{clip(title)} matches {self.regex}",
                negated_fix=f"change the title so it does not match {self.regex}",
            )
        return self.outcome(
            False,
            f"{clip(title)} does not match {self.regex}",
            fix=f"change the title to match {self.regex}",
        )


@register
class Description(Title):
    """`description: regex` — the MR description matches."""

    key = "description"
    __slots__ = ()

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        text = facts.description
        seen = f"the description {clip(text, 40)}" if text.strip() else "the empty description"
        if self.regex.search(text):
            return self.outcome(
                True,
                f"{seen} matches {self.regex}",
                negated_fix=f"change the description so it does not match {self.regex}",
            )
        return self.outcome(
            False,
            f"{seen} does not match {self.regex}",
            fix=f"change the description to match {self.regex}",
        )


# --- labels, draft, branches, author ---------------------------------------------------------


def _labels(names: list[str]) -> str:
    return ("label " if len(names) == 1 else "labels ") + ", ".join(names)


@register
class Labels(Predicate):
    """`labels: {all, any, none}` — label sets as named (exact, case-sensitive names)."""

    key = "labels"
    __slots__ = ("all", "any", "none")

    def __init__(
        self,
        name: str | None,
        line: int,
        all_: tuple[str, ...],
        any_: tuple[str, ...],
        none: tuple[str, ...],
    ) -> None:
        super().__init__(name, line)
        self.all, self.any, self.none = all_, any_, none

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        entries = ctx.mapping(node, "`labels`")
        if entries is not None and not entries:
            ctx.error(node, "`labels` needs `all`, `any` or `none`")
            return None
        entries = ctx.known(entries, ("all", "any", "none"), "`labels`")
        if entries is None:
            return None
        sets: dict[str, tuple[str, ...]] = {}
        for key in ("all", "any", "none"):
            if key in entries:
                items = ctx.string_list(entries[key].node, f"`labels.{key}`", single_ok=True)
                if items is None:
                    return None
                sets[key] = tuple(dict.fromkeys(value for value, _ in items))
        return cls(name, line, sets.get("all", ()), sets.get("any", ()), sets.get("none", ()))

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        present = facts.labels
        held: list[str] = []
        failed: list[str] = []
        fixes: list[str] = []
        undo: list[str] = []
        if self.all:
            missing = [label for label in self.all if label not in present]
            if missing:
                failed.append(f"missing {_labels(missing)}")
                fixes.append(f"add {_labels(missing)}")
            else:
                held.append(f"has {_labels(list(self.all))}")
                undo.append(f"remove {_labels([self.all[0]])}")
        if self.any:
            found = [label for label in self.any if label in present]
            if found:
                held.append(f"has {_labels(found)}")
                undo.append(f"remove {_labels(found)}")
            else:
                one_of = "one of " if len(self.any) > 1 else ""
                failed.append(f"has none of {', '.join(self.any)}")
                fixes.append(f"add {one_of}{_labels(list(self.any))}")
        if self.none:
            forbidden = [label for label in self.none if label in present]
            if forbidden:
                failed.append(f"has {_labels(forbidden)}, which must not be set")
                fixes.append(f"remove {_labels(forbidden)}")
            else:
                held.append(f"has none of {', '.join(self.none)}")
                undo.append(f"add {_labels([self.none[0]])}")
        if failed:
            return self.outcome(False, "; ".join(failed), fix=" and ".join(fixes))
        return self.outcome(True, "; ".join(held), negated_fix=" or ".join(undo))


@register
class Draft(Predicate):
    """`draft: false` / `true` — the MR's draft state is as given."""

    key = "draft"
    __slots__ = ("want",)

    def __init__(self, name: str | None, line: int, want: bool) -> None:
        super().__init__(name, line)
        self.want = want

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        want = ctx.boolean(node, "`draft`")
        return None if want is None else cls(name, line, want)

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        state = "the MR is a draft" if facts.draft else "the MR is not a draft"
        to_draft, to_ready = "mark the MR as draft", "mark the MR as ready"
        if facts.draft == self.want:
            return self.outcome(True, state, negated_fix=to_ready if facts.draft else to_draft)
        return self.outcome(False, state, fix=to_draft if self.want else to_ready)


@register
class TargetBranch(Predicate):
    """`target_branch: glob | [glob...]` — GitLab-style wildcards (`*` also matches `/`)."""

    key = "target_branch"
    side = "target"
    __slots__ = ("globs",)

    def __init__(self, name: str | None, line: int, globs: NameGlobs) -> None:
        super().__init__(name, line)
        self.globs = globs

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        globs = compile_name_globs(ctx, node, f"`{cls.key}`")
        return None if globs is None else cls(name, line, globs)

    def branch(self, facts: MergeRequestFacts) -> str:
        return facts.target_branch

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        branch = self.branch(facts)
        if self.globs.matches(branch):
            return self.outcome(
                True,
                f"{branch} matches {self.globs}",
                negated_fix=f"use a {self.side} branch other than {self.globs}",
            )
        return self.outcome(
            False,
            f"{branch} is not one of {self.globs}",
            fix=f"use a {self.side} branch matching {self.globs}",
        )


@register
class SourceBranch(TargetBranch):
    """`source_branch: glob | [glob...]`."""

    key = "source_branch"
    side = "source"
    __slots__ = ()

    def branch(self, facts: MergeRequestFacts) -> str:
        return facts.source_branch


@register
class Author(Predicate):
    """`author: {users, groups}` — the MR's author is one of them."""

    key = "author"
    __slots__ = ("people", "who")

    def __init__(self, name: str | None, line: int, people: People) -> None:
        super().__init__(name, line, people.needs)
        self.people = people
        self.who = people.phrase()

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        people = compile_people(ctx, node, "`author`")
        return None if people is None else cls(name, line, people)

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        author = facts.author.username
        membership = self.people.judge(self, facts, author.lower())
        if membership.counted:
            why = membership.why
            detail = f"{author} is {'one of ' + self.who if why == 'listed' else why}"
            return self.outcome(True, detail, negated_fix=f"have someone other than {self.who}")
        fix = f"have the change authored by {self.who}"
        if membership.unknown:
            return self.undecided(f"{author}: {membership.why}", fix=fix)
        return self.outcome(False, f"{author} {membership.why}", fix=fix)


# --- the diff --------------------------------------------------------------------------------


@register
class ChangedFiles(Predicate):
    """`changed_files: [glob...]` — some changed path matches (gitignore-style globs)."""

    key = "changed_files"
    __slots__ = ("globs",)

    def __init__(self, name: str | None, line: int, globs: PathGlobs) -> None:
        super().__init__(name, line, FactNeeds(diffs=True))
        self.globs = globs

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        globs = compile_path_globs(ctx, node, f"`{cls.key}`")
        return None if globs is None else cls(name, line, globs)

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        files = changed_files(self, facts)
        matches = self.globs.matches
        total = 0
        for path in changed_paths(files):
            total += 1
            if matches(path):
                return self.outcome(
                    True,
                    f"{path} matches {self.globs}",
                    negated_fix=f"change no files matching {self.globs}",
                )
        if not facts.paths_complete:
            # The files GitLab did not list may match: a lower bound is no proof of absence.
            return self.undecided(
                f"no path GitLab listed matches {self.globs}, but {listed(facts)}",
                fix=SPLIT_FIX,
            )
        if not total:
            detail = "the MR changes no files"
        else:
            detail = f"no changed path matches {self.globs} ({plural(total, 'path')} checked)"
        return self.outcome(False, detail, fix=f"change a file matching {self.globs}")


@register
class OnlyChangedFiles(ChangedFiles):
    """`only_changed_files: [glob...]` — every changed path matches (an empty diff passes)."""

    key = "only_changed_files"
    __slots__ = ()

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        files = changed_files(self, facts)
        matches = self.globs.matches
        total = 0
        outside: list[str] = []
        for path in changed_paths(files):
            total += 1
            if not matches(path):
                outside.append(path)
        if not outside and not facts.paths_complete:
            return self.undecided(
                f"the {plural(total, 'path')} GitLab listed match {self.globs}, but "
                f"{listed(facts)}",
                fix=SPLIT_FIX,
            )
        if not total:
            return self.outcome(
                True,
                f"the MR changes no files, so none is outside {self.globs}",
                negated_fix=f"change a file outside {self.globs}",
            )
        if not outside:
            return self.outcome(
                True,
                f"all {plural(total, 'changed path')} match {self.globs}",
                negated_fix=f"change a file outside {self.globs}",
            )
        return self.outcome(
            False,
            f"{len(outside)} of {plural(total, 'changed path')} "
            f"{'is' if len(outside) == 1 else 'are'} outside {self.globs}: {listing(outside)}",
            fix=f"limit the change to files matching {self.globs}",
        )


class _Bounds(Predicate):
    """Shared `{max, min}` handling for size predicates."""

    unit = ""
    __slots__ = ("max", "min")

    def __init__(self, name: str | None, line: int, low: int | None, high: int | None) -> None:
        super().__init__(name, line, FactNeeds(diffs=True, line_counts=True))
        self.min, self.max = low, high

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        what = f"`{cls.key}`"
        entries = ctx.mapping(node, what)
        if entries is not None and not entries:
            ctx.error(node, f"{what} needs `max`, `min` or both")
            return None
        entries = ctx.known(entries, ("max", "min"), what)
        if entries is None:
            return None
        bounds: dict[str, int | None] = {"min": None, "max": None}
        for key in ("min", "max"):
            if key in entries:
                value = ctx.integer(entries[key].node, f"`{cls.key}.{key}`", minimum=0)
                if value is None:
                    return None
                bounds[key] = value
        low, high = bounds["min"], bounds["max"]
        if low is not None and high is not None and low > high:
            ctx.error(entries["min"].node, f"{what}: `min` ({low}) is greater than `max` ({high})")
            return None
        return cls(name, line, low, high)

    def measure(self, files: tuple[ChangedFile, ...]) -> int:
        raise NotImplementedError

    def exact(self, facts: MergeRequestFacts) -> bool:
        """Whether `measure` is the true value, not a lower bound."""
        raise NotImplementedError

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        value = self.measure(changed_files(self, facts))
        exact = self.exact(facts)
        shown = str(value) if exact else f"at least {value}"
        shrink = (
            f"reduce the change to at most {plural(self.max, self.unit)}"
            if self.max is not None
            else None
        )
        # A lower bound can prove `> max` and `>= min`, never `<= max` or `< min`.
        if self.max is not None and value > self.max:
            return self.outcome(False, f"{shown} > max {self.max}", fix=shrink)
        if not exact and (self.max is not None or (self.min is not None and value < self.min)):
            return self.undecided(
                f"{shown}, so {self.bounds()} cannot be confirmed: {self.doubt(facts)}",
                fix=shrink or SPLIT_FIX,
            )
        if self.min is not None and value < self.min:
            return self.outcome(
                False,
                f"{value} < min {self.min}",
                fix=f"grow the change to at least {plural(self.min, self.unit)}",
            )
        if self.min is not None and self.max is not None:
            held = f"{value} within min {self.min}, max {self.max}"
        elif self.max is not None:
            held = f"{value} <= max {self.max}"
        else:
            held = f"{shown} >= min {self.min}"
        undo = (
            f"grow the change beyond {plural(self.max, self.unit)}"
            if self.max is not None
            else f"shrink the change below {plural(self.min or 0, self.unit)}"
        )
        return self.outcome(True, held, negated_fix=undo)

    def bounds(self) -> str:
        parts = [f"min {self.min}"] if self.min is not None else []
        parts += [f"max {self.max}"] if self.max is not None else []
        return ", ".join(parts)

    def doubt(self, facts: MergeRequestFacts) -> str:
        return listed(facts)


@register
class ChangedLines(_Bounds):
    """`changed_lines: {max, min}` — additions + deletions over the whole diff."""

    key = "changed_lines"
    unit = "line"
    __slots__ = ()

    def measure(self, files: tuple[ChangedFile, ...]) -> int:
        return sum(changed.additions + changed.deletions for changed in files)

    def exact(self, facts: MergeRequestFacts) -> bool:
        return facts.line_counts_exact

    def doubt(self, facts: MergeRequestFacts) -> str:
        if not facts.file_count_exact:
            return listed(facts)
        return "GitLab did not show the lines of every file (it collapses big diffs)"


@register
class ChangedFilesCount(_Bounds):
    """`changed_files_count: {max, min}` — diff entries (a rename is one file)."""

    key = "changed_files_count"
    unit = "file"
    __slots__ = ()

    def measure(self, files: tuple[ChangedFile, ...]) -> int:
        return len(files)

    def exact(self, facts: MergeRequestFacts) -> bool:
        return facts.file_count_exact


# --- review, pipeline, threads, commits, conflicts -------------------------------------------


@register
class Approvals(Predicate):
    """`approvals: {count, from: {users, groups, inherited}, exclude_author}` — enough eligible
    approvals. An approval GitLab may still delete (given before a push, in a project that
    resets approvals on push, while GitLab has not settled them) does not count yet."""

    key = "approvals"
    __slots__ = ("count", "exclude_author", "people", "source")

    def __init__(
        self, name: str | None, line: int, count: int, people: People, exclude_author: bool
    ) -> None:
        super().__init__(name, line, FactNeeds(approvals=True) | people.needs)
        self.count, self.people = count, people
        self.exclude_author = exclude_author
        who = people.phrase()
        self.source = f" from {who}" if who else ""

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        keys = ("count", "from", "exclude_author")
        entries = ctx.known(ctx.mapping(node, "`approvals`"), keys, "`approvals`")
        if entries is None:
            return None
        count: int | None = 1
        if "count" in entries:
            count = ctx.integer(entries["count"].node, "`approvals.count`", minimum=1)
        people: People | None = People()
        if "from" in entries:
            people = compile_people(ctx, entries["from"].node, "`approvals.from`")
        exclude: bool | None = True
        if "exclude_author" in entries:
            exclude = ctx.boolean(entries["exclude_author"].node, "`approvals.exclude_author`")
        if count is None or people is None or exclude is None:
            return None
        return cls(name, line, count, people, exclude)

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        approved_by = optional_fact(self, facts, facts.approved_by, "approvals", "approvals")
        author = facts.author.username.lower()
        counted: list[str] = []
        unsettled: list[str] = []  # would count, but GitLab may still delete the approval
        undecided: list[str] = []  # would count if GitLab showed the group
        notes: list[str] = []
        seen: set[str] = set()
        for user in approved_by:
            login = user.username.lower()
            if login in seen:
                continue
            seen.add(login)
            if self.exclude_author and login == author:
                notes.append(f"{user.username} approved but is the author")
                continue
            if self.people.restricted:
                membership = self.people.judge(self, facts, login)
                if membership.unknown:
                    undecided.append(user.username)
                    notes.append(f"{user.username} approved; {membership.why}")
                    continue
                if not membership.counted:
                    notes.append(f"{user.username} approved but {membership.why}")
                    continue
            if login in facts.unsettled_approvers:
                unsettled.append(user.username)
            else:
                counted.append(user.username)
        if unsettled:
            notes.append(
                f"{listing(unsettled)} approved before the push to {facts.sha[:8]} and GitLab "
                "may still remove it"
            )
        details = [", ".join(counted)] if counted else []
        details += notes or ([] if counted else ["no approvals yet"])
        detail = f"{len(counted)} of {self.count}{self.source} ({'; '.join(details)})"
        if len(counted) >= self.count:
            return self.outcome(
                True,
                detail,
                negated_fix=f"have fewer than {plural(self.count, 'approval')}{self.source}",
            )
        more = self.count - len(counted)
        fix = f"get {more} more {plural(more, 'approval')[2:]}{self.source}"
        if len(counted) + len(unsettled) + len(undecided) >= self.count:
            if unsettled and len(counted) + len(unsettled) >= self.count:
                return self.undecided(
                    f"waiting for GitLab to settle approvals after the push: {detail}",
                    fix="wait: the bot looks again when GitLab has settled the approvals",
                    wake_at=facts.approvals_settle_at,
                )
            return self.undecided(detail, fix=fix)
        return self.outcome(False, detail, fix=fix)


PIPELINE_STATUSES = (
    "created",
    "waiting_for_resource",
    "preparing",
    "pending",
    "running",
    "success",
    "failed",
    "canceled",
    "skipped",
    "manual",
    "scheduled",
)
_IN_PROGRESS = frozenset(
    {"created", "waiting_for_resource", "preparing", "pending", "running", "scheduled"}
)


@register
class Pipeline(Predicate):
    """`pipeline: success` or `[success, skipped]` — the status of the pipeline built for the
    MR's head is one of these. A pipeline for an older head never counts (GitLab keeps showing
    it as the head pipeline after a push until a pipeline for the new head exists)."""

    key = "pipeline"
    __slots__ = ("allowed", "wanted")

    def __init__(self, name: str | None, line: int, allowed: tuple[str, ...]) -> None:
        super().__init__(name, line, FactNeeds(pipeline=True))
        self.allowed = frozenset(allowed)
        self.wanted = " or ".join(allowed)

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        items = ctx.string_list(node, "`pipeline`", single_ok=True)
        if items is None:
            return None
        ok = True
        for status, item in items:
            if status not in PIPELINE_STATUSES:
                ctx.error(
                    item,
                    f"unknown pipeline status `{status}`{suggest(status, PIPELINE_STATUSES)} "
                    f"(one of {', '.join(PIPELINE_STATUSES)})",
                )
                ok = False
        return cls(name, line, tuple(dict.fromkeys(s for s, _ in items))) if ok else None

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        if "pipeline" in facts.unreadable:
            raise UnreadableFact("pipeline", facts.unreadable["pipeline"])
        status = facts.pipeline_status
        if status is not None and status in self.allowed:
            return self.outcome(
                True, f"the pipeline is {status}", negated_fix="make the pipeline not " + status
            )
        if status is None:
            stale = (
                f" (GitLab still shows the pipeline of {facts.stale_pipeline_sha[:8]})"
                if facts.stale_pipeline_sha
                else ""
            )
            return self.undecided(
                f"waiting for a pipeline for {facts.sha[:8]}{stale}",
                fix=f"run a pipeline for {facts.sha[:8]} (needs {self.wanted})",
            )
        if status in _IN_PROGRESS:
            return self.outcome(
                False,
                f"waiting for pipeline ({status})",
                fix=f"wait for the pipeline to finish (needs {self.wanted})",
            )
        return self.outcome(
            False,
            f"the pipeline is {status}, not {self.wanted}",
            fix=f"fix the pipeline and run it again until it is {self.wanted}",
        )


@register
class ThreadsResolved(Predicate):
    """`threads_resolved: true` — no unresolved thread.

    Counts unresolved resolvable threads from the discussions when they were fetched (they are
    declared as needed), so it holds regardless of the project's "all threads must be resolved"
    setting; without them it falls back to GitLab's `blocking_discussions_resolved`.
    """

    key = "threads_resolved"
    __slots__ = ()

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        if not expect_true(ctx, node, cls.key):
            return None
        return cls(name, line, FactNeeds(discussions=True))

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        count = facts.unresolved_threads
        if count is None:
            if facts.blocking_discussions_resolved:
                return self.outcome(
                    True,
                    "GitLab reports every blocking thread resolved",
                    negated_fix="open a thread",
                )
            return self.outcome(
                False,
                "GitLab reports unresolved blocking threads",
                fix="resolve the open threads",
            )
        if count:
            threads = plural(count, "unresolved thread")
            return self.outcome(False, f"{threads}", fix=f"resolve the {threads}")
        return self.outcome(True, "no unresolved threads", negated_fix="open a thread")


_SIGNED_OFF = Regex(r"(?mi)^signed-off-by:[ \t]*\S")


@register
class Commits(Predicate):
    """`commits: {message: regex, signed_off: true}` — every commit complies."""

    key = "commits"
    __slots__ = ("message", "signed_off")

    def __init__(self, name: str | None, line: int, message: Regex | None, signed: bool) -> None:
        super().__init__(name, line, FactNeeds(commits=True))
        self.message, self.signed_off = message, signed

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        entries = ctx.mapping(node, "`commits`")
        if entries is not None and not entries:
            ctx.error(node, "`commits` needs `message`, `signed_off` or both")
            return None
        entries = ctx.known(entries, ("message", "signed_off"), "`commits`")
        if entries is None:
            return None
        message = signed = None
        ok = True
        if "message" in entries:
            message = compile_regex(ctx, entries["message"].node, "`commits.message`")
            ok = message is not None
        if "signed_off" in entries:
            signed = expect_true(ctx, entries["signed_off"].node, "commits.signed_off")
            ok = ok and signed
        return cls(name, line, message, bool(signed)) if ok else None

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        commits = optional_fact(self, facts, facts.commits, "commits", "commits")
        total = len(commits)
        if not total:
            return self.outcome(True, "the MR has no commits", negated_fix="push a commit")
        bad_message = unsigned = ()
        if self.message is not None:
            search = self.message.search
            bad_message = [c for c in commits if not search(c.message)]
        if self.signed_off:
            unsigned = [c for c in commits if not _SIGNED_OFF.search(c.message)]
        problems, fixes = [], []
        if bad_message:
            shown = listing(
                [f"{c.sha[:8]} {clip(c.message.partition(chr(10))[0], 40)}" for c in bad_message]
            )
            problems.append(
                f"{len(bad_message)} of {plural(total, 'commit')} "
                f"{'does' if len(bad_message) == 1 else 'do'} not match {self.message}: {shown}"
            )
            fixes.append(f"reword commits to match {self.message}")
        if unsigned:
            shown = listing([c.sha[:8] for c in unsigned])
            problems.append(
                f"{len(unsigned)} of {plural(total, 'commit')} "
                f"{'lacks' if len(unsigned) == 1 else 'lack'} a Signed-off-by line: {shown}"
            )
            fixes.append("sign off every commit (git commit -s)")
        if problems:
            return self.outcome(False, "; ".join(problems), fix=" and ".join(fixes))
        one = total == 1
        held = [f"{'matches' if one else 'match'} {self.message}"] if self.message else []
        held += [f"{'is' if one else 'are'} signed off"] if self.signed_off else []
        every = "the only commit" if one else f"all {total} commits"
        return self.outcome(
            True, f"{every} {' and '.join(held)}", negated_fix="push a commit that does not comply"
        )


@register
class NoConflicts(Predicate):
    """`no_conflicts: true` — the MR has no merge conflicts."""

    key = "no_conflicts"
    __slots__ = ()

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        return cls(name, line) if expect_true(ctx, node, cls.key) else None

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        if facts.has_conflicts:
            return self.outcome(
                False,
                "the MR has merge conflicts",
                fix="rebase or merge the target branch and resolve the conflicts",
            )
        return self.outcome(True, "no merge conflicts", negated_fix="create a merge conflict")
