// Runs aggregation pipelines with mingo (an independent JavaScript evaluator) for changeflow's
// tests. Same input and output as mongomock_eval.py (canonical Extended JSON). JavaScript has
// one number type: int32 / int64 / Decimal128 inputs become doubles, and integral results come
// back as int32 / int64; ObjectIds travel as "ObjectId(<hex>)" strings and come back as $oid.
const fs = require("fs");
const path = require("path");
const { Aggregator } = require(path.join(process.env.MINGO_DIR || __dirname, "node_modules", "mingo"));

function fromEjson(v) {
  if (Array.isArray(v)) return v.map(fromEjson);
  if (v === null || typeof v !== "object") return v;
  const keys = Object.keys(v);
  if (keys.length === 1) {
    const [k] = keys;
    const x = v[k];
    if (k === "$numberInt" || k === "$numberLong" || k === "$numberDouble" || k === "$numberDecimal") return Number(x);
    if (k === "$oid") return `ObjectId(${x})`;
    if (k === "$date") return new Date(Number(typeof x === "object" ? x.$numberLong : Date.parse(x)));
  }
  const out = {};
  for (const k of keys) out[k] = fromEjson(v[k]);
  return out;
}

function toEjson(v) {
  if (v === undefined || v === null) return null;
  if (v instanceof Date) return { $date: { $numberLong: String(v.getTime()) } };
  if (Array.isArray(v)) return v.map(toEjson);
  if (typeof v === "number") {
    if (Number.isInteger(v) && Math.abs(v) <= Number.MAX_SAFE_INTEGER && !Object.is(v, -0)) {
      return v >= -2147483648 && v <= 2147483647 ? { $numberInt: String(v) } : { $numberLong: String(v) };
    }
    return { $numberDouble: Number.isNaN(v) ? "NaN" : v === Infinity ? "Infinity" : v === -Infinity ? "-Infinity" : String(v) };
  }
  if (typeof v === "string") {
    const m = /^ObjectId\(([0-9a-f]{24})\)$/.exec(v);
    return m ? { $oid: m[1] } : v;
  }
  if (typeof v === "object") {
    const out = {};
    for (const k of Object.keys(v)) if (v[k] !== undefined) out[k] = toEjson(v[k]);
    return out;
  }
  return v;
}

const spec = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const datasets = spec.datasets.map(fromEjson);
// $lookup's from: a collection name of run.collections, replaced by that dataset's documents.
function withCollections(value, names) {
  if (Array.isArray(value)) return value.map((v) => withCollections(v, names));
  if (value === null || typeof value !== "object" || value instanceof Date) return value;
  const out = {};
  for (const k of Object.keys(value)) out[k] = withCollections(value[k], names);
  const lookup = out.$lookup;
  if (lookup && typeof lookup.from === "string" && names[lookup.from] !== undefined) {
    lookup.from = datasets[Number(names[lookup.from].$numberInt ?? names[lookup.from])];
  }
  return out;
}

const out = spec.runs.map((run) => {
  try {
    const pipeline = withCollections(fromEjson(run.pipeline), run.collections || {});
    const docs = datasets[Number(run.dataset.$numberInt ?? run.dataset)];
    return toEjson(new Aggregator(pipeline).run(docs));
  } catch (e) {
    return { error: String(e && e.message ? e.message : e) };
  }
});
process.stdout.write(JSON.stringify(out));
