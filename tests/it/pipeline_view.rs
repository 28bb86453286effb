//! The `view` job: a pipeline over the bundled sample, checked against V1 and the reference
//! model; pipeline errors before any input is read; runtime errors naming the document.

use changeflow::jobs::orders_by_region::bundled_sample;
use std::collections::BTreeMap;
use std::fs::File;

use arrow_array::{Array, Int32Array, Int64Array, StringArray};
use changeflow::jobs::pipeline_view::{ErrorPolicy, ViewError, ViewOptions, run};
use changeflow_testkit::customers::{CustomersConfig, customer_events};
use changeflow_testkit::reference::ReferenceModel;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::support::{lines, oracle, scratch};
use changeflow_testkit::orders::OrdersConfig;

fn docs(report: &changeflow::jobs::pipeline_view::ViewReport) -> Vec<bson::Document> {
    report
        .result
        .iter()
        .map(|d| bson::Document::from_reader(d.as_bytes()).expect("bson"))
        .collect()
}

#[test]
fn group_pipeline_equals_v1_on_the_bundled_sample() {
    let sample = bundled_sample();
    let lines: Vec<String> = std::fs::read_to_string(&sample)
        .expect("sample")
        .lines()
        .map(str::to_owned)
        .collect();
    let (v1, _) = oracle(&lines);
    let mut options = ViewOptions::new(
        &sample,
        "shop.orders",
        r#"[{"$group": {"_id": "$region", "n": {"$sum": 1}, "amount": {"$sum": "$amount"}}}, {"$sort": {"n": -1}}]"#,
    );
    options.print_changes = false;
    let mut sink = Vec::new();
    let report = run(&options, &mut sink).expect("view runs");
    let rows = docs(&report);
    assert_eq!(rows.len(), v1.len());
    for row in &rows {
        let region = row.get_str("_id").expect("region");
        let (count, amount) = v1[region];
        assert_eq!(i64::from(row.get_i32("n").expect("n")), count, "{region}");
        assert!((row.get_f64("amount").expect("amount") - amount).abs() < 1e-6 * amount.max(1.0));
    }
    // In $sort order: descending counts.
    let counts: Vec<i32> = rows.iter().map(|r| r.get_i32("n").expect("n")).collect();
    assert!(counts.windows(2).all(|w| w[0] >= w[1]));
}

#[test]
fn changes_are_printed_per_closed_time_and_sum_to_the_result() {
    let options = ViewOptions::new(
        bundled_sample(),
        "shop.orders",
        r#"[{"$match": {"status": "paid"}}, {"$count": "paid"}]"#,
    );
    let mut out = Vec::new();
    let report = run(&options, &mut out).expect("view runs");
    let text = String::from_utf8(out).expect("utf-8");
    let mut net: std::collections::BTreeMap<i64, i64> = Default::default();
    let mut last_time = (0u64, 0u64);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        let time = (
            v["_time"]["t"].as_u64().expect("t"),
            v["_time"]["i"].as_u64().expect("i"),
        );
        assert!(time >= last_time, "times in order");
        last_time = time;
        *net.entry(v["paid"].as_i64().expect("paid")).or_default() +=
            v["_diff"].as_i64().expect("diff");
    }
    net.retain(|_, n| *n != 0);
    let final_count = docs(&report)[0].get_i32("paid").expect("paid");
    assert_eq!(
        net.into_iter().collect::<Vec<_>>(),
        vec![(i64::from(final_count), 1)]
    );
}

#[test]
fn an_unsupported_stage_is_reported_before_any_input_is_read() {
    let options = ViewOptions::new(
        "/nonexistent/input.jsonl",
        "shop.orders",
        r#"[{"$match": {}}, {"$geoNear": {}}]"#,
    );
    let err = run(&options, &mut Vec::new()).expect_err("refused");
    assert!(matches!(err, ViewError::Pipeline(_)));
    assert!(
        err.to_string()
            .contains("stage 1: $geoNear is not supported"),
        "{err}"
    );
    let options = ViewOptions::new(
        "/nonexistent/input.jsonl",
        "shop.orders",
        r#"[{"$project": {"x": {"$sizee": "$items"}}}]"#,
    );
    let err = run(&options, &mut Vec::new())
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("stage 0 ($project)") && err.contains("did you mean $size"),
        "{err}"
    );
}

#[test]
fn a_runtime_error_names_the_document_and_the_stage() {
    let mut options = ViewOptions::new(
        bundled_sample(),
        "shop.orders",
        r#"[{"$match": {"status": "paid"}}, {"$project": {"x": {"$toInt": "$region"}}}]"#,
    );
    options.print_changes = false;
    let err = run(&options, &mut Vec::new()).expect_err("fails");
    // Fail-fast: a typed error naming the document and the stage's position.
    match &err {
        ViewError::Evaluation(e) => {
            assert!(matches!(e.id, bson::Bson::ObjectId(_)), "{e}");
            assert_eq!((e.position, e.stage.as_str()), (1, "$project"));
            assert_eq!(e.error.operator, "$toInt");
        }
        other => panic!("not an evaluation error: {other}"),
    }
    let err = err.to_string();
    assert!(err.contains("document {_id: ObjectId("), "{err}");
    assert!(
        err.contains("stage 1 ($project)") && err.contains("$toInt"),
        "{err}"
    );
    options.errors = ErrorPolicy::Skip;
    let report = run(&options, &mut Vec::new()).expect("skips");
    assert!(report.skipped > 0);
    assert!(report.result.is_empty());
}

#[test]
fn dead_letters_name_each_failing_document_and_the_view_keeps_the_others() {
    let dir = scratch("view-dead-letter");
    let path = dir.join("dead.jsonl");
    // $toInt fails on the paid orders' region only; the others pass.
    let mut options = ViewOptions::new(
        bundled_sample(),
        "shop.orders",
        r#"[{"$project": {"x": {"$cond": [{"$eq": ["$status", "paid"]}, {"$toInt": "$region"}, 1]}}}]"#,
    );
    options.print_changes = false;
    options.errors = ErrorPolicy::DeadLetter(path.clone());
    let report = run(&options, &mut Vec::new()).expect("dead-letters");
    let text = std::fs::read_to_string(&path).expect("dead-letter file");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert!(!lines.is_empty());
    assert_eq!(lines.len() as u64, report.skipped);
    for line in &lines {
        assert!(line["_id"]["$oid"].is_string(), "{line}");
        assert_eq!(line["position"], 0, "{line}");
        assert_eq!(line["stage"], "$project", "{line}");
        assert_eq!(line["operator"], "$toInt", "{line}");
    }
    // Every row in the view is a document that did not fail.
    assert!(!report.result.is_empty());
    assert!(docs(&report).iter().all(|d| d.get_i32("x").ok() == Some(1)));
}

/// Reads a changelog Parquet file of `{_id: string, n: int}` rows as net multiplicities.
fn net_rows(paths: &[std::path::PathBuf]) -> BTreeMap<(String, i64), i64> {
    let mut net = BTreeMap::new();
    for path in paths {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).expect("open"))
            .expect("parquet")
            .build()
            .expect("reader");
        for batch in reader {
            let batch = batch.expect("batch");
            let id = batch
                .column_by_name("_id")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
                .expect("_id utf8");
            let n = batch.column_by_name("n").expect("n column");
            let diff = batch
                .column_by_name("_diff")
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>().cloned())
                .expect("_diff int64");
            for i in 0..batch.num_rows() {
                let count = match n.as_any().downcast_ref::<Int32Array>() {
                    Some(a) => i64::from(a.value(i)),
                    None => n
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .expect("n int")
                        .value(i),
                };
                *net.entry((id.value(i).to_string(), count)).or_default() += diff.value(i);
            }
        }
    }
    net.retain(|_, d| *d != 0);
    net
}

#[test]
fn the_parquet_changelog_read_back_nets_to_the_final_result() {
    let dir = scratch("view-parquet");
    let mut options = ViewOptions::new(
        bundled_sample(),
        "shop.orders",
        r#"[{"$group": {"_id": "$region", "n": {"$sum": 1}}}]"#,
    );
    options.print_changes = false;
    options.parquet = Some(dir.join("by_region.parquet"));
    options.ipc = Some(dir.join("by_region.arrow"));
    let report = run(&options, &mut Vec::new()).expect("view runs");
    let parquet: Vec<_> = report
        .files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "parquet"))
        .cloned()
        .collect();
    assert!(!parquet.is_empty(), "{:?}", report.files);
    assert!(parquet.iter().all(|f| {
        f.starts_with(&dir)
            && f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("by_region-"))
    }));
    assert!(
        report
            .files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "arrow"))
    );
    let expected: BTreeMap<(String, i64), i64> = docs(&report)
        .iter()
        .map(|d| {
            (
                (
                    d.get_str("_id").expect("_id").to_string(),
                    i64::from(d.get_i32("n").expect("n")),
                ),
                1,
            )
        })
        .collect();
    assert!(expected.len() >= 3);
    assert_eq!(net_rows(&parquet), expected);
}

#[test]
fn uri_without_the_live_feature_is_the_typed_live_not_built_error() {
    let mut options = ViewOptions::new(
        "/nonexistent/input.jsonl",
        "shop.orders",
        r#"[{"$count": "n"}]"#,
    );
    options.idle_timeout = Some(std::time::Duration::from_millis(500));
    options.print_changes = false;
    if changeflow_sources::live::AVAILABLE {
        // `cargo test --workspace` builds the live source (features unify): then `--uri` reads
        // the collection (a consistent snapshot) and follows it; the count is the oracle's.
        let server = changeflow_testkit::server::ChangeStreamServer::start().expect("server");
        let config = OrdersConfig {
            seed: 12,
            events: 800,
            ..OrdersConfig::default()
        };
        server.push_workload(config.clone()).expect("push");
        let mut model = ReferenceModel::new();
        for line in lines(config) {
            model.apply_json_line(&line).expect("oracle");
        }
        options.uri = Some(server.uri());
        let report = run(&options, &mut Vec::new()).expect("the live view runs");
        let n = model.documents().len() as i64;
        assert_eq!(report.result.len(), 1);
        assert_eq!(
            report.result[0]
                .get("n")
                .expect("n")
                .and_then(|e| e.as_i64()),
            Some(n)
        );
    } else {
        options.uri = Some("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200".into());
        let result = run(&options, &mut Vec::new());
        assert!(
            matches!(
                result,
                Err(ViewError::Job(
                    changeflow::jobs::orders_by_region::JobError::Source(
                        changeflow_sources::error::SourceError::LiveNotBuilt
                    )
                ))
            ),
            "{result:?}"
        );
    }
}

#[test]
fn lookup_input_joins_another_namespace_file() {
    let dir = scratch("view-lookup");
    let customers = dir.join("customers.jsonl");
    let config = CustomersConfig {
        customers: 300,
        changes: 200,
        ..CustomersConfig::default()
    };
    let lines = customer_events(&config);
    std::fs::write(&customers, lines.join("\n") + "\n").expect("write customers");
    let pipeline = r#"[{"$lookup": {"from": "customers", "localField": "customer_id", "foreignField": "_id", "as": "c"}},
        {"$unwind": {"path": "$c", "preserveNullAndEmptyArrays": true}},
        {"$group": {"_id": {"$ifNull": ["$c.tier", "none"]}, "n": {"$sum": 1}}}]"#;
    let mut options = ViewOptions::new(bundled_sample(), "shop.orders", pipeline);
    options.print_changes = false;
    options.lookup_inputs = vec![("shop.customers".into(), customers.clone())];
    let report = run(&options, &mut Vec::new()).expect("view runs");
    let got: BTreeMap<String, i32> = docs(&report)
        .iter()
        .map(|d| {
            (
                d.get_str("_id").expect("tier").to_string(),
                d.get_i32("n").expect("n"),
            )
        })
        .collect();
    // The oracle: the reference model's final orders and customers, joined by hand.
    let mut model = ReferenceModel::new();
    for line in std::fs::read_to_string(bundled_sample())
        .expect("sample")
        .lines()
        .chain(lines.iter().map(String::as_str))
    {
        model.apply_json_line(line).expect("reference");
    }
    let tiers: BTreeMap<i32, String> = model
        .documents()
        .iter()
        .filter(|((ns, _), _)| ns == "shop.customers")
        .map(|(_, d)| {
            (
                d.get_i32("_id").expect("id"),
                d.get_str("tier").expect("tier").to_string(),
            )
        })
        .collect();
    let mut expected: BTreeMap<String, i32> = BTreeMap::new();
    for ((ns, _), order) in model.documents() {
        if ns == "shop.orders" {
            let tier = order
                .get_i32("customer_id")
                .ok()
                .and_then(|c| tiers.get(&c).cloned())
                .unwrap_or_else(|| "none".into());
            *expected.entry(tier).or_default() += 1;
        }
    }
    assert!(expected.len() >= 3, "{expected:?}");
    assert_eq!(got, expected);
}
