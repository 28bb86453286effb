//! Initial snapshots and re-snapshots through the real driver against the test server: the
//! document state at the end equals the server's (the reference model's) documents, the scan is
//! read in parallel `_id` ranges at one `atClusterTime`, and a lost history is either a typed
//! error naming the token and the missing range or one jump at the re-snapshot's time.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::{Bson, Document, doc};
use changeflow_core::{ClusterTime, synthetic};
use changeflow_operators::documents::{DocumentStats, document_state};
use changeflow_sources::SourceError;
use changeflow_sources::live::snapshot::{HistoryLostPolicy, SnapshotFallback, SnapshotOptions};
use changeflow_sources::live::{LiveOptions, StartAt, WatchTarget, watch};
use changeflow_sources::status::{SnapshotMode, SnapshotProgress};
use changeflow_testkit::reference::ReferenceModel;
use changeflow_testkit::server::{ChangeStreamServer, FailPoint, ServerOptions};
use timely::dataflow::operators::{Concat, Inspect};

use crate::support::options;

const DB: &str = "shop";
const COLL: &str = "items";

/// What a run with document state produced.
struct StateRun {
    /// Document-state changes: (time, `_id` as Extended JSON, document, diff).
    changes: Vec<(ClusterTime, String, Document, isize)>,
    /// Every event the source emitted, with its time and whether it is synthetic.
    events: Vec<(ClusterTime, bool)>,
    status: Arc<changeflow_sources::SourceStatus>,
    /// Snapshot progress as last seen while running.
    progress: Option<SnapshotProgress>,
}

impl StateRun {
    /// The final documents by `_id`.
    fn documents(&self) -> BTreeMap<String, Document> {
        let mut sums: HashMap<(String, Vec<u8>), (Document, isize)> = HashMap::new();
        for (_, id, doc, diff) in &self.changes {
            let bytes = doc.to_vec().unwrap();
            sums.entry((id.clone(), bytes))
                .or_insert((doc.clone(), 0))
                .1 += diff;
        }
        let mut out = BTreeMap::new();
        for ((id, _), (doc, n)) in sums {
            assert!(n == 0 || n == 1, "{id} has multiplicity {n}");
            if n == 1 {
                assert!(out.insert(id.clone(), doc).is_none(), "{id} twice");
            }
        }
        out
    }
}

fn id_json(id: &Bson) -> String {
    id.clone().into_relaxed_extjson().to_string()
}

/// The server's documents (the reference model's) by `_id`.
fn assert_same(got: &BTreeMap<String, Document>, want: &BTreeMap<String, Document>) {
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    let differ: Vec<_> = want
        .iter()
        .filter(|(k, d)| got.get(*k).is_some_and(|g| g != *d))
        .take(3)
        .map(|(k, d)| (k, d, got.get(k)))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "document state differs from the oracle ({} vs {} documents): missing {missing:?}, extra {extra:?}, different {differ:?}",
        got.len(),
        want.len()
    );
}

fn expected(server: &ChangeStreamServer) -> BTreeMap<String, Document> {
    // The reference model over the server's whole log, independent of the server's own
    // collections (which the snapshot reads).
    let mut model = ReferenceModel::new();
    for event in server.events() {
        model.apply(&event).unwrap();
    }
    let ns = format!("{DB}.{COLL}");
    model
        .documents()
        .iter()
        .filter(|((n, _), _)| *n == ns)
        .map(|(_, d)| (id_json(d.get("_id").unwrap()), d.clone()))
        .collect()
}

/// Runs the source into document state on `workers` workers until the source ends or fails;
/// `each_step` is called with the status while it runs.
fn run_state(
    options: LiveOptions,
    workers: usize,
    each_step: impl FnMut(&changeflow_sources::SourceStatus) + Send + 'static,
) -> StateRun {
    run_restored(options, Vec::new(), workers, each_step)
}

/// Like [`run_state`], with `restore` (the synthetic inserts of a restored state) emitted
/// beside the source, as a restart from a checkpoint does.
fn run_restored(
    options: LiveOptions,
    restore: Vec<changeflow_core::ChangeEvent>,
    workers: usize,
    each_step: impl FnMut(&changeflow_sources::SourceStatus) + Send + 'static,
) -> StateRun {
    let status = options.status();
    let changes = Arc::new(Mutex::new(Vec::new()));
    let events = Arc::new(Mutex::new(Vec::new()));
    let progress = Arc::new(Mutex::new(None));
    let each_step = Arc::new(Mutex::new(each_step));
    let (c, e, p) = (changes.clone(), events.clone(), progress.clone());
    timely::execute(timely::Config::process(workers), move |worker| {
        let (c, e) = (c.clone(), e.clone());
        let options = options.clone();
        let restore = restore.clone();
        let probe = worker.dataflow::<ClusterTime, _, _>(|scope| {
            let restored = changeflow_sources::memory::from_events(scope, restore);
            let stream =
                watch(scope, options.clone())
                    .concat(restored)
                    .inspect(move |(event, time)| {
                        let synthetic = synthetic::origin(event).is_some();
                        e.lock().unwrap().push((*time, synthetic));
                    });
            document_state(stream, DocumentStats::new())
                .inspect(move |((key, doc), time, diff)| {
                    let doc: Document = bson::deserialize_from_slice(doc.as_bytes()).unwrap();
                    let id = id_json(doc.get("_id").unwrap());
                    let _ = key;
                    c.lock().unwrap().push((*time, id, doc, *diff));
                })
                .probe()
                .0
        });
        let status = options.status();
        let started = Instant::now();
        loop {
            if worker.index() == 0 {
                (each_step.lock().unwrap())(&status);
                if let Some(now) = status.snapshot_progress() {
                    *p.lock().unwrap() = Some(now);
                }
            }
            if status.error().is_some() || started.elapsed() > Duration::from_secs(120) {
                for dataflow in worker.installed_dataflows() {
                    worker.drop_dataflow(dataflow);
                }
                break;
            }
            if status.is_finished() && probe.done() {
                break;
            }
            worker.step_or_park(Some(Duration::from_millis(2)));
        }
    })
    .unwrap();
    let changes = std::mem::take(&mut *changes.lock().unwrap());
    let events = std::mem::take(&mut *events.lock().unwrap());
    let progress = progress.lock().unwrap().clone();
    StateRun {
        changes,
        events,
        status,
        progress,
    }
}

fn server_with(options: ServerOptions) -> ChangeStreamServer {
    ChangeStreamServer::start_with(options).unwrap()
}

fn seed(server: &ChangeStreamServer, n: i64) {
    let docs = (0..n)
        .map(|i| doc! { "_id": i, "v": 0_i64, "g": i % 10, "name": format!("item {i}") })
        .collect();
    server.insert_many(DB, COLL, docs);
}

/// Writes until `stop`: updates, deletes and inserts spread over the collection.
fn writer(server: &ChangeStreamServer, n: i64, stop: &AtomicBool) -> u64 {
    let mut deleted = std::collections::HashSet::new();
    let mut next_new = n;
    let mut i: i64 = 0;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let id = (i * 7919) % n;
        if i % 5 == 0 && !deleted.contains(&id) {
            server.delete(DB, COLL, id);
            deleted.insert(id);
        } else if i % 7 == 0 {
            server.insert(
                DB,
                COLL,
                doc! { "_id": next_new, "v": i, "g": 1_i64, "name": "new" },
            );
            next_new += 1;
        } else if !deleted.contains(&id) {
            server.update(DB, COLL, id, doc! { "v": i, "touched": true }, &[]);
        }
        if i % 20 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    i as u64
}

fn snapshot_options(server: &ChangeStreamServer, fallback: SnapshotFallback) -> LiveOptions {
    let mut o = options(server, WatchTarget::collection(DB, COLL));
    o.start = StartAt::Now;
    o.initial_snapshot = Some(SnapshotOptions {
        parallelism: 4,
        batch_size: 2000,
        fallback,
    });
    o.idle_timeout = Some(Duration::from_millis(600));
    o
}

/// The `find` commands of the scan: (filter, readConcern).
fn finds(server: &ChangeStreamServer) -> Vec<(Document, Document)> {
    server
        .commands_named("find")
        .into_iter()
        .map(|c| {
            (
                c.get_document("filter").cloned().unwrap_or_default(),
                c.get_document("readConcern").cloned().unwrap_or_default(),
            )
        })
        .collect()
}

/// Scans 100k documents while a writer changes them; the writer stops once the scan is done
/// and the stream then catches up.
fn hand_off(server: Arc<ChangeStreamServer>, fallback: SnapshotFallback) -> (StateRun, u64) {
    let began = Instant::now();
    seed(&server, 100_000);
    eprintln!("seeded in {:?}", began.elapsed());
    let stop = Arc::new(AtomicBool::new(false));
    let writes = {
        let (server, stop) = (server.clone(), stop.clone());
        std::thread::spawn(move || writer(&server, 100_000, &stop))
    };
    let stopper = stop.clone();
    let mut reported = false;
    let run = run_state(snapshot_options(&server, fallback), 2, move |status| {
        // Writes stop near the end of the scan (the majority fallback settles once they do).
        if status
            .snapshot_progress()
            .is_some_and(|p| p.done || p.scanned >= 90_000)
        {
            if !reported {
                eprintln!("scanned at {:?}", began.elapsed());
                reported = true;
            }
            stopper.store(true, Ordering::SeqCst);
        }
    });
    eprintln!("ran at {:?}", began.elapsed());
    stop.store(true, Ordering::SeqCst);
    let writes = writes.join().unwrap();
    (run, writes)
}

#[test]
fn a_snapshot_of_100k_documents_under_writes_hands_off_to_the_stream_exactly() {
    let server = Arc::new(ChangeStreamServer::start().unwrap());
    let started = Instant::now();
    let (run, writes) = hand_off(server.clone(), SnapshotFallback::Fail);
    assert!(run.status.error().is_none(), "{:?}", run.status.error());
    let progress = run.progress.clone().expect("progress was published");
    eprintln!(
        "{progress}; {writes} writes; {:?} in all",
        started.elapsed()
    );
    assert!(progress.done && progress.mode == SnapshotMode::AtClusterTime);
    let estimate = progress.estimated_total.expect("an estimate from count");
    assert!((99_000..=100_100).contains(&estimate), "{estimate}");
    let t0 = progress.at.expect("the snapshot time");
    assert!(
        writes > 100,
        "the writer ran during the scan ({writes} writes)"
    );
    assert_same(&run.documents(), &expected(&server));

    // The scan: several ranges, all read with snapshot read concern at T0.
    let at = bson::Timestamp {
        time: t0.seconds(),
        increment: t0.increment(),
    };
    let scans: Vec<_> = finds(&server)
        .into_iter()
        .filter(|(filter, _)| !filter.is_empty() || progress.ranges == 1)
        .collect();
    let ranges: std::collections::HashSet<String> =
        scans.iter().map(|(f, _)| f.to_string()).collect();
    assert!(ranges.len() >= 3, "parallel ranges: {ranges:?}");
    assert_eq!(ranges.len(), progress.ranges);
    for (filter, concern) in &scans {
        assert_eq!(concern.get_str("level").ok(), Some("snapshot"), "{filter}");
        assert_eq!(
            concern.get_timestamp("atClusterTime").ok(),
            Some(at),
            "{filter}"
        );
    }
    // Every event at or before T0 is the snapshot's; the snapshot is all at T0.
    let at_or_before: Vec<_> = run.events.iter().filter(|(t, _)| *t <= t0).collect();
    assert!(at_or_before.iter().all(|(t, s)| *s && *t == t0));
    assert_eq!(
        at_or_before.len(),
        server
            .documents_at(DB, COLL, (t0.seconds(), t0.increment()))
            .len()
    );
    assert!(
        run.events.iter().any(|(t, s)| !s && *t > t0),
        "stream events after T0 arrived"
    );
}

#[test]
fn without_snapshot_reads_majority_reads_are_reconciled_with_the_stream() {
    let server = Arc::new(
        ChangeStreamServer::start_with(ServerOptions {
            snapshot_reads: false,
            ..ServerOptions::default()
        })
        .unwrap(),
    );
    let (run, writes) = hand_off(server.clone(), SnapshotFallback::Majority);
    assert!(run.status.error().is_none(), "{:?}", run.status.error());
    let progress = run.progress.clone().expect("progress");
    eprintln!("{progress}; {writes} writes");
    assert_eq!(progress.mode, SnapshotMode::Majority);
    assert!(
        writes > 100,
        "the writer ran during the scan ({writes} writes)"
    );
    assert_same(&run.documents(), &expected(&server));
    let scans: Vec<_> = finds(&server)
        .into_iter()
        .filter(|(f, c)| {
            c.get_str("level").ok() == Some("majority")
                && f.get_document("_id").is_ok_and(|r| !r.contains_key("$in"))
        })
        .collect();
    assert!(scans.len() >= 3, "parallel majority ranges: {scans:?}");
    let tf = progress.at.expect("the time the snapshot is exact from");
    assert!(
        run.events
            .iter()
            .filter(|(t, _)| *t <= tf)
            .all(|(t, s)| *s && *t == tf)
    );
}

#[test]
fn a_server_without_snapshot_reads_and_no_fallback_is_a_typed_error() {
    let server = server_with(ServerOptions {
        snapshot_reads: false,
        ..ServerOptions::default()
    });
    seed(&server, 10);
    let run = run_state(snapshot_options(&server, SnapshotFallback::Fail), 1, |_| {});
    let error = run.status.take_error().expect("fails");
    assert!(
        matches!(&error, SourceError::Snapshot { option, .. } if option == "initial_snapshot"),
        "{error}"
    );
    assert!(error.to_string().contains("fallback"), "{error}");
}

#[test]
fn a_snapshot_older_than_the_retained_history_is_snapshot_too_old() {
    let server = Arc::new(ChangeStreamServer::start().unwrap());
    seed(&server, 20_000);
    // The first getMore of a range waits; meanwhile the history moves past T0.
    server.fail(FailPoint::delay("getMore", 1, Duration::from_millis(400)));
    let mut o = snapshot_options(&server, SnapshotFallback::Fail);
    if let Some(s) = &mut o.initial_snapshot {
        s.batch_size = 1000;
    }
    let s2 = server.clone();
    let mut truncated = false;
    let run = run_state(o, 1, move |_| {
        if !truncated && !s2.commands_named("getMore").is_empty() {
            s2.insert(DB, COLL, doc! { "_id": -1 });
            s2.truncate_history(s2.clock());
            truncated = true;
        }
    });
    let error = run.status.take_error().expect("fails");
    match &error {
        SourceError::SnapshotTooOld { at, .. } => {
            assert!(*at < ClusterTime::new(server.history_start().0, server.history_start().1))
        }
        other => panic!("expected SnapshotTooOld, got {other}"),
    }
    assert!(error.to_string().contains("239"), "{error}");
}

/// Follows the collection until caught up, then the source stops reading (a delayed getMore)
/// while documents change and the history is truncated; the resume finds its token gone.
fn lose_history_mid_run(
    policy: HistoryLostPolicy,
) -> (Arc<ChangeStreamServer>, StateRun, Vec<i64>) {
    // Idle polls write no-ops, as a replica set does, so the frontier passes the last write.
    let server = Arc::new(
        ChangeStreamServer::start_with(ServerOptions {
            noop_on_idle: true,
            ..ServerOptions::default()
        })
        .unwrap(),
    );
    seed(&server, 1000);
    let mut o = snapshot_options(&server, SnapshotFallback::Fail);
    o.on_history_lost = policy;
    o.idle_timeout = Some(Duration::from_millis(800));
    let s = server.clone();
    let mut step = 0;
    let mut get_mores = 0;
    let mut changed = Vec::new();
    let changed_out = Arc::new(Mutex::new(Vec::new()));
    let changed_sink = changed_out.clone();
    let mut t0 = None;
    let mut written = None;
    let clock = |s: &ChangeStreamServer| ClusterTime::new(s.clock().0, s.clock().1);
    let run = run_state(o, 2, move |status| {
        let progress = status.snapshot_progress();
        let done_at = progress.filter(|p| p.done).and_then(|p| p.at);
        let frontier = status.position().map(|(t, _)| t);
        match step {
            // The initial snapshot is out and the stream took over: writes the stream sees.
            0 if done_at.is_some() => {
                t0 = done_at;
                s.update(DB, COLL, 1_i64, doc! { "v": 1_i64 }, &[]);
                s.update(DB, COLL, 2_i64, doc! { "v": 2_i64 }, &[]);
                written = Some(clock(&s));
                step = 1;
            }
            // Both updates are out and their time closed.
            1 if frontier > written => {
                s.fail(FailPoint::delay("getMore", 1, Duration::from_millis(300)));
                get_mores = s.commands_named("getMore").len();
                step = 2;
            }
            2 if s.commands_named("getMore").len() > get_mores => {
                // The source is "stopped" in a delayed getMore: the history moves on without it.
                for id in 10..20_i64 {
                    s.update(DB, COLL, id, doc! { "v": 999_i64 }, &[]);
                    changed.push(id);
                }
                // An update that changes nothing in the end.
                s.update(DB, COLL, 30_i64, doc! { "v": 5_i64 }, &[]);
                s.update(DB, COLL, 30_i64, doc! { "v": 0_i64 }, &[]);
                for id in 40..45_i64 {
                    s.delete(DB, COLL, id);
                    changed.push(id);
                }
                for id in 5000..5003_i64 {
                    s.insert(
                        DB,
                        COLL,
                        doc! { "_id": id, "v": 7_i64, "g": 0_i64, "name": "late" },
                    );
                    changed.push(id);
                }
                s.truncate_history(s.clock());
                s.close_connections();
                *changed_sink.lock().unwrap() = changed.clone();
                step = 3;
            }
            // After the re-snapshot the stream goes on.
            3 if done_at > t0 && frontier > done_at => {
                s.update(DB, COLL, 3_i64, doc! { "v": 3_i64 }, &[]);
                step = 4;
            }
            _ => {}
        }
    });
    let changed = changed_out.lock().unwrap().clone();
    (server, run, changed)
}

#[test]
fn history_lost_while_stopped_is_a_typed_error_naming_the_token_and_the_range() {
    let server = ChangeStreamServer::start().unwrap();
    seed(&server, 100);
    // A first run to the end: its position is the checkpoint.
    let mut o = options(&server, WatchTarget::collection(DB, COLL));
    o.idle_timeout = Some(Duration::from_millis(300));
    let first = run_state(o.clone(), 1, |_| {});
    assert!(first.status.error().is_none());
    let (frontier, token) = first.status.position().expect("a position");
    let token = token.expect("a checkpoint token");
    // Stopped: writes, and the oplog rolls over.
    for id in 0..5_i64 {
        server.update(DB, COLL, id, doc! { "v": 1_i64 }, &[]);
    }
    server.truncate_history(server.clock());
    let mut again = options(&server, WatchTarget::collection(DB, COLL));
    again.resume_from_checkpoint(frontier, Some(token.clone()));
    let run = run_state(again, 1, |_| {});
    let error = run.status.take_error().expect("fails");
    let SourceError::HistoryLost {
        from,
        from_time,
        oldest,
        ..
    } = &error
    else {
        panic!("expected HistoryLost, got {error}");
    };
    assert_eq!(*from, token.to_string());
    assert_eq!(*from_time, token.cluster_time());
    let start = server.history_start();
    assert_eq!(*oldest, Some(ClusterTime::new(start.0, start.1)));
    let text = error.to_string();
    assert!(text.contains(&token.to_string()), "{text}");
    assert!(
        text.contains(&format!("{} to {}", from_time.unwrap(), oldest.unwrap())),
        "{text}"
    );
    assert!(run.changes.is_empty(), "nothing is emitted");
}

#[test]
fn resnapshot_after_lost_history_emits_one_jump_with_only_the_differences() {
    let (server, run, changed) = lose_history_mid_run(HistoryLostPolicy::Resnapshot);
    assert!(run.status.error().is_none(), "{:?}", run.status.error());
    assert_same(&run.documents(), &expected(&server));
    let t1 = run
        .progress
        .as_ref()
        .and_then(|p| p.at)
        .expect("the re-snapshot's time");
    assert!(t1 >= ClusterTime::new(server.history_start().0, server.history_start().1));
    // The jump: at T1, exactly the documents that differ (10 updates: -old +new; 5 deletes;
    // 3 inserts), nothing for the update that was undone, nothing for untouched documents.
    let at_t1: Vec<_> = run.changes.iter().filter(|(t, ..)| *t == t1).collect();
    let mut ids: Vec<String> = at_t1.iter().map(|(_, id, ..)| id.clone()).collect();
    ids.sort();
    ids.dedup();
    let mut want: Vec<String> = changed
        .iter()
        .map(|id| id_json(&Bson::Int64(*id)))
        .collect();
    want.sort();
    assert_eq!(ids, want, "the jump holds exactly the changed documents");
    assert_eq!(at_t1.len(), 10 * 2 + 5 + 3);
    // Between the last change the stream showed and T1, nothing.
    let initial = run.changes.iter().map(|(t, ..)| *t).min().expect("changes");
    let between: Vec<_> = run
        .changes
        .iter()
        .filter(|(t, id, ..)| *t > initial && *t < t1 && !["1", "2"].contains(&id.as_str()))
        .collect();
    assert!(between.is_empty(), "{between:?}");
    // The stream continued after T1.
    assert!(run.changes.iter().any(|(t, id, ..)| *t > t1 && id == "3"));
}

#[test]
fn without_the_resnapshot_policy_lost_history_mid_run_fails() {
    let (_server, run, _) = lose_history_mid_run(HistoryLostPolicy::Fail);
    let error = run.status.take_error().expect("fails");
    assert!(matches!(error, SourceError::HistoryLost { .. }), "{error}");
}

#[test]
fn a_restart_whose_history_is_gone_resnapshots_against_the_restored_state() {
    let server = server_with(ServerOptions {
        noop_on_idle: true,
        ..ServerOptions::default()
    });
    seed(&server, 500);
    // First run: the initial snapshot and a few changes; its end is the checkpoint.
    let mut o = snapshot_options(&server, SnapshotFallback::Fail);
    o.idle_timeout = Some(Duration::from_millis(400));
    let s = &server;
    let mut wrote = false;
    let first = std::thread::scope(|scope| {
        let run = scope.spawn(|| run_state(o, 1, |_| {}));
        while !wrote {
            std::thread::sleep(Duration::from_millis(20));
            if !s.commands_named("aggregate").is_empty() {
                s.update(DB, COLL, 7_i64, doc! { "v": 7_i64 }, &[]);
                s.delete(DB, COLL, 8_i64);
                wrote = true;
            }
        }
        run.join().unwrap()
    });
    assert!(first.status.error().is_none(), "{:?}", first.status.error());
    let (frontier, token) = first.status.position().expect("a checkpoint position");
    let held = first.documents();
    assert_eq!(held.len(), 499);
    // Stopped: changes, then the oplog rolls over past the checkpoint.
    for id in 100..104_i64 {
        server.update(DB, COLL, id, doc! { "v": 100_i64 }, &[]);
    }
    server.update(DB, COLL, 200_i64, doc! { "v": 1_i64 }, &[]);
    server.update(DB, COLL, 200_i64, doc! { "v": 0_i64 }, &[]);
    server.delete(DB, COLL, 300_i64);
    server.insert(
        DB,
        COLL,
        doc! { "_id": 9000_i64, "v": 1_i64, "g": 0_i64, "name": "while stopped" },
    );
    server.truncate_history(server.clock());
    // Restart: the restored state at the checkpoint plus the source resumed from its token.
    let ns = changeflow_core::Namespace::new(DB, Some(COLL));
    let restore_time = ClusterTime::from_u64(frontier.as_u64() - 1);
    let restore: Vec<_> = held
        .values()
        .enumerate()
        .map(|(seq, d)| {
            let doc = changeflow_core::Document::from_bytes(d.to_vec().unwrap()).unwrap();
            synthetic::insert(
                &ns,
                &doc,
                restore_time,
                synthetic::Origin::Restore,
                seq as u64,
            )
            .unwrap()
        })
        .collect();
    let mut again = snapshot_options(&server, SnapshotFallback::Fail);
    again.idle_timeout = Some(Duration::from_millis(400));
    again.on_history_lost = HistoryLostPolicy::Resnapshot;
    again.resume_from_checkpoint(frontier, token);
    assert!(
        !again.takes_initial_snapshot(),
        "a restart takes no initial snapshot"
    );
    let run = run_restored(again, restore, 2, |_| {});
    assert!(run.status.error().is_none(), "{:?}", run.status.error());
    assert_same(&run.documents(), &expected(&server));
    let t1 = run
        .progress
        .as_ref()
        .and_then(|p| p.at)
        .expect("a re-snapshot");
    assert!(t1 >= frontier);
    let jump: Vec<_> = run.changes.iter().filter(|(t, ..)| *t == t1).collect();
    let mut ids: Vec<&str> = jump.iter().map(|(_, id, ..)| id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids, ["100", "101", "102", "103", "300", "9000"]);
    assert_eq!(jump.len(), 4 * 2 + 1 + 1);
    assert!(
        run.changes
            .iter()
            .all(|(t, ..)| *t == restore_time || *t == t1),
        "the restored state, then one jump"
    );
}
