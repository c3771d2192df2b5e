"""The run search language MLflow users know, parsed into parameterised SQL.

    metrics.acc > 0.9 and params.lr = '0.01' and tags.team != 'x' and attributes.status = 'FINISHED'

Keys are `metrics.`, `params.`, `tags.` or `attributes.` followed by a name, or by a name in
backticks when it holds spaces, dots or other punctuation. Comparators: = != < <= > >= for
numbers (metrics, start_time, end_time); = != LIKE ILIKE IN (...) NOT IN (...) for strings
(params, tags, name, status, run_id). `and` binds tighter than `or`; parentheses group.
Every value becomes a query parameter: nothing the user writes is ever spliced into SQL.
A malformed filter is InvalidArgument naming the position and what was expected there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from runstream.errors import InvalidArgument
from runstream.wire.status import RUN_STATUS_VALUES

PREFIXES = {
    "metrics": "metric",
    "metric": "metric",
    "params": "param",
    "param": "param",
    "tags": "tag",
    "tag": "tag",
    "attributes": "attribute",
    "attribute": "attribute",
    "attr": "attribute",
    "run": "attribute",
}
NUMERIC_ATTRIBUTES = {"start_time": "r.start_time_ms", "end_time": "r.end_time_ms"}
STRING_ATTRIBUTES = {"name": "r.name", "run_name": "r.name", "run_id": "r.run_id::text", "status": "r.status"}
STATUSES = RUN_STATUS_VALUES
NUMERIC_OPS = {"=", "!=", "<", "<=", ">", ">="}
# Bounds that keep parsing and the query plan small whatever a caller sends.
MAX_FILTER_CHARS = 20_000
MAX_COMPARISONS = 200
MAX_DEPTH = 32  # nested parentheses
MAX_ORDER_BY = 10
STRING_OPS = {"=", "!=", "LIKE", "ILIKE", "IN", "NOT IN"}

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<num>-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\w.])
      | (?P<str>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.)*")
      | (?P<key>[A-Za-z_]+\.(?:`[^`]+`|[A-Za-z0-9_\-/:]+(?:\.[A-Za-z0-9_\-/:]+)*))
      | (?P<op><=|>=|!=|<>|=|<|>)
      | (?P<word>[A-Za-z_]+)
      | (?P<punct>[(),])
    )""",
    re.X,
)


@dataclass
class Token:
    kind: str
    text: str
    pos: int


def tokenize(text: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            start = len(text) - len(text[pos:].lstrip())
            raise InvalidArgument(f"filter: unexpected {text[start : start + 12]!r} at position {start}")
        kind = m.lastgroup or ""
        tokens.append(Token(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


@dataclass
class Sql:
    """A WHERE or ORDER BY fragment with its parameters, numbered from `offset + 1`."""

    args: list[Any] = field(default_factory=list)
    offset: int = 0

    def param(self, value: Any) -> str:
        self.args.append(value)
        return f"${self.offset + len(self.args)}"


def check_like(pattern: str, what: str) -> None:
    """A LIKE pattern PostgreSQL accepts: backslash escapes a character, so it cannot end one."""
    trailing = len(pattern) - len(pattern.rstrip("\\"))
    if trailing % 2:
        raise InvalidArgument(
            f"{what} {pattern[-40:]!r} ends with an escape (\\): escape a character, or write \\\\ for a backslash"
        )


class _Parser:
    def __init__(self, text: str, sql: Sql) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.sql = sql
        self.depth = 0
        self.comparisons = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def fail(self, expected: str, token: Token | None = None) -> InvalidArgument:
        token = token or self.peek()
        found = repr(token.text) if token.kind != "end" else "the end of the filter"
        return InvalidArgument(f"filter: expected {expected} at position {token.pos}, found {found}")

    def word(self, *words: str) -> bool:
        token = self.peek()
        return token.kind == "word" and token.text.upper() in words

    def parse(self) -> str:
        where = self.disjunction()
        if self.peek().kind != "end":
            raise self.fail("'and', 'or' or the end of the filter")
        return where

    def disjunction(self) -> str:
        parts = [self.conjunction()]
        while self.word("OR"):
            self.take()
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def conjunction(self) -> str:
        parts = [self.primary()]
        while self.word("AND"):
            self.take()
            parts.append(self.primary())
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def primary(self) -> str:
        token = self.peek()
        if token.kind == "punct" and token.text == "(":
            self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise InvalidArgument(f"filter: parentheses nest deeper than {MAX_DEPTH} at position {token.pos}")
            inner = self.disjunction()
            self.depth -= 1
            if self.peek().text != ")":
                raise self.fail("')'")
            self.take()
            return inner
        return self.comparison()

    def comparison(self) -> str:
        token = self.take()
        self.comparisons += 1
        if self.comparisons > MAX_COMPARISONS:
            raise InvalidArgument(f"filter: more than {MAX_COMPARISONS} comparisons (at position {token.pos})")
        if token.kind != "key":
            raise self.fail("a key such as metrics.acc, params.lr, tags.team or attributes.status", token)
        kind, name = split_key(token)
        op = self.operator()
        if kind == "metric" or (kind == "attribute" and name in NUMERIC_ATTRIBUTES):
            if op not in NUMERIC_OPS:
                raise self.fail(f"a numeric comparator ({' '.join(sorted(NUMERIC_OPS))}) for {token.text}")
            value = self.number()
            if kind == "metric":
                return (
                    f"EXISTS (SELECT 1 FROM metric_summaries ms WHERE ms.run_id = r.run_id AND ms.key = "
                    f"{self.sql.param(name)} AND ms.last_value {op} {self.sql.param(value)})"
                )
            return f"{NUMERIC_ATTRIBUTES[name]} {op} {self.sql.param(value)}"
        if op not in STRING_OPS:
            raise self.fail(f"a string comparator (= != LIKE ILIKE IN NOT IN) for {token.text}")
        values = self.strings() if op in ("IN", "NOT IN") else [self.string()]
        if kind == "attribute":
            if name not in STRING_ATTRIBUTES:
                known = ", ".join(sorted([*NUMERIC_ATTRIBUTES, *STRING_ATTRIBUTES]))
                raise InvalidArgument(f"filter: unknown attribute {name!r} at position {token.pos}; known: {known}")
            column = STRING_ATTRIBUTES[name]
            if name == "status":
                return self.status(column, op, values, token)
            return self.string_test(column, op, values)
        table = "params" if kind == "param" else "tags"
        return (
            f"EXISTS (SELECT 1 FROM {table} t WHERE t.run_id = r.run_id AND t.key = {self.sql.param(name)} "
            f"AND {self.string_test('t.value', op, values)})"
        )

    def status(self, column: str, op: str, values: list[str], token: Token) -> str:
        if op in ("LIKE", "ILIKE"):
            raise self.fail("= != IN or NOT IN for attributes.status", token)
        codes = []
        for v in values:
            if v.upper() not in STATUSES:
                raise InvalidArgument(f"filter: status {v!r} is not one of {', '.join(STATUSES)}")
            codes.append(STATUSES[v.upper()])
        if op in ("IN", "NOT IN"):
            neg = "NOT " if op == "NOT IN" else ""
            return f"{neg}{column} = ANY({self.sql.param(codes)}::int2[])"
        return f"{column} {op} {self.sql.param(codes[0])}"

    def string_test(self, column: str, op: str, values: list[str]) -> str:
        if op in ("LIKE", "ILIKE"):
            check_like(values[0], f"filter: the {op} pattern")
        if op in ("IN", "NOT IN"):
            neg = "NOT " if op == "NOT IN" else ""
            return f"{neg}{column} = ANY({self.sql.param(values)}::text[])"
        return f"{column} {op} {self.sql.param(values[0])}"

    def operator(self) -> str:
        token = self.take()
        if token.kind == "op":
            return "!=" if token.text == "<>" else token.text
        if token.kind == "word":
            word = token.text.upper()
            if word in ("LIKE", "ILIKE", "IN"):
                return word
            if word == "NOT" and self.word("IN"):
                self.take()
                return "NOT IN"
        raise self.fail("a comparator (= != < <= > >= LIKE ILIKE IN NOT IN)", token)

    def number(self) -> float:
        token = self.take()
        if token.kind != "num":
            raise self.fail("a number", token)
        return float(token.text)

    def string(self) -> str:
        token = self.take()
        if token.kind != "str":
            raise self.fail("a quoted string", token)
        body = token.text[1:-1]
        return body.replace("''", "'") if token.text[0] == "'" else body

    def strings(self) -> list[str]:
        if self.take().text != "(":
            raise self.fail("'(' to start a list", self.tokens[self.i - 1])
        values = [self.string()]
        while self.peek().text == ",":
            self.take()
            values.append(self.string())
        if self.take().text != ")":
            raise self.fail("',' or ')' in the list", self.tokens[self.i - 1])
        return values


def split_key(token: Token) -> tuple[str, str]:
    prefix, _, name = token.text.partition(".")
    kind = PREFIXES.get(prefix.lower())
    if kind is None:
        raise InvalidArgument(
            f"filter: unknown key prefix {prefix!r} at position {token.pos}; "
            "use metrics., params., tags. or attributes."
        )
    if name.startswith("`"):
        name = name[1:-1]
    return kind, name


def where(text: str, sql: Sql) -> str:
    """The SQL condition (on runs aliased `r`) for a filter; "TRUE" for an empty one."""
    if not text.strip():
        return "TRUE"
    if len(text) > MAX_FILTER_CHARS:
        raise InvalidArgument(f"filter is {len(text):,} characters; the limit is {MAX_FILTER_CHARS:,}")
    return _Parser(text, sql).parse()


@dataclass(frozen=True)
class Order:
    """An ORDER BY on runs `r`: the joins bringing each ordering metric, param or tag beside
    its run (`<table> o<i> ON ...`, at most one row per run), and the ORDER BY items. When the
    first item is such a value, `leading` is it without NULLS LAST: runs.search_runs then
    reads the runs that have it through an inner join, in the order of an index on it, before
    those that lack it."""

    joins: tuple[str, ...]
    items: tuple[str, ...]
    leading: str = ""


def order_by(clauses: list[str], sql: Sql) -> Order:
    """The ordering for e.g. ["metrics.acc DESC", "attributes.start_time"], nulls last (a run
    without that metric, param or tag comes after those with it)."""
    if len(clauses) > MAX_ORDER_BY:
        raise InvalidArgument(f"order_by has {len(clauses)} clauses; the limit is {MAX_ORDER_BY}")
    joins, items, leading = [], [], ""
    for i, clause in enumerate(clauses):
        if len(clause) > 1_000:
            raise InvalidArgument(f"order_by clause is {len(clause):,} characters; the limit is 1,000")
        tokens = tokenize(clause)
        if tokens[0].kind != "key":
            raise InvalidArgument(f"order_by {clause!r}: expected a key such as metrics.acc or attributes.start_time")
        kind, name = split_key(tokens[0])
        direction = "ASC"
        rest = [t for t in tokens[1:] if t.kind != "end"]
        if rest:
            if len(rest) > 1 or rest[0].text.upper() not in ("ASC", "DESC"):
                raise InvalidArgument(f"order_by {clause!r}: expected ASC or DESC after the key")
            direction = rest[0].text.upper()
        if kind in ("metric", "param", "tag"):  # at most one row per run: (run_id, key) is each table's key
            table, column = {"metric": ("metric_summaries", "last_value"), "param": ("params", "value")}.get(
                kind, ("tags", "value")
            )
            joins.append(f"{table} o{i} ON o{i}.run_id = r.run_id AND o{i}.key = {sql.param(name)}")
            expr = f"o{i}.{column}"
            if i == 0:
                leading = f"{expr} {direction}"
        elif name in NUMERIC_ATTRIBUTES:
            expr = NUMERIC_ATTRIBUTES[name]
        elif name in STRING_ATTRIBUTES:
            expr = STRING_ATTRIBUTES[name]
        else:
            raise InvalidArgument(f"order_by {clause!r}: unknown attribute {name!r}")
        items.append(f"{expr} {direction} NULLS LAST")
    return Order(tuple(joins), (*items, "r.start_time_ms DESC", "r.run_id"), leading)
