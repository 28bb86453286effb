//! Consistent snapshots of a collection: the initial snapshot before a stream, and the
//! re-snapshot after the stream's history was lost.
//!
//! # With snapshot reads (MongoDB 5.0+ replica sets and sharded clusters)
//!
//! ```text
//!   count / collStats ─▶ estimate N (progress display)
//!   snapshot session: find {sort: {_id: 1}, projection: {_id: 1}, limit: 1}
//!        └─ the server picks T0, returned as cursor.atClusterTime ─────────────┐
//!   boundaries at T0: find {sort: {_id: 1}, skip: k·N/p, limit: 1}, k = 1..p-1  │
//!                                                                               ▼
//!   range 1 [MinKey, b1) ─┐  p sessions {snapshot: true, snapshotTime: T0}:
//!   range 2 [b1, b2)     ─┼─ find {filter: {_id: range}, readConcern: {level: snapshot,
//!   …                     │        atClusterTime: T0}} + getMores, in parallel
//!   range p [b(p-1), ∞)  ─┘
//!        │ batches, as they arrive
//!        ▼
//!   synthetic inserts at T0 ──▶ Feed (the frontier is held AT T0: every event is at T0)
//!        │ all ranges done
//!        ▼
//!   change stream {startAtOperationTime: T0} ── events at or below T0 dropped ──▶ Feed
//!        (the first event or post-batch token after T0 moves the frontier past T0:
//!         only then is time T0, the whole snapshot, closed downstream)
//! ```
//!
//! Every document is read as of `T0`, and the stream supplies exactly the changes after `T0`,
//! so no change is lost or applied twice. The frontier rule of [`crate::feed`] holds the
//! capability at the time of the last event sent: since all snapshot events are at `T0`, the
//! frontier cannot pass `T0` before the scan is complete, however many batches it takes.
//!
//! Ranges are split on `_id` order. MongoDB compares values of different types by type only
//! inside a range query (type bracketing), so when the smallest and the largest `_id` differ in
//! type the collection is read as one range. A `SnapshotTooOld` (239) during the scan — the scan
//! outlived the server's snapshot window — stops the source with
//! [`SourceError::SnapshotTooOld`](crate::SourceError::SnapshotTooOld): documents at `T0` are
//! already out, and moving to a newer time would show a partial snapshot at `T0` first.
//!
//! # Without snapshot reads (the fallback, [`SnapshotFallback::Majority`])
//!
//! When the first snapshot read is refused (72 `InvalidOptions` on 4.x, 123 `NotAReplicaSet`,
//! 9 `FailedToParse` on older servers):
//!
//! ```text
//!   count (majority, causal session) ─▶ Ts = operationTime      (the stream starts here)
//!   ranges read in parallel with readConcern majority ─▶ documents by _id
//!        hi = the latest operationTime of the scan's sessions
//!   change stream {startAtOperationTime: Ts}: events up to hi, by _id (last one wins)
//!   ┌─▶ for each _id touched in the window:
//!   │     last event insert / replace ─▶ its fullDocument;  delete ─▶ gone
//!   │     last event update ─▶ re-read by _id ($in, majority), hi' = its operationTime
//!   └── events in (hi, hi'] touch more _ids? repeat (at most 50 rounds)
//!   every document as a synthetic insert at TF = the last hi ─▶ Feed
//!   change stream {startAtOperationTime: TF}, events at or below TF dropped
//! ```
//!
//! A majority read happens at an unknown time inside its round's window. A document no event
//! touched in the window has one version through the window, so the read returns it. A touched
//! document is taken from the stream (its last full-document event) or re-read and checked
//! again in the next window. So the emitted state is the collection exactly **as of `TF`**, and
//! the output is exact from `TF` on; the changes between `Ts` and `TF` are folded into the
//! snapshot, not shown one by one. Under writes that never pause on some document, the rounds do
//! not converge and the source stops with [`SourceError::Snapshot`](crate::SourceError::Snapshot).
//! The fallback holds the whole collection in memory until `TF`.
//!
//! # Re-snapshot after lost history ([`HistoryLostPolicy::Resnapshot`])
//!
//! When resuming fails with 286, a new snapshot is taken at `T1` (after every time the source
//! released) and emitted at `T1` behind a [`changeflow_core::synthetic::reset`] of the
//! namespace: document state retracts everything, re-inserts the snapshot, and emits only the
//! net change per document, so downstream sees one jump at `T1` containing exactly the documents
//! that differ. The stream then continues from `T1`.
//!
//! A [`Stopper`](super::Stopper) used during a scan fails the source with
//! [`SourceError::Snapshot`](crate::SourceError::Snapshot) rather than ending its input, which
//! would close the snapshot's time half emitted; a restart with no checkpoint token takes the
//! snapshot again.
//!
//! Progress ([`SnapshotProgress`](crate::status::SnapshotProgress): documents, documents/s,
//! estimated time left) is published in [`SourceStatus::snapshot_progress`](crate::SourceStatus::snapshot_progress).

/// How to take a snapshot (see the module docs).
///
/// ```
/// use changeflow_sources::live::{LiveOptions, WatchTarget};
/// use changeflow_sources::live::snapshot::{HistoryLostPolicy, SnapshotOptions};
/// let mut o = LiveOptions::new("mongodb://h/?replicaSet=rs0", WatchTarget::collection("shop", "orders"));
/// o.initial_snapshot = Some(SnapshotOptions { parallelism: 8, ..SnapshotOptions::default() });
/// o.on_history_lost = HistoryLostPolicy::Resnapshot;
/// assert!(o.takes_initial_snapshot());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// How many `_id` ranges are read at once (default 4).
    pub parallelism: usize,
    /// `batchSize` of the range cursors (default 1000).
    pub batch_size: u32,
    /// What to do on a server without snapshot reads (default: majority reads reconciled with
    /// the stream).
    pub fallback: SnapshotFallback,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            parallelism: 4,
            batch_size: 1000,
            fallback: SnapshotFallback::Majority,
        }
    }
}

/// What to do when the server refuses snapshot reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapshotFallback {
    /// `majority` reads with the stream opened before the scan, reconciled by `_id` and
    /// cluster time; exact from the end of the scan (see the module docs).
    #[default]
    Majority,
    /// Stop with [`SourceError::Snapshot`](crate::SourceError::Snapshot).
    Fail,
}

/// What to do when resuming fails because the stream's history is gone (286).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HistoryLostPolicy {
    /// Stop with [`SourceError::HistoryLost`](crate::SourceError::HistoryLost), naming the
    /// token and the missing range (the default: fail loudly).
    #[default]
    Fail,
    /// Take a new snapshot at `T1` and emit, at `T1`, the difference with what the pipeline
    /// holds (collection targets only; uses [`LiveOptions::initial_snapshot`](super::LiveOptions::initial_snapshot)'s
    /// settings, or the defaults).
    Resnapshot,
}

#[cfg(feature = "live")]
pub(crate) use scan::take;

#[cfg(feature = "live")]
mod scan {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use bson::{Bson, RawDocumentBuf, Timestamp, doc};
    use changeflow_core::raw;
    use changeflow_core::synthetic::{self, Origin};
    use changeflow_core::{ChangeEvent, ClusterTime, Document, Namespace, OperationType};
    use mongodb::error::{Error as DriverError, ErrorKind};
    use mongodb::options::{CollectionOptions, ReadConcern};
    use mongodb::{Client, Collection};
    use tokio::sync::mpsc;

    use super::{SnapshotFallback, SnapshotOptions};
    use crate::SourceError;
    use crate::live::LiveOptions;
    use crate::live::driver::{Output, Stop, from_driver};
    use crate::live::redact::Secrets;
    use crate::status::{SnapshotMode, SnapshotProgress};

    /// Reconciliation rounds of the majority fallback before giving up.
    const MAX_ROUNDS: usize = 50;

    /// Where the scan's documents go and what it reports.
    struct Ctx<'a> {
        options: &'a LiveOptions,
        snap: SnapshotOptions,
        secrets: Secrets,
        stream: String,
        option: &'static str,
        db: String,
        coll: String,
        ns: Namespace,
        progress: SnapshotProgress,
        started: Instant,
        seq: u64,
    }

    /// Takes a snapshot of the options' collection and sends it to `out` at one time `T`, which
    /// it returns: behind a reset of the namespace when `reset` (a re-snapshot), and only if `T`
    /// is after `after`. The stream must then continue from `T`, dropping events at or below
    /// it.
    pub(crate) async fn take(
        client: &Client,
        options: &LiveOptions,
        out: &mut impl Output,
        reset: bool,
        after: ClusterTime,
    ) -> Result<ClusterTime, Stop> {
        let crate::live::WatchTarget::Collection { db, coll } = &options.target else {
            return Err(Stop::Failed(SourceError::Snapshot {
                stream: options.describe(),
                option: "initial_snapshot".into(),
                reason: "snapshots read one collection: watch a collection target".into(),
            }));
        };
        let option = if reset {
            "on_history_lost: Resnapshot"
        } else {
            "initial_snapshot"
        };
        let mut ctx = Ctx {
            options,
            snap: options.initial_snapshot.clone().unwrap_or_default(),
            secrets: Secrets::of_uri(&options.uri),
            stream: options.describe(),
            option,
            db: db.clone(),
            coll: coll.clone(),
            ns: Namespace::new(db, Some(coll)),
            progress: SnapshotProgress {
                namespace: format!("{db}.{coll}"),
                mode: SnapshotMode::AtClusterTime,
                at: None,
                ranges: 1,
                scanned: 0,
                estimated_total: None,
                elapsed: Duration::ZERO,
                done: false,
            },
            started: Instant::now(),
            seq: 0,
        };
        ctx.snap.parallelism = ctx.snap.parallelism.max(1);
        ctx.snap.batch_size = ctx.snap.batch_size.max(1);
        ctx.progress.estimated_total = ctx.estimate(client).await;
        ctx.publish();
        // A snapshot must come after every time the source released; on an idle server the
        // clock may not have moved yet (a replica set writes a no-op every 10 s): wait for it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let result = match ctx.at_cluster_time(client, out, reset, after).await {
                Err(Attempt::Refused(message)) => match ctx.snap.fallback {
                    SnapshotFallback::Majority => ctx.majority(client, out, reset, after).await,
                    SnapshotFallback::Fail => Err(Attempt::Stop(ctx.fail(format!(
                        "the server refuses snapshot reads ({message}); set SnapshotOptions::fallback to Majority to read with majority reads instead"
                    )))),
                },
                other => other,
            };
            match result {
                Ok(at) => return Ok(at),
                Err(Attempt::TooEarly(at)) if Instant::now() < deadline => {
                    let _ = at;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(Attempt::TooEarly(at)) => {
                    return Err(ctx.fail(format!(
                        "the server's time stayed at {at}, not after {after}, a time the source already released"
                    )));
                }
                Err(Attempt::Refused(message)) => return Err(ctx.fail(message)),
                Err(Attempt::Stop(stop)) => return Err(stop),
            }
        }
    }

    enum Attempt {
        /// The server does not do snapshot reads (its message).
        Refused(String),
        /// The snapshot's time is not after what the source released (nothing was emitted).
        TooEarly(ClusterTime),
        Stop(Stop),
    }

    impl From<Stop> for Attempt {
        fn from(s: Stop) -> Self {
            Attempt::Stop(s)
        }
    }

    /// A range of `_id`s: `[lower, upper)`, open where `None`.
    #[derive(Clone, Debug)]
    struct Range {
        lower: Option<Bson>,
        upper: Option<Bson>,
    }

    impl Range {
        fn filter(&self) -> bson::Document {
            let mut bounds = bson::Document::new();
            if let Some(l) = &self.lower {
                bounds.insert("$gte", l.clone());
            }
            if let Some(u) = &self.upper {
                bounds.insert("$lt", u.clone());
            }
            if bounds.is_empty() {
                doc! {}
            } else {
                doc! { "_id": bounds }
            }
        }
    }

    enum Message {
        Docs(Vec<RawDocumentBuf>),
        Done(Option<Timestamp>),
        Failed(DriverError),
    }

    fn code_of(e: &DriverError) -> Option<i32> {
        match e.kind.as_ref() {
            ErrorKind::Command(c) => Some(c.code),
            _ => None,
        }
    }

    fn to_time(ts: Timestamp) -> ClusterTime {
        ClusterTime::new(ts.time, ts.increment)
    }

    fn to_ts(t: ClusterTime) -> Timestamp {
        Timestamp {
            time: t.seconds(),
            increment: t.increment(),
        }
    }

    /// The `_id` of a document (or of a `{_id}` projection) as a `Bson`.
    fn id_of(doc: &RawDocumentBuf) -> Option<Bson> {
        let d: bson::Document = bson::deserialize_from_slice(doc.as_bytes()).ok()?;
        d.get("_id").cloned()
    }

    /// Type byte + value bytes of a document's `_id`: the key events and documents share.
    fn key_of_doc(doc: &[u8]) -> Option<Vec<u8>> {
        let e = raw::get(doc, "_id").ok()??;
        let mut k = vec![e.kind];
        k.extend_from_slice(e.value);
        Some(k)
    }

    fn bson_of_key(key: &[u8]) -> Option<Bson> {
        let (kind, value) = key.split_first()?;
        let mut w = raw::DocWriter::new();
        w.append(*kind, "_id", value);
        let d: bson::Document = bson::deserialize_from_slice(&w.finish()).ok()?;
        d.get("_id").cloned()
    }

    /// The rank MongoDB's type bracketing compares by (numbers together).
    fn type_class(v: &Bson) -> u8 {
        match v {
            Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 1,
            other => other.element_type() as u8,
        }
    }

    impl Ctx<'_> {
        fn publish(&mut self) {
            self.progress.elapsed = self.started.elapsed();
            self.options
                .status()
                .set_snapshot_progress(self.progress.clone());
        }

        fn fail(&self, reason: String) -> Stop {
            Stop::Failed(SourceError::Snapshot {
                stream: self.stream.clone(),
                option: self.option.into(),
                reason: self.secrets.scrub(&reason),
            })
        }

        fn driver_fail(&self, what: &str, e: &DriverError, at: Option<ClusterTime>) -> Stop {
            let message = self.secrets.scrub(&match e.kind.as_ref() {
                ErrorKind::Command(c) => c.message.clone(),
                _ => e.to_string(),
            });
            match (code_of(e), at) {
                (Some(239), Some(at)) => Stop::Failed(SourceError::SnapshotTooOld {
                    stream: self.stream.clone(),
                    at,
                    message,
                }),
                _ => self.fail(format!("{what}: {message}")),
            }
        }

        fn collection(&self, client: &Client, majority: bool) -> Collection<RawDocumentBuf> {
            let db = client.database(&self.db);
            if majority {
                db.collection_with_options(
                    &self.coll,
                    CollectionOptions::builder()
                        .read_concern(ReadConcern::majority())
                        .build(),
                )
            } else {
                db.collection(&self.coll)
            }
        }

        /// The document count (`count`; `collStats` if that fails), for the progress display.
        async fn estimate(&self, client: &Client) -> Option<u64> {
            let db = client.database(&self.db);
            let n = match db.run_command(doc! { "count": &self.coll }).await {
                Ok(reply) => reply.get("n").cloned(),
                Err(_) => db
                    .run_command(doc! { "collStats": &self.coll })
                    .await
                    .ok()
                    .and_then(|r| r.get("count").cloned()),
            };
            match n? {
                Bson::Int32(n) => u64::try_from(n).ok(),
                Bson::Int64(n) => u64::try_from(n).ok(),
                Bson::Double(n) if n >= 0.0 => Some(n as u64),
                _ => None,
            }
        }

        /// How many ranges: at most `parallelism`, at least a batch per range.
        fn range_count(&self) -> usize {
            let n = self.progress.estimated_total.unwrap_or(0);
            let per = u64::from(self.snap.batch_size);
            (n / per).clamp(1, self.snap.parallelism as u64) as usize
        }

        /// Splits `[first, last]` into ranges at documents found by `skip` in `_id` order, with
        /// `session` (snapshot or causal) on `collection`.
        async fn ranges(
            &self,
            collection: &Collection<RawDocumentBuf>,
            session: &mut mongodb::ClientSession,
            first: &Bson,
        ) -> Result<Vec<Range>, DriverError> {
            let last = collection
                .find_one(doc! {})
                .sort(doc! { "_id": -1 })
                .projection(doc! { "_id": 1 })
                .session(&mut *session)
                .await?
                .as_ref()
                .and_then(id_of);
            let p = self.range_count();
            let same_type = last
                .as_ref()
                .is_some_and(|l| type_class(l) == type_class(first));
            if p <= 1 || !same_type {
                return Ok(vec![Range {
                    lower: None,
                    upper: None,
                }]);
            }
            let n = self.progress.estimated_total.unwrap_or(0);
            let mut bounds: Vec<Bson> = Vec::new();
            for k in 1..p {
                let skip = n * k as u64 / p as u64;
                let found = collection
                    .find_one(doc! {})
                    .sort(doc! { "_id": 1 })
                    .projection(doc! { "_id": 1 })
                    .skip(skip)
                    .session(&mut *session)
                    .await?
                    .as_ref()
                    .and_then(id_of);
                match found {
                    Some(b) if bounds.last() != Some(&b) && b != *first => bounds.push(b),
                    Some(_) => {}
                    None => break,
                }
            }
            let mut ranges = Vec::with_capacity(bounds.len() + 1);
            let mut lower = None;
            for b in bounds {
                ranges.push(Range {
                    lower: lower.take(),
                    upper: Some(b.clone()),
                });
                lower = Some(b);
            }
            ranges.push(Range { lower, upper: None });
            Ok(ranges)
        }

        /// Reads `ranges` in parallel tasks; each batch goes to `each` as it arrives. Returns
        /// the latest operation time of the tasks' sessions.
        async fn read_ranges(
            &mut self,
            client: &Client,
            ranges: Vec<Range>,
            snapshot_at: Option<ClusterTime>,
            mut each: impl FnMut(&mut Self, Vec<RawDocumentBuf>) -> Result<(), Stop>,
        ) -> Result<Option<Timestamp>, Stop> {
            let (sender, mut receiver) = mpsc::channel::<Message>(ranges.len() * 2);
            let running = ranges.len();
            let batch_size = self.snap.batch_size;
            for range in ranges {
                let collection = self.collection(client, snapshot_at.is_none());
                let client = client.clone();
                let sender = sender.clone();
                tokio::spawn(async move {
                    let result: Result<Option<Timestamp>, DriverError> = async {
                        let mut session = match snapshot_at {
                            Some(at) => {
                                client
                                    .start_session()
                                    .snapshot(true)
                                    .snapshot_time(to_ts(at))
                                    .await?
                            }
                            None => client.start_session().causal_consistency(true).await?,
                        };
                        let mut cursor = collection
                            .find(range.filter())
                            .sort(doc! { "_id": 1 })
                            .batch_size(batch_size)
                            .session(&mut session)
                            .await?;
                        let mut batch = Vec::with_capacity(batch_size as usize);
                        while let Some(doc) = cursor.next(&mut session).await {
                            batch.push(doc?);
                            if batch.len() >= batch_size as usize {
                                let full = std::mem::take(&mut batch);
                                if sender.send(Message::Docs(full)).await.is_err() {
                                    return Ok(None);
                                }
                            }
                        }
                        if !batch.is_empty() {
                            let _ = sender.send(Message::Docs(batch)).await;
                        }
                        Ok(session.operation_time())
                    }
                    .await;
                    let _ = sender
                        .send(match result {
                            Ok(t) => Message::Done(t),
                            Err(e) => Message::Failed(e),
                        })
                        .await;
                });
            }
            drop(sender);
            let mut running = running;
            let mut latest: Option<Timestamp> = None;
            while running > 0 {
                if self.options.stopper.is_stopped() {
                    // Ending the input here would close the snapshot's time half emitted.
                    return Err(self.fail(
                        "stopped before the snapshot was complete; a restart takes it again".into(),
                    ));
                }
                match receiver.recv().await {
                    Some(Message::Docs(docs)) => {
                        self.progress.scanned += docs.len() as u64;
                        each(self, docs)?;
                        self.publish();
                    }
                    Some(Message::Done(t)) => {
                        running -= 1;
                        if let Some(t) = t
                            && latest.is_none_or(|l| (t.time, t.increment) > (l.time, l.increment))
                        {
                            latest = Some(t);
                        }
                    }
                    Some(Message::Failed(e)) => {
                        return Err(self.driver_fail("reading a range", &e, snapshot_at));
                    }
                    None => break,
                }
            }
            Ok(latest)
        }

        /// Emits `docs` as synthetic inserts at `at`.
        fn emit(
            &mut self,
            out: &mut impl Output,
            docs: impl IntoIterator<Item = RawDocumentBuf>,
            at: ClusterTime,
        ) -> Result<(), Stop> {
            let mut batch = Vec::with_capacity(self.options.batch.max(1));
            for raw in docs {
                let doc = Document::from(raw);
                let event = synthetic::insert(&self.ns, &doc, at, Origin::Snapshot, self.seq)
                    .map_err(|e| self.fail(format!("a document of the scan: {e}")))?;
                self.seq += 1;
                batch.push((event, at));
                if batch.len() >= self.options.batch.max(1) {
                    out.events(std::mem::take(&mut batch))?;
                }
            }
            out.events(batch)?;
            Ok(())
        }

        fn emit_reset(&mut self, out: &mut impl Output, at: ClusterTime) -> Result<(), Stop> {
            let event = synthetic::reset(&self.ns, at, Origin::Snapshot)
                .map_err(|e| self.fail(format!("the reset event: {e}")))?;
            out.events(vec![(event, at)])?;
            Ok(())
        }

        fn check_after(&self, at: ClusterTime, after: ClusterTime) -> Result<(), Attempt> {
            if at <= after && after > ClusterTime::MIN {
                return Err(Attempt::TooEarly(at));
            }
            Ok(())
        }

        /// The snapshot-read path; `Refused` if the server does not do snapshot reads.
        async fn at_cluster_time(
            &mut self,
            client: &Client,
            out: &mut impl Output,
            reset: bool,
            after: ClusterTime,
        ) -> Result<ClusterTime, Attempt> {
            let collection = self.collection(client, false);
            let mut session = client
                .start_session()
                .snapshot(true)
                .await
                .map_err(|e| self.driver_fail("starting a snapshot session", &e, None))?;
            let first = collection
                .find_one(doc! {})
                .sort(doc! { "_id": 1 })
                .projection(doc! { "_id": 1 })
                .session(&mut session)
                .await;
            let first = match first {
                Ok(first) => first.as_ref().and_then(id_of),
                Err(e) if matches!(code_of(&e), Some(72 | 123 | 9)) => {
                    return Err(Attempt::Refused(self.secrets.scrub(
                        &match e.kind.as_ref() {
                            ErrorKind::Command(c) => c.message.clone(),
                            _ => e.to_string(),
                        },
                    )));
                }
                Err(e) => return Err(self.driver_fail("the first snapshot read", &e, None).into()),
            };
            let Some(at) = session.snapshot_time().map(to_time) else {
                return Err(self
                    .fail("the server returned no atClusterTime for a snapshot read".into())
                    .into());
            };
            self.check_after(at, after)?;
            self.progress.at = Some(at);
            let ranges = match &first {
                Some(first) => self
                    .ranges(&collection, &mut session, first)
                    .await
                    .map_err(|e| self.driver_fail("finding range boundaries", &e, Some(at)))?,
                None => vec![Range {
                    lower: None,
                    upper: None,
                }],
            };
            drop(session);
            self.progress.ranges = ranges.len();
            self.publish();
            if reset {
                self.emit_reset(out, at)?;
            }
            self.read_ranges(client, ranges, Some(at), |ctx, docs| {
                ctx.emit(out, docs, at)
            })
            .await?;
            self.progress.done = true;
            self.publish();
            Ok(at)
        }

        /// The fallback without snapshot reads (see the module docs).
        async fn majority(
            &mut self,
            client: &Client,
            out: &mut impl Output,
            reset: bool,
            after: ClusterTime,
        ) -> Result<ClusterTime, Attempt> {
            self.progress.mode = SnapshotMode::Majority;
            let collection = self.collection(client, true);
            let mut session = client
                .start_session()
                .causal_consistency(true)
                .await
                .map_err(|e| self.driver_fail("starting a session", &e, None))?;
            client
                .database(&self.db)
                .run_command(doc! { "count": &self.coll, "readConcern": { "level": "majority" } })
                .session(&mut session)
                .await
                .map_err(|e| self.driver_fail("count", &e, None))?;
            let Some(start) = session.operation_time().map(to_time) else {
                return Err(self
                    .fail("the server returned no operationTime".into())
                    .into());
            };
            let first = collection
                .find_one(doc! {})
                .sort(doc! { "_id": 1 })
                .projection(doc! { "_id": 1 })
                .session(&mut session)
                .await
                .map_err(|e| self.driver_fail("the first read", &e, None))?
                .as_ref()
                .and_then(id_of);
            let ranges = match &first {
                Some(first) => self
                    .ranges(&collection, &mut session, first)
                    .await
                    .map_err(|e| self.driver_fail("finding range boundaries", &e, None))?,
                None => vec![Range {
                    lower: None,
                    upper: None,
                }],
            };
            self.progress.ranges = ranges.len();
            self.publish();
            let mut known: HashMap<Vec<u8>, RawDocumentBuf> = HashMap::new();
            let scanned = self
                .read_ranges(client, ranges, None, |ctx, docs| {
                    for doc in docs {
                        let key = key_of_doc(doc.as_bytes())
                            .ok_or_else(|| ctx.fail("a document without _id".into()))?;
                        known.insert(key, doc);
                    }
                    Ok(())
                })
                .await?;
            let mut hi = scanned.map_or(start, to_time).max(start);
            // The window stream: every change since `start`, by _id.
            let mut stream = client
                .database(&self.db)
                .collection::<bson::Document>(&self.coll)
                .watch()
                .start_at_operation_time(to_ts(start))
                .max_await_time(Duration::from_millis(100))
                .await
                .map_err(|e| self.driver_fail("opening the reconciliation stream", &e, None))?
                .with_type::<RawDocumentBuf>();
            let mut pending: Vec<ChangeEvent> = Vec::new();
            let mut settled = false;
            for _ in 0..MAX_ROUNDS {
                // Events up to `hi`; later ones wait for the next round.
                let mut window: Vec<ChangeEvent> = std::mem::take(&mut pending);
                if window.iter().any(|e| e.cluster_time() > hi) {
                    let (now, later): (Vec<_>, Vec<_>) =
                        window.into_iter().partition(|e| e.cluster_time() <= hi);
                    window = now;
                    pending = later;
                }
                if pending.is_empty() {
                    loop {
                        match stream.next_if_any().await {
                            Ok(Some(raw)) => {
                                let event = ChangeEvent::from_document(Document::from(raw))
                                    .map_err(|e| self.fail(format!("a change event: {e}")))?;
                                if event.cluster_time() > hi {
                                    pending.push(event);
                                    break;
                                }
                                window.push(event);
                            }
                            Ok(None) => {
                                let seen = stream
                                    .resume_token()
                                    .and_then(|t| from_driver(&t))
                                    .and_then(|t| t.cluster_time());
                                if seen.is_some_and(|t| t >= hi) {
                                    break;
                                }
                            }
                            Err(e) => {
                                return Err(self
                                    .driver_fail("the reconciliation stream", &e, None)
                                    .into());
                            }
                        }
                    }
                }
                let mut refetch: Vec<Vec<u8>> = Vec::new();
                let mut last: HashMap<Vec<u8>, &ChangeEvent> = HashMap::new();
                for event in &window {
                    match event.operation() {
                        op if op.is_document_change() => {
                            if let Some((k, v)) = event.document_id() {
                                let mut key = vec![k];
                                key.extend_from_slice(v);
                                last.insert(key, event);
                            }
                        }
                        OperationType::Drop
                        | OperationType::Rename
                        | OperationType::DropDatabase
                        | OperationType::Invalidate => {
                            return Err(self.fail(format!(
                                "the collection was dropped or renamed during the snapshot ({} at {})",
                                event.operation().as_str(),
                                event.cluster_time()
                            )).into());
                        }
                        _ => {}
                    }
                }
                for (key, event) in last {
                    match event.operation() {
                        OperationType::Insert | OperationType::Replace => {
                            match event.full_document() {
                                Some(Ok(doc)) => {
                                    let raw =
                                        RawDocumentBuf::from_bytes(doc.as_bytes().to_vec())
                                            .map_err(|e| self.fail(format!("fullDocument: {e}")))?;
                                    known.insert(key, raw);
                                }
                                _ => refetch.push(key),
                            }
                        }
                        OperationType::Delete => {
                            known.remove(&key);
                        }
                        _ => refetch.push(key),
                    }
                }
                if refetch.is_empty() {
                    settled = true;
                    break;
                }
                // Re-read what only updates touched; valid unless the next window touches it.
                for chunk in refetch.chunks(1000) {
                    for key in chunk {
                        known.remove(key);
                    }
                    let ids: Vec<Bson> = chunk.iter().filter_map(|k| bson_of_key(k)).collect();
                    let mut cursor = collection
                        .find(doc! { "_id": { "$in": ids } })
                        .session(&mut session)
                        .await
                        .map_err(|e| self.driver_fail("re-reading updated documents", &e, None))?;
                    while let Some(doc) = cursor.next(&mut session).await {
                        let doc = doc.map_err(|e| {
                            self.driver_fail("re-reading updated documents", &e, None)
                        })?;
                        if let Some(key) = key_of_doc(doc.as_bytes()) {
                            known.insert(key, doc);
                        }
                    }
                }
                if let Some(t) = session.operation_time().map(to_time) {
                    hi = hi.max(t);
                }
            }
            if !settled {
                return Err(self.fail(format!(
                    "majority reads did not settle in {MAX_ROUNDS} rounds: some documents change faster than they can be re-read; use a server with snapshot reads (MongoDB 5.0+)"
                )).into());
            }
            drop(stream);
            self.check_after(hi, after)?;
            self.progress.at = Some(hi);
            if reset {
                self.emit_reset(out, hi)?;
            }
            let mut docs: Vec<(Vec<u8>, RawDocumentBuf)> = known.into_iter().collect();
            docs.sort_by(|a, b| a.0.cmp(&b.0));
            self.emit(out, docs.into_iter().map(|(_, d)| d), hi)?;
            self.progress.done = true;
            self.publish();
            Ok(hi)
        }
    }
}
