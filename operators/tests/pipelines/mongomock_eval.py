"""Runs aggregation pipelines with mongomock (an independent evaluator) for changeflow's tests.

Input (argv[1]): canonical Extended JSON {"datasets": [[doc, ...], ...],
                                           "runs": [{"dataset": i, "collections": {name: j},
                                                     "pipeline": [...]}, ...]}.
A $lookup's "from" names a collection of "collections" (dataset j).
Output (stdout): one canonical Extended JSON array per run, in order: the results, or
{"error": "..."} when mongomock raises.
"""
import sys

import mongomock
from bson import json_util

spec = json_util.loads(open(sys.argv[1]).read())
client = mongomock.MongoClient()
collections = []
for i, docs in enumerate(spec["datasets"]):
    c = client.db[f"d{i}"]
    if docs:
        c.insert_many(docs)
    collections.append(c)


def rewrite(value, names):
    """$lookup's from: a collection name, to the collection holding that dataset."""
    if isinstance(value, list):
        return [rewrite(v, names) for v in value]
    if isinstance(value, dict):
        out = {k: rewrite(v, names) for k, v in value.items()}
        lookup = out.get("$lookup")
        if isinstance(lookup, dict) and lookup.get("from") in names:
            lookup["from"] = f"d{names[lookup['from']]}"
        return out
    return value


out = []
for run in spec["runs"]:
    try:
        pipeline = rewrite(run["pipeline"], run.get("collections", {}))
        out.append(list(collections[run["dataset"]].aggregate(pipeline)))
    except Exception as e:  # noqa: BLE001 - reported to the test, which decides
        out.append({"error": f"{type(e).__name__}: {e}"})
print(json_util.dumps(out, json_options=json_util.CANONICAL_JSON_OPTIONS))
