//! The live source: a MongoDB change stream, followed with the `mongodb` driver, as a timely
//! stream of [`ChangeEvent`](changeflow_core::ChangeEvent)s at their cluster times.
//!
//! ```text
//!   reader thread (tokio current-thread runtime)                         timely worker 0
//!   ┌──────────────────────────────────────────────────────────────┐
//!   │ watch(pipeline, options) ─▶ ChangeStream<RawDocumentBuf>      │
//!   │   next_if_any() ── Some(doc) ─▶ split::Reassembler ─▶ decode ─┼─ Feed::events ──▶ [source]
//!   │                └─ None (empty batch) ─▶ resume_token() ───────┼─ Feed::progress ─▶  frontier
//!   │   error ─▶ policy::classify ─▶ transient: reopen from the     │
//!   │            last token after Backoff; definite: Feed::fail ────┼─ Feed::fail ─────▶ status
//!   └──────────────────────────────────────────────────────────────┘
//! ```
//!
//! # Progress tracking
//!
//! The source is a [`crate::feed`] source, so the frontier rule is the feed's: events go out in
//! stream order, each at its own `clusterTime` (transaction grouping, if any, is the feed's
//! business), and the capability follows the last event's time. When `next_if_any()` returns
//! `Ok(None)` (an empty batch), the driver's cached token is the batch's
//! `postBatchResumeToken`; its cluster time is sent as [`Feed::progress`](crate::feed::Feed::progress),
//! so an idle or heavily filtered stream still advances and downstream views settle. The
//! current (frontier, resume token) pair is [`SourceStatus::position`].
//!
//! # Restarts and failures
//!
//! The driver resumes once, from a failed `getMore`. Everything else (a failed initial or resume
//! `aggregate`, a second failure) reaches the source, which reopens the stream itself from its
//! last token: `resumeAfter` the last whole event's token (or the last post-batch token); if
//! nothing was seen yet, the original `startAfter` / `startAtOperationTime` / the first reply's
//! post-batch token. Never "from now". Delays follow [`policy::Backoff`]; which failures are
//! retried and which stop the source is [`policy`]'s table. Split events are reassembled
//! ([`split`]) before they leave the source, and a restart drops a half-received event, which the
//! server sends again whole.
//!
//! Passwords in the connection string never appear in errors ([`redact`]).
//!
//! Without the `live` cargo feature the types here exist but [`watch`] fails at once with
//! [`SourceError::LiveNotBuilt`], so programs can offer `--uri` and say how to enable it.
//!
//! ```no_run
//! use changeflow_core::ClusterTime;
//! use changeflow_sources::live::{watch, LiveOptions, WatchTarget};
//! use timely::dataflow::operators::Inspect;
//! let options = LiveOptions::new("mongodb://localhost:27017/?replicaSet=rs0",
//!                                WatchTarget::collection("shop", "orders"));
//! timely::execute_directly(move |worker| {
//!     worker.dataflow::<ClusterTime, _, _>(|scope| {
//!         watch(scope, options.clone()).inspect(|(event, time)| println!("{time}: {event:?}"));
//!     });
//! });
//! ```

pub mod cosmos;
pub mod pipeline;
pub mod policy;
pub mod redact;
pub mod split;

#[cfg(feature = "live")]
mod driver;
pub mod record;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use changeflow_core::{ClusterTime, EventStream, ResumeToken};
use timely::dataflow::Scope;

use crate::{SourceError, SourceStatus};

/// Whether this build has the live source (the `live` feature).
pub const AVAILABLE: bool = cfg!(feature = "live");

/// What a change stream watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchTarget {
    /// Every database of the deployment (`client.watch()`).
    Deployment,
    /// One database (`db.watch()`).
    Database(String),
    /// One collection (`coll.watch()`).
    Collection {
        /// The database.
        db: String,
        /// The collection.
        coll: String,
    },
}

impl WatchTarget {
    /// A collection target.
    pub fn collection(db: &str, coll: &str) -> Self {
        WatchTarget::Collection {
            db: db.into(),
            coll: coll.into(),
        }
    }
}

impl fmt::Display for WatchTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchTarget::Deployment => f.write_str("the deployment"),
            WatchTarget::Database(db) => write!(f, "database {db}"),
            WatchTarget::Collection { db, coll } => write!(f, "{db}.{coll}"),
        }
    }
}

/// `fullDocument`: what update events carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FullDocument {
    /// Only `updateDescription` (the server's default).
    #[default]
    Default,
    /// The current majority-committed version, looked up when the event is read (may be later
    /// than the event, or null).
    UpdateLookup,
    /// The exact post-image, if the collection records them.
    WhenAvailable,
    /// The exact post-image; an error if missing.
    Required,
}

/// `fullDocumentBeforeChange`: pre-images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FullDocumentBeforeChange {
    /// None (the default).
    #[default]
    Off,
    /// The pre-image if recorded.
    WhenAvailable,
    /// The pre-image; an error if missing.
    Required,
}

/// Where the stream starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StartAt {
    /// With the next change (the server's default).
    #[default]
    Now,
    /// After the event with this token (exclusive); not after an `invalidate`.
    ResumeAfter(ResumeToken),
    /// After this token (exclusive), which may be an `invalidate`'s.
    StartAfter(ResumeToken),
    /// At this cluster time (inclusive).
    OperationTime(ClusterTime),
}

/// What to do after an `invalidate` (the watched collection was dropped or renamed, or the
/// database dropped). The `invalidate` event itself is always emitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InvalidatePolicy {
    /// End the input (the frontier becomes empty, views settle).
    #[default]
    Stop,
    /// Open a new stream with `startAfter` the invalidate's token and carry on.
    ContinueWithStartAfter,
}

/// Ends a live source's input cleanly from another thread (e.g. on Ctrl-C): the reader ends it
/// at its next poll, at most `maxAwaitTime` later.
#[derive(Clone, Debug, Default)]
pub struct Stopper(Arc<AtomicBool>);

impl Stopper {
    /// Asks the source to end its input.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether a stop was asked for.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// How to follow a change stream. Its `Debug` output shows the URI with the password redacted.
#[derive(Clone)]
pub struct LiveOptions {
    /// The connection string (a replica set or `mongos`); its password is never shown.
    pub uri: String,
    /// What to watch.
    pub target: WatchTarget,
    /// Stages after `$changeStream` (`$match`, `$project`, …); refused if they touch `_id`.
    pub pipeline: Vec<bson::Document>,
    /// `fullDocument`.
    pub full_document: FullDocument,
    /// `fullDocumentBeforeChange`.
    pub full_document_before_change: FullDocumentBeforeChange,
    /// Where to start.
    pub start: StartAt,
    /// `batchSize` of the cursor.
    pub batch_size: Option<u32>,
    /// `maxAwaitTimeMS`: how long an idle `getMore` waits (the server's default is 1 s).
    pub max_await_time: Option<Duration>,
    /// `collation`, as its document (`{locale: "fr"}`).
    pub collation: Option<bson::Document>,
    /// `showExpandedEvents` (DDL events such as `create`, `createIndexes`).
    pub show_expanded_events: bool,
    /// `comment` attached to the aggregate and getMores.
    pub comment: Option<String>,
    /// After an `invalidate`.
    pub on_invalidate: InvalidatePolicy,
    /// Restart delays and the retry limit for transient failures.
    pub backoff: policy::Backoff,
    /// Azure Cosmos DB mode (see [`cosmos`]).
    pub cosmos: Option<cosmos::CosmosOptions>,
    /// End the input after this many events (tests, recordings).
    pub max_events: Option<u64>,
    /// End the input after this long without an event.
    pub idle_timeout: Option<Duration>,
    /// At most this many events per message to the worker.
    pub batch: usize,
    /// Ends the input from another thread.
    pub stopper: Stopper,
    /// Drop every event released before this time: set by a restart from a checkpoint at this
    /// frontier (see [`LiveOptions::resume_from_checkpoint`]).
    pub skip_before: Option<ClusterTime>,
    status: Arc<SourceStatus>,
}

impl LiveOptions {
    /// Follows `target` on the deployment at `uri` from now, with the driver's defaults.
    pub fn new(uri: &str, target: WatchTarget) -> Self {
        LiveOptions {
            uri: uri.into(),
            target,
            pipeline: Vec::new(),
            full_document: FullDocument::Default,
            full_document_before_change: FullDocumentBeforeChange::Off,
            start: StartAt::Now,
            batch_size: None,
            max_await_time: None,
            collation: None,
            show_expanded_events: false,
            comment: None,
            on_invalidate: InvalidatePolicy::Stop,
            backoff: policy::Backoff::default(),
            cosmos: None,
            max_events: None,
            idle_timeout: None,
            batch: 1024,
            stopper: Stopper::default(),
            skip_before: None,
            status: SourceStatus::new(),
        }
    }

    /// The status shared by every worker's copy of this source and the driver; its
    /// [`position`](SourceStatus::position) is the (frontier, resume token) pair to checkpoint.
    pub fn status(&self) -> Arc<SourceStatus> {
        Arc::clone(&self.status)
    }

    /// The stream as shown in messages: the redacted URI and the target.
    pub fn describe(&self) -> String {
        format!("{} {}", redact::redact_uri(&self.uri), self.target)
    }

    /// The pipeline sent to the server: Cosmos DB's required stages around the user's.
    pub fn effective_pipeline(&self) -> Vec<bson::Document> {
        match &self.cosmos {
            Some(_) => cosmos::shape_pipeline(&self.pipeline),
            None => self.pipeline.clone(),
        }
    }

    /// Restarts from a checkpoint: the frontier `F` and checkpoint token `K` that a
    /// [`SourceStatus::position`] gave. The stream resumes after `K` (or, for `None`, where it
    /// first started) and events released before `F` are dropped, so the source emits exactly
    /// what was not emitted before `F`.
    ///
    /// ```
    /// use changeflow_core::{ClusterTime, ResumeToken};
    /// use changeflow_sources::live::{LiveOptions, StartAt, WatchTarget};
    /// let token = ResumeToken::from_data("8200000005000000012B");
    /// let mut o = LiveOptions::new("mongodb://h/?replicaSet=rs0", WatchTarget::collection("a", "b"));
    /// o.resume_from_checkpoint(ClusterTime::new(6, 0), Some(token.clone()));
    /// assert_eq!(o.start, StartAt::ResumeAfter(token));
    /// assert_eq!(o.skip_before, Some(ClusterTime::new(6, 0)));
    /// ```
    pub fn resume_from_checkpoint(&mut self, frontier: ClusterTime, token: Option<ResumeToken>) {
        if let Some(token) = token {
            self.start = StartAt::ResumeAfter(token);
        }
        self.skip_before = Some(frontier);
    }

    /// Checks the options that can be checked without a server (the pipeline).
    pub fn validate(&self) -> Result<(), SourceError> {
        pipeline::check(&self.pipeline).map_err(|reason| SourceError::BadPipeline { reason })
    }
}

impl fmt::Debug for LiveOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveOptions")
            .field("uri", &redact::redact_uri(&self.uri))
            .field("target", &self.target)
            .field("pipeline", &self.pipeline)
            .field("full_document", &self.full_document)
            .field(
                "full_document_before_change",
                &self.full_document_before_change,
            )
            .field("start", &self.start)
            .field("batch_size", &self.batch_size)
            .field("max_await_time", &self.max_await_time)
            .field("collation", &self.collation)
            .field("show_expanded_events", &self.show_expanded_events)
            .field("comment", &self.comment)
            .field("on_invalidate", &self.on_invalidate)
            .field("backoff", &self.backoff)
            .field("cosmos", &self.cosmos)
            .field("max_events", &self.max_events)
            .field("idle_timeout", &self.idle_timeout)
            .field("batch", &self.batch)
            .field("skip_before", &self.skip_before)
            .finish_non_exhaustive()
    }
}

/// Follows the change stream in `options` into `scope` (see the module docs). A reader thread
/// started by worker 0 runs the driver; other workers emit nothing.
pub fn watch<'scope>(
    scope: Scope<'scope, ClusterTime>,
    options: LiveOptions,
) -> EventStream<'scope> {
    let status = options.status();
    crate::feed::fed_source(scope, "LiveChangeStream", status, 8, move |feed| {
        if let Err(e) = options.validate() {
            return feed.fail(e);
        }
        #[cfg(feature = "live")]
        driver::run(feed, options);
        #[cfg(not(feature = "live"))]
        feed.fail(SourceError::LiveNotBuilt);
    })
}
