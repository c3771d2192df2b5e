"""The schema the migrations make, written out: schema.sql is a snapshot of it (for reading and
review; the server applies migrations/, never this file), rendered by render() from the
catalog of a database the migrations were applied to.

render() gives the schema runstream's tables are in (the connection's current schema) as SQL
that recreates it: extensions, functions, then each table (referenced tables first) with its
sequences, columns, constraints, storage, indexes, triggers and comments, in a stable order
and without anything that varies between databases (owners, oids, data). Applied to an empty
database, schema.sql gives a database that renders the same (tests/integration/test_schema.py). What it
does not know how to write (views, types of our own, identity columns...) it refuses, so the
snapshot never leaves part of the schema out.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from importlib import resources

from runstream.server.storage.db import Conn

SNAPSHOT = "schema.sql"
HEADER = """\
-- The schema as runstream's migrations (migrations/*.sql, and schema_migrations, which
-- migrate.py makes) leave it: a snapshot for reading and for review. The server applies the
-- migrations, never this file. Do not edit: regenerate with `python scripts/gen_schema.py`
-- (tests/integration/test_schema.py fails when it is stale). Migration 0010 also inserts the deployment row.
"""

_STORAGE = {"p": "PLAIN", "e": "EXTERNAL", "m": "MAIN", "x": "EXTENDED"}


def snapshot() -> str:
    """The committed schema.sql."""
    return resources.files("runstream.server.storage").joinpath(SNAPSHOT).read_text()


@dataclass
class _Table:
    name: str
    unlogged: bool
    columns: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)  # statements that follow CREATE TABLE
    sequences: list[str] = field(default_factory=list)  # CREATE SEQUENCE of the sequences it owns
    owned: list[str] = field(default_factory=list)  # and their OWNED BY
    references: set[str] = field(default_factory=set)


async def render(conn: Conn) -> str:
    """The schema of the connection's current schema, as SQL (see the module's docstring)."""
    found = await conn.fetchrow(
        "SELECT oid, quote_ident(nspname) || '.' FROM pg_namespace WHERE nspname = current_schema()"
    )
    assert found is not None, "no current schema: search_path names no schema that exists"
    schema, qualified = found
    await _refuse_what_we_cannot_render(conn, schema)

    def unqualified(text: str) -> str:
        return text.replace(f" ON {qualified}", " ON ").replace(f"FUNCTION {qualified}", "FUNCTION ")

    out = [HEADER]
    extensions = await conn.fetch(
        """SELECT quote_ident(e.extname) AS name FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
           WHERE n.oid = $1::oid ORDER BY e.extname COLLATE "C" """,
        schema,
    )
    out += [f"CREATE EXTENSION {e['name']};\n" for e in extensions]
    functions = await conn.fetch(
        """SELECT pg_get_functiondef(p.oid) AS def FROM pg_proc p
           WHERE p.pronamespace = $1::oid AND NOT EXISTS (  -- an extension's own functions come with it
                 SELECT 1 FROM pg_depend d
                 WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
           ORDER BY p.proname COLLATE "C", pg_get_function_identity_arguments(p.oid) COLLATE "C" """,
        schema,
    )
    for f in functions:
        out.append(unqualified(f["def"]).replace("CREATE OR REPLACE FUNCTION", "CREATE FUNCTION").rstrip() + ";\n")

    tables = {
        r["relname"]: _Table(r["name"], r["relpersistence"] == "u")
        for r in await conn.fetch(
            """SELECT c.relname, quote_ident(c.relname) AS name, c.relpersistence::text FROM pg_class c
               WHERE c.relnamespace = $1::oid AND c.relkind = 'r'""",
            schema,
        )
    }
    for c in await conn.fetch(
        """SELECT c.relname, quote_ident(a.attname) AS name, format_type(a.atttypid, a.atttypmod) AS type,
                  CASE WHEN a.attcollation <> t.typcollation
                       THEN ' COLLATE ' || a.attcollation::regcollation::text ELSE '' END AS collation,
                  coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '') AS default,
                  a.attnotnull, a.attstorage::text, t.typstorage::text, a.attstattarget,
                  col_description(c.oid, a.attnum) AS comment
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_type t ON t.oid = a.atttypid
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
           WHERE c.relnamespace = $1::oid AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY c.relname, a.attnum""",
        schema,
    ):
        table = tables[c["relname"]]
        not_null = " NOT NULL" if c["attnotnull"] else ""
        table.columns.append(f"{c['name']} {c['type']}{c['collation']}{c['default']}{not_null}")
        if c["attstorage"] != c["typstorage"]:
            table.after.append(
                f"ALTER TABLE ONLY {table.name} ALTER COLUMN {c['name']} SET STORAGE {_STORAGE[c['attstorage']]};"
            )
        if c["attstattarget"] is not None and c["attstattarget"] >= 0:
            table.after.append(
                f"ALTER TABLE ONLY {table.name} ALTER COLUMN {c['name']} SET STATISTICS {c['attstattarget']};"
            )
        if c["comment"] is not None:
            comment = await conn.fetchval("SELECT quote_literal($1)", c["comment"])
            table.after.append(f"COMMENT ON COLUMN {table.name}.{c['name']} IS {comment};")

    for k in await conn.fetch(
        """SELECT c.relname, quote_ident(k.conname) AS name, pg_get_constraintdef(k.oid) AS def,
                  f.relname AS referenced
           FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid LEFT JOIN pg_class f ON f.oid = k.confrelid
           WHERE c.relnamespace = $1::oid AND c.relkind = 'r' AND k.contype IN ('p', 'u', 'c', 'x', 'f')
           ORDER BY c.relname, position(k.contype::text IN 'pucxf'), k.conname COLLATE "C" """,
        schema,
    ):
        table = tables[k["relname"]]
        table.constraints.append(f"CONSTRAINT {k['name']} {k['def']}")
        if k["referenced"] is not None and k["referenced"] != k["relname"]:
            table.references.add(k["referenced"])

    for s in await conn.fetch(
        """SELECT t.relname, quote_ident(s.relname) AS name, format_type(q.seqtypid, NULL) AS type, q.seqstart,
                  q.seqincrement, q.seqmin, q.seqmax, q.seqcache, q.seqcycle, quote_ident(a.attname) AS owner
           FROM pg_class s JOIN pg_sequence q ON q.seqrelid = s.oid
             JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid AND d.deptype = 'a'
             JOIN pg_class t ON t.oid = d.refobjid
             JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
           WHERE s.relnamespace = $1::oid AND s.relkind = 'S'
           ORDER BY s.relname COLLATE "C" """,
        schema,
    ):
        table = tables[s["relname"]]
        cycle = " CYCLE" if s["seqcycle"] else ""
        table.sequences.append(
            f"CREATE SEQUENCE {s['name']} AS {s['type']} START WITH {s['seqstart']} INCREMENT BY {s['seqincrement']} "
            f"MINVALUE {s['seqmin']} MAXVALUE {s['seqmax']} CACHE {s['seqcache']}{cycle};"
        )
        table.owned.append(f"ALTER SEQUENCE {s['name']} OWNED BY {table.name}.{s['owner']};")

    for i in await conn.fetch(
        """SELECT c.relname, pg_get_indexdef(i.indexrelid) AS def FROM pg_index i
             JOIN pg_class c ON c.oid = i.indrelid JOIN pg_class x ON x.oid = i.indexrelid
           WHERE c.relnamespace = $1::oid AND c.relkind = 'r'
             AND NOT EXISTS (SELECT 1 FROM pg_constraint k
                             WHERE k.conindid = i.indexrelid AND k.conrelid = c.oid AND k.contype IN ('p', 'u', 'x'))
           ORDER BY c.relname, x.relname COLLATE "C" """,
        schema,
    ):
        tables[i["relname"]].after.append(unqualified(i["def"]) + ";")

    for t in await conn.fetch(
        """SELECT c.relname, pg_get_triggerdef(g.oid) AS def FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
           WHERE c.relnamespace = $1::oid AND NOT g.tgisinternal
           ORDER BY c.relname, g.tgname COLLATE "C" """,
        schema,
    ):
        tables[t["relname"]].after.append(unqualified(t["def"]) + ";")

    for r in await conn.fetch(
        """SELECT c.relname, c.reloptions, obj_description(c.oid, 'pg_class') AS comment FROM pg_class c
           WHERE c.relnamespace = $1::oid AND c.relkind = 'r'
             AND (c.reloptions IS NOT NULL OR obj_description(c.oid, 'pg_class') IS NOT NULL)""",
        schema,
    ):
        table = tables[r["relname"]]
        if r["reloptions"]:
            table.after.append(f"ALTER TABLE ONLY {table.name} SET ({', '.join(r['reloptions'])});")
        if r["comment"] is not None:
            comment = await conn.fetchval("SELECT quote_literal($1)", r["comment"])
            table.after.append(f"COMMENT ON TABLE {table.name} IS {comment};")

    for name in _referenced_first(tables):
        table = tables[name]
        lines = ",\n".join(f"    {line}" for line in table.columns + table.constraints)
        unlogged = "UNLOGGED " if table.unlogged else ""
        out.append(
            "".join(s + "\n" for s in table.sequences)
            + f"CREATE {unlogged}TABLE {table.name} (\n{lines}\n);\n"
            + "".join(s + "\n" for s in table.owned + table.after)
        )
    return "\n".join(out)


def _referenced_first(tables: dict[str, _Table]) -> list[str]:
    """Table names in an order that creates each after the tables its foreign keys reference;
    among those free to go next, by name."""
    waiting = {name: set(t.references) for name, t in tables.items()}
    ready = [name for name, refs in waiting.items() if not refs]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = heapq.heappop(ready)
        order.append(name)
        for other, refs in waiting.items():
            if name in refs:
                refs.discard(name)
                if not refs:
                    heapq.heappush(ready, other)
    if len(order) != len(tables):
        stuck = sorted(set(tables) - set(order))
        raise NotImplementedError(f"foreign keys reference each other in a circle among {stuck}: render them apart")
    return order


async def _refuse_what_we_cannot_render(conn: Conn, schema: int) -> None:
    """Objects of the schema render() would leave out: better no snapshot than a partial one."""
    unknown = await conn.fetch(
        """SELECT 'relation ' || relname || ' of kind ' || relkind::text AS what FROM pg_class
           WHERE relnamespace = $1::oid AND relkind NOT IN ('r', 'i', 'S')
           UNION ALL
           SELECT 'type ' || typname FROM pg_type
           WHERE typnamespace = $1::oid AND typtype IN ('c', 'd', 'e', 'r', 'm')
             AND (typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = typrelid) = 'c')
           UNION ALL
           SELECT 'routine ' || proname || ' of kind ' || prokind::text FROM pg_proc
           WHERE pronamespace = $1::oid AND prokind <> 'f'
           UNION ALL
           SELECT 'column ' || attrelid::regclass::text || '.' || attname || ' (identity or generated)'
           FROM pg_attribute JOIN pg_class c ON c.oid = attrelid
           WHERE c.relnamespace = $1::oid AND (attidentity <> '' OR attgenerated <> '')
           UNION ALL
           SELECT 'sequence ' || s.relname || ' owned by no column' FROM pg_class s
           WHERE s.relnamespace = $1::oid AND s.relkind = 'S' AND NOT EXISTS (
                 SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = s.oid
                 AND d.deptype = 'a')
           UNION ALL
           SELECT 'constraint ' || conname || ' of kind ' || contype::text FROM pg_constraint
           WHERE connamespace = $1::oid AND contype NOT IN ('p', 'u', 'c', 'x', 'f', 'n')
           UNION ALL
           SELECT 'policy ' || polname FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
           WHERE c.relnamespace = $1::oid
           UNION ALL
           SELECT 'rule ' || rulename FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
           WHERE c.relnamespace = $1::oid
           UNION ALL
           SELECT 'row level security on ' || relname FROM pg_class
           WHERE relnamespace = $1::oid AND relrowsecurity
           ORDER BY 1""",
        schema,
    )
    if unknown:
        what = ", ".join(r["what"] for r in unknown)
        raise NotImplementedError(f"schema.render() does not write these yet; teach it first: {what}")
