//! Shared helpers: scratch directories, generated inputs, the oracle, reading Parquet back.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::{Array, Float64Array, Int64Array, StringArray};
use changeflow_testkit::orders::{OrdersConfig, OrdersWorkload};
use changeflow_testkit::reference::ReferenceModel;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// A fresh directory under the target dir's tmp area, unique per test.
pub fn scratch(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Generates the workload's lines.
pub fn lines(config: OrdersConfig) -> Vec<String> {
    OrdersWorkload::new(config).collect()
}

/// V1 and V2 as the reference model computes them over the final state of `lines`.
pub fn oracle(lines: &[String]) -> (BTreeMap<String, (i64, f64)>, BTreeMap<i64, i64>) {
    let mut model = ReferenceModel::new();
    for line in lines {
        model
            .apply_json_line(line)
            .expect("reference model applies every generated line");
    }
    (model.orders_by_region(), model.orders_by_customer())
}

/// Reads v1.parquet as region → (orders, amount) with the parquet crate's Arrow reader.
pub fn read_v1(path: &Path) -> BTreeMap<String, (i64, f64)> {
    let mut out = BTreeMap::new();
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).expect("open v1"))
        .expect("parquet")
        .build()
        .expect("reader");
    for batch in reader {
        let batch = batch.expect("batch");
        let region = batch
            .column_by_name("region")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
            .expect("region utf8");
        let orders = batch
            .column_by_name("orders")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>().cloned())
            .expect("orders int64");
        let amount = batch
            .column_by_name("amount")
            .and_then(|c| c.as_any().downcast_ref::<Float64Array>().cloned())
            .expect("amount float64");
        for i in 0..batch.num_rows() {
            assert!(!region.is_null(i), "null region group in v1");
            out.insert(
                region.value(i).to_string(),
                (orders.value(i), amount.value(i)),
            );
        }
    }
    out
}

/// Reads v2.parquet as customer_id → orders.
pub fn read_v2(path: &Path) -> BTreeMap<i64, i64> {
    let mut out = BTreeMap::new();
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).expect("open v2"))
        .expect("parquet")
        .build()
        .expect("reader");
    for batch in reader {
        let batch = batch.expect("batch");
        let customer = batch
            .column_by_name("customer_id")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>().cloned())
            .expect("customer int64");
        let orders = batch
            .column_by_name("orders")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>().cloned())
            .expect("orders int64");
        for i in 0..batch.num_rows() {
            out.insert(customer.value(i), orders.value(i));
        }
    }
    out
}

/// Asserts V1 equals the oracle: same regions and counts, amounts equal to 1e-9 relative.
pub fn assert_v1_eq(
    actual: &BTreeMap<String, (i64, f64)>,
    expected: &BTreeMap<String, (i64, f64)>,
) {
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "V1 regions"
    );
    for (region, (orders, amount)) in expected {
        let (got_orders, got_amount) = actual[region];
        assert_eq!(got_orders, *orders, "V1 orders for {region}");
        assert!(
            (got_amount - amount).abs() <= 1e-9 * amount.abs().max(1.0),
            "V1 amount for {region}: {got_amount} vs {amount}"
        );
    }
}

/// Reads a Parquet file with pyarrow (an independent implementation) as JSON rows, or `None`
/// when pyarrow is not installed outside CI. Under CI (`CI=true`) a missing pyarrow fails.
pub fn pyarrow_rows(path: &Path) -> Option<Vec<serde_json::Value>> {
    let script = "import sys, json, pyarrow.parquet as pq\nt = pq.read_table(sys.argv[1])\nprint(json.dumps(t.to_pylist()))";
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .output();
    match output {
        Ok(out) if out.status.success() => {
            Some(serde_json::from_slice(&out.stdout).expect("pyarrow output is JSON"))
        }
        other => {
            assert!(
                std::env::var("CI").is_err(),
                "pyarrow must be installed in CI (.ci/run installs it): {other:?}"
            );
            eprintln!("pyarrow not available: skipping the independent-reader check");
            None
        }
    }
}

/// Reads `paths` (format `parquet`, `ipc_file` or `ipc_stream`) with pyarrow and DuckDB through
/// `tests/it/read_arrow.py`, as JSON (see the script), or `None` when pyarrow or DuckDB is not
/// installed outside CI. Under CI (`CI=true`) a missing module fails; a failing read always does.
pub fn read_with_python(
    format: &str,
    paths: &[PathBuf],
    sql: Option<&str>,
) -> Option<serde_json::Value> {
    read_with(format, paths, sql, true)
}

/// [`read_with_python`] with pyarrow alone (DuckDB cannot import dense unions).
pub fn read_with_pyarrow(format: &str, paths: &[PathBuf]) -> Option<serde_json::Value> {
    read_with(format, paths, None, false)
}

fn read_with(
    format: &str,
    paths: &[PathBuf],
    sql: Option<&str>,
    duckdb: bool,
) -> Option<serde_json::Value> {
    let probe = std::process::Command::new("python3")
        .arg("-c")
        .arg("import pyarrow, duckdb")
        .output();
    if !matches!(&probe, Ok(out) if out.status.success()) {
        assert!(
            std::env::var("CI").is_err(),
            "pyarrow and duckdb must be installed in CI (.ci/run installs them): {probe:?}"
        );
        eprintln!("pyarrow or duckdb not available: skipping the independent-reader check");
        return None;
    }
    let mut command = std::process::Command::new("python3");
    command
        .arg("-c")
        .arg(include_str!("read_arrow.py"))
        .arg(format)
        .args(paths);
    if let Some(sql) = sql {
        command.arg("--sql").arg(sql);
    }
    if !duckdb {
        command.arg("--no-duckdb");
    }
    let out = command.output().expect("python3 runs");
    assert!(
        out.status.success(),
        "pyarrow / DuckDB could not read {paths:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("the reader prints JSON"))
}
