//! BSON → Arrow conversion throughput, against a raw walk over the same bytes in the same run.
//!
//! ```text
//! cargo bench --bench bson_to_arrow                               # defaults, best of 3
//! cargo bench --bench bson_to_arrow -- --flat 400000 --nested 2500 --runs 5
//! ```
//!
//! * **flat**: ~250-byte documents of 10 top-level fields (ObjectId, int32, int64, strings, a
//!   double, a bool, a datetime).
//! * **nested**: ~20 KB documents: a sub-document, an array of 100 item documents each with an
//!   array and a sub-document, and an array of 40 history entries.
//! * **convert**: `DocumentBatcher` (schema inferred from the first 1000 documents) building
//!   record batches of 8192 rows: every value lands in an Arrow buffer.
//! * **baseline**: `raw::elements` walking every element of every document recursively and
//!   touching each value's bytes (no output): the cost of reading the BSON at all.
//!
//! Figures: MB/s (of BSON input) and rows/s, best of `--runs`, and convert / baseline.
//!
//! Measured (release profile, one thread, 2-core VM shared with other builds; two runs a few
//! seconds apart, which shows how much the neighbours move the absolute figures):
//!
//! | documents | baseline walk | convert | convert / baseline |
//! |---|---:|---:|---:|
//! | flat, 249 B | 781–1122 MB/s, 3.1–4.5 M rows/s | 330–614 MB/s, 1.3–2.5 M rows/s | 0.42–0.55 |
//! | nested, 22 KB | 453–635 MB/s, 20–29 k rows/s | 167–291 MB/s, 7.6–13 k rows/s | 0.37–0.46 |

changeflow::global_allocator!();

use std::hint::black_box;
use std::time::{Duration, Instant};

use changeflow::core::raw;
use changeflow::sinks::arrow::documents::DocumentBatcher;
use changeflow::sinks::arrow::schema::SchemaSource;

const BATCH_ROWS: usize = 8192;

fn flat(i: u64) -> Vec<u8> {
    let mut oid = [0u8; 12];
    oid[4..].copy_from_slice(&i.to_be_bytes());
    let regions = ["us-east", "us-west", "eu-west", "eu-central", "ap-south"];
    let doc = bson::doc! {
        "_id": bson::oid::ObjectId::from_bytes(oid),
        "customer_id": (i % 5000) as i32,
        "region": regions[(i % 5) as usize],
        "status": if i.is_multiple_of(3) { "paid" } else { "pending" },
        "amount": (i % 10_000) as f64 / 7.0,
        "qty": (i * 7919 % 100) as i64,
        "paid": i.is_multiple_of(2),
        "ts": bson::DateTime::from_millis(1_700_000_000_000 + i as i64),
        "sku": format!("SKU-{:08}", i % 100_000),
        "note": format!("order {i} of customer {} shipped by carrier {:02} with standard handling, insured ......", i % 5000, i % 17),
    };
    doc.to_vec().unwrap_or_default()
}

fn nested(i: u64) -> Vec<u8> {
    let items: Vec<bson::Bson> = (0..100)
        .map(|j| {
            bson::Bson::Document(bson::doc! {
                "sku": format!("SKU-{:08}", (i * 31 + j) % 100_000),
                "qty": ((i + j) % 9) as i32,
                "price": ((i * j) % 1000) as f64 / 3.0,
                "tags": ["a", "bb", format!("t{}", j % 7)],
                "dims": { "w": j as f64 * 0.5, "h": 2.0, "d": (j % 4) as i32 },
                "note": "a short free-text line about this item, stored as is",
            })
        })
        .collect();
    let history: Vec<bson::Bson> = (0..40)
        .map(|k| {
            let status = ["pending", "paid", "shipped"][(k % 3) as usize];
            bson::Bson::Document(bson::doc! {
                "at": bson::DateTime::from_millis(1_700_000_000_000 + (i * 100 + k) as i64),
                "status": status,
                "by": format!("user-{}", k % 11),
            })
        })
        .collect();
    let doc = bson::doc! {
        "_id": i as i64,
        "customer": { "id": (i % 5000) as i32, "name": format!("customer {i}"), "vip": i.is_multiple_of(9) },
        "items": items,
        "history": history,
        "total": i as f64 * 1.25,
    };
    doc.to_vec().unwrap_or_default()
}

/// Touches every value of a document, recursively: the cost of reading BSON at all.
fn walk(doc: &[u8]) -> u64 {
    let mut acc = 0u64;
    for e in raw::elements(doc) {
        let Ok(e) = e else { break };
        acc = acc.wrapping_add(e.key.len() as u64);
        match e.kind {
            raw::kind::DOCUMENT | raw::kind::ARRAY => acc = acc.wrapping_add(walk(e.value)),
            raw::kind::STRING => {
                acc = acc.wrapping_add(e.as_str().map_or(0, |s| s.len() as u64));
            }
            _ => acc = acc.wrapping_add(e.value.first().copied().unwrap_or(0) as u64),
        }
    }
    acc
}

fn convert(docs: &[Vec<u8>]) -> usize {
    let mut batcher = DocumentBatcher::new(SchemaSource::Inferred {
        sample: 1000,
        widen: true,
    });
    let mut rows = 0;
    for chunk in docs.chunks(BATCH_ROWS) {
        for doc in chunk {
            batcher.push(doc);
        }
        match batcher.finish() {
            Ok(batches) => {
                rows += batches
                    .iter()
                    .map(|b| black_box(b).num_rows())
                    .sum::<usize>()
            }
            Err(e) => panic!("conversion failed: {e}"),
        }
    }
    assert_eq!(
        batcher.stats().fallback_values,
        0,
        "every value has a column"
    );
    rows
}

fn best_of(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn report(name: &str, docs: &[Vec<u8>], runs: usize) {
    let bytes: usize = docs.iter().map(Vec::len).sum();
    let mb = bytes as f64 / 1e6;
    let n = docs.len() as f64;
    let baseline = best_of(runs, || {
        black_box(docs.iter().map(|d| walk(d)).fold(0u64, u64::wrapping_add));
    });
    let converted = best_of(runs, || {
        assert_eq!(convert(docs), docs.len());
    });
    let (b, c) = (baseline.as_secs_f64(), converted.as_secs_f64());
    println!(
        "{name:<7} {:>7} docs, {:>6.0} B/doc, {:>6.1} MB | baseline walk {:>7.0} MB/s {:>10.0} rows/s | \
         convert {:>7.0} MB/s {:>10.0} rows/s | convert/baseline {:.2}",
        docs.len(),
        bytes as f64 / n,
        mb,
        mb / b,
        n / b,
        mb / c,
        n / c,
        b / c
    );
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    changeflow::runtime::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let runs = arg(&args, "--runs", 3);
    let flat_docs: Vec<Vec<u8>> = (0..arg(&args, "--flat", 400_000) as u64)
        .map(flat)
        .collect();
    let nested_docs: Vec<Vec<u8>> = (0..arg(&args, "--nested", 2_500) as u64)
        .map(nested)
        .collect();
    println!(
        "BSON → Arrow, best of {runs} (one thread, input in memory, batches of {BATCH_ROWS} rows)"
    );
    report("flat", &flat_docs, runs);
    report("nested", &nested_docs, runs);
}
