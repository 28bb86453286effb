//! Throughput of the live path: test server → `mongodb` driver → live source → document state,
//! for small (about 250 B) and large (about 20 KB) documents, beside the replay path (a BSON file
//! of the same events → replay source → document state).
//!
//! ```text
//! cargo bench -p changeflow-sources --bench live_path
//! cargo bench -p changeflow-sources --bench live_path -- --small 200000 --large 10000
//! ```
//!
//! Every figure is events/s and MB/s of event BSON, best of 3 runs, one worker. The server runs
//! in the same process on the same two cores, so the live figures include the server's own work
//! (scanning its log, encoding replies): a lower bound for what the source does against a real
//! deployment.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{Document, doc};
use changeflow_core::ClusterTime;
use changeflow_operators::documents::{DocumentStats, document_state};
use changeflow_sources::live::{LiveOptions, StartAt, WatchTarget, watch};
use changeflow_sources::reader::ReaderOptions;
use changeflow_sources::replay::{ReplayOptions, replay};
use changeflow_sources::{SourceStatus, live};
use changeflow_testkit::server::ChangeStreamServer;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A document of about `size` bytes: a few typed fields and a padding string.
fn document(id: i64, size: usize) -> Document {
    let region = ["eu-west", "us-east", "ap-south"][id as usize % 3];
    doc! {
        "_id": id,
        "region": region,
        "amount": id as f64 * 0.25,
        "pad": "x".repeat(size.saturating_sub(90)),
    }
}

/// Runs `build` (a source into document state) to the end; returns the elapsed time.
fn time_dataflow(
    status: Arc<SourceStatus>,
    build: impl Fn(timely::dataflow::Scope<'_, ClusterTime>) -> changeflow_core::EventStream<'_>
    + Send
    + Sync
    + 'static,
) -> Duration {
    let started = Instant::now();
    let watched = status.clone();
    timely::execute_directly(move |worker| {
        let probe = worker.dataflow::<ClusterTime, _, _>(|scope| {
            let documents = document_state(build(scope), DocumentStats::new());
            documents.probe().0
        });
        while !probe.done() && watched.error().is_none() {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        for dataflow in worker.installed_dataflows() {
            worker.drop_dataflow(dataflow);
        }
    });
    if let Some(error) = status.error() {
        panic!("source failed: {error}");
    }
    started.elapsed()
}

fn report(path: &str, size: usize, events: usize, bytes: usize, best: Duration) {
    let secs = best.as_secs_f64();
    println!(
        "{path:<7} {size:>6} B docs: {events:>7} events in {secs:>6.2} s = {:>9.0} events/s, {:>7.1} MB/s",
        events as f64 / secs,
        bytes as f64 / secs / 1e6,
    );
}

fn bench(size: usize, events: usize) {
    let server = ChangeStreamServer::start().expect("server");
    for i in 0..events as i64 {
        server.insert("bench", "docs", document(i, size));
    }
    let log = server.events();
    let bytes: usize = log.iter().map(|e| e.to_vec().map_or(0, |v| v.len())).sum();

    let mut live_best = Duration::MAX;
    for _ in 0..3 {
        let mut options = LiveOptions::new(&server.uri(), WatchTarget::collection("bench", "docs"));
        options.start = StartAt::OperationTime(ClusterTime::new(1, 0));
        options.max_events = Some(events as u64);
        options.batch_size = Some(1000);
        let status = options.status();
        live_best = live_best.min(time_dataflow(status, move |scope| {
            watch(scope, options.clone())
        }));
    }
    report("live", size, events, bytes, live_best);

    let path =
        std::env::temp_dir().join(format!("cf-live-bench-{}-{size}.bson", std::process::id()));
    let mut file = Vec::with_capacity(bytes);
    for event in &log {
        event.to_writer(&mut file).expect("encode");
    }
    std::fs::write(&path, &file).expect("write");
    let mut replay_best = Duration::MAX;
    for _ in 0..3 {
        let options = ReplayOptions::new(ReaderOptions::new(&path));
        let status = options.status();
        replay_best = replay_best.min(time_dataflow(status, move |scope| {
            replay(scope, options.clone())
        }));
    }
    report("replay", size, events, bytes, replay_best);
    std::fs::remove_file(&path).ok();
}

fn main() {
    if !live::AVAILABLE {
        eprintln!(
            "the live source is not built: run with `--features live` (or `cargo bench --workspace`)"
        );
        return;
    }
    let small = arg("--small", 50_000);
    let large = arg("--large", 3_000);
    if small > 0 {
        bench(250, small);
    }
    if large > 0 {
        bench(20_000, large);
    }
}
