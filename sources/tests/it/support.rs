//! Running a live source in a dataflow and comparing what it delivered with the server's log.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::Document;
use changeflow_core::{ChangeEvent, ClusterTime};
use changeflow_sources::SourceStatus;
use changeflow_sources::live::policy::Backoff;
use changeflow_sources::live::{LiveOptions, StartAt, WatchTarget, watch};
use changeflow_testkit::server::ChangeStreamServer;
use timely::dataflow::operators::{Inspect, Probe};

/// What a run delivered.
pub struct Run {
    /// Events in delivery order.
    pub events: Vec<ChangeEvent>,
    /// The source's status at the end.
    pub status: Arc<SourceStatus>,
}

/// Options for a test: short waits, quick backoff, from the start of the server's log.
pub fn options(server: &ChangeStreamServer, target: WatchTarget) -> LiveOptions {
    let mut o = LiveOptions::new(&server.uri(), target);
    o.max_await_time = Some(Duration::from_millis(50));
    o.backoff = Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(100),
        max_attempts: Some(5),
    };
    o.start = StartAt::OperationTime(ClusterTime::new(1_600_000_000, 0));
    o
}

/// Runs `options` in a one-worker dataflow until the source ends or fails (at most 60 s).
pub fn run(options: LiveOptions) -> Run {
    run_with(options, |_| {})
}

/// Like [`run`], calling `each_step` with the status while the dataflow runs.
pub fn run_with(
    options: LiveOptions,
    each_step: impl FnMut(&SourceStatus) + Send + 'static,
) -> Run {
    let each_step = Mutex::new(each_step);
    let status = options.status();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let watched = status.clone();
    timely::execute_directly(move |worker| {
        let probe = worker.dataflow::<ClusterTime, _, _>(|scope| {
            let sink = Arc::clone(&sink);
            watch(scope, options.clone())
                .inspect(move |(event, _)| sink.lock().unwrap().push(event.clone()))
                .probe()
                .0
        });
        let started = Instant::now();
        loop {
            (each_step.lock().unwrap())(&watched);
            if watched.error().is_some() || started.elapsed() > Duration::from_secs(60) {
                for dataflow in worker.installed_dataflows() {
                    worker.drop_dataflow(dataflow);
                }
                break;
            }
            if watched.is_finished() && probe.done() {
                break;
            }
            worker.step_or_park(Some(Duration::from_millis(5)));
        }
    });
    let events = std::mem::take(&mut *seen.lock().unwrap());
    Run { events, status }
}

/// The server's log, as the bytes each event must arrive as.
pub fn bytes_of(docs: &[Document]) -> Vec<Vec<u8>> {
    docs.iter().map(|d| d.to_vec().unwrap()).collect()
}

/// Asserts that `run` delivered exactly `expected`, in order: no loss, no duplicate.
pub fn assert_delivered(run: &Run, expected: &[Document]) {
    assert!(
        run.status.error().is_none(),
        "source failed: {:?}",
        run.status.error()
    );
    let got: Vec<Vec<u8>> = run
        .events
        .iter()
        .map(|e| e.raw().as_bytes().to_vec())
        .collect();
    let want = bytes_of(expected);
    let mut tokens: Vec<String> = run.events.iter().map(|e| e.token().to_string()).collect();
    tokens.dedup();
    assert_eq!(tokens.len(), run.events.len(), "duplicate events delivered");
    assert_eq!(
        got.len(),
        want.len(),
        "delivered {} events, the log has {}",
        got.len(),
        want.len()
    );
    for (n, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g == w,
            "event {n} differs from the log: {:?}",
            run.events[n]
        );
    }
}

/// The `$changeStream` stages of the aggregates the server received, in order.
pub fn stages(server: &ChangeStreamServer) -> Vec<Document> {
    server.change_stream_stages()
}

/// The names of the resume options of a `$changeStream` stage.
pub fn start_option(stage: &Document) -> Option<&'static str> {
    ["resumeAfter", "startAfter", "startAtOperationTime"]
        .into_iter()
        .find(|k| stage.contains_key(*k))
}
