//! Exactly-once checkpoints: output committed up to a frontier, together with the source's
//! resume token for that frontier and the document state at it.
//!
//! ```text
//!   timer (every interval) ──request_checkpoint──▶ source (feed)
//!                                                   │ the next time its frontier moves to F, it
//!                                                   │ records the candidate (F, token K) BEFORE
//!                                                   ▼ emitting anything at or after F
//!   sink A ── before writing a time t ≥ F: close the open file at F (fsync, rename) ── ack(F) ─┐
//!   sink B ── the same ─────────────────────────────────────────────────────────────── ack(F) ─┤
//!   state  ── close the changelog segment at F (fsync, rename) ─────────────────────── ack(F) ─┤
//!                                                                                              ▼
//!                                     all acked: manifest.json (F, K, every participant's position)
//!                                     written to a temporary, fsynced, renamed: F is a checkpoint
//! ```
//!
//! # Invariants
//!
//! * A participant sees every candidate `F ≤ t` before it handles a time `t`: the source records
//!   the candidate before it emits anything at or after `F`. So every participant closes its
//!   output at exactly `F` (an aligned checkpoint, without marker records in the data).
//! * The manifest is written only after every participant made its output before `F` durable.
//!   A participant that cannot (disk full, permission denied) fails the pipeline with a typed
//!   error, and the manifest never records a frontier whose output is not written.
//! * On restart ([`Checkpoints::open`] on the same directory): the source resumes after the
//!   manifest's token and drops what it releases before `F`
//!   ([`Checkpoints::resume_point`]); each file sink removes its temporaries and the files it
//!   wrote after `F` ([`Participant::restored`], `BatchWriter::recover`) and drops every time
//!   before `F`; the document state is loaded from the persisted state at `F` ([`state`]).
//!   So output at a time is committed exactly once, across any number of crashes.
//! * One process at a time owns a state directory (an OS lock on `STATE_DIR/LOCK`).
//!
//! # Fault injection
//!
//! `CHANGEFLOW_CRASH_AT=<point>[,<point>…]` with `CHANGEFLOW_CRASH_ODDS=<n>` makes the process
//! abort (no destructors, like `kill -9`) at a named point with probability 1/n each time it is
//! passed: `file-before-rename`, `manifest-before-rename`, `manifest-renamed`,
//! `segment-before-rename`, `base-before-rename`. The crash trials use them to hit the narrow
//! windows a random kill rarely hits.

pub mod manifest;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use changeflow_core::{ClusterTime, ResumeToken};
use changeflow_sources::SourceStatus;

use crate::SinkError;
pub use manifest::{Manifest, ParticipantState};

/// What a pipeline's checkpoints have done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Checkpoints committed by this process.
    pub committed: u64,
    /// The frontier of the last committed checkpoint (this process's or the restored one).
    pub frontier: Option<ClusterTime>,
    /// How long the last checkpoint took, from the source's candidate to the manifest.
    pub last_duration: Duration,
}

struct Coordinator {
    participants: BTreeSet<String>,
    sealed: bool,
    /// Acks per candidate frontier.
    acks: BTreeMap<ClusterTime, BTreeMap<String, ParticipantState>>,
    /// When each pending candidate was first acked (for the duration figure).
    started: BTreeMap<ClusterTime, Instant>,
    last: Option<Manifest>,
    error: Option<SinkError>,
    stats: CheckpointStats,
}

struct Inner {
    dir: PathBuf,
    interval: Duration,
    source: Arc<SourceStatus>,
    restored: Option<Manifest>,
    coordinator: Mutex<Coordinator>,
    stop: AtomicBool,
    _lock: File,
}

/// The checkpoints of one pipeline, in one state directory. Cloned into every participant.
///
/// ```
/// use std::time::Duration;
/// use changeflow_sinks::checkpoint::Checkpoints;
/// use changeflow_sources::SourceStatus;
/// let dir = std::env::temp_dir().join(format!("cf-ckpt-doc-{}", std::process::id()));
/// let checkpoints = Checkpoints::open(&dir, Duration::from_secs(1), SourceStatus::new())?;
/// assert_eq!(checkpoints.resume_point(), None, "a first start");
/// // A second process cannot own the same directory.
/// assert!(Checkpoints::open(&dir, Duration::from_secs(1), SourceStatus::new()).is_err());
/// # drop(checkpoints); std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), changeflow_sinks::SinkError>(())
/// ```
#[derive(Clone)]
pub struct Checkpoints {
    inner: Arc<Inner>,
}

impl Checkpoints {
    /// Opens (creating it if needed) the state directory `dir`, takes its lock and reads the
    /// last manifest, if any. `interval` is how often a checkpoint is asked of `source`.
    pub fn open(
        dir: &Path,
        interval: Duration,
        source: Arc<SourceStatus>,
    ) -> Result<Checkpoints, SinkError> {
        let error = |reason: String| SinkError::Checkpoint {
            path: dir.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| error(e.to_string()))?;
        let lock_path = dir.join("LOCK");
        let lock = File::create(&lock_path).map_err(|e| error(e.to_string()))?;
        lock.try_lock().map_err(|e| {
            error(format!(
                "the state directory is in use by another process ({e})"
            ))
        })?;
        let restored = Manifest::read(dir)?;
        let _ = std::fs::remove_file(dir.join(format!(".{}.tmp", manifest::FILE_NAME)));
        let stats = CheckpointStats {
            frontier: restored.as_ref().map(|m| m.frontier),
            ..CheckpointStats::default()
        };
        Ok(Checkpoints {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                interval,
                source,
                restored: restored.clone(),
                coordinator: Mutex::new(Coordinator {
                    participants: BTreeSet::new(),
                    sealed: false,
                    acks: BTreeMap::new(),
                    started: BTreeMap::new(),
                    last: restored,
                    error: None,
                    stats,
                }),
                stop: AtomicBool::new(false),
                _lock: lock,
            }),
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Where the source must restart: the restored checkpoint's frontier and token (`None` on
    /// a first start). Give it to the source (e.g. `LiveOptions::resume_from_checkpoint`).
    pub fn resume_point(&self) -> Option<(ClusterTime, Option<ResumeToken>)> {
        self.inner
            .restored
            .as_ref()
            .map(|m| (m.frontier, m.token.clone()))
    }

    /// The checkpoint this process restarted from, if any.
    pub fn restored(&self) -> Option<&Manifest> {
        self.inner.restored.as_ref()
    }

    /// Registers a participant named `name` (unique per pipeline). Every participant must be
    /// registered before [`Checkpoints::seal`].
    pub fn participant(&self, name: &str) -> Result<Participant, SinkError> {
        let mut c = self.lock();
        if c.sealed || !c.participants.insert(name.to_string()) {
            return Err(SinkError::Checkpoint {
                path: self.inner.dir.clone(),
                reason: format!(
                    "participant `{name}` registered twice or after the checkpoints started"
                ),
            });
        }
        let restored = self
            .inner
            .restored
            .as_ref()
            .map(|m| (m.frontier, m.participants.get(name).cloned()));
        Ok(Participant {
            checkpoints: self.clone(),
            name: name.to_string(),
            handled: restored.as_ref().map(|(f, _)| *f),
            resume: restored.as_ref().map(|(f, _)| *f),
            restored: restored.and_then(|(_, p)| p),
        })
    }

    /// All participants are registered: checkpoints start, one asked every interval (never
    /// while one is still in flight).
    pub fn seal(&self) {
        {
            let mut c = self.lock();
            if c.sealed {
                return;
            }
            c.sealed = true;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let interval = self.inner.interval;
        let spawned = std::thread::Builder::new()
            .name("changeflow-checkpoints".into())
            .spawn(move || {
                // Polls often, asks once `interval` has passed since the last request and no
                // candidate is in flight: checkpoints come every interval plus their own
                // latency, not every two intervals.
                let poll = interval.min(std::time::Duration::from_millis(20));
                let mut asked = Instant::now();
                loop {
                    std::thread::sleep(poll);
                    let Some(inner) = weak.upgrade() else { return };
                    if inner.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if asked.elapsed() < interval {
                        continue;
                    }
                    let last = inner
                        .coordinator
                        .lock()
                        .ok()
                        .and_then(|c| c.last.as_ref().map(|m| m.frontier));
                    if inner.source.checkpoint_candidates(last).is_empty() {
                        inner.source.request_checkpoint();
                        asked = Instant::now();
                    }
                }
            });
        if let Err(e) = spawned {
            self.fail(SinkError::Checkpoint {
                path: self.inner.dir.clone(),
                reason: format!("cannot start the checkpoint timer: {e}"),
            });
        }
    }

    /// Stops asking for checkpoints (a final one may still complete).
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
    }

    /// What the checkpoints have done.
    pub fn stats(&self) -> CheckpointStats {
        self.lock().stats
    }

    /// The last committed manifest (this process's or the restored one).
    pub fn last(&self) -> Option<Manifest> {
        self.lock().last.clone()
    }

    /// Whether a participant or the manifest failed (the pipeline must stop).
    pub fn failed(&self) -> bool {
        self.lock().error.is_some()
    }

    /// The first error of any participant or of the manifest (taken).
    pub fn result(&self) -> Result<(), SinkError> {
        match self.lock().error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Coordinator> {
        self.inner
            .coordinator
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn fail(&self, error: SinkError) {
        let mut c = self.lock();
        if c.error.is_none() {
            c.error = Some(error);
        }
    }

    /// Records `name`'s ack of the candidate at `frontier`; the last ack writes the manifest.
    fn ack(&self, name: &str, frontier: ClusterTime, state: ParticipantState) {
        let mut c = self.lock();
        if c.error.is_some() {
            return;
        }
        c.started.entry(frontier).or_insert_with(Instant::now);
        let acks = c.acks.entry(frontier).or_default();
        acks.insert(name.to_string(), state);
        if acks.len() < c.participants.len() {
            return;
        }
        let Some(acks) = c.acks.remove(&frontier) else {
            return;
        };
        let token = self
            .inner
            .source
            .checkpoint_candidates(None)
            .into_iter()
            .find(|(t, _)| *t == frontier)
            .map(|(_, token)| token);
        let Some(token) = token else {
            c.error = Some(SinkError::Checkpoint {
                path: self.inner.dir.clone(),
                reason: format!("no source position recorded for frontier {frontier}"),
            });
            return;
        };
        let mut manifest = Manifest::new(
            c.last.as_ref().map_or(1, |m| m.checkpoint + 1),
            frontier,
            token,
        );
        manifest.participants = acks;
        if let Err(e) = manifest.write(&self.inner.dir) {
            c.error = Some(e);
            return;
        }
        self.inner.source.forget_candidates_through(frontier);
        let started = c.started.remove(&frontier);
        c.started.retain(|t, _| *t > frontier);
        c.acks.retain(|t, _| *t > frontier);
        c.stats.committed += 1;
        c.stats.frontier = Some(frontier);
        c.stats.last_duration = started.map(|s| s.elapsed()).unwrap_or_default();
        c.last = Some(manifest);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One participant of the checkpoints: a sink or the state store, on the worker that writes.
pub struct Participant {
    checkpoints: Checkpoints,
    name: String,
    /// The last candidate handled (or the restored frontier).
    handled: Option<ClusterTime>,
    /// Times before this were committed before the restart: drop them.
    resume: Option<ClusterTime>,
    restored: Option<ParticipantState>,
}

impl Participant {
    /// The participant's name in the manifest.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What this participant recorded in the checkpoint it restarts from.
    pub fn restored(&self) -> Option<&ParticipantState> {
        self.restored.as_ref()
    }

    /// Whether changes at `time` were committed before the restart (and must be dropped).
    pub fn already_committed(&self, time: ClusterTime) -> bool {
        self.resume.is_some_and(|f| time < f)
    }

    /// The checkpoint candidates to close at before handling `time` (`Some(t)`: the candidates
    /// `F ≤ t`), or once the frontier is `frontier` (`None`: the input ended, every
    /// candidate), oldest first. Each is returned once.
    pub fn due(&mut self, upto: Option<ClusterTime>) -> Vec<ClusterTime> {
        let due: Vec<ClusterTime> = self
            .checkpoints
            .inner
            .source
            .checkpoint_candidates(self.handled)
            .into_iter()
            .map(|(t, _)| t)
            .filter(|t| upto.is_none_or(|u| *t <= u))
            .collect();
        if let Some(last) = due.last() {
            self.handled = Some(*last);
        }
        due
    }

    /// This participant's output before `frontier` is durable; `state` is its position.
    pub fn ack(&self, frontier: ClusterTime, state: ParticipantState) {
        self.checkpoints.ack(&self.name, frontier, state);
    }

    /// This participant cannot commit: the pipeline stops, and no later checkpoint is recorded.
    pub fn fail(&self, error: SinkError) {
        self.checkpoints.fail(error);
    }

    /// The checkpoints this participant belongs to.
    pub fn checkpoints(&self) -> &Checkpoints {
        &self.checkpoints
    }
}

static CRASH_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Aborts the process at the named point when fault injection asks for it (see the module
/// docs). Costs one environment lookup per call when off; called only at file boundaries.
pub fn crash_point(point: &str) {
    let Ok(points) = std::env::var("CHANGEFLOW_CRASH_AT") else {
        return;
    };
    if !points.split(',').any(|p| p.trim() == point) {
        return;
    }
    let odds: u64 = std::env::var("CHANGEFLOW_CRASH_ODDS")
        .ok()
        .and_then(|o| o.parse().ok())
        .unwrap_or(1)
        .max(1);
    let n = CRASH_COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed = std::process::id() as u64 ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    if (seed ^ nanos.wrapping_mul(0xBF58_476D_1CE4_E5B9)).is_multiple_of(odds) {
        eprintln!("changeflow: injected crash at {point}");
        std::process::abort();
    }
}
