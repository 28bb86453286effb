//! The one error type of changeflow-sources.
//!
//! Errors split by what happens next ([`SourceError::is_transient`]): *definite* errors stop the
//! source for good (bad input, a lost history, a refused pipeline: retrying cannot help), while
//! *transient* ones (a network failure, a step-down, throttling) are retried by the live source's
//! restart loop from its last resume token, and only reach this type once its retries are spent.
//! Messages never contain a connection string's password.

use std::path::PathBuf;

use changeflow_core::ClusterTime;

/// Why a source stopped. Every variant names the input (file and line, a token, or a stream).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// An input line or document is not a valid change event (the message names file and line).
    #[error("{path}:{line}: {source}", path = path.display())]
    BadEvent {
        /// The input file.
        path: PathBuf,
        /// 1-based line number (JSON lines) or document number (BSON).
        line: u64,
        /// What is wrong with the event.
        source: changeflow_core::Error,
    },
    /// An event's cluster time is earlier than a time the source already released.
    #[error("{path}:{line}: event at {time} is earlier than the source's frontier {frontier}; the input is not in stream order", path = path.display())]
    OutOfOrder {
        /// The input file.
        path: PathBuf,
        /// 1-based line or document number.
        line: u64,
        /// The event's time.
        time: ClusterTime,
        /// The time the source had already advanced to.
        frontier: ClusterTime,
    },
    /// A BSON file whose framing is broken, so no later document can be found.
    #[error("{path}: document {line} at byte {offset}: {reason}", path = path.display())]
    BsonFraming {
        /// The input file.
        path: PathBuf,
        /// 1-based document number.
        line: u64,
        /// Byte offset of the document's length prefix.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Reading the input failed.
    #[error("cannot read {path}: {source}", path = path.display())]
    Io {
        /// The input file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A source's reader thread could not start or stopped unexpectedly.
    #[error("source reader thread: {0}")]
    Thread(String),
    /// Writing the dead-letter file failed (the bad input is not lost: the source stops).
    #[error("cannot write dead letters to {path}: {source}", path = path.display())]
    DeadLetter {
        /// The dead-letter file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The live source is not compiled in: the `live` cargo feature is off.
    #[error(
        "the live MongoDB source is not built: enable the `live` feature (e.g. `cargo run --features live ...`)"
    )]
    LiveNotBuilt,
    /// The connection string or client options are invalid (password redacted).
    #[error("invalid MongoDB connection string {uri}: {reason}")]
    BadUri {
        /// The connection string with its password replaced by `****`.
        uri: String,
        /// What is wrong.
        reason: String,
    },
    /// The pipeline given to the change stream is refused before opening it.
    #[error("change stream pipeline refused: {reason}")]
    BadPipeline {
        /// Why (e.g. a stage that modifies or removes `_id`, the resume token).
        reason: String,
    },
    /// The resume point is no longer in the oplog (286 `ChangeStreamHistoryLost`); restarting
    /// from "now" would skip events, so the source stops (the default
    /// [`HistoryLostPolicy`](crate::live::HistoryLostPolicy); `Resnapshot` takes a new snapshot
    /// instead). Names the token and the missing range: from the token's cluster time to the
    /// oldest time the server still has, when it can be learned (from the server's message, or
    /// the first entry of `local.oplog.rs` where the user may read it).
    #[error(
        "{stream}: change stream history lost (code 286) resuming from {from}: the events from {missing_from} to {missing_to} are gone; restart with a re-snapshot (on_history_lost: Resnapshot) or from a newer checkpoint: {message}",
        missing_from = at_or_unknown(*from_time),
        missing_to = oldest.map_or_else(|| "the server's oldest retained time (unknown)".to_string(), |t| format!("{t} (the oldest time the server still has)"))
    )]
    HistoryLost {
        /// The stream (redacted URI and namespace).
        stream: String,
        /// The resume point that is gone.
        from: String,
        /// The cluster time of that resume point, if it has one.
        from_time: Option<ClusterTime>,
        /// The oldest time the server still has, if it could be learned.
        oldest: Option<ClusterTime>,
        /// The server's message.
        message: String,
    },
    /// A snapshot read's cluster time is older than the server's retained history (239
    /// `SnapshotTooOld`): the scan took longer than the server keeps snapshots
    /// (`minSnapshotHistoryWindowInSeconds`, 300 s by default). The documents already emitted at
    /// that time cannot be taken back without showing a partial snapshot, so the source stops;
    /// raise the window, or scan faster (more `parallelism`), and restart.
    #[error(
        "{stream}: snapshot read at {at} failed: the server no longer has that time (code 239 SnapshotTooOld); raise minSnapshotHistoryWindowInSeconds or SnapshotOptions::parallelism and restart: {message}"
    )]
    SnapshotTooOld {
        /// The stream.
        stream: String,
        /// The snapshot's cluster time.
        at: ClusterTime,
        /// The server's message.
        message: String,
    },
    /// The initial snapshot (or a re-snapshot) could not be taken.
    #[error("{stream}: snapshot ({option}) failed: {reason}")]
    Snapshot {
        /// The stream.
        stream: String,
        /// The option or phase concerned (`initial_snapshot`, `on_history_lost: Resnapshot`, …).
        option: String,
        /// What went wrong (server messages with passwords scrubbed).
        reason: String,
    },
    /// The server cannot continue this stream (280 `ChangeStreamFatalError`).
    #[error("{stream}: change stream fatal error (code 280): {message}")]
    ChangeStreamFatal {
        /// The stream.
        stream: String,
        /// The server's message.
        message: String,
    },
    /// The resume token is malformed or cannot be resumed from (260 `InvalidResumeToken`).
    #[error("{stream}: invalid resume token {token} (code 260): {message}")]
    InvalidResumeToken {
        /// The stream.
        stream: String,
        /// The token.
        token: String,
        /// The server's message.
        message: String,
    },
    /// An event exceeds 16 MB (10334); add `$changeStreamSplitLargeEvent` as the last stage.
    #[error(
        "{stream}: an event is larger than 16 MB (code 10334) after {after}; add {{$changeStreamSplitLargeEvent: {{}}}} as the last pipeline stage: {message}"
    )]
    EventTooLarge {
        /// The stream.
        stream: String,
        /// The last token delivered before it.
        after: String,
        /// The server's message.
        message: String,
    },
    /// The server does not know a change stream option (40415): an older server version.
    #[error("{stream}: the server rejected a change stream option (code 40415): {message}")]
    UnknownOption {
        /// The stream.
        stream: String,
        /// The server's message.
        message: String,
    },
    /// Missing privileges (13 `Unauthorized`) or failed authentication (18).
    #[error(
        "{stream}: not authorized (code {code}): {message}; change streams need the `find` and `changeStream` actions on the watched resource"
    )]
    Unauthorized {
        /// The stream.
        stream: String,
        /// 13 or 18.
        code: i32,
        /// The server's message (password redacted).
        message: String,
    },
    /// The deployment is a standalone server (40573): change streams need a replica set or a
    /// sharded cluster.
    #[error(
        "{stream}: change streams need a replica set or a sharded cluster, and this server is a standalone: {message}"
    )]
    NotReplicaSet {
        /// The stream.
        stream: String,
        /// The server's message.
        message: String,
    },
    /// The watched collection does not exist (26 `NamespaceNotFound`, Cosmos DB).
    #[error("{stream}: namespace not found (code 26): {message}")]
    NamespaceNotFound {
        /// The stream.
        stream: String,
        /// The server's message.
        message: String,
    },
    /// Any other error a server command returned, not labelled resumable: definite.
    #[error("{stream}: server error {code} ({name}): {message}")]
    Server {
        /// The stream.
        stream: String,
        /// The error code.
        code: i32,
        /// The code's name.
        name: String,
        /// The server's message.
        message: String,
    },
    /// A transient failure persisted through every restart attempt.
    #[error("{stream}: gave up after {attempts} restart attempts; last error: {last}")]
    RetriesExhausted {
        /// The stream.
        stream: String,
        /// Restart attempts made.
        attempts: u32,
        /// The last error (password redacted).
        last: String,
    },
    /// A document from the stream is not a valid change event.
    #[error("{stream}: {source}")]
    BadLiveEvent {
        /// The stream.
        stream: String,
        /// What is wrong with the event (names its token).
        source: changeflow_core::Error,
    },
    /// Fragments of a split event arrived out of order or incomplete.
    #[error("{stream}: split event {token}: {reason}")]
    SplitEvent {
        /// The stream.
        stream: String,
        /// The fragment's token.
        token: String,
        /// What is wrong.
        reason: String,
    },
    /// The stream has no resume point to restart from (the server sent no token), so a restart
    /// could only start from "now", which would skip events.
    #[error(
        "{stream}: cannot restart without a resume point (the server sent no resume token): {last}"
    )]
    NoResumePoint {
        /// The stream.
        stream: String,
        /// The error that called for the restart.
        last: String,
    },
    /// A live event is earlier than a time the source already released (the server broke
    /// stream order).
    #[error("{stream}: event {token} at {time} is earlier than the source's frontier {frontier}")]
    LiveOutOfOrder {
        /// The stream.
        stream: String,
        /// The event's token.
        token: String,
        /// The event's time.
        time: ClusterTime,
        /// The time already released.
        frontier: ClusterTime,
    },
    /// Writing a recording failed.
    #[error("cannot write the recording to {path}: {source}", path = path.display())]
    Record {
        /// The output file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl SourceError {
    /// Whether a retry may succeed (a failed reader thread); every other error is definite:
    /// the live source has already retried its transient failures before reporting
    /// [`SourceError::RetriesExhausted`].
    ///
    /// ```
    /// use changeflow_sources::SourceError;
    /// assert!(!SourceError::LiveNotBuilt.is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SourceError::Thread(_) | SourceError::RetriesExhausted { .. }
        )
    }
}

fn at_or_unknown(time: Option<ClusterTime>) -> String {
    time.map_or_else(|| "an unknown time".to_string(), |t| t.to_string())
}
