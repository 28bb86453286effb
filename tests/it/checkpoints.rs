//! Checkpoints through the library API on a replayed stream: a restart resumes exactly where
//! the committed output ends, and a sink that cannot commit stops the pipeline without the
//! manifest ever recording a frontier it did not write.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use changeflow::runtime;
use changeflow_core::{ChangeEvent, ClusterTime, synthetic};
use changeflow_operators::documents::{DocumentStats, document_state};
use changeflow_sinks::SinkError;
use changeflow_sinks::arrow::schema::SchemaSource;
use changeflow_sinks::callback::{CallbackWriter, Delivery};
use changeflow_sinks::checkpoint::{Checkpoints, Manifest, state};
use changeflow_sinks::dataflow::ArrowSink;
use changeflow_sources::memory;
use changeflow_sources::reader::ReaderOptions;
use changeflow_sources::replay::{ReplayOptions, replay};
use changeflow_testkit::bank::{self, BankConfig};
use timely::dataflow::operators::Concat;

use crate::support::scratch;

/// What the callback sink saw: `(time, _diff)` per row, and the commits.
#[derive(Default)]
struct Seen {
    rows: Vec<(u64, i64)>,
    commits: Vec<Option<ClusterTime>>,
}

/// Replays `input` with checkpoints in `dir` into a callback sink; the callback fails once
/// `fail_at_commit` commits were delivered. Returns the job's error, if any.
fn run(
    input: &Path,
    dir: &Path,
    seen: Arc<Mutex<Seen>>,
    fail_at_commit: Option<usize>,
) -> Result<(), String> {
    let mut options = ReplayOptions::new(ReaderOptions::new(input));
    options.batch = 64;
    let status = options.status();
    let checkpoints = Checkpoints::open(dir, Duration::from_millis(1), status.clone())
        .map_err(|e| e.to_string())?;
    let restart = checkpoints.resume_point();
    if let Some((frontier, _)) = restart {
        options.skip_before = Some(frontier);
    }
    let restored = state::load(&checkpoints).map_err(|e| e.to_string())?;
    let restore: Vec<ChangeEvent> = match restart {
        Some((f, _)) => restored
            .iter()
            .enumerate()
            .map(|(i, (ns, doc))| {
                let at = ClusterTime::from_u64(f.as_u64() - 1);
                synthetic::insert(ns, doc, at, synthetic::Origin::Restore, i as u64)
                    .expect("checkpoint test")
            })
            .collect(),
        None => Vec::new(),
    };
    let sink = ArrowSink::checkpointed(&checkpoints, "out");
    let (sink2, checkpoints2) = (sink.clone(), checkpoints.clone());
    let results = runtime::execute(1, move |worker| {
        let writer = {
            let seen = seen.clone();
            CallbackWriter::new(move |delivery: Delivery<'_>| {
                let mut seen = seen.lock().expect("checkpoint test");
                match delivery {
                    Delivery::Batch(batch) => {
                        let times = batch.column_by_name("_time").expect("checkpoint test");
                        let times = times
                            .as_any()
                            .downcast_ref::<arrow_array::UInt64Array>()
                            .expect("checkpoint test");
                        let diffs = batch.column_by_name("_diff").expect("checkpoint test");
                        let diffs = diffs
                            .as_any()
                            .downcast_ref::<arrow_array::Int64Array>()
                            .expect("checkpoint test");
                        for i in 0..batch.num_rows() {
                            seen.rows.push((times.value(i), diffs.value(i)));
                        }
                    }
                    Delivery::Committed(frontier) => {
                        if fail_at_commit.is_some_and(|n| seen.commits.len() >= n) {
                            return Err(SinkError::Write {
                                path: "callback".into(),
                                reason: "No space left on device".into(),
                            });
                        }
                        seen.commits.push(frontier);
                    }
                }
                Ok(())
            })
        };
        let (options, restore, restored) = (options.clone(), restore.clone(), restored.clone());
        let probe = worker.dataflow::<ClusterTime, _, _>(|scope| {
            let events = replay(scope, options).concat(memory::from_events(scope, restore));
            let documents = document_state(events, DocumentStats::new());
            state::attach(
                documents.clone(),
                &checkpoints2,
                &restored,
                state::StateOptions::default(),
            )
            .expect("checkpoint test");
            sink2.attach_documents(
                documents.clone(),
                "bank.accounts",
                SchemaSource::inferred(),
                writer,
            );
            documents.probe().0
        });
        checkpoints2.seal();
        runtime::drive_until(worker, &probe, std::slice::from_ref(&status), || {
            checkpoints2
                .failed()
                .then(|| "checkpoint failed".to_string())
        })
    })?;
    // The typed errors first: the worker's own message only says that it stopped.
    let sink_result = sink.result().map_err(|e| e.to_string());
    let checkpoint_result = checkpoints.result().map_err(|e| e.to_string());
    sink_result.and(checkpoint_result)?;
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    Ok(())
}

fn bank_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("bank.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).expect("checkpoint test"));
    bank::write_json_lines(
        BankConfig {
            seed: 3,
            events: 3000,
            accounts: 30,
            ..BankConfig::default()
        },
        &mut out,
    )
    .expect("checkpoint test");
    drop(out);
    path
}

#[test]
fn a_sink_that_cannot_commit_stops_the_pipeline_and_no_frontier_is_recorded_past_its_output() {
    let dir = scratch("checkpoint-disk-full");
    let input = bank_file(&dir);
    let state_dir = dir.join("state");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let error = run(&input, &state_dir, seen.clone(), Some(5)).expect_err("checkpoint test");
    assert!(error.contains("No space left on device"), "{error}");
    let manifest = Manifest::read(&state_dir)
        .expect("checkpoint test")
        .expect("some checkpoints before the failure");
    // Every time before the recorded frontier was delivered and committed by the sink.
    let seen = seen.lock().expect("checkpoint test");
    let committed = seen
        .commits
        .iter()
        .flatten()
        .max()
        .copied()
        .expect("checkpoint test");
    assert!(
        manifest.frontier <= committed,
        "{} > {committed}",
        manifest.frontier
    );
}

#[test]
fn a_restarted_replay_emits_exactly_what_the_first_run_did_not_commit() {
    let dir = scratch("checkpoint-replay-restart");
    let input = bank_file(&dir);
    let state_dir = dir.join("state");
    // The first run fails after a few commits (its sink fails), leaving checkpoints behind.
    let first = Arc::new(Mutex::new(Seen::default()));
    assert!(run(&input, &state_dir, first.clone(), Some(8)).is_err());
    let manifest = Manifest::read(&state_dir)
        .expect("checkpoint test")
        .expect("a checkpoint");
    let frontier = manifest.frontier.as_u64();
    // The restart runs to the end.
    let second = Arc::new(Mutex::new(Seen::default()));
    run(&input, &state_dir, second.clone(), None).expect("checkpoint test");
    // A reference run without failures.
    let whole = Arc::new(Mutex::new(Seen::default()));
    run(&input, &dir.join("state-whole"), whole.clone(), None).expect("checkpoint test");
    let committed_first: Vec<(u64, i64)> = first
        .lock()
        .expect("checkpoint test")
        .rows
        .iter()
        .copied()
        .filter(|(t, _)| *t < frontier)
        .collect();
    let mut both = committed_first;
    both.extend(second.lock().expect("checkpoint test").rows.iter().copied());
    assert!(
        second
            .lock()
            .expect("checkpoint test")
            .rows
            .iter()
            .all(|(t, _)| *t >= frontier)
    );
    both.sort();
    let mut expected = whole.lock().expect("checkpoint test").rows.clone();
    expected.sort();
    assert_eq!(both.len(), expected.len());
    assert_eq!(
        both, expected,
        "first run's committed rows + the restart's = one whole run"
    );
}
