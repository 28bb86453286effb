//! Rolling files shared by the file writers: numbering, temporary names, renaming, series.
//!
//! Files are `DIR/STEM-NNNNNN.EXT`, numbered from 0 in the order they complete; each is written
//! as `DIR/.STEM-NNNNNN.EXT.tmp-PID` and renamed when closed. See [`crate::writer`] for when a
//! file closes and what its metadata says.
//!
//! # Checkpoints
//!
//! [`Rolling::checkpoint`] closes the open file at the checkpoint's frontier and returns the
//! next file number, which the checkpoint records. [`Rolling::recover`] (a restart) deletes
//! every temporary of this stem and every file numbered at or after the recorded number:
//! they were written after the checkpoint, and the restarted pipeline writes them again.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use changeflow_core::ClusterTime;

use crate::SinkError;
use crate::writer::{RollPolicy, file_metadata};

/// One file format: how to open, append to and close a file.
pub(crate) trait FileFormat {
    /// The state of an open file.
    type Open;
    /// The file name extension.
    fn extension(&self) -> &'static str;
    /// Starts a file with `schema`.
    fn open(&self, file: File, schema: &SchemaRef) -> Result<Self::Open, String>;
    /// Appends a batch.
    fn write(&self, open: &mut Self::Open, batch: &RecordBatch) -> Result<(), String>;
    /// Bytes written or buffered so far.
    fn bytes(&self, open: &Self::Open) -> u64;
    /// Finishes the file with `metadata` and returns it (for fsync).
    fn close(&self, open: Self::Open, metadata: Vec<(String, String)>) -> Result<File, String>;
}

struct OpenFile<O> {
    inner: O,
    temporary: PathBuf,
    path: PathBuf,
    rows: u64,
    opened: Instant,
}

/// A rolling writer of one format.
pub(crate) struct Rolling<F: FileFormat> {
    format: F,
    dir: PathBuf,
    stem: String,
    policy: RollPolicy,
    open: Option<OpenFile<F::Open>>,
    schema: Option<SchemaRef>,
    series: u64,
    next: u64,
    committed: ClusterTime,
    files: Vec<PathBuf>,
    /// The final file (input ended) has been written.
    finished: bool,
}

impl<F: FileFormat> Rolling<F> {
    pub fn new(format: F, dir: &Path, stem: &str, policy: RollPolicy) -> Self {
        Rolling {
            format,
            dir: dir.to_path_buf(),
            stem: stem.to_string(),
            policy,
            open: None,
            schema: None,
            series: 0,
            next: 0,
            committed: ClusterTime::MIN,
            files: Vec::new(),
            finished: false,
        }
    }

    fn error(path: &Path, reason: impl ToString) -> SinkError {
        SinkError::Write {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let schema = batch.schema();
        if let Some(current) = &self.schema
            && current.fields() != schema.fields()
        {
            self.close(Some(self.committed))?;
            self.series += 1;
        }
        self.schema = Some(schema.clone());
        if self.open.is_none() {
            self.open_file(&schema)?;
        }
        if let Some(open) = self.open.as_mut() {
            self.format
                .write(&mut open.inner, batch)
                .map_err(|e| Self::error(&open.path, e))?;
            open.rows += batch.num_rows() as u64;
        }
        Ok(())
    }

    /// Opens the next file (under its temporary name) for batches of `schema`.
    fn open_file(&mut self, schema: &SchemaRef) -> Result<(), SinkError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Self::error(&self.dir, e))?;
        let name = format!("{}-{:06}.{}", self.stem, self.next, self.format.extension());
        let path = self.dir.join(&name);
        let temporary = self.dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let file = File::create(&temporary).map_err(|e| Self::error(&temporary, e))?;
        let inner = match self.format.open(file, schema) {
            Ok(inner) => inner,
            Err(e) => {
                let _ = std::fs::remove_file(&temporary);
                return Err(Self::error(&path, e));
            }
        };
        self.next += 1;
        self.open = Some(OpenFile {
            inner,
            temporary,
            path,
            rows: 0,
            opened: Instant::now(),
        });
        Ok(())
    }

    pub fn commit(&mut self, frontier: Option<ClusterTime>) -> Result<(), SinkError> {
        if let Some(t) = frontier {
            self.committed = t;
        }
        // The input ended just after a roll: the last file says "complete up to F", not "final".
        // An empty final file (same schema) tells readers the stream ended.
        if frontier.is_none()
            && self.open.is_none()
            && !self.finished
            && !self.files.is_empty()
            && let Some(schema) = self.schema.clone()
        {
            self.open_file(&schema)?;
        }
        let due = self.open.as_ref().is_some_and(|open| {
            frontier.is_none()
                || self.policy.due(
                    open.rows,
                    self.format.bytes(&open.inner),
                    open.opened.elapsed(),
                )
        });
        if due {
            self.close(frontier)?;
        }
        Ok(())
    }

    fn close(&mut self, frontier: Option<ClusterTime>) -> Result<(), SinkError> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let metadata = file_metadata(frontier, self.series);
        let result = self
            .format
            .close(open.inner, metadata)
            .and_then(|file| file.sync_all().map_err(|e| e.to_string()))
            .map(|()| crate::checkpoint::crash_point("file-before-rename"))
            .and_then(|()| std::fs::rename(&open.temporary, &open.path).map_err(|e| e.to_string()));
        match result {
            Ok(()) => {
                self.files.push(open.path);
                self.finished |= frontier.is_none();
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&open.temporary);
                Err(Self::error(&open.path, e))
            }
        }
    }

    pub fn files(&self) -> Vec<PathBuf> {
        self.files.clone()
    }

    /// Closes the open file, complete up to `frontier`; returns the next file's number.
    pub fn checkpoint(&mut self, frontier: ClusterTime) -> Result<u64, SinkError> {
        self.committed = frontier;
        self.close(Some(frontier))?;
        Ok(self.next)
    }

    /// Removes what was written after a checkpoint whose next file number was `next`, and
    /// continues numbering from there.
    pub fn recover(&mut self, next: u64) -> Result<(), SinkError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.next = next;
                return Ok(());
            }
            Err(e) => return Err(Self::error(&self.dir, e)),
        };
        let extension = format!(".{}", self.format.extension());
        let prefix = format!("{}-", self.stem);
        for entry in entries {
            let entry = entry.map_err(|e| Self::error(&self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let temporary = name.starts_with(&format!(".{prefix}"))
                && name.contains(&format!("{extension}.tmp-"));
            let number = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(&extension))
                .and_then(|n| n.parse::<u64>().ok());
            if temporary || number.is_some_and(|n| n >= next) {
                std::fs::remove_file(entry.path()).map_err(|e| Self::error(&entry.path(), e))?;
            }
        }
        self.next = next;
        Ok(())
    }
}

impl<F: FileFormat> Drop for Rolling<F> {
    /// A file still open was never committed as complete: its temporary is removed, never
    /// renamed, so no partial file is left under a final name (or at all).
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            let _ = std::fs::remove_file(&open.temporary);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::{IpcFormat, IpcWriter};
    use crate::writer::BatchWriter;
    use arrow_array::{Int64Array, RecordBatch};
    use std::sync::Arc;

    fn batch(rows: i64) -> RecordBatch {
        let values: Int64Array = (0..rows).collect();
        RecordBatch::try_from_iter([("n", Arc::new(values) as _)]).unwrap()
    }

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cf-rolling-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn files_roll_by_bytes_only_at_commits() {
        let dir = dir("bytes");
        let mut writer = IpcWriter::new(
            &dir,
            "b",
            IpcFormat::File,
            RollPolicy::never().with_bytes(4000),
        );
        for t in 1..=6 {
            writer.write(&batch(100)).unwrap(); // 800 bytes of values each
            assert!(
                writer.files().len() <= (t as usize * 800) / 4000,
                "no roll between commits"
            );
            writer.commit(Some(ClusterTime::new(t, 0))).unwrap();
        }
        writer.commit(None).unwrap();
        let files = writer.files();
        assert_eq!(files.len(), 2, "{files:?}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The input ends right after a roll: an empty final file still says the stream ended.
    #[test]
    fn an_input_ending_just_after_a_roll_gets_an_empty_final_file() {
        let dir = dir("final");
        let mut writer = IpcWriter::new(&dir, "f", IpcFormat::File, RollPolicy::rows(10));
        writer.write(&batch(10)).unwrap();
        writer.commit(Some(ClusterTime::new(1, 0))).unwrap();
        assert_eq!(writer.files().len(), 1, "rolled at 10 rows");
        writer.commit(None).unwrap();
        writer.commit(None).unwrap();
        let files = writer.files();
        assert_eq!(files.len(), 2, "one empty final file, once: {files:?}");
        let reader =
            arrow_ipc::reader::FileReader::try_new(std::fs::File::open(&files[1]).unwrap(), None)
                .unwrap();
        assert_eq!(reader.schema().metadata()["changeflow.complete"], "true");
        assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 0);
        let first =
            arrow_ipc::reader::FileReader::try_new(std::fs::File::open(&files[0]).unwrap(), None)
                .unwrap();
        assert_eq!(first.schema().metadata()["changeflow.complete"], "false");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn files_roll_by_age() {
        let dir = dir("age");
        let mut writer = IpcWriter::new(
            &dir,
            "a",
            IpcFormat::Stream,
            RollPolicy::never().with_age(std::time::Duration::ZERO),
        );
        writer.write(&batch(3)).unwrap();
        writer.commit(Some(ClusterTime::new(1, 0))).unwrap();
        assert_eq!(
            writer.files().len(),
            1,
            "an age of zero rolls at every commit"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_writer_dropped_mid_file_leaves_nothing() {
        let dir = dir("drop");
        let mut writer = IpcWriter::new(&dir, "d", IpcFormat::File, RollPolicy::never());
        writer.write(&batch(3)).unwrap();
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "the temporary exists"
        );
        drop(writer);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).ok();
    }
}
