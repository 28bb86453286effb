//! Recording a live change stream to a file the replay source reads back identically.
//!
//! ```text
//!   change stream ──(the live reader: restarts, reassembly)──▶ canonical Extended JSON lines
//!                                                               (one event a line, flushed per batch)
//! ```
//!
//! Lines are *canonical* Extended JSON, which keeps every BSON type (int32 vs int64, doubles,
//! dates), so [`crate::replay`] decodes each line to the very bytes the server sent. The
//! recording ends when the live options say so (`max_events`, `idle_timeout`, the
//! [`Stopper`](super::Stopper), an `invalidate` with the Stop policy); a failure keeps what was
//! written, which ends with the last whole event.

use std::path::Path;
use std::time::Duration;
#[cfg(feature = "live")]
use std::{
    fs::File,
    io::{BufWriter, Write},
    path::PathBuf,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use changeflow_core::ClusterTime;
#[cfg(feature = "live")]
use changeflow_core::{ChangeEvent, ResumeToken};

use super::LiveOptions;
#[cfg(feature = "live")]
use super::driver::{Output, Stop, follow};
use crate::SourceError;
#[cfg(feature = "live")]
use crate::feed::Disconnected;

/// Where a recording is, reported after every batch and at the end.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordProgress {
    /// Events written.
    pub events: u64,
    /// Time since the recording started.
    pub elapsed: Duration,
    /// Wall clock minus the last event's cluster time (how far behind the stream the recording
    /// is), if known.
    pub lag: Option<Duration>,
    /// The frontier: the last event's time or post-batch token's time.
    pub frontier: Option<ClusterTime>,
}

impl RecordProgress {
    /// Events per second so far.
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[cfg(feature = "live")]
struct Recorder<'a, F: FnMut(&RecordProgress)> {
    path: PathBuf,
    out: BufWriter<File>,
    line: String,
    started: Instant,
    progress: RecordProgress,
    report: &'a mut F,
    error: Option<std::io::Error>,
}

#[cfg(feature = "live")]
fn lag_of(time: ClusterTime) -> Option<Duration> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    now.checked_sub(Duration::from_secs(u64::from(time.seconds())))
}

#[cfg(feature = "live")]
impl<F: FnMut(&RecordProgress)> Output for Recorder<'_, F> {
    fn events(&mut self, batch: Vec<(ChangeEvent, ClusterTime)>) -> Result<(), Disconnected> {
        if batch.is_empty() {
            return Ok(());
        }
        for (event, time) in &batch {
            self.line.clear();
            let written = event
                .raw()
                .as_raw()
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|raw| {
                    changeflow_core::extjson::write_document(raw, true, &mut self.line)
                        .map_err(|e| std::io::Error::other(e.to_string()))
                })
                .and_then(|_| {
                    self.line.push('\n');
                    self.out.write_all(self.line.as_bytes())
                });
            if let Err(e) = written {
                self.error = Some(e);
                return Err(Disconnected);
            }
            self.progress.events += 1;
            self.progress.frontier = Some(*time);
        }
        if let Err(e) = self.out.flush() {
            self.error = Some(e);
            return Err(Disconnected);
        }
        self.progress.elapsed = self.started.elapsed();
        self.progress.lag = self.progress.frontier.and_then(lag_of);
        (self.report)(&self.progress);
        Ok(())
    }

    fn progress(
        &mut self,
        time: ClusterTime,
        _token: Option<ResumeToken>,
    ) -> Result<(), Disconnected> {
        self.progress.frontier = Some(time);
        self.progress.elapsed = self.started.elapsed();
        self.progress.lag = lag_of(time);
        (self.report)(&self.progress);
        Ok(())
    }

    fn is_connected(&self) -> bool {
        self.error.is_none()
    }
}

/// Records the stream in `options` to `path` (created or truncated), calling `report` with the
/// progress after each batch. Returns the final progress.
///
/// Without the `live` feature this fails with [`SourceError::LiveNotBuilt`].
#[cfg(not(feature = "live"))]
pub fn record(
    _options: &LiveOptions,
    _path: &Path,
    _report: impl FnMut(&RecordProgress),
) -> Result<RecordProgress, SourceError> {
    Err(SourceError::LiveNotBuilt)
}

/// Records the stream in `options` to `path` (created or truncated), calling `report` with the
/// progress after each batch. Returns the final progress.
#[cfg(feature = "live")]
pub fn record(
    options: &LiveOptions,
    path: &Path,
    mut report: impl FnMut(&RecordProgress),
) -> Result<RecordProgress, SourceError> {
    let io = |source| SourceError::Record {
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(io)?;
    let mut recorder = Recorder {
        path: path.to_path_buf(),
        out: BufWriter::new(file),
        line: String::new(),
        started: Instant::now(),
        progress: RecordProgress::default(),
        report: &mut report,
        error: None,
    };
    let result = follow(&mut recorder, options);
    recorder.progress.elapsed = recorder.started.elapsed();
    if let Some(source) = recorder.error.take() {
        return Err(SourceError::Record {
            path: recorder.path.clone(),
            source,
        });
    }
    recorder.out.flush().map_err(io)?;
    match result {
        Ok(()) | Err(Stop::Disconnected) => Ok(recorder.progress.clone()),
        Err(Stop::Failed(e)) => Err(e),
    }
}
