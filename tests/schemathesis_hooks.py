"""Serializers schemathesis lacks for the streamed bodies of POST /bulk-actions.

The OpenAPI document describes an NDJSON or CSV body as an array of records; these turn a
generated array into the bytes a client would send. Loaded through SCHEMATHESIS_HOOKS by
tests/tests/api_http.rs.
"""

import csv
import io
import json

import schemathesis


def _records(value):
    if isinstance(value, list):
        return value
    return [value]


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    lines = "".join(json.dumps(record) + "\n" for record in _records(value))
    return {"data": lines.encode("utf8")}


@schemathesis.serializer("text/csv")
def csv_rows(ctx, value):
    records = [r for r in _records(value) if isinstance(r, dict)]
    columns = []
    for record in records:
        for name in record:
            if name not in columns:
                columns.append(name)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns or ["email"])
    for record in records:
        writer.writerow(["" if record.get(c) is None else record.get(c) for c in columns])
    return {"data": out.getvalue().encode("utf8")}
