//! The reader thread of the live source: the `mongodb` driver on a current-thread tokio runtime,
//! with the restart loop, split-event reassembly and post-batch-token progress described in the
//! module docs of [`crate::live`].

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bson::RawDocumentBuf;
use changeflow_core::{ChangeEvent, ClusterTime, Document, OperationType, ResumeToken};
use mongodb::Client;
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::ResumeToken as DriverToken;
use mongodb::error::{Error as DriverError, ErrorKind};
use mongodb::options::{
    ChangeStreamOptions, ClientOptions, Collation, FullDocumentBeforeChangeType, FullDocumentType,
};

use super::cosmos::SourceClock;
use super::policy::{Class, classify};
use super::redact::{Secrets, redact_uri};
use super::split::Reassembler;
use super::{
    FullDocument, FullDocumentBeforeChange, InvalidatePolicy, LiveOptions, StartAt, WatchTarget,
};
use crate::SourceError;
use crate::feed::{Disconnected, Feed};

/// Where the reader's events go: the feed of a source, or a recording.
pub(crate) trait Output {
    /// A batch of whole events in stream order.
    fn events(&mut self, batch: Vec<(ChangeEvent, ClusterTime)>) -> Result<(), Disconnected>;
    /// Nothing before `time` will follow (a post-batch token, if there is one for the whole
    /// output).
    fn progress(
        &mut self,
        time: ClusterTime,
        token: Option<ResumeToken>,
    ) -> Result<(), Disconnected>;
    /// Whether anyone still listens.
    fn is_connected(&self) -> bool;
}

impl Output for Feed {
    fn events(&mut self, batch: Vec<(ChangeEvent, ClusterTime)>) -> Result<(), Disconnected> {
        Feed::events(self, batch)
    }
    fn progress(
        &mut self,
        time: ClusterTime,
        token: Option<ResumeToken>,
    ) -> Result<(), Disconnected> {
        Feed::progress(self, time, token)
    }
    fn is_connected(&self) -> bool {
        Feed::is_connected(self)
    }
}

/// Why following stopped without ending the input.
pub(crate) enum Stop {
    /// The listener is gone.
    Disconnected,
    /// A definite failure, or retries spent.
    Failed(SourceError),
}

impl From<Disconnected> for Stop {
    fn from(_: Disconnected) -> Self {
        Stop::Disconnected
    }
}

/// Runs the reader for a source: follows the stream and ends or fails the feed.
pub(crate) fn run(mut feed: Feed, options: LiveOptions) {
    if let Some(time) = options.skip_before {
        feed.skip_before(time);
    }
    match follow(&mut feed, &options) {
        Ok(()) => feed.end(),
        Err(Stop::Disconnected) => {}
        Err(Stop::Failed(e)) => feed.fail(e),
    }
}

/// Follows the stream into `out` until the input ends (`Ok`) or fails.
pub(crate) fn follow(out: &mut impl Output, options: &LiveOptions) -> Result<(), Stop> {
    options.validate().map_err(Stop::Failed)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Stop::Failed(SourceError::Thread(format!("tokio runtime: {e}"))))?;
    let clock = Arc::new(Mutex::new(SourceClock::default()));
    if options.cosmos.as_ref().is_some_and(|c| c.per_partition) {
        runtime.block_on(partitions::follow(out, options, clock))
    } else {
        runtime.block_on(Reader::new(options, clock).run(out))
    }
}

/// Where to reopen the stream.
#[derive(Clone, Debug)]
enum Position {
    /// Nothing seen yet: the options' own start.
    Original,
    /// `resumeAfter` this token (the last whole event, or a post-batch token).
    After(DriverToken),
    /// `startAfter` this token (after an `invalidate`).
    StartAfter(DriverToken),
}

enum Flow {
    /// The input ended (stop asked, limit reached, invalidate with the Stop policy).
    End,
    /// Open a new stream at once with `startAfter` the invalidate (ContinueWithStartAfter).
    Reopen,
}

enum Fail {
    Driver(DriverError),
    /// Reopen after a pause: fragments out of sequence, a cursor the server closed.
    Restart(String),
    Stop(Stop),
}

impl From<Stop> for Fail {
    fn from(s: Stop) -> Self {
        Fail::Stop(s)
    }
}

impl From<Disconnected> for Fail {
    fn from(_: Disconnected) -> Self {
        Fail::Stop(Stop::Disconnected)
    }
}

struct Reader<'a> {
    options: &'a LiveOptions,
    secrets: Secrets,
    stream_name: String,
    position: Position,
    opened_once: bool,
    attempt: u32,
    delivered: u64,
    last_event: Instant,
    reassembler: Reassembler,
    clock: Arc<Mutex<SourceClock>>,
    last_token: String,
    /// The last delivered event's token, if it orders (MongoDB `_data`): the duplicate guard.
    last_ordered: Option<ResumeToken>,
    /// The latest time sent (event or progress): no later event may be earlier.
    frontier: ClusterTime,
}

fn to_driver(token: &ResumeToken) -> Result<DriverToken, String> {
    bson::deserialize_from_slice::<DriverToken>(token.document().as_bytes())
        .map_err(|e| format!("resume token {token}: {e}"))
}

fn from_driver(token: &DriverToken) -> Option<ResumeToken> {
    bson::serialize_to_raw_document_buf(token)
        .ok()
        .map(|raw| ResumeToken::from_document(Document::from(raw)))
}

/// Polls `future` once; `None` if it must wait (its waker is registered).
async fn poll_once<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match std::pin::Pin::new(&mut *future).poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

impl<'a> Reader<'a> {
    fn new(options: &'a LiveOptions, clock: Arc<Mutex<SourceClock>>) -> Self {
        Reader {
            options,
            secrets: Secrets::of_uri(&options.uri),
            stream_name: options.describe(),
            position: Position::Original,
            opened_once: false,
            attempt: 0,
            delivered: 0,
            last_event: Instant::now(),
            reassembler: Reassembler::default(),
            clock,
            last_token: "the start".into(),
            last_ordered: None,
            frontier: ClusterTime::MIN,
        }
    }

    async fn run(mut self, out: &mut impl Output) -> Result<(), Stop> {
        let client = self.connect().await?;
        let result = self.follow(&client, out).await;
        client.shutdown().immediate(true).await;
        result
    }

    async fn connect(&self) -> Result<Client, Stop> {
        let bad = |e: DriverError| {
            Stop::Failed(SourceError::BadUri {
                uri: redact_uri(&self.options.uri),
                reason: self.secrets.scrub(&e.to_string()),
            })
        };
        let mut client_options = ClientOptions::parse(&self.options.uri).await.map_err(bad)?;
        client_options
            .app_name
            .get_or_insert_with(|| "changeflow".into());
        Client::with_options(client_options).map_err(bad)
    }

    async fn follow(&mut self, client: &Client, out: &mut impl Output) -> Result<(), Stop> {
        loop {
            if self.options.stopper.is_stopped() {
                return Ok(());
            }
            if !out.is_connected() {
                return Err(Stop::Disconnected);
            }
            let options = self.change_stream_options()?;
            let mut stream = match self.open(client, options).await {
                Ok(stream) => stream,
                Err(e) => {
                    self.failure(Fail::Driver(e)).await?;
                    continue;
                }
            };
            self.opened_once = true;
            if matches!(self.position, Position::Original)
                && let Some(token) = stream.resume_token()
            {
                self.advance_without_event(token);
            }
            self.reassembler.clear();
            match self.drain(&mut stream, out).await {
                Ok(Flow::End) => return Ok(()),
                Ok(Flow::Reopen) => {}
                Err(Fail::Stop(stop)) => return Err(stop),
                Err(fail) => self.failure(fail).await?,
            }
        }
    }

    fn change_stream_options(&self) -> Result<ChangeStreamOptions, Stop> {
        let o = self.options;
        let mut cs = ChangeStreamOptions::default();
        cs.full_document = match (o.full_document, &o.cosmos) {
            (_, Some(_)) | (FullDocument::UpdateLookup, _) => Some(FullDocumentType::UpdateLookup),
            (FullDocument::Default, None) => None,
            (FullDocument::WhenAvailable, None) => Some(FullDocumentType::WhenAvailable),
            (FullDocument::Required, None) => Some(FullDocumentType::Required),
        };
        cs.full_document_before_change = match o.full_document_before_change {
            FullDocumentBeforeChange::Off => None,
            FullDocumentBeforeChange::WhenAvailable => {
                Some(FullDocumentBeforeChangeType::WhenAvailable)
            }
            FullDocumentBeforeChange::Required => Some(FullDocumentBeforeChangeType::Required),
        };
        cs.batch_size = o.batch_size;
        cs.max_await_time = o.max_await_time;
        cs.show_expanded_events = o.show_expanded_events.then_some(true);
        cs.comment = o.comment.clone().map(bson::Bson::String);
        if let Some(collation) = &o.collation {
            let parsed: Collation =
                bson::deserialize_from_document(collation.clone()).map_err(|e| {
                    Stop::Failed(SourceError::BadPipeline {
                        reason: format!("invalid collation {collation}: {e}"),
                    })
                })?;
            cs.collation = Some(parsed);
        }
        let token = |t: &ResumeToken| {
            to_driver(t).map_err(|reason| {
                Stop::Failed(SourceError::InvalidResumeToken {
                    stream: self.stream_name.clone(),
                    token: t.to_string(),
                    message: reason,
                })
            })
        };
        match &self.position {
            Position::After(t) => cs.resume_after = Some(t.clone()),
            Position::StartAfter(t) => cs.start_after = Some(t.clone()),
            Position::Original => match &o.start {
                StartAt::Now => {}
                StartAt::ResumeAfter(t) => cs.resume_after = Some(token(t)?),
                StartAt::StartAfter(t) => cs.start_after = Some(token(t)?),
                StartAt::OperationTime(time) => {
                    cs.start_at_operation_time = Some(bson::Timestamp {
                        time: time.seconds(),
                        increment: time.increment(),
                    })
                }
            },
        }
        Ok(cs)
    }

    async fn open(
        &self,
        client: &Client,
        options: ChangeStreamOptions,
    ) -> Result<ChangeStream<RawDocumentBuf>, DriverError> {
        let pipeline = self.options.effective_pipeline();
        let stream = match &self.options.target {
            WatchTarget::Deployment => {
                client
                    .watch()
                    .pipeline(pipeline)
                    .with_options(options)
                    .await?
            }
            WatchTarget::Database(db) => {
                client
                    .database(db)
                    .watch()
                    .pipeline(pipeline)
                    .with_options(options)
                    .await?
            }
            WatchTarget::Collection { db, coll } => {
                client
                    .database(db)
                    .collection::<bson::Document>(coll)
                    .watch()
                    .pipeline(pipeline)
                    .with_options(options)
                    .await?
            }
        };
        Ok(stream.with_type::<RawDocumentBuf>())
    }

    /// Reads the stream until it ends, needs reopening, or fails.
    async fn drain(
        &mut self,
        stream: &mut ChangeStream<RawDocumentBuf>,
        out: &mut impl Output,
    ) -> Result<Flow, Fail> {
        let mut batch: Vec<(ChangeEvent, ClusterTime)> = Vec::new();
        loop {
            if self.options.stopper.is_stopped() {
                out.events(std::mem::take(&mut batch))?;
                return Ok(Flow::End);
            }
            let next = {
                let mut future = pin!(stream.next_if_any());
                match poll_once(&mut future).await {
                    Some(next) => next,
                    None => {
                        // The driver must go to the server: hand over what we have first.
                        out.events(std::mem::take(&mut batch))?;
                        if !out.is_connected() {
                            return Err(Stop::Disconnected.into());
                        }
                        future.await
                    }
                }
            };
            match next {
                Ok(Some(raw)) => {
                    let Some(whole) = self
                        .reassembler
                        .push(Document::from(raw))
                        .map_err(Fail::Restart)?
                    else {
                        continue;
                    };
                    let event = self.decode(whole)?;
                    let token = event.token();
                    if token.data().is_some() {
                        // A stream reopened from an earlier point (the driver retries a failed
                        // resume `aggregate` from the stream's original start) sends events
                        // again: tokens order like the stream, so drop what was delivered.
                        if self
                            .last_ordered
                            .as_ref()
                            .is_some_and(|last| token <= *last)
                        {
                            continue;
                        }
                        self.last_ordered = Some(token.clone());
                    }
                    let time = event.cluster_time();
                    if time < self.frontier {
                        out.events(std::mem::take(&mut batch))?;
                        return Err(Stop::Failed(SourceError::LiveOutOfOrder {
                            stream: self.stream_name.clone(),
                            token: token.to_string(),
                            time,
                            frontier: self.frontier,
                        })
                        .into());
                    }
                    self.frontier = time;
                    self.attempt = 0;
                    self.last_event = Instant::now();
                    self.delivered += 1;
                    self.last_token = token.to_string();
                    let driver_token = to_driver(&token).map_err(Fail::Restart)?;
                    let invalidate = event.operation() == &OperationType::Invalidate;
                    batch.push((event, time));
                    self.position = if invalidate {
                        Position::StartAfter(driver_token)
                    } else {
                        Position::After(driver_token)
                    };
                    if invalidate {
                        out.events(std::mem::take(&mut batch))?;
                        return Ok(match self.options.on_invalidate {
                            InvalidatePolicy::Stop => Flow::End,
                            InvalidatePolicy::ContinueWithStartAfter => Flow::Reopen,
                        });
                    }
                    if self.options.max_events.is_some_and(|n| self.delivered >= n) {
                        out.events(std::mem::take(&mut batch))?;
                        return Ok(Flow::End);
                    }
                    if batch.len() >= self.options.batch.max(1) {
                        out.events(std::mem::take(&mut batch))?;
                    }
                }
                Ok(None) => {
                    out.events(std::mem::take(&mut batch))?;
                    if !self.reassembler.is_pending()
                        && let Some(driver_token) = stream.resume_token()
                        && let Some(token) = from_driver(&driver_token)
                    {
                        let time = match (token.cluster_time(), &self.options.cosmos) {
                            (Some(time), _) => Some(time),
                            (None, Some(_)) => Some(self.tick()),
                            (None, None) => None,
                        };
                        self.advance_without_event(driver_token);
                        if let Some(time) = time
                            && time > self.frontier
                        {
                            self.frontier = time;
                            out.progress(time, Some(token))?;
                        }
                    }
                    if self
                        .options
                        .idle_timeout
                        .is_some_and(|limit| self.last_event.elapsed() >= limit)
                    {
                        return Ok(Flow::End);
                    }
                    if !stream.is_alive() {
                        // Closed without an invalidate: reopen from the position, with backoff.
                        return Err(Fail::Restart(
                            "the server closed the change stream's cursor".into(),
                        ));
                    }
                }
                Err(e) => {
                    out.events(std::mem::take(&mut batch))?;
                    return Err(Fail::Driver(e));
                }
            }
        }
    }

    /// Moves the position to a post-batch token. Until an event arrives, a stream started (or
    /// continued after an invalidate) with `startAfter` keeps reopening with `startAfter`, as
    /// the driver does: `resumeAfter` cannot follow an invalidate.
    fn advance_without_event(&mut self, token: DriverToken) {
        self.position = match (&self.position, &self.options.start) {
            (Position::StartAfter(_), _) | (Position::Original, StartAt::StartAfter(_)) => {
                Position::StartAfter(token)
            }
            _ => Position::After(token),
        };
    }

    /// The next time of the source's own clock (Cosmos DB events carry none).
    fn tick(&self) -> ClusterTime {
        self.clock
            .lock()
            .map(|mut c| c.tick())
            .unwrap_or_else(|e| e.into_inner().tick())
    }

    fn decode(&mut self, whole: Document) -> Result<ChangeEvent, Fail> {
        let bad = |source| {
            Fail::Stop(Stop::Failed(SourceError::BadLiveEvent {
                stream: self.stream_name.clone(),
                source,
            }))
        };
        match &self.options.cosmos {
            Some(cosmos) => {
                let time = self.tick();
                let bytes = super::cosmos::to_mongodb_event(whole.as_bytes(), time, cosmos)
                    .map_err(|reason| {
                        bad(changeflow_core::Error::Event {
                            at: "Cosmos DB event".into(),
                            reason,
                        })
                    })?;
                ChangeEvent::from_document(Document::from_trusted(bytes)).map_err(bad)
            }
            None => ChangeEvent::from_document(whole).map_err(bad),
        }
    }

    /// Decides what a failure means: sleeps before a restart, or stops.
    async fn failure(&mut self, fail: Fail) -> Result<(), Stop> {
        let (class, code, name, message) = match &fail {
            Fail::Stop(_) => {
                return Err(match fail {
                    Fail::Stop(stop) => stop,
                    _ => Stop::Disconnected,
                });
            }
            Fail::Restart(reason) => (Class::Transient, None, String::new(), reason.clone()),
            Fail::Driver(e) => {
                let (code, name) = match e.kind.as_ref() {
                    ErrorKind::Command(c) => (Some(c.code), c.code_name.clone()),
                    ErrorKind::Authentication { .. } => (Some(18), "AuthenticationFailed".into()),
                    _ => (None, String::new()),
                };
                let network = matches!(
                    e.kind.as_ref(),
                    ErrorKind::Io(_)
                        | ErrorKind::ConnectionPoolCleared { .. }
                        | ErrorKind::ServerSelection { .. }
                );
                let labels: Vec<&str> = e.labels().iter().map(String::as_str).collect();
                // The server's own message for command errors (the driver's text adds the raw
                // reply as hex); the driver's text for everything else.
                let text = match e.kind.as_ref() {
                    ErrorKind::Command(c) => c.message.clone(),
                    _ => e.to_string(),
                };
                (
                    classify(code, &labels, network),
                    code,
                    name,
                    self.secrets.scrub(&text),
                )
            }
        };
        let stream = self.stream_name.clone();
        let from = self.last_token.clone();
        let last = message.clone();
        let definite = match class {
            Class::Transient | Class::Throttled => None,
            Class::HistoryLost => Some(SourceError::HistoryLost {
                stream,
                from,
                message,
            }),
            Class::Fatal => Some(SourceError::ChangeStreamFatal { stream, message }),
            Class::InvalidToken => Some(SourceError::InvalidResumeToken {
                stream,
                token: from,
                message,
            }),
            Class::TooLarge => Some(SourceError::EventTooLarge {
                stream,
                after: from,
                message,
            }),
            Class::UnknownOption => Some(SourceError::UnknownOption { stream, message }),
            Class::Unauthorized => Some(SourceError::Unauthorized {
                stream,
                code: code.unwrap_or(13),
                message,
            }),
            Class::NotReplicaSet => Some(SourceError::NotReplicaSet { stream, message }),
            Class::NamespaceNotFound => Some(SourceError::NamespaceNotFound { stream, message }),
            Class::Other => Some(SourceError::Server {
                stream,
                code: code.unwrap_or(0),
                name,
                message,
            }),
        };
        if let Some(error) = definite {
            return Err(Stop::Failed(error));
        }
        if self.opened_once
            && matches!(self.position, Position::Original)
            && self.options.start == StartAt::Now
        {
            return Err(Stop::Failed(SourceError::NoResumePoint {
                stream: self.stream_name.clone(),
                last,
            }));
        }
        if class == Class::Transient {
            self.attempt += 1;
        }
        if let Some(max) = self.options.backoff.max_attempts
            && self.attempt > max
        {
            return Err(Stop::Failed(SourceError::RetriesExhausted {
                stream: self.stream_name.clone(),
                attempts: self.attempt - 1,
                last,
            }));
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let delay = self.options.backoff.delay(self.attempt.max(1), seed);
        tokio::time::sleep(delay.min(Duration::from_secs(300))).await;
        Ok(())
    }
}

/// Cosmos DB per-partition readers: one stream per token of `GetChangeStreamTokens`, each with
/// its own restart loop, merged into one output.
///
/// ```text
///   GetChangeStreamTokens ─▶ token p ─▶ Reader (task p) ─┐ events (one at a time, timed by
///                                                        ├─▶ the shared clock, so merged order
///                          token q ─▶ Reader (task q) ─┘   is time order) ─▶ output
///   progress: the minimum over partitions of each one's latest time
/// ```
mod partitions {
    use super::*;
    use tokio::sync::mpsc;

    enum Message {
        Events(usize, Vec<(ChangeEvent, ClusterTime)>),
        Progress(usize, ClusterTime),
        Done(Result<(), Stop>),
    }

    struct ChannelOutput {
        partition: usize,
        sender: mpsc::UnboundedSender<Message>,
    }

    impl Output for ChannelOutput {
        fn events(&mut self, batch: Vec<(ChangeEvent, ClusterTime)>) -> Result<(), Disconnected> {
            if batch.is_empty() {
                return Ok(());
            }
            self.sender
                .send(Message::Events(self.partition, batch))
                .map_err(|_| Disconnected)
        }
        fn progress(
            &mut self,
            time: ClusterTime,
            _token: Option<ResumeToken>,
        ) -> Result<(), Disconnected> {
            self.sender
                .send(Message::Progress(self.partition, time))
                .map_err(|_| Disconnected)
        }
        fn is_connected(&self) -> bool {
            !self.sender.is_closed()
        }
    }

    /// The per-partition tokens of a collection (the `GetChangeStreamTokens` custom action).
    async fn tokens(options: &LiveOptions) -> Result<Vec<ResumeToken>, Stop> {
        let stream = options.describe();
        let secrets = Secrets::of_uri(&options.uri);
        let WatchTarget::Collection { db, coll } = &options.target else {
            return Err(Stop::Failed(SourceError::BadPipeline {
                reason: "Cosmos DB per-partition readers need a collection target".into(),
            }));
        };
        let fail = |e: DriverError| {
            Stop::Failed(SourceError::Server {
                stream: stream.clone(),
                code: match e.kind.as_ref() {
                    ErrorKind::Command(c) => c.code,
                    _ => 0,
                },
                name: "GetChangeStreamTokens".into(),
                message: secrets.scrub(&e.to_string()),
            })
        };
        let client_options = ClientOptions::parse(&options.uri).await.map_err(|e| {
            Stop::Failed(SourceError::BadUri {
                uri: redact_uri(&options.uri),
                reason: secrets.scrub(&e.to_string()),
            })
        })?;
        let client = Client::with_options(client_options).map_err(fail)?;
        let reply = client
            .database(db)
            .run_command(bson::doc! { "customAction": "GetChangeStreamTokens", "collection": coll })
            .await
            .map_err(fail);
        client.shutdown().immediate(true).await;
        let reply = reply?;
        let tokens = reply
            .get_array("resumeAfterTokens")
            .map_err(|e| {
                Stop::Failed(SourceError::Server {
                    stream: stream.clone(),
                    code: 0,
                    name: "GetChangeStreamTokens".into(),
                    message: format!("no `resumeAfterTokens` in the reply: {e}"),
                })
            })?
            .iter()
            .filter_map(|t| t.as_document())
            .filter_map(|t| Document::try_from(t).ok())
            .map(ResumeToken::from_document)
            .collect();
        Ok(tokens)
    }

    pub(super) async fn follow(
        out: &mut impl Output,
        options: &LiveOptions,
        clock: Arc<Mutex<SourceClock>>,
    ) -> Result<(), Stop> {
        let tokens = tokens(options).await?;
        let (sender, mut receiver) = mpsc::unbounded_channel();
        for (partition, token) in tokens.iter().enumerate() {
            let mut one = options.clone();
            one.start = StartAt::ResumeAfter(token.clone());
            one.max_events = None;
            one.idle_timeout = None;
            // One event per message: the shared clock's order is the merged order.
            one.batch = 1;
            if let Some(cosmos) = &mut one.cosmos {
                cosmos.per_partition = false;
            }
            let mut output = ChannelOutput {
                partition,
                sender: sender.clone(),
            };
            let clock = Arc::clone(&clock);
            tokio::spawn(async move {
                let result = Reader::new(&one, clock).run(&mut output).await;
                let _ = output.sender.send(Message::Done(result));
            });
        }
        drop(sender);
        let mut latest = vec![None::<ClusterTime>; tokens.len()];
        let mut running = tokens.len();
        let mut sent = ClusterTime::MIN;
        let mut delivered = 0u64;
        let mut last_event = Instant::now();
        while running > 0 {
            if options.stopper.is_stopped()
                || options
                    .idle_timeout
                    .is_some_and(|limit| last_event.elapsed() >= limit)
            {
                options.stopper.stop();
            }
            let message =
                match tokio::time::timeout(Duration::from_millis(50), receiver.recv()).await {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(_) => continue,
                };
            match message {
                Message::Events(partition, batch) => {
                    if options.max_events.is_some_and(|n| delivered >= n) {
                        // The input has ended: what the readers had in flight is not part of it.
                        continue;
                    }
                    if let Some((_, time)) = batch.last() {
                        latest[partition] = Some(*time);
                    }
                    delivered += batch.len() as u64;
                    last_event = Instant::now();
                    out.events(batch)?;
                    if options.max_events.is_some_and(|n| delivered >= n) {
                        options.stopper.stop();
                    }
                }
                Message::Progress(partition, time) => {
                    latest[partition] = Some(time);
                    // The frontier is the minimum over partitions that have reported.
                    if let Some(min) = latest
                        .iter()
                        .copied()
                        .collect::<Option<Vec<_>>>()
                        .and_then(|t| t.into_iter().min())
                        && min > sent
                    {
                        sent = min;
                        // No single token stands for every partition.
                        out.progress(min, None)?;
                    }
                }
                Message::Done(Ok(())) => running -= 1,
                Message::Done(Err(stop)) => {
                    options.stopper.stop();
                    return Err(stop);
                }
            }
        }
        Ok(())
    }
}
