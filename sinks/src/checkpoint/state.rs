//! Persisted document state: a base snapshot plus changelog segments, compacted in the
//! background, so a restart does not need the stream's (bounded) history.
//!
//! ```text
//!   documents ──on_closed_times (worker 0)──▶ [StateStore participant]
//!                                              │ per closed time: append (ns, doc, ±1) to the
//!                                              │ open segment, update the in-memory copy
//!                                              │ at a checkpoint F: close the segment (fsync,
//!                                              │ rename), ack F with the files the state at F
//!                                              ▼ needs: [base, segments after it]
//!                       segments since the base larger than the base? ──▶ background thread:
//!                       write the in-memory copy at F as a new base; the next checkpoint
//!                       names it instead of the older base and segments, which are deleted
//!                       once a manifest no longer needs them
//! ```
//!
//! # On-disk layout (`STATE_DIR/state/`, layout 1)
//!
//! Files are `base-NNNNNN.cfstate` and `seg-NNNNNN.cfstate`, numbered by one sequence in the
//! order they are started. Each is written under `.NAME.tmp`, fsynced and renamed.
//!
//! ```text
//!   header   b"CFSTATE\n" · layout u32 LE (= 1) · kind u8 (0 base, 1 segment) · from u64 LE
//!   records  one BSON document each: {n: "db.coll", d: <the document>, r: <diff, int32>}
//!            (a base has only r = 1; a segment lists each time's retractions before its
//!            insertions)
//!   trailer  b"CFEND\n\0\0" · to u64 LE (the frontier the file is complete up to)
//!            · records u64 LE · FNV-1a 64 of every byte before the trailer, u64 LE
//! ```
//!
//! A file of another layout is refused with an error naming the file and both layouts; a file
//! whose trailer, count or checksum does not match is refused as damaged. Never a guess.
//!
//! # Invariants
//!
//! * The state at a checkpoint `F` is the manifest's files, read in order: the base, then each
//!   segment's changes. It equals the document state at every time before `F`.
//! * Files not named by the restored manifest were written after it and are deleted on restart.
//! * The manifest's files chain: a base (if any) first, then segments, none starting before the
//!   previous one ended; [`load`] refuses a list that does not.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use changeflow_core::raw::{self, DocWriter, kind};
use changeflow_core::{ClusterTime, Document, Namespace};
use changeflow_operators::documents::{DocKey, Documents};
use changeflow_operators::fxhash::FxHashMap;
use changeflow_operators::handle::on_closed_times;

use super::manifest::{ParticipantState, sync_dir};
use super::{Checkpoints, Participant, crash_point};
use crate::SinkError;

/// The state layout this build writes and reads.
pub const LAYOUT: u32 = 1;
const MAGIC: &[u8; 8] = b"CFSTATE\n";
const END: &[u8; 8] = b"CFEND\n\0\0";
const KIND_BASE: u8 = 0;
const KIND_SEGMENT: u8 = 1;
/// The participant's name in the manifest.
pub const PARTICIPANT: &str = "state";

fn error(path: &Path, reason: impl ToString) -> SinkError {
    SinkError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// FNV-1a, 64 bits: a checksum that catches a damaged or truncated file.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
}

/// A state file being written under its temporary name.
struct FileWriter {
    out: BufWriter<File>,
    temporary: PathBuf,
    path: PathBuf,
    hash: Fnv,
    records: u64,
    bytes: u64,
}

impl FileWriter {
    fn create(dir: &Path, name: &str, kind_byte: u8, from: ClusterTime) -> Result<Self, SinkError> {
        let path = dir.join(name);
        let temporary = dir.join(format!(".{name}.tmp"));
        let file = File::create(&temporary).map_err(|e| error(&temporary, e))?;
        let mut w = FileWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            temporary,
            path,
            hash: Fnv::new(),
            records: 0,
            bytes: 0,
        };
        let mut header = Vec::with_capacity(21);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&LAYOUT.to_le_bytes());
        header.push(kind_byte);
        header.extend_from_slice(&from.as_u64().to_le_bytes());
        w.put(&header)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        self.hash.update(bytes);
        self.bytes += bytes.len() as u64;
        self.out
            .write_all(bytes)
            .map_err(|e| error(&self.temporary, e))
    }

    fn record(&mut self, ns: &str, doc: &Document, diff: isize) -> Result<(), SinkError> {
        let mut w = DocWriter::with_capacity(doc.as_bytes().len() + ns.len() + 32);
        w.append_str("n", ns);
        w.append(kind::DOCUMENT, "d", doc.as_bytes());
        w.append(kind::INT32, "r", &(diff as i32).to_le_bytes());
        self.records += 1;
        self.put(&w.finish())
    }

    /// Writes the trailer, fsyncs and renames: the file is complete up to `to`.
    fn finish(mut self, to: ClusterTime, point: &str) -> Result<(PathBuf, u64), SinkError> {
        let mut trailer = Vec::with_capacity(32);
        trailer.extend_from_slice(END);
        trailer.extend_from_slice(&to.as_u64().to_le_bytes());
        trailer.extend_from_slice(&self.records.to_le_bytes());
        trailer.extend_from_slice(&self.hash.0.to_le_bytes());
        self.out
            .write_all(&trailer)
            .and_then(|()| self.out.flush())
            .and_then(|()| self.out.get_ref().sync_all())
            .map_err(|e| error(&self.temporary, e))?;
        crash_point(point);
        std::fs::rename(&self.temporary, &self.path).map_err(|e| error(&self.path, e))?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir).map_err(|e| error(dir, e))?;
        }
        Ok((self.path, self.bytes + trailer.len() as u64))
    }
}

/// One state file read back: its kind, frontiers and records.
#[derive(Debug)]
pub struct StateFile {
    /// Whether it is a base (else a segment).
    pub base: bool,
    /// The frontier it starts from (a base: the frontier it is complete up to).
    pub from: ClusterTime,
    /// The frontier it is complete up to.
    pub to: ClusterTime,
    /// `(namespace, document, diff)` in file order.
    pub records: Vec<(String, Document, isize)>,
}

/// Reads and checks one state file (see the module docs for what is refused).
pub fn read_file(path: &Path) -> Result<StateFile, SinkError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| BufReader::new(f).read_to_end(&mut bytes))
        .map_err(|e| error(path, e))?;
    let damaged = |what: &str| error(path, format!("damaged state file: {what}"));
    if bytes.len() < 21 + 32 || &bytes[..8] != MAGIC {
        return Err(damaged("not a changeflow state file"));
    }
    let layout = u32::from_le_bytes(bytes[8..12].try_into().map_err(|_| damaged("header"))?);
    if layout != LAYOUT {
        return Err(error(
            path,
            format!(
                "state layout {layout} is not the layout this build reads ({LAYOUT}); \
                 refusing to guess what it means"
            ),
        ));
    }
    let base = match bytes[12] {
        KIND_BASE => true,
        KIND_SEGMENT => false,
        _ => return Err(damaged("unknown file kind")),
    };
    let u64_at = |at: usize| -> Result<u64, SinkError> {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| damaged("truncated"))
    };
    let from = ClusterTime::from_u64(u64_at(13)?);
    let trailer = bytes.len() - 32;
    if &bytes[trailer..trailer + 8] != END {
        return Err(damaged("no trailer (truncated?)"));
    }
    let to = ClusterTime::from_u64(u64_at(trailer + 8)?);
    let count = u64_at(trailer + 16)?;
    let checksum = u64_at(trailer + 24)?;
    let mut hash = Fnv::new();
    hash.update(&bytes[..trailer]);
    if hash.0 != checksum {
        return Err(damaged("checksum mismatch"));
    }
    let mut records = Vec::new();
    let mut at = 21;
    while at < trailer {
        let len = bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_le_bytes)
            .and_then(|l| usize::try_from(l).ok())
            .filter(|l| *l >= 5 && at + l <= trailer)
            .ok_or_else(|| damaged("bad record length"))?;
        // The checksum matched, so the record is as written; the walker below is still
        // bounds-checked, so even a forged file cannot make it read out of bounds.
        let record = &bytes[at..at + len];
        let ns = raw::get(record, "n")
            .ok()
            .flatten()
            .and_then(|e| e.as_str())
            .ok_or_else(|| damaged("record without namespace"))?;
        let doc = raw::get(record, "d")
            .ok()
            .flatten()
            .and_then(|e| (e.kind == kind::DOCUMENT).then_some(e.value))
            .ok_or_else(|| damaged("record without document"))?;
        let diff = raw::get(record, "r")
            .ok()
            .flatten()
            .and_then(|e| e.as_i64())
            .ok_or_else(|| damaged("record without diff"))?;
        records.push((
            ns.to_string(),
            Document::from_trusted(doc.to_vec()),
            diff as isize,
        ));
        at += len;
    }
    if records.len() as u64 != count {
        return Err(damaged("record count mismatch"));
    }
    Ok(StateFile {
        base,
        from,
        to,
        records,
    })
}

/// The directory of the persisted state inside a state directory.
pub fn state_dir(checkpoints: &Checkpoints) -> PathBuf {
    checkpoints.dir().join("state")
}

/// A document's key in memory: its namespace and its `_id` (type byte + value).
type Key = (Arc<str>, Vec<u8>);

/// A base being written in the background: its file name and, once done, its size or error.
type Compaction = (String, Arc<Mutex<Option<Result<u64, SinkError>>>>);

/// Key of a document in the in-memory copy.
fn key_of(ns: &str, doc: &Document) -> Option<Key> {
    let id = raw::get(doc.as_bytes(), "_id").ok().flatten()?;
    let mut key = Vec::with_capacity(id.value.len() + 1);
    key.push(id.kind);
    key.extend_from_slice(id.value);
    Some((ns.into(), key))
}

/// The documents of the checkpoint this process restarts from (empty on a first start), as
/// `(namespace, document)`, in no particular order. Also removes the state
/// files the checkpoint does not name (written after it).
pub fn load(checkpoints: &Checkpoints) -> Result<Vec<(Namespace, Document)>, SinkError> {
    let dir = state_dir(checkpoints);
    let named: Vec<String> = checkpoints
        .restored()
        .and_then(|m| m.participants.get(PARTICIPANT))
        .map(|p| p.files.clone())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !named.contains(&name) {
                std::fs::remove_file(entry.path()).map_err(|e| error(&entry.path(), e))?;
            }
        }
    }
    let mut docs: FxHashMap<Key, Document> = FxHashMap::default();
    let mut covered = ClusterTime::MIN;
    for (i, name) in named.iter().enumerate() {
        let file = read_file(&dir.join(name))?;
        // Files chain: a base only first, and no file starts before the previous one ended
        // (a gap is a stretch without changes).
        if (file.base && i > 0) || file.from < covered {
            return Err(error(
                &dir.join(name),
                format!(
                    "state files do not chain: this file starts at {} but the state before it \
                     already covers up to {covered}",
                    file.from
                ),
            ));
        }
        covered = file.to;
        for (ns, doc, diff) in file.records {
            let Some(key) = key_of(&ns, &doc) else {
                return Err(error(&dir.join(name), "a document without _id"));
            };
            if diff > 0 {
                docs.insert(key, doc);
            } else if docs.get(&key) == Some(&doc) {
                docs.remove(&key);
            }
        }
    }
    // In the map's (deterministic) order: the documents go out at one time, so their order
    // changes nothing downstream.
    Ok(docs
        .into_iter()
        .map(|((ns, _), doc)| {
            let (db, coll) = ns.split_once('.').unwrap_or((&ns, ""));
            (Namespace::new(db, Some(coll)), doc)
        })
        .collect())
}

/// How the state store compacts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateOptions {
    /// A new base is written once the segments since the last base are larger than the base
    /// and than this many bytes.
    pub compact_min_bytes: u64,
}

impl Default for StateOptions {
    /// Compaction from 16 MiB of segments.
    fn default() -> Self {
        StateOptions {
            compact_min_bytes: 16 << 20,
        }
    }
}

/// What the state store has written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateStats {
    /// Documents held at the last checkpoint.
    pub documents: u64,
    /// Segments written.
    pub segments: u64,
    /// Bases written (compactions).
    pub bases: u64,
    /// Bytes of the files the last checkpoint needs.
    pub bytes: u64,
}

struct Store {
    participant: Participant,
    dir: PathBuf,
    next: u64,
    /// The files the state at the last checkpoint needs, with their sizes.
    files: Vec<(String, u64)>,
    open: Option<FileWriter>,
    last: ClusterTime,
    docs: FxHashMap<Key, (Arc<str>, Document)>,
    /// A base being written in the background: its name and, when done, its result.
    compaction: Option<Compaction>,
    stats: Arc<Mutex<StateStats>>,
    options: StateOptions,
    failed: bool,
}

impl Store {
    fn fail(&mut self, e: SinkError) {
        if !self.failed {
            self.failed = true;
            self.participant.fail(e);
        }
    }

    fn apply(&mut self, time: ClusterTime, changes: &[((DocKey, Document), isize)]) {
        if self.failed || self.participant.already_committed(time) {
            return;
        }
        for f in self.participant.due(Some(time)) {
            if let Err(e) = self.checkpoint(f) {
                return self.fail(e);
            }
        }
        if self.open.is_none() {
            let name = format!("seg-{:06}.cfstate", self.next);
            match FileWriter::create(&self.dir, &name, KIND_SEGMENT, self.last) {
                Ok(w) => {
                    self.next += 1;
                    self.open = Some(w);
                }
                Err(e) => return self.fail(e),
            }
        }
        for ((key, doc), diff) in changes {
            if let Some(w) = self.open.as_mut()
                && let Err(e) = w.record(key.ns(), doc, *diff)
            {
                return self.fail(e);
            }
            let Some(k) = key_of(key.ns(), doc) else {
                continue;
            };
            if *diff > 0 {
                let ns: Arc<str> = k.0.clone();
                self.docs.insert(k, (ns, doc.clone()));
            } else if self.docs.get(&k).is_some_and(|(_, d)| d == doc) {
                self.docs.remove(&k);
            }
        }
    }

    fn frontier(&mut self, now: Option<ClusterTime>) {
        if self.failed {
            return;
        }
        for f in self.participant.due(now) {
            if let Err(e) = self.checkpoint(f) {
                return self.fail(e);
            }
        }
    }

    /// Closes the open segment at `frontier`, folds in a finished compaction, starts one if
    /// the segments outweigh the base, and acks.
    fn checkpoint(&mut self, frontier: ClusterTime) -> Result<(), SinkError> {
        if let Some(w) = self.open.take() {
            let name = w
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (_, bytes) = w.finish(frontier, "segment-before-rename")?;
            self.files.push((name, bytes));
            if let Ok(mut s) = self.stats.lock() {
                s.segments += 1;
            }
        }
        self.last = frontier;
        // A finished base replaces everything before it.
        let finished = self
            .compaction
            .as_ref()
            .and_then(|(_, slot)| slot.lock().ok().and_then(|mut r| r.take()));
        if let Some(result) = finished
            && let Some((name, _)) = self.compaction.take()
        {
            let bytes = result?;
            // The base holds everything up to the checkpoint it was started at: the files
            // numbered before it are replaced by it; the segments after it stay.
            let number = number_of(&name);
            self.files.retain(|(n, _)| number_of(n) > number);
            self.files.insert(0, (name, bytes));
            if let Ok(mut s) = self.stats.lock() {
                s.bases += 1;
            }
        }
        self.collect_garbage();
        let base_bytes = self
            .files
            .first()
            .filter(|(n, _)| n.starts_with("base-"))
            .map_or(0, |(_, b)| *b);
        let segment_bytes: u64 = self
            .files
            .iter()
            .filter(|(n, _)| n.starts_with("seg-"))
            .map(|(_, b)| b)
            .sum();
        if self.compaction.is_none()
            && segment_bytes > base_bytes.max(self.options.compact_min_bytes)
        {
            self.start_compaction(frontier)?;
        }
        if let Ok(mut s) = self.stats.lock() {
            s.documents = self.docs.len() as u64;
            s.bytes = self.files.iter().map(|(_, b)| b).sum();
        }
        self.participant.ack(
            frontier,
            ParticipantState {
                position: self.next,
                files: self.files.iter().map(|(n, _)| n.clone()).collect(),
            },
        );
        Ok(())
    }

    /// Writes the in-memory state at `frontier` as a new base, on its own thread.
    fn start_compaction(&mut self, frontier: ClusterTime) -> Result<(), SinkError> {
        let name = format!("base-{:06}.cfstate", self.next);
        self.next += 1;
        let mut docs: Vec<(Arc<str>, Document)> = self.docs.values().cloned().collect();
        docs.sort_by(|a, b| a.0.cmp(&b.0));
        let slot = Arc::new(Mutex::new(None));
        let (dir, file, out) = (self.dir.clone(), name.clone(), Arc::clone(&slot));
        std::thread::Builder::new()
            .name("changeflow-state-base".into())
            .spawn(move || {
                let result = (|| {
                    let mut w = FileWriter::create(&dir, &file, KIND_BASE, frontier)?;
                    for (ns, doc) in &docs {
                        w.record(ns, doc, 1)?;
                    }
                    w.finish(frontier, "base-before-rename").map(|(_, b)| b)
                })();
                if let Ok(mut r) = out.lock() {
                    *r = Some(result);
                }
            })
            .map_err(|e| error(&self.dir, e))?;
        self.compaction = Some((name, slot));
        Ok(())
    }

    /// Deletes state files older than the oldest file the last committed manifest needs.
    fn collect_garbage(&mut self) {
        let Some(manifest) = self.participant.checkpoints().last() else {
            return;
        };
        let Some(oldest) = manifest
            .participants
            .get(PARTICIPANT)
            .and_then(|p| p.files.iter().map(|f| number_of(f)).min())
        else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && number_of(&name) < oldest {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// The sequence number in a state file name (`seg-000012.cfstate` → 12).
fn number_of(name: &str) -> u64 {
    name.split(['-', '.'])
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

/// Persists `documents` at every checkpoint of `checkpoints` (call on every worker; worker 0
/// writes). `restored` is what [`load`] returned: the in-memory copy starts from it. Returns the
/// store's counters.
pub fn attach<'scope>(
    documents: Documents<'scope>,
    checkpoints: &Checkpoints,
    restored: &[(Namespace, Document)],
    options: StateOptions,
) -> Result<Arc<Mutex<StateStats>>, SinkError> {
    let stats = Arc::new(Mutex::new(StateStats::default()));
    if documents.scope().index() != 0 {
        on_closed_times(documents, |_, _| {}, |_| {});
        return Ok(stats);
    }
    let participant = checkpoints.participant(PARTICIPANT)?;
    let dir = state_dir(checkpoints);
    std::fs::create_dir_all(&dir).map_err(|e| error(&dir, e))?;
    let (files, next) = match participant.restored() {
        Some(p) => {
            let files = p
                .files
                .iter()
                .map(|f| {
                    let bytes = std::fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0);
                    (f.clone(), bytes)
                })
                .collect();
            (files, p.position)
        }
        None => (Vec::new(), 0),
    };
    let mut docs = FxHashMap::default();
    docs.reserve(restored.len());
    for (ns, doc) in restored {
        let ns = ns.to_string();
        if let Some(k) = key_of(&ns, doc) {
            let name = k.0.clone();
            docs.insert(k, (name, doc.clone()));
        }
    }
    let last = checkpoints
        .restored()
        .map_or(ClusterTime::MIN, |m| m.frontier);
    let store = Arc::new(Mutex::new(Store {
        participant,
        dir,
        next,
        files,
        open: None,
        last,
        docs,
        compaction: None,
        stats: Arc::clone(&stats),
        options,
        failed: false,
    }));
    let store2 = Arc::clone(&store);
    on_closed_times(
        documents,
        move |time, changes| {
            if let Ok(mut s) = store.lock() {
                s.apply(time, changes)
            }
        },
        move |now| {
            if let Ok(mut s) = store2.lock() {
                s.frontier(now)
            }
        },
    );
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: i32, n: i32) -> Document {
        Document::from_bytes(bson::rawdoc! { "_id": id, "n": n }.into_bytes()).unwrap()
    }

    fn written(dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let mut w = FileWriter::create(
            dir,
            "seg-000001.cfstate",
            KIND_SEGMENT,
            ClusterTime::new(1, 0),
        )
        .unwrap();
        w.record("a.b", &doc(1, 1), -1).unwrap();
        w.record("a.b", &doc(1, 2), 1).unwrap();
        w.finish(ClusterTime::new(5, 0), "none").unwrap().0
    }

    #[test]
    fn a_state_file_reads_back_and_damage_or_another_layout_is_refused() {
        let dir = std::env::temp_dir().join(format!("cf-state-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = written(&dir);
        let file = read_file(&path).unwrap();
        assert!(!file.base);
        assert_eq!(
            (file.from, file.to),
            (ClusterTime::new(1, 0), ClusterTime::new(5, 0))
        );
        assert_eq!(
            file.records,
            vec![
                ("a.b".to_string(), doc(1, 1), -1),
                ("a.b".to_string(), doc(1, 2), 1),
            ]
        );
        let good = std::fs::read(&path).unwrap();
        // One flipped byte in a record: the checksum catches it.
        let mut bad = good.clone();
        bad[30] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        assert!(
            read_file(&path)
                .unwrap_err()
                .to_string()
                .contains("damaged")
        );
        // Truncated: no trailer.
        std::fs::write(&path, &good[..good.len() - 10]).unwrap();
        assert!(
            read_file(&path)
                .unwrap_err()
                .to_string()
                .contains("damaged")
        );
        // Another layout: refused by name, not misread.
        let mut other = good.clone();
        other[8..12].copy_from_slice(&2u32.to_le_bytes());
        std::fs::write(&path, &other).unwrap();
        let message = read_file(&path).unwrap_err().to_string();
        assert!(
            message.contains("state layout 2") && message.contains("(1)"),
            "{message}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
