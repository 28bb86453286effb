//! [`EventReader`]: change events from a file of JSON lines or concatenated BSON documents.
//!
//! The reader knows nothing of timely: it yields decoded [`ChangeEvent`]s with their line (or
//! document) numbers, applies the bad-input policy, and can tail a file that is still growing.
//! The replay source ([`crate::replay`]) drives it.
//!
//! # Bad input
//!
//! * [`BadInputPolicy::Fail`] (the default): the first bad line ends reading with a
//!   [`SourceError`] naming the file and line.
//! * [`BadInputPolicy::DeadLetter`]: each bad line is appended verbatim to the dead-letter file
//!   (for BSON input, the bad document's bytes) and counted; reading goes on. A BSON file whose
//!   length prefixes are broken cannot be resynchronised and still fails.
//!
//! Nothing is skipped silently: every line is either an event or a dead letter.
//!
//! # Following a growing file
//!
//! With `follow`, reaching the end of the file is not the end of the input: a line without its
//! final newline is left for later (it may be half-written), and [`EventReader::next_event`]
//! returns [`Read::Idle`] until more bytes arrive.
//!
//! ```
//! use changeflow_sources::reader::{EventReader, ReaderOptions, Read};
//! let path = std::env::temp_dir().join(format!("cf-reader-doc-{}.jsonl", std::process::id()));
//! std::fs::write(&path, concat!(
//!     r#"{"_id": {"_data": "82000000010000000104"}, "operationType": "drop", "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "ns": {"db": "a", "coll": "b"}}"#, "\n")).unwrap();
//! let mut reader = EventReader::open(ReaderOptions::new(&path)).unwrap();
//! let Read::Event { line, event } = reader.next_event().unwrap() else { panic!() };
//! assert_eq!((line, event.operation().as_str()), (1, "drop"));
//! assert!(matches!(reader.next_event().unwrap(), Read::End));
//! # std::fs::remove_file(&path).ok();
//! ```

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read as _, Write};
use std::path::{Path, PathBuf};

use changeflow_core::{ChangeEvent, Document, extjson};

use crate::SourceError;

/// The encoding of an input file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Decide from the file name: `.bson` is BSON, anything else JSON lines.
    #[default]
    Auto,
    /// One MongoDB Extended JSON (relaxed or canonical) change event per line.
    JsonLines,
    /// Concatenated BSON change-event documents.
    Bson,
}

/// What to do with a line that is not a valid change event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BadInputPolicy {
    /// Stop with an error naming the file and line.
    #[default]
    Fail,
    /// Append the bad line verbatim to this file, count it, and carry on.
    DeadLetter(PathBuf),
}

/// How to open an input file.
#[derive(Clone, Debug)]
pub struct ReaderOptions {
    /// The file to read.
    pub path: PathBuf,
    /// Its encoding.
    pub format: Format,
    /// Keep reading as the file grows instead of ending at its current end.
    pub follow: bool,
    /// What to do with bad lines.
    pub bad_input: BadInputPolicy,
}

impl ReaderOptions {
    /// Options for reading `path` once, format from its name, failing on bad input.
    pub fn new(path: impl AsRef<Path>) -> Self {
        ReaderOptions {
            path: path.as_ref().to_path_buf(),
            format: Format::Auto,
            follow: false,
            bad_input: BadInputPolicy::Fail,
        }
    }
}

/// One step of reading.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // events are moved, not boxed: one allocation less per event
pub enum Read {
    /// The next event and its 1-based line (document) number.
    Event {
        /// Line number in a JSON-lines file, document number in a BSON file.
        line: u64,
        /// The decoded event.
        event: ChangeEvent,
    },
    /// A bad line went to the dead-letter file; reading continues.
    DeadLettered {
        /// Its line number.
        line: u64,
    },
    /// Following: no complete line is available yet.
    Idle,
    /// The end of the input.
    End,
}

/// Reads change events from one file (see the module docs).
pub struct EventReader {
    options: ReaderOptions,
    format: Format,
    input: BufReader<File>,
    line: u64,
    offset: u64,
    pending: Vec<u8>,
    scratch: Vec<u8>,
    bson: Vec<u8>,
    dead_letters: Option<BufWriter<File>>,
    dead_lettered: u64,
}

impl EventReader {
    /// Opens the input (and the dead-letter file, for appending, if the policy names one).
    pub fn open(options: ReaderOptions) -> Result<Self, SourceError> {
        let io = |source| SourceError::Io {
            path: options.path.clone(),
            source,
        };
        let input = BufReader::with_capacity(1 << 20, File::open(&options.path).map_err(io)?);
        let format = match options.format {
            Format::Auto
                if options
                    .path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("bson")) =>
            {
                Format::Bson
            }
            Format::Auto => Format::JsonLines,
            f => f,
        };
        let dead_letters = match &options.bad_input {
            BadInputPolicy::Fail => None,
            BadInputPolicy::DeadLetter(path) => Some(BufWriter::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| SourceError::DeadLetter {
                        path: path.clone(),
                        source,
                    })?,
            )),
        };
        Ok(EventReader {
            options,
            format,
            input,
            line: 0,
            offset: 0,
            pending: Vec::new(),
            scratch: Vec::new(),
            bson: Vec::new(),
            dead_letters,
            dead_lettered: 0,
        })
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.options.path
    }

    /// How many bad lines went to the dead-letter file.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered
    }

    /// Reads the next event (or dead letter, idle or end marker).
    pub fn next_event(&mut self) -> Result<Read, SourceError> {
        loop {
            let step = match self.format {
                Format::Bson => self.next_bson()?,
                _ => self.next_json()?,
            };
            match step {
                Step::Record(bytes_in_scratch, decoded) => {
                    self.line += 1;
                    match decoded {
                        Ok(event) => {
                            return Ok(Read::Event {
                                line: self.line,
                                event,
                            });
                        }
                        Err(source) => {
                            let error = SourceError::BadEvent {
                                path: self.options.path.clone(),
                                line: self.line,
                                source,
                            };
                            return self.dead_letter(bytes_in_scratch, error);
                        }
                    }
                }
                Step::Blank => {
                    self.line += 1;
                    continue;
                }
                Step::Idle => return Ok(Read::Idle),
                Step::End => {
                    self.flush_dead_letters()?;
                    return Ok(Read::End);
                }
            }
        }
    }

    fn dead_letter(&mut self, is_json: bool, error: SourceError) -> Result<Read, SourceError> {
        let Some(out) = self.dead_letters.as_mut() else {
            return Err(error);
        };
        let path = match &self.options.bad_input {
            BadInputPolicy::DeadLetter(path) => path.clone(),
            BadInputPolicy::Fail => return Err(error),
        };
        let record = &self.scratch;
        let written = if is_json {
            out.write_all(record.strip_suffix(b"\n").unwrap_or(record))
                .and_then(|_| out.write_all(b"\n"))
        } else {
            out.write_all(record)
        };
        written.map_err(|source| SourceError::DeadLetter { path, source })?;
        self.dead_lettered += 1;
        Ok(Read::DeadLettered { line: self.line })
    }

    fn flush_dead_letters(&mut self) -> Result<(), SourceError> {
        if let (Some(out), BadInputPolicy::DeadLetter(path)) =
            (self.dead_letters.as_mut(), &self.options.bad_input)
        {
            out.flush().map_err(|source| SourceError::DeadLetter {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn io(&self, source: std::io::Error) -> SourceError {
        SourceError::Io {
            path: self.options.path.clone(),
            source,
        }
    }

    fn next_json(&mut self) -> Result<Step, SourceError> {
        let read = self
            .input
            .read_until(b'\n', &mut self.pending)
            .map_err(|e| self.io(e))?;
        let complete = self.pending.last() == Some(&b'\n');
        if read == 0 || !complete {
            if self.options.follow {
                // A partial line stays pending until its newline arrives.
                self.flush_dead_letters()?;
                return Ok(Step::Idle);
            }
            if self.pending.is_empty() {
                return Ok(Step::End);
            }
        }
        std::mem::swap(&mut self.scratch, &mut self.pending);
        self.pending.clear();
        self.offset += self.scratch.len() as u64;
        let text = trim_ascii(&self.scratch);
        if text.is_empty() {
            return Ok(Step::Blank);
        }
        self.bson.clear();
        let decoded = match extjson::transcode(text, &mut self.bson) {
            Ok(()) => ChangeEvent::from_document(Document::from_trusted(self.bson.as_slice())),
            Err(source) => Err(changeflow_core::Error::ExtendedJson {
                at: "event".into(),
                source,
            }),
        };
        Ok(Step::Record(true, decoded))
    }

    fn next_bson(&mut self) -> Result<Step, SourceError> {
        // Wait for a whole document: its length prefix, then its bytes.
        let need = |pending: &Vec<u8>| -> Option<usize> {
            (pending.len() >= 4).then(|| {
                i32::from_le_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize
            })
        };
        loop {
            let want = match need(&self.pending) {
                None => 4,
                Some(len) if !(5..=48 * 1024 * 1024).contains(&len) => {
                    return Err(SourceError::BsonFraming {
                        path: self.options.path.clone(),
                        line: self.line + 1,
                        offset: self.offset,
                        reason: format!("length prefix {} is not a BSON document size", len as i32),
                    });
                }
                Some(len) => len,
            };
            if self.pending.len() >= want && want > 4 {
                break;
            }
            let missing = want - self.pending.len();
            let got = (&mut self.input)
                .take(missing as u64)
                .read_to_end(&mut self.pending)
                .map_err(|e| self.io(e))?;
            if got == 0 {
                if self.options.follow {
                    return Ok(Step::Idle);
                }
                if self.pending.is_empty() {
                    return Ok(Step::End);
                }
                return Err(SourceError::BsonFraming {
                    path: self.options.path.clone(),
                    line: self.line + 1,
                    offset: self.offset,
                    reason: format!(
                        "file ends inside a document ({} of {want} bytes)",
                        self.pending.len()
                    ),
                });
            }
        }
        std::mem::swap(&mut self.scratch, &mut self.pending);
        self.pending.clear();
        self.offset += self.scratch.len() as u64;
        Ok(Step::Record(
            false,
            ChangeEvent::from_bson(self.scratch.clone()),
        ))
    }
}

#[allow(clippy::large_enum_variant)]
enum Step {
    /// A record (JSON line if `true`, else BSON document) is in `scratch`, with its decoding.
    Record(bool, Result<ChangeEvent, changeflow_core::Error>),
    Blank,
    Idle,
    End,
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}
