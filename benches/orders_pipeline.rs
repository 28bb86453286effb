//! The orders job against a hand-written differential-dataflow pipeline doing the same work, in
//! the same run, on the same generated file.
//!
//! ```text
//! cargo bench --bench orders_pipeline                       # 1M events, best of 3
//! cargo bench --bench orders_pipeline -- --events 200000 --runs 5
//! ```
//!
//! * **changeflow**: `jobs::orders_by_region::run`: Extended JSON → BSON events, exact document
//!   state from `updateDescription`, V1 and V2 as group-by views, Parquet at the end.
//! * **baseline**: the same file parsed with serde into borrowed typed structs (only the fields
//!   the views need), the per-`_id` state of region / customer / amount in a `HashMap`, and V1 /
//!   V2 as differential `count_total`s (amount summed in integer cents). It is what a careful
//!   engineer would write by hand for exactly these two views, and it knows nothing of documents.
//!
//! Both process the file in batches of 4096 events. Each phase runs in its own child process (the
//! bench re-executes itself with `--phase`), so peak RSS is per phase. Figures are events/s
//! (best of `--runs`), the ratio changeflow / baseline of the best rates and the median of each
//! run's own ratio (less sensitive to one lucky run on a noisy machine), and peak RSS.

changeflow::global_allocator!();

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::Instant;

use changeflow::core::ClusterTime;
use changeflow::jobs::orders_by_region::{OrdersOptions, run};
use changeflow::runtime::peak_rss_bytes;
use changeflow_testkit::orders::{OrdersConfig, write_json_lines};
use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use differential_dataflow::input::Input;
use differential_dataflow::operators::count::CountTotal;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "operationType")]
    op: &'a str,
    #[serde(rename = "clusterTime")]
    time: Wrapped,
    #[serde(rename = "documentKey", borrow)]
    key: Key<'a>,
    #[serde(rename = "fullDocument", borrow, default)]
    full: Option<Fields<'a>>,
    #[serde(rename = "updateDescription", borrow, default)]
    update: Option<Update<'a>>,
}
#[derive(Deserialize)]
struct Wrapped {
    #[serde(rename = "$timestamp")]
    ts: TimeParts,
}
#[derive(Deserialize)]
struct TimeParts {
    t: u32,
    i: u32,
}
#[derive(Deserialize)]
struct Key<'a> {
    #[serde(rename = "_id", borrow)]
    id: Oid<'a>,
}
#[derive(Deserialize)]
struct Oid<'a> {
    #[serde(rename = "$oid")]
    oid: &'a str,
}
#[derive(Deserialize, Default)]
struct Fields<'a> {
    region: Option<&'a str>,
    customer_id: Option<i64>,
    amount: Option<f64>,
}
#[derive(Deserialize)]
struct Update<'a> {
    #[serde(rename = "updatedFields", borrow)]
    updated: Fields<'a>,
}

/// Count and sum of cents, as one differential difference.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
struct CountSum {
    count: i64,
    cents: i64,
}
impl IsZero for CountSum {
    fn is_zero(&self) -> bool {
        self.count == 0 && self.cents == 0
    }
}
impl Semigroup for CountSum {
    fn plus_equals(&mut self, rhs: &Self) {
        self.count += rhs.count;
        self.cents += rhs.cents;
    }
}
impl Monoid for CountSum {
    fn zero() -> Self {
        CountSum::default()
    }
}
impl Abelian for CountSum {
    fn negate(&mut self) {
        self.count = -self.count;
        self.cents = -self.cents;
    }
}
impl Multiply<isize> for CountSum {
    type Output = CountSum;
    fn multiply(self, rhs: &isize) -> CountSum {
        CountSum {
            count: self.count * *rhs as i64,
            cents: self.cents * *rhs as i64,
        }
    }
}

type Row = (String, i64, i64);

/// The baseline: returns (events, seconds, live orders).
fn baseline(path: &Path) -> (u64, f64, i64) {
    let path = path.to_path_buf();
    let started = Instant::now();
    let results = timely::execute_directly(move |worker| {
        let (mut input, probe, totals) = worker.dataflow::<ClusterTime, _, _>(|scope| {
            let (input, orders) = scope.new_collection::<Row, isize>();
            let v1 = orders
                .clone()
                .explode(|(region, _, cents): Row| Some((region, CountSum { count: 1, cents })))
                .count_total();
            let v2 = orders.map(|(_, customer, _)| customer).count_total();
            let totals = std::rc::Rc::new(std::cell::Cell::new(0i64));
            let seen = totals.clone();
            let (probe, v1) = v1.probe();
            v1.inspect(move |((_, sum), _, diff)| seen.set(seen.get() + sum.count * *diff as i64));
            v2.probe_with(&probe);
            (input, probe, totals)
        });
        let mut state: HashMap<String, Row> = HashMap::new();
        let reader = BufReader::with_capacity(1 << 20, std::fs::File::open(&path).expect("input"));
        let mut events = 0u64;
        for line in reader.lines() {
            let line = line.expect("line");
            let event: Event = serde_json::from_str(&line).expect("typed parse");
            let time = ClusterTime::new(event.time.ts.t, event.time.ts.i);
            let old = state.get(event.key.id.oid).cloned();
            let row = |f: &Fields, base: Option<&Row>| -> Row {
                (
                    f.region
                        .map(str::to_owned)
                        .or_else(|| base.map(|b| b.0.clone()))
                        .unwrap_or_default(),
                    f.customer_id.or(base.map(|b| b.1)).unwrap_or_default(),
                    f.amount
                        .map(|a| (a * 100.0).round() as i64)
                        .or(base.map(|b| b.2))
                        .unwrap_or_default(),
                )
            };
            let new = match event.op {
                "insert" | "replace" => event.full.as_ref().map(|f| row(f, None)),
                "update" => match (&old, &event.update, &event.full) {
                    (Some(old), Some(update), _) => Some(row(&update.updated, Some(old))),
                    (None, _, Some(full)) => Some(row(full, None)),
                    _ => None,
                },
                _ => None,
            };
            input.advance_to(time);
            if let Some(old) = old {
                input.update(old, -1);
            }
            match new {
                Some(new) => {
                    input.update(new.clone(), 1);
                    state.insert(event.key.id.oid.to_owned(), new);
                }
                None => {
                    state.remove(event.key.id.oid);
                }
            }
            events += 1;
            if events.is_multiple_of(4096) {
                input.flush();
                while probe.less_than(input.time()) {
                    worker.step();
                }
            }
        }
        input.close();
        while !probe.done() {
            worker.step();
        }
        (events, totals.get())
    });
    (results.0, started.elapsed().as_secs_f64(), results.1)
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Runs one phase in this process and prints `events seconds peak_rss live_orders`.
fn phase(which: &str, input: &Path, out: &Path) {
    let (events, seconds, live) = match which {
        "changeflow" => {
            let report = run(&OrdersOptions::new(input, out)).expect("changeflow job");
            (
                report.events,
                report.elapsed.as_secs_f64(),
                changeflow::jobs::orders_by_region::live_orders(&report),
            )
        }
        _ => baseline(input),
    };
    println!(
        "{events} {seconds} {} {live}",
        peak_rss_bytes().unwrap_or(0)
    );
}

/// Runs a phase in a child process (so each has its own peak RSS and allocator state).
fn child(which: &str, input: &Path, out: &Path) -> (f64, u64, i64) {
    let exe = std::env::current_exe().expect("bench binary");
    let output = std::process::Command::new(exe)
        .args(["--phase", which, "--input"])
        .arg(input)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run phase");
    assert!(
        output.status.success(),
        "{which} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = text.split_whitespace().collect();
    let number = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .expect("phase output")
    };
    (number(0) / number(1), number(2) as u64, number(3) as i64)
}

fn main() {
    changeflow::runtime::keep_freed_memory();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("bench-data");
    if let (Some(which), Some(input), Some(out)) = (arg("--phase"), arg("--input"), arg("--out")) {
        return phase(&which, Path::new(&input), Path::new(&out));
    }
    let events: usize = arg("--events")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let runs: usize = arg("--runs").and_then(|v| v.parse().ok()).unwrap_or(3);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let input: PathBuf = dir.join(format!("orders-{events}.jsonl"));
    if !input.exists() {
        let config = OrdersConfig {
            seed: 42,
            events,
            txn_fraction: 0.1,
            full_document_on_update: 0.5,
            ..OrdersConfig::default()
        };
        let mut out = BufWriter::new(std::fs::File::create(&input).expect("create"));
        write_json_lines(config, &mut out).expect("generate");
    }
    let mb = std::fs::metadata(&input)
        .map(|m| m.len() as f64 / 1e6)
        .unwrap_or(0.0);
    println!(
        "input: {} ({events} events, {mb:.0} MB); best of {runs} runs, one worker, each phase in its own process",
        input.display()
    );

    let (mut ours, mut base) = (0f64, 0f64);
    let mut ratios = Vec::new();
    let (mut ours_rss, mut base_rss) = (0u64, 0u64);
    let out = dir.join("out");
    for run_index in 0..runs {
        let (rate, rss, live) = child("changeflow", &input, &out);
        let (base_rate, base_peak, base_live) = child("baseline", &input, &out);
        assert_eq!(live, base_live, "both pipelines count the same live orders");
        println!(
            "run {run_index}: changeflow {rate:>10.0} events/s   baseline {base_rate:>10.0} events/s   ratio {:.2}",
            rate / base_rate
        );
        ratios.push(rate / base_rate);
        ours = ours.max(rate);
        base = base.max(base_rate);
        ours_rss = ours_rss.max(rss);
        base_rss = base_rss.max(base_peak);
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "changeflow: {ours:.0} events/s, peak RSS {:.0} MiB",
        mib(ours_rss)
    );
    println!(
        "baseline:   {base:.0} events/s, peak RSS {:.0} MiB",
        mib(base_rss)
    );
    ratios.sort_by(f64::total_cmp);
    println!(
        "ratio changeflow / baseline: {:.2} (best rates); median of per-run ratios {:.2}",
        ours / base,
        ratios.get(ratios.len() / 2).copied().unwrap_or(0.0)
    );
}
