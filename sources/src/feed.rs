//! A source fed from another thread: the reader does I/O and decoding, the worker only emits.
//!
//! ```text
//!   reader thread                              timely worker 0
//!   (file, driver, ...)                        [source operator]
//!     decode events ──▶ bounded channel ──▶  emit the batch a chunk per activation,
//!     Feed::events   ◀── emptied vectors ───  downgrade after each chunk
//!                         (backpressure)
//!     Feed::progress   ── SyncActivator ──▶  wakes the worker (timely schedules lazily)
//!     Feed::end / fail
//!       │
//!       └─ CommitGrouper: a transaction's events are held until the stream moves past it,
//!          then sent together at its commit time (see [`crate::commit_time`])
//! ```
//!
//! # Transactions
//!
//! Readers hand the feed every event in stream order at its own clusterTime and never group
//! anything themselves: [`Feed::events`] passes them through a [`CommitGrouper`], so every
//! source built on a feed (replay, live) emits each transaction whole, at one time.
//!
//! # Progress tracking (the frontier rule)
//!
//! * The operator starts with a capability at `ClusterTime::MIN`.
//! * A batch is emitted 256 events (`CHUNK`) per activation, each record carrying its own time;
//!   after each chunk the capability is downgraded to the least time still to be emitted (so
//!   the operators downstream can take a chunk while it is in cache), and after the last to
//!   the input's last time (more events at that time may follow) or, if a transaction is open,
//!   to its last event's time — never further.
//! * [`Feed::progress`] (e.g. a post-batch resume token of an idle stream) downgrades the
//!   capability to a later time with no event: the stream is known to have moved past
//!   everything before it. It first releases the transactions that ended before that time, and
//!   never moves past an open transaction's last event (it may still be released there).
//! * The position recorded in the [`SourceStatus`] pairs the frontier `F` with a **checkpoint
//!   token** `K`: every event released at a time `≥ F` comes after `K` in the stream. `K` is the
//!   earlier (in stream order) of the token before the first event at a time `≥ F` and the
//!   token before any transaction still open ([`CommitGrouper::resume_token`]). A restart from
//!   `K` with [`Feed::skip_before`]`(F)` therefore re-reads everything output at `F` or later
//!   and drops what was output before `F`: exactly once.
//! * [`Feed::end`] drops the capability. [`Feed::fail`] records the error in the
//!   [`SourceStatus`] and *keeps* the capability, so no partial time is released; a reader that
//!   goes away without either is reported as a failure too.
//!
//! Only worker 0 runs a reader; other workers' copies of the source drop their capability at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};

use changeflow_core::{ChangeEvent, ClusterTime, EventStream, ResumeToken, TokenRef};
use timely::dataflow::Scope;
use timely::dataflow::operators::generic::operator::source;
use timely::scheduling::SyncActivator;

use crate::commit_time::{CommitGrouper, TxnCompletion};
use crate::{SourceError, SourceStatus};

/// What a reader thread sends to its source operator.
enum Message {
    /// Asks nothing; sent only to learn whether the operator is still there.
    Ping,
    /// Events at their (commit) times, the time the capability may move to after them, and
    /// the resume token up to which all events were sent.
    Events(Batch, ClusterTime, Option<ResumeToken>),
    Progress(ClusterTime, Option<ResumeToken>),
    End,
    Fail(Box<SourceError>),
}

/// The reader thread's end of a fed source.
pub struct Feed {
    sender: SyncSender<Message>,
    activator: SyncActivator,
    /// The input's position: the time of the last event or progress received.
    last: ClusterTime,
    /// The last frontier sent to the operator.
    sent: ClusterTime,
    grouper: CommitGrouper,
    status: Arc<SourceStatus>,
    /// For each time at or after the frontier that an event started, the grouper's resume
    /// point just before it: where a restart must begin to see that time again (in place, so
    /// the hot path builds no token).
    starts: VecDeque<(ClusterTime, Option<TokenRef>)>,
    /// Released events before this time are dropped (a restart from a checkpoint).
    skip_before: Option<ClusterTime>,
    /// The token of the last event or progress read: where the stream is.
    latest_token: Option<ResumeToken>,
    /// Batch vectors the operator has emptied, sent back for reuse: a batch is allocated on
    /// this thread and emptied on the worker's, and a fresh allocation of that size each time
    /// costs page faults.
    returned: Receiver<Batch>,
    /// An emptied batch vector kept for the next [`Feed::buffer`] or batch.
    spare: Batch,
}

/// Events at their (commit) times, as sent in one message.
type Batch = Vec<(ChangeEvent, ClusterTime)>;

/// The source operator has gone (its dataflow was dropped): the reader should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the source's dataflow is gone")]
pub struct Disconnected;

impl Feed {
    fn send(&mut self, message: Message) -> Result<(), Disconnected> {
        self.sender.send(message).map_err(|_| Disconnected)?;
        self.activator.activate().map_err(|_| Disconnected)
    }

    /// Chooses when a transaction counts as complete (default [`TxnCompletion::Sharded`], right
    /// for every deployment); call before the first event.
    pub fn set_txn_completion(&mut self, rule: TxnCompletion) {
        if !self.grouper.has_open() {
            self.grouper = CommitGrouper::new(rule);
        }
    }

    /// Sends a batch of events in stream order, each with its own clusterTime (times never
    /// decrease across batches). Transactions are held until complete and then sent at their
    /// commit time (see the module docs).
    pub fn events(&mut self, batch: Vec<(ChangeEvent, ClusterTime)>) -> Result<(), Disconnected> {
        if batch.is_empty() {
            return Ok(());
        }
        debug_assert!(
            batch.first().is_some_and(|(_, f)| *f >= self.last),
            "times must not decrease"
        );
        let n = batch.len();
        let mut out = self.returned.try_recv().unwrap_or_default();
        out.reserve(n);
        let mut batch = batch;
        for (i, (event, time)) in batch.drain(..).enumerate() {
            if time > self.last || self.starts.is_empty() {
                let before = self.grouper.resume_point().cloned();
                self.starts.push_back((time, before));
            }
            self.last = time;
            if i + 1 == n {
                self.latest_token = Some(event.token());
            }
            self.grouper.push(event, time, &mut out);
        }
        if batch.capacity() > self.spare.capacity() {
            self.spare = batch;
        }
        // More events may follow at the input's last time, or at an open transaction's.
        let frontier = self.grouper.safe_time().unwrap_or(self.last);
        let token = self.checkpoint_token(frontier, None);
        self.flush(out, frontier, token)
    }

    /// An empty vector with room for at least `capacity` events, to fill for [`Feed::events`]:
    /// a vector the feed has emptied before, when it has one, so batches reuse their memory.
    pub fn buffer(&mut self, capacity: usize) -> Vec<(ChangeEvent, ClusterTime)> {
        let mut buffer = std::mem::take(&mut self.spare);
        buffer.reserve(capacity);
        buffer
    }

    /// Drops every event released at a time before `time`: the source restarted from a
    /// checkpoint at frontier `time` (from its token), and what came before was committed.
    /// Transactions are judged by their commit time, so one that was still open at the
    /// checkpoint is emitted whole. Call before the first event.
    pub fn skip_before(&mut self, time: ClusterTime) {
        self.skip_before = Some(time);
    }

    /// The token a restart must resume after to see again every event released at `frontier`
    /// or later (see the module docs); `after_all` is the token to use when no event at or
    /// after `frontier` has been read (e.g. a post-batch token).
    fn checkpoint_token(
        &mut self,
        frontier: ClusterTime,
        after_all: Option<Option<ResumeToken>>,
    ) -> Option<ResumeToken> {
        while self.starts.front().is_some_and(|(t, _)| *t < frontier) {
            self.starts.pop_front();
        }
        let before_open = self.grouper.has_open().then(|| self.grouper.resume_point());
        let first = match self.starts.front() {
            Some((_, event)) => event.as_ref(),
            None => match after_all {
                // No event at or after the frontier was read: the given token (a post-batch
                // token) is where the stream is, unless a transaction is still open.
                Some(token) => {
                    return match before_open {
                        None => token,
                        Some(None) => None,
                        Some(Some(open)) => token.map(|t| t.min(open.token())),
                    };
                }
                None => self.grouper.resume_point(),
            },
        };
        match (first, before_open) {
            (first, None) => first.map(TokenRef::token),
            (Some(a), Some(Some(b))) => Some(std::cmp::min_by(a, b, |x, y| x.cmp_token(y)).token()),
            _ => None,
        }
    }

    /// Declares that no event before `time` will follow (an idle stream's post-batch token,
    /// whose own resume token is `token`). Transactions that ended before `time` are sent; the
    /// frontier stops at the last event of any that is still open.
    pub fn progress(
        &mut self,
        time: ClusterTime,
        token: Option<ResumeToken>,
    ) -> Result<(), Disconnected> {
        if time > self.last {
            self.last = time;
            if token.is_some() {
                self.latest_token = token.clone();
            }
            let mut out = Vec::new();
            self.grouper.advance(time, &mut out);
            let frontier = self.grouper.safe_time().map_or(time, |open| open.min(time));
            let token = self.checkpoint_token(frontier, Some(token));
            self.flush(out, frontier, token)?;
        }
        Ok(())
    }

    /// The input ended normally: transactions still open are sent as they are (a finite input
    /// is the whole stream), then the source releases its capability.
    pub fn end(mut self) {
        let mut out = Vec::new();
        self.grouper.finish(&mut out);
        let token = self.checkpoint_token(self.last, None);
        if self.flush(out, self.last, token).is_ok() {
            // Everything is out: a restart resumes after the latest token and emits nothing
            // at or before the last time.
            if let Some(after) = self.last.successor() {
                self.status.record_candidate(after, &self.latest_token);
            }
            let _ = self.send(Message::End);
        }
    }

    /// The input failed; the source keeps its capability and reports `error`. Events of open
    /// transactions are not sent.
    pub fn fail(mut self, error: SourceError) {
        let _ = self.send(Message::Fail(Box::new(error)));
    }

    /// Sends released events (if any) and the new frontier (if it moved).
    fn flush(
        &mut self,
        mut out: Vec<(ChangeEvent, ClusterTime)>,
        frontier: ClusterTime,
        token: Option<ResumeToken>,
    ) -> Result<(), Disconnected> {
        self.status.set_grouping(self.grouper.counts());
        if let Some(skip) = self.skip_before {
            let before = out.len();
            out.retain(|(_, time)| *time >= skip);
            self.status.add_skipped((before - out.len()) as u64);
        }
        let frontier = frontier.max(self.sent);
        if frontier > self.sent {
            self.status.offer_candidate(frontier, &token);
        }
        if !out.is_empty() {
            self.sent = frontier;
            self.send(Message::Events(out, frontier, token))
        } else if frontier > self.sent {
            self.sent = frontier;
            self.send(Message::Progress(frontier, token))
        } else {
            Ok(())
        }
    }

    /// Whether the source operator is still there (an idle reader should stop when it is not:
    /// its dataflow was dropped).
    pub fn is_connected(&self) -> bool {
        match self.sender.try_send(Message::Ping) {
            // The ping must be drained like any message: without an activation, idle polls
            // would fill the channel with pings and the next real message would block.
            Ok(()) => self.activator.activate().is_ok(),
            Err(std::sync::mpsc::TrySendError::Full(_)) => true,
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => false,
        }
    }

    /// The time of the last event or progress received from the reader (events of an open
    /// transaction may not have been sent yet).
    pub fn last_time(&self) -> ClusterTime {
        self.last
    }
}

/// Events per activation of a fed source: about what the operators after it touch (events,
/// documents, state) while it still fits in a core's cache.
const CHUNK: usize = 256;

/// The output of a fed source.
type SourceOutput<'a> = timely::dataflow::operators::generic::OutputBuilderSession<
    'a,
    ClusterTime,
    timely::container::CapacityContainerBuilder<Vec<(ChangeEvent, ClusterTime)>>,
>;

/// The batch a fed source is emitting, a [`CHUNK`] at a time.
#[derive(Default)]
struct Emitting {
    queue: VecDeque<(ChangeEvent, ClusterTime)>,
    /// `least[i]`: the least time of the batch's events from `i` on (its records are in commit
    /// order, which need not be time order), so the capability can follow each chunk.
    least: Vec<ClusterTime>,
    emitted: usize,
    /// Where the capability goes, and the position recorded, once the batch is out.
    end: Option<(ClusterTime, Option<ResumeToken>)>,
}

impl Emitting {
    fn is_done(&self) -> bool {
        self.end.is_none()
    }

    fn start(&mut self, batch: Batch, frontier: ClusterTime, token: Option<ResumeToken>) {
        self.least.clear();
        self.least.resize(batch.len(), ClusterTime::MAX);
        let mut least = ClusterTime::MAX;
        for (slot, (_, time)) in self.least.iter_mut().zip(&batch).rev() {
            least = least.min(*time);
            *slot = least;
        }
        self.queue = VecDeque::from(batch);
        self.emitted = 0;
        self.end = Some((frontier, token));
    }

    /// Emits the next chunk and moves the capability to the least time still to come (to the
    /// batch's frontier after its last chunk, when the emptied vector also goes back).
    fn emit_chunk(
        &mut self,
        cap: &mut timely::dataflow::operators::Capability<ClusterTime>,
        output: &mut SourceOutput<'_>,
        status: &SourceStatus,
        emptied: Option<&SyncSender<Batch>>,
    ) {
        let n = self.queue.len().min(CHUNK);
        output.session(&*cap).give_iterator(self.queue.drain(..n));
        self.emitted += n;
        if let Some(next) = self.least.get(self.emitted) {
            cap.downgrade(next);
            return;
        }
        if let Some((frontier, token)) = self.end.take() {
            cap.downgrade(&frontier);
            status.set_position(frontier, token);
        }
        if let Some(back) = emptied {
            // Full (the reader has spares) or gone: dropped here.
            let _ = back.try_send(Vec::from(std::mem::take(&mut self.queue)));
        }
    }
}

/// Builds a source whose events come from `reader`, run on its own thread on worker 0 with a
/// channel of `capacity` batches (see the module docs).
pub fn fed_source<'scope, R>(
    scope: Scope<'scope, ClusterTime>,
    name: &str,
    status: Arc<SourceStatus>,
    capacity: usize,
    reader: R,
) -> EventStream<'scope>
where
    R: FnOnce(Feed) + Send + 'static,
{
    let reads = scope.index() == 0;
    let thread_name = format!("changeflow-{name}");
    source(scope, name, move |capability, info| {
        let mut capability = reads.then_some(capability);
        let mut receiver: Option<Receiver<Message>> = None;
        let mut emptied: Option<SyncSender<Batch>> = None;
        if reads {
            let (sender, rx) = sync_channel(capacity.max(1));
            let (give_back, returned) = sync_channel(capacity.max(1) + 1);
            let activator = scope.worker().sync_activator_for(info.address.to_vec());
            let feed = Feed {
                sender,
                activator,
                last: ClusterTime::MIN,
                sent: ClusterTime::MIN,
                grouper: CommitGrouper::new(TxnCompletion::default()),
                status: Arc::clone(&status),
                starts: VecDeque::new(),
                skip_before: None,
                latest_token: None,
                returned,
                spare: Vec::new(),
            };
            emptied = Some(give_back);
            let spawned = std::thread::Builder::new()
                .name(thread_name)
                .spawn(move || reader(feed));
            match spawned {
                Ok(_) => receiver = Some(rx),
                Err(e) => status.fail(SourceError::Thread(e.to_string())),
            }
        }
        let self_activator = scope.activator_for(info.address.clone());
        let mut emitting = Emitting::default();
        move |output| {
            let ended = {
                let (Some(cap), Some(rx)) = (capability.as_mut(), receiver.as_ref()) else {
                    return;
                };
                // A batch is emitted a chunk per activation, so the operators downstream take
                // each chunk while its events and documents are still in cache.
                if !emitting.is_done() {
                    emitting.emit_chunk(cap, output, &status, emptied.as_ref());
                    self_activator.activate();
                    return;
                }
                loop {
                    match rx.try_recv() {
                        Ok(Message::Ping) => {}
                        Ok(Message::Events(batch, frontier, token)) => {
                            status.add_events(batch.len() as u64);
                            emitting.start(batch, frontier, token);
                            emitting.emit_chunk(cap, output, &status, emptied.as_ref());
                            self_activator.activate();
                            return;
                        }
                        Ok(Message::Progress(time, token)) => {
                            cap.downgrade(&time);
                            status.set_position(time, token);
                        }
                        Ok(Message::End) => break true,
                        Ok(Message::Fail(error)) => {
                            status.fail(*error);
                            break false;
                        }
                        Err(TryRecvError::Empty) => return,
                        Err(TryRecvError::Disconnected) => {
                            status.fail(SourceError::Thread(
                                "the reader thread stopped without ending its input".into(),
                            ));
                            break false;
                        }
                    }
                }
            };
            receiver = None;
            if ended {
                capability = None;
                status.finish();
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;
    use std::time::{Duration, Instant};

    use changeflow_core::{ChangeEvent, ClusterTime, ResumeToken};
    use timely::dataflow::operators::{Inspect, Probe};

    use super::*;

    fn event(t: u32, txn: bool) -> ChangeEvent {
        let txn = if txn {
            r#", "lsid": {"id": 1}, "txnNumber": 1"#
        } else {
            ""
        };
        ChangeEvent::from_json(
            format!(
                r#"{{"_id": {{"_data": "82{t:08X}0000000104"}}, "operationType": "delete",
                "clusterTime": {{"$timestamp": {{"t": {t}, "i": 0}}}}, "ns": {{"db": "a", "coll": "b"}},
                "documentKey": {{"_id": {t}}}{txn}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    enum Step {
        Events(Vec<ChangeEvent>),
        Progress(u32),
        End,
    }

    /// A large batch goes out a chunk at a time, the capability following each chunk: the
    /// operator after the source sees the first chunk's times closed before the batch is out.
    /// (Timely shows an operator a new frontier one activation after the data it follows.)
    #[test]
    fn a_batch_goes_out_in_chunks_with_the_frontier_following() {
        use timely::dataflow::channels::pact::Pipeline;
        use timely::dataflow::operators::generic::Operator;
        let n = 3 * CHUNK as u32 + 5;
        let status = SourceStatus::new();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (status2, sink) = (status.clone(), seen.clone());
        timely::execute_directly(move |worker| {
            let probe =
                worker.dataflow::<ClusterTime, _, _>(|scope| {
                    fed_source(scope, "chunks", status2.clone(), 4, move |mut feed: Feed| {
                    let batch = (1..=n)
                        .map(|t| {
                            let e = event(t, false);
                            let time = e.cluster_time();
                            (e, time)
                        })
                        .collect();
                    feed.events(batch).unwrap();
                    feed.end()
                })
                .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<()>>, _, _, _>(
                    Pipeline,
                    "Watch",
                    move |_, _| {
                        let mut received = 0usize;
                        move |(input, frontier), _| {
                            input.for_each(|_, data| received += data.len());
                            let now = frontier.frontier().first().map(|t| t.seconds());
                            sink.lock().unwrap().push((received, now));
                        }
                    },
                )
                .probe()
                .0
                });
            while !probe.done() {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
        });
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.last().map(|s| s.0), Some(n as usize));
        // The first chunk's times were closed while the batch was still going out.
        assert!(
            seen.contains(&(2 * CHUNK, Some(CHUNK as u32 + 1))),
            "{:?}",
            &seen[..seen.len().min(8)]
        );
        assert_eq!(status.events(), u64::from(n));
    }

    /// Batch vectors are reused: the one a batch came in is the next [`Feed::buffer`], and the
    /// operator sends back the ones it emptied.
    #[test]
    fn batch_vectors_are_reused() {
        let status = SourceStatus::new();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (status2, sink) = (status.clone(), seen.clone());
        timely::execute_directly(move |worker| {
            let probe = worker.dataflow::<ClusterTime, _, _>(|scope| {
                fed_source(scope, "reuse", status2.clone(), 4, move |mut feed: Feed| {
                    let mut report = Vec::new();
                    for round in 0..3u32 {
                        let mut batch = feed.buffer(16);
                        let at = batch.as_ptr() as usize;
                        for t in 1..=16 {
                            let e = event(round * 100 + t, false);
                            let time = e.cluster_time();
                            batch.push((e, time));
                        }
                        feed.events(batch).unwrap();
                        // The vector the events went out in, once the operator has emptied it.
                        let deadline = Instant::now() + Duration::from_secs(10);
                        let back = loop {
                            match feed.returned.try_recv() {
                                Ok(back) => break Some(back),
                                Err(_) if Instant::now() > deadline => break None,
                                Err(_) => std::thread::sleep(Duration::from_millis(1)),
                            }
                        };
                        report.push((at, back.map(|b| (b.len(), b.capacity()))));
                    }
                    sink.lock().unwrap().extend(report);
                    feed.end()
                })
                .probe()
                .0
            });
            while !probe.done() {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
        });
        let report = seen.lock().unwrap().clone();
        assert_eq!(report.len(), 3);
        // Every round fills the vector the first batch came in.
        assert!(
            report.iter().all(|(at, _)| *at == report[0].0),
            "{report:?}"
        );
        // Every batch's outgoing vector came back empty, with its room.
        assert!(
            report
                .iter()
                .all(|(_, back)| back.is_some_and(|(len, cap)| len == 0 && cap >= 16)),
            "{report:?}"
        );
        assert_eq!(status.events(), 48);
    }

    /// A post-batch token completes an open transaction only once it is past the transaction's
    /// last event, and the frontier never passes an open transaction.
    #[test]
    fn progress_waits_for_open_transactions_and_then_releases_them() {
        let (steps, commands) = channel::<Step>();
        let commands = std::sync::Mutex::new(Some(commands));
        let status = SourceStatus::new();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (status2, sink) = (status.clone(), seen.clone());
        timely::execute_directly(move |worker| {
            let commands = commands.lock().unwrap().take().unwrap();
            let probe = worker.dataflow::<ClusterTime, _, _>(|scope| {
                fed_source(scope, "test", status2.clone(), 4, move |mut feed: Feed| {
                    for step in commands {
                        match step {
                            Step::Events(events) => {
                                let batch = events
                                    .into_iter()
                                    .map(|e| {
                                        let t = e.cluster_time();
                                        (e, t)
                                    })
                                    .collect();
                                feed.events(batch).unwrap();
                            }
                            Step::Progress(t) => {
                                let token = ResumeToken::from_data(&format!("82{t:08X}0000000004"));
                                feed.progress(ClusterTime::new(t, 0), Some(token)).unwrap();
                            }
                            Step::End => return feed.end(),
                        }
                    }
                })
                .inspect(move |(e, t)| {
                    sink.lock()
                        .unwrap()
                        .push((e.cluster_time().seconds(), t.seconds()))
                })
                .probe()
                .0
            });
            let frontier = |worker: &mut timely::worker::Worker, want: Option<u32>| {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    worker.step_or_park(Some(Duration::from_millis(5)));
                    let now = probe.with_frontier(|f| f.first().map(|t| t.seconds()));
                    if now == want || Instant::now() > deadline {
                        return now;
                    }
                }
            };
            steps
                .send(Step::Events(vec![event(3, false), event(5, true)]))
                .unwrap();
            // The plain event went out; the transaction holds the frontier at its last time.
            assert_eq!(frontier(worker, Some(5)), Some(5));
            // A restart must re-read from just after the event at 3 (the transaction at 5 is
            // not out yet).
            let (at, token) = status2.position().unwrap();
            assert_eq!(at, ClusterTime::new(5, 0));
            assert_eq!(
                token.and_then(|t| t.cluster_time()),
                Some(ClusterTime::new(3, 1))
            );
            steps.send(Step::Progress(5)).unwrap();
            assert_eq!(frontier(worker, Some(5)), Some(5));
            steps.send(Step::Events(vec![event(6, true)])).unwrap();
            assert_eq!(frontier(worker, Some(6)), Some(6));
            // A token past its last event completes the transaction: both events at t = 6.
            steps.send(Step::Progress(9)).unwrap();
            assert_eq!(frontier(worker, Some(9)), Some(9));
            steps.send(Step::End).unwrap();
            assert_eq!(frontier(worker, None), None);
        });
        assert_eq!(*seen.lock().unwrap(), [(3, 3), (5, 6), (6, 6)]);
        let counts = status.transactions();
        assert_eq!(
            (counts.transactions, counts.multi_time_transactions),
            (1, 1)
        );
        // The position after the last progress is the post-batch token.
        let (time, token) = status.position().unwrap();
        assert_eq!(time, ClusterTime::new(9, 0));
        assert_eq!(
            token.and_then(|t| t.cluster_time()),
            Some(ClusterTime::new(9, 0))
        );
    }
}
