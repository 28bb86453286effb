//! Writers attached to a dataflow: a view's or a document collection's changes, time by time.
//!
//! ```text
//!   view / documents ──on_closed_times (worker 0)──▶ (t, changes of t) ──▶ batches ──▶ BatchWriter
//!                    ──closed frontier moves──────────────────────────────────────▶ commit(frontier)
//!                    ──input ends─────────────────────────────────────────────────▶ commit(None)
//! ```
//!
//! [`ArrowSink::attach_view`] and [`ArrowSink::attach_documents`] are called on every worker
//! (like [`ViewHandle::attach`](changeflow_operators::handle::ViewHandle::attach)); only worker
//! 0 receives the changes and writes, so writers that open files lazily (all of this crate's)
//! leave nothing behind on the others.
//!
//! # Progress tracking
//!
//! A time's batch is written when the time closes; a commit follows every move of the closed
//! frontier, after the batches of every earlier time. So a file's `changeflow.frontier` never
//! claims a time whose changes are not in it or an earlier file. The first error stops the
//! sink (later changes are dropped, the error is kept for [`ArrowSink::result`]).
//!
//! # Checkpoints
//!
//! A sink made with [`ArrowSink::checkpointed`] is a participant of the pipeline's
//! [`Checkpoints`]: before it writes a time at or after a checkpoint candidate `F` it closes its
//! output at `F` (`BatchWriter::checkpoint`) and acks. On a restart it first removes what was
//! written after the restored checkpoint (`BatchWriter::recover`; on a first start, everything
//! of its file stem: nothing was committed) and then drops every time before that checkpoint's
//! frontier, which is already committed. Its output directory belongs to the pipeline.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use changeflow_core::{ClusterTime, Document};
use changeflow_operators::documents::Documents;
use changeflow_operators::handle::on_closed_times;
use changeflow_operators::pipeline::compile::PipelineCollection;
use changeflow_operators::value::ValueType;
use changeflow_operators::views::View;

use crate::SinkError;
use crate::arrow::changelog_batches::document_changes;
use crate::arrow::documents::{BatchStats, DocumentBatcher};
use crate::arrow::schema::SchemaSource;
use crate::arrow::{changelog_schema_of, changes_to_batch};
use crate::checkpoint::{Checkpoints, Participant, ParticipantState};
use crate::writer::BatchWriter;

#[derive(Default)]
struct State {
    error: Option<SinkError>,
    stats: BatchStats,
    rows: u64,
    batches: u64,
    frontier: Option<Option<ClusterTime>>,
    files: Vec<PathBuf>,
}

/// The shared state of a sink attached to a dataflow: errors, counts, files, frontier.
///
/// ```
/// use changeflow_core::ClusterTime;
/// use changeflow_operators::value::{Value, ValueType};
/// use changeflow_sinks::callback::{CallbackWriter, Delivery};
/// use changeflow_sinks::dataflow::ArrowSink;
/// use differential_dataflow::input::Input;
/// let sink = ArrowSink::new();
/// let handle = sink.clone();
/// timely::execute_directly(move |worker| {
///     let mut input = worker.dataflow::<ClusterTime, _, _>(|scope| {
///         let (input, rows) = scope.new_collection::<Vec<Value>, isize>();
///         let writer = CallbackWriter::new(|_: Delivery<'_>| Ok(()));
///         handle.attach_view(rows, &[("n".to_string(), ValueType::Int64)], writer);
///         input
///     });
///     input.advance_to(ClusterTime::new(1, 0));
///     input.insert(vec![Value::Int(4)]);
/// });
/// assert_eq!(sink.rows(), 1);
/// assert_eq!(sink.frontier(), Some(None));
/// assert!(sink.result().is_ok());
/// ```
#[derive(Clone, Default)]
pub struct ArrowSink {
    state: Arc<Mutex<State>>,
    checkpoints: Option<(Checkpoints, String)>,
}

/// The checkpoint participant of a sink on the writing worker (shared by its two callbacks).
type SharedParticipant = Rc<RefCell<Option<Participant>>>;

impl ArrowSink {
    /// A sink not attached yet.
    pub fn new() -> ArrowSink {
        ArrowSink::default()
    }

    /// A sink that takes part in `checkpoints` as `name` (unique in the pipeline; see the
    /// module docs).
    pub fn checkpointed(checkpoints: &Checkpoints, name: &str) -> ArrowSink {
        ArrowSink {
            state: Arc::default(),
            checkpoints: Some((checkpoints.clone(), name.to_string())),
        }
    }

    /// Registers the participant (on worker 0) and removes what was written after the
    /// restored checkpoint.
    fn participant<W: BatchWriter>(&self, leader: bool, writer: &Mutex<W>) -> SharedParticipant {
        let shared: SharedParticipant = Rc::new(RefCell::new(None));
        let Some((checkpoints, name)) = self.checkpoints.as_ref().filter(|_| leader) else {
            return shared;
        };
        // Whatever is not named by the restored checkpoint (everything, on a first start) was
        // never committed: it goes, and is written again from the stream.
        let result = checkpoints.participant(name).and_then(|p| {
            let position = p.restored().map_or(0, |r| r.position);
            if let Ok(mut w) = writer.lock() {
                w.recover(position)?;
            }
            Ok(p)
        });
        match result {
            Ok(p) => *shared.borrow_mut() = Some(p),
            Err(e) => {
                self.with(|s| s.error = Some(e));
            }
        }
        shared
    }

    /// Whether `time` was committed before a restart (so it is dropped).
    fn committed_before(participant: &SharedParticipant, time: ClusterTime) -> bool {
        participant
            .borrow()
            .as_ref()
            .is_some_and(|p| p.already_committed(time))
    }

    /// Closes the output at every checkpoint candidate due before `upto` and acks it.
    fn checkpoints_due<W: BatchWriter>(
        &self,
        participant: &SharedParticipant,
        writer: &Mutex<W>,
        upto: Option<ClusterTime>,
    ) {
        let mut guard = participant.borrow_mut();
        let Some(p) = guard.as_mut() else { return };
        if self.with(|s| s.error.is_some()).unwrap_or(true) {
            return;
        }
        for frontier in p.due(upto) {
            let Ok(mut w) = writer.lock() else { return };
            match w.checkpoint(frontier) {
                Ok(position) => {
                    let files = w.files();
                    self.with(|s| {
                        s.files = files;
                        s.frontier = Some(Some(frontier));
                    });
                    p.ack(
                        frontier,
                        ParticipantState {
                            position,
                            files: Vec::new(),
                        },
                    );
                }
                Err(e) => {
                    p.fail(SinkError::Checkpoint {
                        path: PathBuf::from(format!("sink `{}`", p.name())),
                        reason: e.to_string(),
                    });
                    self.with(|s| s.error = Some(e));
                    return;
                }
            }
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> Option<R> {
        self.state.lock().ok().map(|mut s| f(&mut s))
    }

    /// Writes `view`'s changes (columns `columns`) at each closed time to `writer`, with `_time`
    /// and `_diff`. Call on every worker.
    pub fn attach_view<'scope, W: BatchWriter + 'static>(
        &self,
        view: View<'scope>,
        columns: &[(String, ValueType)],
        writer: W,
    ) {
        let schema = changelog_schema_of(columns);
        let writer = Arc::new(Mutex::new(writer));
        let (sink, sink2, writer2) = (self.clone(), self.clone(), Arc::clone(&writer));
        let participant = self.participant(view.scope().index() == 0, &writer);
        let participant2 = Rc::clone(&participant);
        on_closed_times(
            view,
            move |time, changes| {
                if Self::committed_before(&participant, time) {
                    return;
                }
                sink.checkpoints_due(&participant, &writer, Some(time));
                sink.step(&writer, |w| {
                    let batch = changes_to_batch(&schema, time, changes)?;
                    w.write(&batch)?;
                    Ok((batch.num_rows() as u64, None))
                })
            },
            move |frontier| {
                sink2.checkpoints_due(&participant2, &writer2, frontier);
                sink2.commit(&writer2, frontier)
            },
        );
    }

    /// Writes the changes of `namespace`'s documents in `documents` at each closed time to
    /// `writer`: the documents as rows (schema from `source`), with `_time` and `_diff`. Call on
    /// every worker.
    pub fn attach_documents<'scope, W: BatchWriter + 'static>(
        &self,
        documents: Documents<'scope>,
        namespace: &str,
        source: SchemaSource,
        writer: W,
    ) {
        let ns: Arc<str> = namespace.into();
        let documents = documents.filter(move |(key, _)| key.ns() == &*ns);
        self.attach_rows(documents, source, writer);
    }

    /// Writes a pipeline view's changes at each closed time to `writer`: its documents as rows
    /// (schema from `source`), with `_time` and `_diff`. Call on every worker.
    pub fn attach_pipeline<'scope, W: BatchWriter + 'static>(
        &self,
        view: PipelineCollection<'scope>,
        source: SchemaSource,
        writer: W,
    ) {
        self.attach_rows(view, source, writer);
    }

    fn attach_rows<'scope, K, W>(
        &self,
        rows: differential_dataflow::VecCollection<'scope, ClusterTime, (K, Document), isize>,
        source: SchemaSource,
        writer: W,
    ) where
        K: Ord + Clone + serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
        W: BatchWriter + 'static,
    {
        let writer = Arc::new(Mutex::new(writer));
        let (sink, sink2, writer2) = (self.clone(), self.clone(), Arc::clone(&writer));
        let mut batcher = DocumentBatcher::changelog(source);
        let participant = self.participant(rows.scope().index() == 0, &writer);
        let participant2 = Rc::clone(&participant);
        on_closed_times(
            rows,
            move |time, changes| {
                if Self::committed_before(&participant, time) {
                    return;
                }
                sink.checkpoints_due(&participant, &writer, Some(time));
                sink.step(&writer, |w| {
                    let mut rows = 0;
                    for batch in document_changes(&mut batcher, time, changes)? {
                        rows += batch.num_rows() as u64;
                        w.write(&batch)?;
                    }
                    Ok((rows, Some(batcher.stats())))
                })
            },
            move |frontier| {
                sink2.checkpoints_due(&participant2, &writer2, frontier);
                sink2.commit(&writer2, frontier)
            },
        );
    }

    fn step<W: BatchWriter>(
        &self,
        writer: &Mutex<W>,
        f: impl FnOnce(&mut W) -> Result<(u64, Option<BatchStats>), SinkError>,
    ) {
        if self.with(|s| s.error.is_some()).unwrap_or(true) {
            return;
        }
        let Ok(mut w) = writer.lock() else { return };
        let result = f(&mut w);
        self.with(|s| match result {
            Ok((rows, stats)) => {
                s.rows += rows;
                s.batches += 1;
                if let Some(stats) = stats {
                    s.stats = stats;
                }
            }
            Err(e) => s.error = Some(e),
        });
    }

    fn commit<W: BatchWriter>(&self, writer: &Mutex<W>, frontier: Option<ClusterTime>) {
        if self.with(|s| s.error.is_some()).unwrap_or(true) {
            return;
        }
        let Ok(mut w) = writer.lock() else { return };
        let result = w.commit(frontier);
        let files = w.files();
        self.with(|s| {
            s.files = files;
            s.frontier = Some(frontier);
            if let Err(e) = result {
                s.error = Some(e);
            }
        });
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.with(|s| s.rows).unwrap_or(0)
    }

    /// Batches written so far.
    pub fn batches(&self) -> u64 {
        self.with(|s| s.batches).unwrap_or(0)
    }

    /// The conversion counts of a document sink (fallbacks, schema changes).
    pub fn stats(&self) -> BatchStats {
        self.with(|s| s.stats).unwrap_or_default()
    }

    /// The complete files so far.
    pub fn files(&self) -> Vec<PathBuf> {
        self.with(|s| s.files.clone()).unwrap_or_default()
    }

    /// The last committed frontier (`Some(None)`: the input ended and the output is final;
    /// `None`: nothing committed yet).
    pub fn frontier(&self) -> Option<Option<ClusterTime>> {
        self.with(|s| s.frontier).unwrap_or(None)
    }

    /// The sink's first error, if any (taken: a second call returns `Ok`).
    pub fn result(&self) -> Result<(), SinkError> {
        match self.with(|s| s.error.take()) {
            Some(Some(e)) => Err(e),
            _ => Ok(()),
        }
    }
}
