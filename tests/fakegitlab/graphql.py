"""POST /api/graphql, for the MR fields the bot asks (diffStats, diffRefs, ...)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tests.fakegitlab.diffs import (
    _line_count_of,
    _stored_diffs,
)
from tests.fakegitlab.server import (
    JSON,
    Server,
)


class GraphQL(Server):
    """The GraphQL endpoint, for the fields the bot asks."""

    def _graphql(self, body: Any) -> JSON:
        """POST /api/graphql, for the fields the bot asks: `project(fullPath:)
        { mergeRequest(iid:) { ... } }` with `diffRefs { baseSha headSha startSha }`,
        `diffHeadSha`, `diffStats { path additions deletions }` and `diffStatsSummary
        { additions deletions changes fileCount }` (app/graphql/types/merge_request_type.rb).

        diffStats come from Gitaly (`repository.diff_stats(base, head)`: git diff --numstat)
        for the whole change: no diff limits, no pagination, the NEW path of a rename only
        (app/graphql/types/diff_stats_type.rb). diffStatsSummary's fileCount is the stored
        file count when the MR's metrics have line counts, so it is capped like changes_count
        (app/graphql/batch_loaders/merge_request_diff_summary_batch_loader.rb). Errors are
        answered as graphql-ruby does: HTTP 200 with `errors`."""
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return {"errors": [{"message": "No query string was present"}]}
        variables = body.get("variables") or {}
        try:
            tree = _parse_selection(body["query"])
        except ValueError as error:
            return {"errors": [{"message": f"Parse error: {error}"}]}
        project_node = tree.get("project")
        if project_node is None or set(tree) - {"project"}:
            unknown = sorted(set(tree) - {"project"}) or ["(none)"]
            return {"errors": [{"message": f"Field '{unknown[0]}' doesn't exist on type 'Query'"}]}
        full_path = _graphql_arg(project_node, "fullPath", variables)
        project = next(
            (
                p
                for p in self.projects.values()
                if p.data["path_with_namespace"].lower() == str(full_path).lower()
            ),
            None,
        )
        mr_node = project_node["fields"].get("mergeRequest")
        if mr_node is None:
            return {"errors": [{"message": "Field 'project' must have a selection"}]}
        if project is None:
            return {"data": {"project": None}}
        iid = _graphql_arg(mr_node, "iid", variables)
        mr = project.mrs.get(int(iid)) if str(iid).isdigit() else None
        if mr is None:
            return {"data": {"project": {"mergeRequest": None}}}
        stored, _ = _stored_diffs(mr.diffs)
        stats = [
            {
                "path": e["new_path"],
                "additions": _line_count_of(e, "+"),
                "deletions": _line_count_of(e, "-"),
            }
            for e in mr.diffs
        ]
        refs = mr.data.get("diff_refs") or {}
        values: dict[str, Any] = {
            "diffHeadSha": mr.data["sha"],
            "diffRefs": {
                "baseSha": refs.get("base_sha"),
                "headSha": refs.get("head_sha"),
                "startSha": refs.get("start_sha"),
            },
            "diffStats": stats,
            "diffStatsSummary": {
                "additions": sum(x["additions"] for x in stats),
                "deletions": sum(x["deletions"] for x in stats),
                "changes": sum(x["additions"] + x["deletions"] for x in stats),
                "fileCount": len(stored),
            },
        }
        out: JSON = {}
        for name, node in mr_node["fields"].items():
            if name not in values:
                return {
                    "errors": [{"message": f"Field '{name}' doesn't exist on type 'MergeRequest'"}]
                }
            value = values[name]
            wanted = set(node["fields"])
            if isinstance(value, list):
                out[name] = [{k: item.get(k) for k in wanted} for item in value]
            elif isinstance(value, dict):
                out[name] = {k: value.get(k) for k in wanted}
            else:
                out[name] = value
        return {"data": {"project": {"mergeRequest": out}}}


_GRAPHQL_TOKEN = re.compile(
    r'\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[{}():,!$\[\]])|(?P<string>"[^"]*")|(?P<number>-?\d+))'
)


def _parse_selection(query: str) -> dict[str, Any]:
    """A small GraphQL reader for the fake: the top selection set of a query as
    {field: {"args": {name: raw value}, "fields": {...}}}. Enough for the bot's queries."""
    tokens: list[str] = []
    position = 0
    text = query.strip()
    while position < len(text):
        match = _GRAPHQL_TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(f"unexpected character at {position}")
        tokens.append(match.group().strip())
        position = match.end()
    tokens = [t for t in tokens if t and t != ","]
    # Skip `query Name($a: T!, ...)` up to the first `{`.
    start = tokens.index("{")

    def selection(index: int) -> tuple[dict[str, Any], int]:
        assert tokens[index] == "{"
        index += 1
        fields: dict[str, Any] = {}
        while tokens[index] != "}":
            name = tokens[index]
            index += 1
            args: dict[str, str] = {}
            if tokens[index] == "(":
                index += 1
                while tokens[index] != ")":
                    key = tokens[index]
                    value = (
                        tokens[index + 2] if tokens[index + 2] != "$" else "$" + tokens[index + 3]
                    )
                    args[key] = value
                    index += 3 if tokens[index + 2] != "$" else 4
                index += 1
            sub: dict[str, Any] = {}
            if index < len(tokens) and tokens[index] == "{":
                sub, index = selection(index)
            fields[name] = {"args": args, "fields": sub}
        return fields, index + 1

    try:
        tree, _ = selection(start)
    except (IndexError, AssertionError):
        raise ValueError("unbalanced selection set") from None
    return tree


def _graphql_arg(node: Mapping[str, Any], name: str, variables: Mapping[str, Any]) -> Any:
    raw = node["args"].get(name)
    if raw is None:
        return None
    if raw.startswith("$"):
        return variables.get(raw[1:])
    return raw.strip('"')
