"""Reads changeflow's Arrow IPC / Parquet output with pyarrow and DuckDB (independent readers).

Usage: python3 read_arrow.py FORMAT PATH... [--sql QUERY] [--no-duckdb]
FORMAT is parquet, ipc_file or ipc_stream. Prints one JSON object:
  {"pyarrow": {"fields": [...], "rows": [...], "metadata": [...]}, "duckdb": {"types": {...}, "rows": [...]}}
with values normalised to JSON: bytes and UUIDs as {"hex"}, decimals as {"decimal": str},
timestamps as {"ms": epoch milliseconds}. With --sql, DuckDB runs QUERY over a view `t` of all
files instead of SELECT *. --no-duckdb skips DuckDB (it cannot import dense unions).
"""
import datetime
import decimal
import json
import math
import sys
import uuid

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def norm(v):
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    if isinstance(v, decimal.Decimal):
        return {"decimal": str(v)}
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"hex": bytes(v).hex()}
    if isinstance(v, uuid.UUID):
        return {"hex": v.hex}
    if isinstance(v, datetime.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=datetime.timezone.utc)
        return {"ms": (v - EPOCH) // datetime.timedelta(milliseconds=1)}
    if isinstance(v, dict):
        return {k: norm(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [norm(x) for x in v]
    return {"repr": repr(v)}


def ext_name(field):
    t = field.type
    if isinstance(t, pa.BaseExtensionType):
        return t.extension_name
    meta = field.metadata or {}
    name = meta.get(b"ARROW:extension:name")
    return name.decode() if name else None


def fields_of(schema):
    return [{"name": f.name, "type": str(f.type), "ext": ext_name(f)} for f in schema]


def read_tables(fmt, path):
    """The tables in one file, and the file's metadata."""
    if fmt == "parquet":
        f = pq.ParquetFile(path)
        meta = {k.decode(): v.decode() for k, v in (f.metadata.metadata or {}).items() if not k.startswith(b"ARROW:")}
        return [f.read()], meta
    if fmt == "ipc_file":
        reader = pa.ipc.open_file(path)
        meta = {k.decode(): v.decode() for k, v in (reader.schema.metadata or {}).items()}
        return [reader.read_all()], meta
    tables, meta = [], {}
    with open(path, "rb") as f:
        while True:
            try:
                reader = pa.ipc.open_stream(f)
            except (pa.ArrowInvalid, StopIteration):
                break
            meta = {k.decode(): v.decode() for k, v in (reader.schema.metadata or {}).items()}
            tables.append(reader.read_all())
    return tables, meta


def main():
    args = sys.argv[1:]
    sql = None
    if "--sql" in args:
        i = args.index("--sql")
        sql = args[i + 1]
        args = args[:i] + args[i + 2:]
    duck = "--no-duckdb" not in args
    args = [a for a in args if a != "--no-duckdb"]
    fmt, paths = args[0], args[1:]
    out = {"pyarrow": {"fields": [], "rows": [], "metadata": []}, "duckdb": {"types": {}, "rows": []}}
    tables = []
    for path in paths:
        ts, meta = read_tables(fmt, path)
        out["pyarrow"]["metadata"].append(meta)
        for t in ts:
            out["pyarrow"]["fields"].append(fields_of(t.schema))
            out["pyarrow"]["rows"].extend(norm(t.to_pylist()))
            tables.append(t)
    if not duck:
        print(json.dumps(out))
        return
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if fmt == "parquet":
        files = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
        con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet([{files}], union_by_name = true)")
        queries = [sql or "SELECT * FROM t"]
        results = [con.sql(q) for q in queries]
    else:
        # DuckDB's own IPC reader is an extension it downloads; it reads the Arrow data that
        # pyarrow decoded through the Arrow C data interface instead.
        try:
            groups = [pa.concat_tables(tables, promote_options="permissive")] if tables else []
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            groups = tables
        results = []
        for table in groups:
            con.register("t", table)
            results.append(con.sql(sql or "SELECT * FROM t"))
    for rel in results:
        out["duckdb"]["types"].update({n: str(t) for n, t in zip(rel.columns, rel.types)})
        cols = rel.columns
        for row in rel.fetchall():
            out["duckdb"]["rows"].append({c: norm(v) for c, v in zip(cols, row)})
    print(json.dumps(out))


main()
