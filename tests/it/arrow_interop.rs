//! Arrow output read back by independent readers (pyarrow and DuckDB): every BSON type, a
//! stream whose documents change shape, and changelogs that replay to the final view.
//!
//! Expected values come from the input's canonical Extended JSON, interpreted here without the
//! sink's code (`expect`), and are compared with what pyarrow and DuckDB decode from the files.

use base64::Engine as _;
use changeflow::core::extjson::transcode;
use changeflow::sinks::arrow::documents::DocumentBatcher;
use changeflow::sinks::arrow::schema::SchemaSource;
use changeflow::sinks::ipc::{IpcFormat, IpcStreamWriter, IpcWriter};
use changeflow::sinks::parquet::{ParquetOptions, ParquetWriter};
use changeflow::sinks::writer::{BatchWriter, RollPolicy};
use serde_json::{Value as Json, json};

use crate::support::*;

/// Every BSON type, one column each: (column, BSON type, values of rows 0, 1, 2 as canonical
/// Extended JSON; `None`: the field is missing from that document).
const TYPES: &[(&str, &str, [Option<&str>; 3])] = &[
    (
        "double",
        "double",
        [
            Some(r#"{"$numberDouble":"1.5"}"#),
            Some(r#"{"$numberDouble":"-2.25E+10"}"#),
            None,
        ],
    ),
    (
        "string",
        "string",
        [Some(r#""héllo""#), Some(r#""""#), Some("null")],
    ),
    (
        "document",
        "document",
        [
            Some(r#"{"x":{"$numberInt":"1"},"y":"a"}"#),
            Some(r#"{"x":{"$numberInt":"2"},"z":true}"#),
            None,
        ],
    ),
    (
        "array",
        "array",
        [
            Some(r#"[{"$numberInt":"1"},{"$numberInt":"2"},{"$numberInt":"3"}]"#),
            Some("[]"),
            Some(r#"[{"$numberInt":"4"}]"#),
        ],
    ),
    (
        "binary",
        "binary (generic and user subtypes)",
        [
            Some(r#"{"$binary":{"base64":"AQID","subType":"80"}}"#),
            Some(r#"{"$binary":{"base64":"","subType":"00"}}"#),
            None,
        ],
    ),
    (
        "uuid",
        "binary subtype 4 (UUID)",
        [
            Some(r#"{"$binary":{"base64":"c//SZESzTGmQ6OfR38A11A==","subType":"04"}}"#),
            None,
            Some(r#"{"$binary":{"base64":"AAECAwQFBgcICQoLDA0ODw==","subType":"04"}}"#),
        ],
    ),
    (
        "legacy_uuid",
        "binary subtype 3 (legacy UUID)",
        [
            Some(r#"{"$binary":{"base64":"AAECAwQFBgcICQoLDA0ODw==","subType":"03"}}"#),
            None,
            None,
        ],
    ),
    (
        "undefined",
        "undefined",
        [
            Some(r#"{"$undefined":true}"#),
            None,
            Some(r#"{"$undefined":true}"#),
        ],
    ),
    (
        "objectid",
        "ObjectId",
        [
            Some(r#"{"$oid":"6553f10092e011592e98ae15"}"#),
            Some(r#"{"$oid":"000000000000000000000000"}"#),
            Some(r#"{"$oid":"ffffffffffffffffffffffff"}"#),
        ],
    ),
    ("bool", "boolean", [Some("true"), Some("false"), None]),
    (
        "date",
        "UTC datetime",
        [
            Some(r#"{"$date":{"$numberLong":"1700000000123"}}"#),
            Some(r#"{"$date":{"$numberLong":"-86400001"}}"#),
            Some(r#"{"$date":{"$numberLong":"0"}}"#),
        ],
    ),
    ("null", "null", [Some("null"), Some("null"), None]),
    (
        "regex",
        "regular expression",
        [
            Some(r#"{"$regularExpression":{"pattern":"^a.*$","options":"im"}}"#),
            None,
            Some(r#"{"$regularExpression":{"pattern":"","options":""}}"#),
        ],
    ),
    (
        "dbpointer",
        "DBPointer",
        [
            Some(r#"{"$dbPointer":{"$ref":"db.coll","$id":{"$oid":"6553f10092e011592e98ae16"}}}"#),
            None,
            None,
        ],
    ),
    (
        "javascript",
        "JavaScript code",
        [Some(r#"{"$code":"function() { return 1; }"}"#), None, None],
    ),
    (
        "symbol",
        "symbol",
        [
            Some(r#"{"$symbol":"sym"}"#),
            None,
            Some(r#"{"$symbol":""}"#),
        ],
    ),
    (
        "code_with_scope",
        "JavaScript code with scope",
        [
            Some(r#"{"$code":"x + 1","$scope":{"x":{"$numberInt":"1"}}}"#),
            None,
            None,
        ],
    ),
    (
        "int32",
        "int32",
        [
            Some(r#"{"$numberInt":"42"}"#),
            Some(r#"{"$numberInt":"-2147483648"}"#),
            None,
        ],
    ),
    (
        "timestamp",
        "Timestamp",
        [
            Some(r#"{"$timestamp":{"t":1700000000,"i":7}}"#),
            Some(r#"{"$timestamp":{"t":4294967295,"i":4294967295}}"#),
            None,
        ],
    ),
    (
        "int64",
        "int64",
        [
            Some(r#"{"$numberLong":"1099511627776"}"#),
            Some(r#"{"$numberLong":"-9223372036854775808"}"#),
            None,
        ],
    ),
    (
        "decimal",
        "Decimal128 (fits one scale)",
        [
            Some(r#"{"$numberDecimal":"12.50"}"#),
            Some(r#"{"$numberDecimal":"-0.05"}"#),
            Some(r#"{"$numberDecimal":"1E+3"}"#),
        ],
    ),
    (
        "decimal_bytes",
        "Decimal128 (NaN, huge, -0: no single scale)",
        [
            Some(r#"{"$numberDecimal":"NaN"}"#),
            Some(r#"{"$numberDecimal":"1.5E+6000"}"#),
            Some(r#"{"$numberDecimal":"-0"}"#),
        ],
    ),
    (
        "minmax",
        "MinKey / MaxKey",
        [Some(r#"{"$minKey":1}"#), Some(r#"{"$maxKey":1}"#), None],
    ),
    (
        "mixed",
        "mixed types (int32, string, double)",
        [
            Some(r#"{"$numberInt":"1"}"#),
            Some(r#""x""#),
            Some(r#"{"$numberDouble":"2.5"}"#),
        ],
    ),
    (
        "nested",
        "array of documents with widening fields",
        [
            Some(
                r#"[{"q":{"$numberInt":"1"}},{"q":{"$numberDouble":"2.5"},"r":[{"$oid":"6553f10092e011592e98ae17"}]}]"#,
            ),
            None,
            Some("[]"),
        ],
    ),
];

/// (column, pyarrow type, extension name) for every column of [`TYPES`].
const ARROW_TYPES: &[(&str, &str, Option<&str>)] = &[
    ("double", "double", None),
    ("string", "string", None),
    ("document", "struct<x: int32, y: string, z: bool>", None),
    ("array", "list<item: int32>", None),
    (
        "binary",
        "struct<subtype: uint8 not null, data: binary not null>",
        Some("changeflow.bson.binary"),
    ),
    ("uuid", "extension<arrow.uuid>", Some("arrow.uuid")),
    (
        "legacy_uuid",
        "fixed_size_binary[16]",
        Some("changeflow.bson.legacy_uuid"),
    ),
    ("undefined", "null", Some("changeflow.bson.undefined")),
    (
        "objectid",
        "fixed_size_binary[12]",
        Some("changeflow.bson.objectid"),
    ),
    ("bool", "bool", None),
    ("date", "timestamp[ms, tz=UTC]", None),
    ("null", "null", None),
    (
        "regex",
        "struct<pattern: string not null, options: string not null>",
        Some("changeflow.bson.regex"),
    ),
    (
        "dbpointer",
        "struct<namespace: string not null, id: fixed_size_binary[12] not null>",
        Some("changeflow.bson.dbpointer"),
    ),
    ("javascript", "string", Some("changeflow.bson.javascript")),
    ("symbol", "string", Some("changeflow.bson.symbol")),
    ("code_with_scope", "string", Some("changeflow.bson.extjson")),
    ("int32", "int32", None),
    (
        "timestamp",
        "struct<t: uint32 not null, i: uint32 not null>",
        Some("changeflow.bson.timestamp"),
    ),
    ("int64", "int64", None),
    ("decimal", "decimal128(6, 2)", None),
    (
        "decimal_bytes",
        "fixed_size_binary[16]",
        Some("changeflow.bson.decimal128"),
    ),
    ("minmax", "int8", Some("changeflow.bson.minmaxkey")),
    ("mixed", "double", None),
    (
        "nested",
        "list<item: struct<q: double, r: list<item: fixed_size_binary[12]>>>",
        None,
    ),
    ("_fallback", "string", Some("changeflow.bson.extjson")),
];

/// (column, DuckDB type) for the columns whose SQL type DuckDB decides from the Parquet file.
const DUCKDB_TYPES: &[(&str, &str)] = &[
    ("double", "DOUBLE"),
    ("string", "VARCHAR"),
    ("document", "STRUCT(x INTEGER, y VARCHAR, z BOOLEAN)"),
    ("array", "INTEGER[]"),
    ("objectid", "BLOB"),
    ("bool", "BOOLEAN"),
    ("date", "TIMESTAMP WITH TIME ZONE"),
    ("int32", "INTEGER"),
    ("timestamp", "STRUCT(t UINTEGER, i UINTEGER)"),
    ("int64", "BIGINT"),
    ("decimal", "DECIMAL(6,2)"),
    ("minmax", "TINYINT"),
];

fn type_lines() -> Vec<String> {
    (0..3)
        .map(|row| {
            let mut fields = vec![format!(r#""_id":{{"$numberInt":"{row}"}}"#)];
            for (column, _, values) in TYPES {
                if let Some(value) = values[row] {
                    fields.push(format!("\"{column}\":{value}"));
                }
            }
            format!("{{{}}}", fields.join(","))
        })
        .collect()
}

fn bson_of(line: &str) -> Vec<u8> {
    let mut out = Vec::new();
    transcode(line.as_bytes(), &mut out).expect("test documents are valid Extended JSON");
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a reader should decode for one canonical Extended JSON value (see read_arrow.py's
/// normalisation). `{"$dec": text}` and `{"$json": value}` are matched specially by `matches`.
fn expect(v: &Json) -> Json {
    let Json::Object(map) = v else {
        return match v {
            Json::Array(items) => Json::Array(items.iter().map(expect).collect()),
            other => other.clone(),
        };
    };
    let text = |k: &str| {
        map.get(k)
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string()
    };
    if map.contains_key("$numberInt") || map.contains_key("$numberLong") {
        let s = text(if map.contains_key("$numberInt") {
            "$numberInt"
        } else {
            "$numberLong"
        });
        return json!(s.parse::<i64>().expect("integer"));
    }
    if map.contains_key("$numberDouble") {
        return json!(text("$numberDouble").parse::<f64>().expect("double"));
    }
    if map.contains_key("$oid") {
        return json!({ "hex": text("$oid") });
    }
    if let Some(date) = map.get("$date") {
        return json!({ "ms": date["$numberLong"].as_str().and_then(|s| s.parse::<i64>().ok()) });
    }
    if let Some(binary) = map.get("$binary") {
        let data = base64::engine::general_purpose::STANDARD
            .decode(binary["base64"].as_str().unwrap_or_default())
            .expect("base64");
        let subtype =
            u8::from_str_radix(binary["subType"].as_str().unwrap_or("0"), 16).expect("subtype");
        return if (subtype == 3 || subtype == 4) && data.len() == 16 {
            json!({ "hex": hex(&data) })
        } else {
            json!({ "subtype": subtype, "data": { "hex": hex(&data) } })
        };
    }
    if map.contains_key("$undefined") {
        return Json::Null;
    }
    if let Some(re) = map.get("$regularExpression") {
        return json!({ "pattern": re["pattern"], "options": re["options"] });
    }
    if let Some(p) = map.get("$dbPointer") {
        return json!({ "namespace": p["$ref"], "id": { "hex": p["$id"]["$oid"] } });
    }
    if map.contains_key("$scope") {
        return json!({ "$json": v });
    }
    if map.contains_key("$code") {
        return json!(text("$code"));
    }
    if map.contains_key("$symbol") {
        return json!(text("$symbol"));
    }
    if let Some(ts) = map.get("$timestamp") {
        return json!({ "t": ts["t"], "i": ts["i"] });
    }
    if map.contains_key("$numberDecimal") {
        return json!({ "$dec": text("$numberDecimal") });
    }
    if map.contains_key("$minKey") {
        return json!(-1);
    }
    if map.contains_key("$maxKey") {
        return json!(1);
    }
    Json::Object(map.iter().map(|(k, v)| (k.clone(), expect(v))).collect())
}

/// A decimal's text as (coefficient without trailing zeros, exponent).
fn decimal_key(text: &str) -> (i128, i32) {
    let (mantissa, exponent) = match text.find(['E', 'e']) {
        Some(i) => (&text[..i], text[i + 1..].parse::<i32>().expect("exponent")),
        None => (text, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut coefficient: i128 = format!("{int}{frac}").parse().expect("digits");
    let mut exponent = exponent - frac.len() as i32;
    while coefficient != 0 && coefficient % 10 == 0 {
        coefficient /= 10;
        exponent += 1;
    }
    if coefficient == 0 {
        exponent = 0;
    }
    (coefficient, exponent)
}

fn matches(actual: &Json, expected: &Json) -> bool {
    match expected {
        Json::Null => actual.is_null(),
        Json::Number(n) => actual.as_f64() == n.as_f64(),
        Json::Array(items) => actual.as_array().is_some_and(|a| {
            a.len() == items.len() && a.iter().zip(items).all(|(x, y)| matches(x, y))
        }),
        Json::Object(map) if map.contains_key("$dec") => {
            let text = map["$dec"].as_str().unwrap_or_default();
            match (&actual["decimal"], &actual["hex"]) {
                (Json::String(d), _) => decimal_key(d) == decimal_key(text),
                (_, Json::String(h)) => {
                    let d: bson::Decimal128 = text.parse().expect("decimal");
                    *h == hex(&d.bytes())
                }
                _ => false,
            }
        }
        Json::Object(map) if map.contains_key("$json") => actual
            .as_str()
            .and_then(|s| serde_json::from_str::<Json>(s).ok())
            .is_some_and(|parsed| parsed == map["$json"]),
        Json::Object(map) => actual.as_object().is_some_and(|a| {
            map.iter()
                .all(|(k, v)| matches(a.get(k).unwrap_or(&Json::Null), v))
                && a.iter().all(|(k, v)| map.contains_key(k) || v.is_null())
        }),
        other => actual == other,
    }
}

/// Checks that `rows` (as a reader decoded them) hold every value of `inputs` (canonical
/// Extended JSON documents, rows in the same order): in its column, or, when the column is
/// null there, under its name in `_fallback`. Returns how many values were found in
/// `_fallback`.
fn assert_rows_hold(reader: &str, rows: &[Json], inputs: &[Json]) -> usize {
    assert_eq!(rows.len(), inputs.len(), "{reader}: row count");
    let mut fallbacks = 0;
    for (i, (row, input)) in rows.iter().zip(inputs).enumerate() {
        let fallback: Json = row["_fallback"]
            .as_str()
            .map(|s| serde_json::from_str(s).expect("_fallback is JSON"))
            .unwrap_or(Json::Null);
        for (column, value) in input.as_object().expect("document") {
            let actual = row.get(column).unwrap_or(&Json::Null);
            if matches(actual, &expect(value)) {
                continue;
            }
            assert!(
                actual.is_null() && fallback.get(column) == Some(value),
                "{reader}: row {i} column {column}: read {actual}, wrote {value}, _fallback {fallback}"
            );
            fallbacks += 1;
        }
    }
    fallbacks
}

fn write_all(writer: &mut dyn BatchWriter, docs: &[Vec<u8>], source: SchemaSource) {
    let mut batcher = DocumentBatcher::new(source);
    for doc in docs {
        batcher.push(doc);
    }
    for batch in batcher.finish().expect("batches") {
        writer.write(&batch).expect("write");
    }
    writer.commit(None).expect("commit");
}

#[test]
fn every_bson_type_round_trips_through_pyarrow_and_duckdb() {
    let dir = scratch("every-type");
    let lines = type_lines();
    let docs: Vec<Vec<u8>> = lines.iter().map(|l| bson_of(l)).collect();
    let inputs: Vec<Json> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let source = || SchemaSource::Inferred {
        sample: 10,
        widen: true,
    };

    let mut parquet = ParquetWriter::new(&dir, "types", ParquetOptions::default()).unwrap();
    write_all(&mut parquet, &docs, source());
    let mut ipc_file = IpcWriter::new(&dir, "types", IpcFormat::File, RollPolicy::never());
    write_all(&mut ipc_file, &docs, source());
    let mut ipc_files = IpcWriter::new(&dir, "types", IpcFormat::Stream, RollPolicy::never());
    write_all(&mut ipc_files, &docs, source());
    let mut piped = Vec::new();
    write_all(&mut IpcStreamWriter::new(&mut piped), &docs, source());
    let piped_path = dir.join("piped.arrows");
    std::fs::write(&piped_path, &piped).unwrap();

    for (format, files) in [
        ("parquet", parquet.files()),
        ("ipc_file", ipc_file.files()),
        ("ipc_stream", ipc_files.files()),
        ("ipc_stream", vec![piped_path.clone()]),
    ] {
        assert_eq!(files.len(), 1, "{format}: one file");
        let Some(read) = read_with_python(format, &files, None) else {
            return;
        };
        let pyarrow = &read["pyarrow"];
        let fields = pyarrow["fields"][0].as_array().expect("fields");
        for (column, ty, ext) in ARROW_TYPES {
            let field = fields
                .iter()
                .find(|f| f["name"] == *column)
                .unwrap_or_else(|| panic!("{format}: column {column} missing"));
            assert_eq!(field["type"], *ty, "{format}: pyarrow type of {column}");
            assert_eq!(
                field["ext"].as_str(),
                *ext,
                "{format}: extension name of {column}"
            );
        }
        let rows = pyarrow["rows"].as_array().expect("rows");
        let fallbacks = assert_rows_hold(&format!("pyarrow {format}"), rows, &inputs);
        assert_eq!(
            fallbacks, 1,
            "{format}: only the string in `mixed` falls back"
        );
        let duck_rows = read["duckdb"]["rows"].as_array().expect("duckdb rows");
        let duck_fallbacks = assert_rows_hold(&format!("duckdb {format}"), duck_rows, &inputs);
        assert_eq!(duck_fallbacks, 1);
        if format == "parquet" {
            let types = &read["duckdb"]["types"];
            for (column, ty) in DUCKDB_TYPES {
                assert_eq!(types[*column], *ty, "DuckDB type of {column}");
            }
            assert_eq!(pyarrow["metadata"][0]["changeflow.complete"], "true");
        }
    }
}

#[test]
fn mixed_types_as_dense_unions_read_by_pyarrow() {
    use changeflow::sinks::arrow::schema::FallbackMode;
    let dir = scratch("unions");
    let lines = type_lines();
    let inputs: Vec<Json> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut batcher = DocumentBatcher::new(SchemaSource::Inferred {
        sample: 10,
        widen: true,
    })
    .with_fallback(FallbackMode::DenseUnion);
    for line in &lines {
        batcher.push(&bson_of(line));
    }
    let batches = batcher.finish().unwrap();
    assert_eq!(
        batcher.stats().fallback_values,
        0,
        "the string in `mixed` is a union member"
    );
    let mut file = IpcWriter::new(&dir, "unions", IpcFormat::File, RollPolicy::never());
    let mut piped = Vec::new();
    let mut stream = IpcStreamWriter::new(&mut piped);
    for batch in &batches {
        file.write(batch).unwrap();
        stream.write(batch).unwrap();
    }
    file.commit(None).unwrap();
    stream.commit(None).unwrap();
    drop(stream);
    let piped_path = dir.join("piped.arrows");
    std::fs::write(&piped_path, &piped).unwrap();
    for (format, files) in [("ipc_file", file.files()), ("ipc_stream", vec![piped_path])] {
        let Some(read) = read_with_pyarrow(format, &files) else {
            return;
        };
        let fields = read["pyarrow"]["fields"][0].as_array().unwrap();
        let mixed = fields.iter().find(|f| f["name"] == "mixed").unwrap();
        assert_eq!(
            mixed["type"],
            "dense_union<double: double=0, string: string=1>"
        );
        let rows = read["pyarrow"]["rows"].as_array().unwrap();
        assert_eq!(
            assert_rows_hold(&format!("pyarrow {format}"), rows, &inputs),
            0
        );
    }
}

/// A stream of documents whose shape changes: a field appears, an int32 field widens to int64,
/// then to double, a nested field appears, a field turns into a string (a conflict), a field
/// disappears, a Decimal128 field appears. Returns the documents as canonical Extended JSON.
fn shifting_lines() -> Vec<String> {
    (0..300)
        .map(|i| {
            let mut fields = vec![format!(r#""_id":{{"$numberInt":"{i}"}}"#)];
            let a = match i {
                0..=49 => format!(r#"{{"$numberInt":"{i}"}}"#),
                50..=99 => format!(r#"{{"$numberLong":"{}"}}"#, (i as i64) << 33),
                100..=149 => format!(r#"{{"$numberDouble":"{}.5"}}"#, i),
                _ if i % 7 == 0 => format!(r#""a-{i}""#),
                _ => format!(r#"{{"$numberInt":"{}"}}"#, -i),
            };
            fields.push(format!(r#""a":{a}"#));
            if i < 200 {
                fields.push(format!(r#""b":"b{i}""#));
            }
            if i >= 40 {
                fields.push(format!(
                    r#""c":{{"n":{{"$numberInt":"{i}"}},"tags":["t{}"{}]}}"#,
                    i % 3,
                    if i >= 120 {
                        format!(r#","extra-{i}""#)
                    } else {
                        String::new()
                    }
                ));
            }
            if i >= 180 {
                fields.push(format!(
                    r#""d":{{"$numberDecimal":"{}.{:02}"}}"#,
                    i,
                    i % 100
                ));
            }
            format!("{{{}}}", fields.join(","))
        })
        .collect()
}

#[test]
fn documents_that_change_shape_midway_lose_no_values() {
    let dir = scratch("shape");
    let lines = shifting_lines();
    let inputs: Vec<Json> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let source = || SchemaSource::Inferred {
        sample: 20,
        widen: true,
    };
    let mut parquet = ParquetWriter::new(
        &dir,
        "shape",
        ParquetOptions {
            roll: RollPolicy::rows(70),
            ..ParquetOptions::default()
        },
    )
    .unwrap();
    let mut ipc = IpcWriter::new(&dir, "shape", IpcFormat::File, RollPolicy::rows(70));
    let mut batcher = DocumentBatcher::new(source());
    let mut ipc_batcher = DocumentBatcher::new(source());
    // 25 documents per closed time, a commit after each.
    for (t, chunk) in lines.chunks(25).enumerate() {
        for line in chunk {
            batcher.push(&bson_of(line));
            ipc_batcher.push(&bson_of(line));
        }
        for batch in batcher.finish().unwrap() {
            parquet.write(&batch).unwrap();
        }
        for batch in ipc_batcher.finish().unwrap() {
            ipc.write(&batch).unwrap();
        }
        let frontier = Some(changeflow::core::ClusterTime::new(t as u32 + 1, 0));
        parquet.commit(frontier).unwrap();
        ipc.commit(frontier).unwrap();
    }
    parquet.commit(None).unwrap();
    ipc.commit(None).unwrap();
    let stats = batcher.stats();
    assert!(stats.schema_changes >= 3, "the schema widened: {stats:?}");
    let conflicts = lines.iter().filter(|l| l.contains(r#""a":"a-"#)).count();
    assert_eq!(
        stats.fallback_values as usize, conflicts,
        "only the string `a`s fall back"
    );
    assert_eq!(stats.rows as usize, lines.len());

    for (format, files) in [("parquet", parquet.files()), ("ipc_file", ipc.files())] {
        assert!(
            files.len() >= 4,
            "{format}: files rolled and series started: {files:?}"
        );
        let Some(read) = read_with_python(format, &files, Some("SELECT * FROM t ORDER BY _id"))
        else {
            return;
        };
        let rows = read["pyarrow"]["rows"].as_array().expect("rows");
        let fallbacks = assert_rows_hold(&format!("pyarrow {format}"), rows, &inputs);
        assert_eq!(fallbacks, conflicts, "{format}: pyarrow sees the fallbacks");
        let duck = read["duckdb"]["rows"].as_array().expect("rows");
        assert_eq!(
            assert_rows_hold(&format!("duckdb {format}"), duck, &inputs),
            conflicts
        );
        let series: Vec<u64> = read["pyarrow"]["metadata"]
            .as_array()
            .expect("metadata")
            .iter()
            .map(|m| {
                m["changeflow.series"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("series")
            })
            .collect();
        assert!(
            series.windows(2).all(|w| w[0] <= w[1]),
            "{format}: series {series:?}"
        );
        assert_eq!(
            series.last().copied(),
            Some(stats.schema_changes),
            "{format}: series"
        );
    }
}

/// V1 rows from a reader's `region, orders, amount, n` rows (n = the summed `_diff`).
fn summed_v1(reader: &str, rows: &[Json]) -> std::collections::BTreeMap<String, (i64, f64)> {
    let mut out = std::collections::BTreeMap::new();
    for row in rows {
        assert_eq!(row["n"], 1, "{reader}: each live V1 row once: {row}");
        let region = row["region"].as_str().expect("region").to_string();
        let orders = row["orders"].as_i64().expect("orders");
        let amount = row["amount"].as_f64().expect("amount");
        assert!(
            out.insert(region, (orders, amount)).is_none(),
            "{reader}: one row per region"
        );
    }
    out
}

/// Sums `_diff` per V1 row over pyarrow's rows.
fn replay_v1(rows: &[Json]) -> Vec<Json> {
    let mut sums: std::collections::BTreeMap<String, (Json, i64)> = Default::default();
    for row in rows {
        let key = format!("{}|{}|{}", row["region"], row["orders"], row["amount"]);
        let entry = sums.entry(key).or_insert((row.clone(), 0));
        entry.1 += row["_diff"].as_i64().expect("_diff");
    }
    sums.into_values()
        .filter(|(_, n)| *n != 0)
        .map(|(mut row, n)| {
            row["n"] = json!(n);
            row
        })
        .collect()
}

const REPLAY_SQL: &str =
    "SELECT region, orders, amount, sum(_diff) AS n FROM t GROUP BY ALL HAVING sum(_diff) <> 0";

#[test]
fn parquet_changelogs_replay_to_the_final_view_and_collection() {
    use changeflow::jobs::orders_to_parquet::{ParquetJobOptions, run};
    use changeflow::operators::value::Value;
    use changeflow_testkit::orders::OrdersConfig;

    let dir = scratch("changelog-parquet");
    let lines = lines(OrdersConfig {
        seed: 51,
        events: 4000,
        txn_fraction: 0.3,
        full_document_on_update: 0.3,
        ..OrdersConfig::default()
    });
    let input = dir.join("events.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let mut options = ParquetJobOptions::new(&input, dir.join("out"));
    options.roll_rows = 700;
    options.batch = Some(256);
    let report = run(&options).expect("job runs");
    assert!(
        report.v1_changelog_files.len() >= 3,
        "{:?}",
        report.v1_changelog_files
    );
    assert!(report.orders_changelog_files.len() >= 3);
    assert!(report.orders_files.len() >= 2);

    let (oracle_v1, _) = oracle(&lines);
    let snapshot: std::collections::BTreeMap<String, (i64, f64)> = report
        .v1
        .iter()
        .map(|(row, n)| {
            assert_eq!(*n, 1);
            match row.as_slice() {
                [Value::String(r), Value::Int(o), Value::Double(a)] => (r.to_string(), (*o, a.0)),
                other => panic!("V1 row {other:?}"),
            }
        })
        .collect();
    assert_v1_eq(&snapshot, &oracle_v1);

    let Some(read) = read_with_python("parquet", &report.v1_changelog_files, Some(REPLAY_SQL))
    else {
        return;
    };
    let duck = summed_v1("duckdb", read["duckdb"]["rows"].as_array().expect("rows"));
    assert_v1_eq(&duck, &snapshot); // DuckDB: summing _diff gives the final V1
    let py = summed_v1(
        "pyarrow",
        &replay_v1(read["pyarrow"]["rows"].as_array().unwrap()),
    );
    assert_v1_eq(&py, &snapshot); // pyarrow: the same
    // Every file but the last is complete up to a frontier, and frontiers increase.
    let metadata = read["pyarrow"]["metadata"].as_array().unwrap();
    let frontiers: Vec<u64> = metadata[..metadata.len() - 1]
        .iter()
        .map(|m| {
            m["changeflow.frontier"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("frontier")
        })
        .collect();
    assert!(frontiers.windows(2).all(|w| w[0] < w[1]), "{frontiers:?}");
    assert_eq!(metadata.last().unwrap()["changeflow.complete"], "true");
    // Retractions come before insertions within a time, and times never go back.
    let rows = read["pyarrow"]["rows"].as_array().unwrap();
    for pair in rows.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let (ta, tb) = (a["_time"].as_u64().unwrap(), b["_time"].as_u64().unwrap());
        assert!(ta <= tb, "times in order");
        if ta == tb {
            assert!(
                a["_diff"].as_i64() <= Some(0) || b["_diff"].as_i64() > Some(0),
                "retractions first at {ta}"
            );
        }
    }

    // The collection: its changelog replayed and its snapshot files hold the model's documents.
    let mut model = changeflow_testkit::reference::ReferenceModel::new();
    for line in &lines {
        model.apply_json_line(line).unwrap();
    }
    type Live = std::collections::BTreeMap<String, (Option<String>, Option<String>)>;
    let expected: Live = model
        .documents()
        .iter()
        .filter(|((ns, _), _)| ns == "shop.orders")
        .map(|(_, doc)| {
            let id = doc.get_object_id("_id").expect("ObjectId _id").to_hex();
            let region = doc.get_str("region").ok().map(String::from);
            let status = doc.get_str("status").ok().map(String::from);
            (id, (region, status))
        })
        .collect();
    assert_eq!(report.live_orders, expected.len());
    let live_sql = "SELECT _id, arg_max_null(region, _time) FILTER (WHERE _diff > 0) AS region, \
                    arg_max_null(status, _time) FILTER (WHERE _diff > 0) AS status, sum(_diff) AS n \
                    FROM t GROUP BY _id HAVING sum(_diff) <> 0";
    let read = read_with_python("parquet", &report.orders_changelog_files, Some(live_sql))
        .expect("readers present");
    let from_changelog: Live = read["duckdb"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["n"], 1);
            let id = r["_id"]["hex"].as_str().unwrap().to_string();
            (
                id,
                (
                    r["region"].as_str().map(String::from),
                    r["status"].as_str().map(String::from),
                ),
            )
        })
        .collect();
    assert_same_live("orders changelog replayed", &from_changelog, &expected);
    let read = read_with_python("parquet", &report.orders_files, None).expect("readers present");
    for reader in ["pyarrow", "duckdb"] {
        let live: Live = read[reader]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let id = r["_id"]["hex"].as_str().unwrap().to_string();
                (
                    id,
                    (
                        r["region"].as_str().map(String::from),
                        r["status"].as_str().map(String::from),
                    ),
                )
            })
            .collect();
        assert_same_live(&format!("{reader}: live orders files"), &live, &expected);
    }
}

#[test]
fn ipc_changelogs_replay_to_the_final_view() {
    use changeflow::core::ClusterTime;
    use changeflow::jobs::orders_by_region::v1_definition;
    use changeflow::operators::documents::{DocumentStats, document_state};
    use changeflow::operators::handle::ViewHandle;
    use changeflow::operators::value::Value;
    use changeflow::operators::views::Row;
    use changeflow::sinks::dataflow::ArrowSink;
    use changeflow::sources::reader::ReaderOptions;
    use changeflow::sources::replay::{ReplayOptions, replay};
    use changeflow_testkit::orders::OrdersConfig;

    let dir = scratch("changelog-ipc");
    let lines = lines(OrdersConfig {
        seed: 52,
        events: 3000,
        ..OrdersConfig::default()
    });
    let input = dir.join("events.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let mut replay_options = ReplayOptions::new(ReaderOptions::new(&input));
    replay_options.batch = 128;
    let status = replay_options.status();
    let (files_sink, stream_sink) = (ArrowSink::new(), ArrowSink::new());
    let handle: ViewHandle<Row> = ViewHandle::new();
    let piped = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let job = {
        let (files_sink, stream_sink, handle, piped, dir) = (
            files_sink.clone(),
            stream_sink.clone(),
            handle.clone(),
            piped.clone(),
            dir.clone(),
        );
        move |worker: &mut timely::worker::Worker| {
            let probe = worker.dataflow::<ClusterTime, _, _>(|scope| {
                let documents =
                    document_state(replay(scope, replay_options.clone()), DocumentStats::new());
                let v1 = v1_definition();
                let view = v1.build(documents);
                let writer = IpcWriter::new(&dir, "v1", IpcFormat::File, RollPolicy::rows(300));
                files_sink.attach_view(view.clone(), &v1.columns(), writer);
                let stream = IpcStreamWriter::new(Shared(piped.clone()));
                stream_sink.attach_view(view.clone(), &v1.columns(), stream);
                handle.attach(view.clone());
                view.probe().0
            });
            changeflow::runtime::drive(worker, &probe, std::slice::from_ref(&status))
        }
    };
    changeflow::runtime::execute(2, job).expect("dataflow");
    files_sink.result().expect("IPC files written");
    stream_sink.result().expect("IPC stream written");
    assert_eq!(
        files_sink.frontier(),
        Some(None),
        "the sink saw the input end"
    );
    let files = files_sink.files();
    assert!(files.len() >= 3, "{files:?}");
    let snapshot: std::collections::BTreeMap<String, (i64, f64)> = handle
        .snapshot()
        .rows
        .iter()
        .map(|(row, _)| match row.as_slice() {
            [Value::String(r), Value::Int(o), Value::Double(a)] => (r.to_string(), (*o, a.0)),
            other => panic!("V1 row {other:?}"),
        })
        .collect();
    assert_v1_eq(&snapshot, &oracle(&lines).0);
    let piped_path = dir.join("piped.arrows");
    std::fs::write(&piped_path, &*piped.lock().unwrap()).unwrap();
    for (format, files) in [("ipc_file", files), ("ipc_stream", vec![piped_path])] {
        let Some(read) = read_with_python(format, &files, Some(REPLAY_SQL)) else {
            return;
        };
        let duck = summed_v1("duckdb", read["duckdb"]["rows"].as_array().unwrap());
        assert_v1_eq(&duck, &snapshot);
        let py = summed_v1(
            "pyarrow",
            &replay_v1(read["pyarrow"]["rows"].as_array().unwrap()),
        );
        assert_v1_eq(&py, &snapshot);
        if format == "ipc_file" {
            // The IPC schema metadata carries each file's frontier, increasing; the last is final.
            let metadata = read["pyarrow"]["metadata"].as_array().unwrap();
            let (last, rest) = metadata.split_last().unwrap();
            let frontiers: Vec<u64> = rest
                .iter()
                .map(|m| m["changeflow.frontier"].as_str().unwrap().parse().unwrap())
                .collect();
            assert!(frontiers.windows(2).all(|w| w[0] < w[1]), "{frontiers:?}");
            assert_eq!(last["changeflow.complete"], "true");
            // Every change in a file is at a time before that file's frontier.
            let rows = read["pyarrow"]["rows"].as_array().unwrap();
            let mut row = 0;
            for (file, frontier) in files.iter().zip(&frontiers) {
                let n = read_with_pyarrow("ipc_file", std::slice::from_ref(file))
                    .and_then(|r| r["pyarrow"]["rows"].as_array().map(Vec::len))
                    .unwrap_or(0);
                assert!(n > 0, "{file:?} has rows");
                for r in &rows[row..row + n] {
                    assert!(r["_time"].as_u64().unwrap() < *frontier, "{file:?}");
                }
                row += n;
            }
        }
    }
}

/// Asserts two maps are equal, naming the first few keys that differ.
fn assert_same_live<V: PartialEq + std::fmt::Debug>(
    what: &str,
    actual: &std::collections::BTreeMap<String, V>,
    expected: &std::collections::BTreeMap<String, V>,
) {
    let differing: Vec<_> = expected
        .keys()
        .chain(actual.keys())
        .filter(|k| actual.get(*k) != expected.get(*k))
        .take(5)
        .map(|k| (k, actual.get(k), expected.get(k)))
        .collect();
    assert!(
        differing.is_empty(),
        "{what}: {} vs {} entries; first differences (key, read, expected): {differing:?}",
        actual.len(),
        expected.len()
    );
}
