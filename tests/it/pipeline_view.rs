//! The `view` job: a pipeline over the bundled sample, checked against V1 and the reference
//! model; pipeline errors before any input is read; runtime errors naming the document.

use changeflow::jobs::orders_by_region::bundled_sample;
use changeflow::jobs::pipeline_view::{ViewError, ViewOptions, run};

use crate::support::oracle;

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
    let err = run(&options, &mut Vec::new())
        .expect_err("fails")
        .to_string();
    assert!(err.contains("document {_id: ObjectId("), "{err}");
    assert!(
        err.contains("stage 1 ($project)") && err.contains("$toInt"),
        "{err}"
    );
    options.skip_errors = true;
    let report = run(&options, &mut Vec::new()).expect("skips");
    assert!(report.skipped > 0);
    assert!(report.result.is_empty());
}
