//! The checkpoint manifest: the one file that says what is committed.
//!
//! `STATE_DIR/manifest.json` is written as `STATE_DIR/.manifest.json.tmp`, fsynced, renamed into
//! place, and the directory fsynced: a reader sees the old manifest or the new one, never half
//! of one. Everything a checkpoint covers (sink files, state segments) is durable before the
//! manifest that names it is written.
//!
//! ```text
//! {
//!   "layout": 1,                          the manifest format; other values are refused
//!   "checkpoint": 42,                     sequence number, from 1
//!   "frontier": {"t": 1700000000, "i": 3},  F: everything before F is committed
//!   "token": {"_data": "82..."},          resume after this (null: where the source first began)
//!   "participants": {                     each sink's and the state store's position at F
//!     "orders": {"position": 17, "files": []},
//!     "state": {"position": 9, "files": ["base-000004.cfstate", "seg-000005.cfstate", ...]}
//!   }
//! }
//! ```
//!
//! ```
//! use changeflow_core::{ClusterTime, ResumeToken};
//! use changeflow_sinks::checkpoint::manifest::{Manifest, ParticipantState};
//! let dir = std::env::temp_dir().join(format!("cf-manifest-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let mut m = Manifest::new(1, ClusterTime::new(7, 2), Some(ResumeToken::from_data("82000000070000000104")));
//! m.participants.insert("out".into(), ParticipantState { position: 3, files: vec![] });
//! m.write(&dir)?;
//! assert_eq!(Manifest::read(&dir)?, Some(m));
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use changeflow_core::{ClusterTime, Document, ResumeToken};
use serde_json::{Value, json};

use crate::SinkError;

/// The manifest format this build writes and reads.
pub const LAYOUT: u64 = 1;

/// The manifest's file name in the state directory.
pub const FILE_NAME: &str = "manifest.json";

/// One committed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Sequence number (1 for the first checkpoint).
    pub checkpoint: u64,
    /// Everything at times before this frontier is committed, nothing after it.
    pub frontier: ClusterTime,
    /// The source's checkpoint token for `frontier` (`None`: resume where it first began).
    pub token: Option<ResumeToken>,
    /// Each participant's position at `frontier`.
    pub participants: BTreeMap<String, ParticipantState>,
}

/// What one participant (a sink, the state store) recorded at a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParticipantState {
    /// The participant's own position (a file writer: the number its next file gets).
    pub position: u64,
    /// Files the checkpoint depends on (the state store's base and segments).
    pub files: Vec<String>,
}

fn invalid(path: &Path, reason: impl ToString) -> SinkError {
    SinkError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl Manifest {
    /// A manifest with no participants yet.
    pub fn new(checkpoint: u64, frontier: ClusterTime, token: Option<ResumeToken>) -> Manifest {
        Manifest {
            checkpoint,
            frontier,
            token,
            participants: BTreeMap::new(),
        }
    }

    fn to_json(&self) -> Value {
        let token = self.token.as_ref().map(|t| {
            serde_json::from_str::<Value>(&t.document().to_relaxed_json()).unwrap_or(Value::Null)
        });
        let participants: serde_json::Map<String, Value> = self
            .participants
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    json!({"position": p.position, "files": p.files}),
                )
            })
            .collect();
        json!({
            "layout": LAYOUT,
            "checkpoint": self.checkpoint,
            "frontier": {"t": self.frontier.seconds(), "i": self.frontier.increment()},
            "token": token,
            "participants": participants,
        })
    }

    fn from_json(path: &Path, value: &Value) -> Result<Manifest, SinkError> {
        let layout = value.get("layout").and_then(Value::as_u64);
        if layout != Some(LAYOUT) {
            return Err(invalid(
                path,
                format!(
                    "manifest layout {} is not the layout this build reads ({LAYOUT}); \
                     refusing to guess what it means",
                    layout.map_or("(missing)".to_string(), |l| l.to_string())
                ),
            ));
        }
        let number = |v: Option<&Value>, what: &str| {
            v.and_then(Value::as_u64)
                .ok_or_else(|| invalid(path, format!("`{what}` is missing or not a number")))
        };
        let checkpoint = number(value.get("checkpoint"), "checkpoint")?;
        let frontier = value.get("frontier");
        let t = number(frontier.and_then(|f| f.get("t")), "frontier.t")?;
        let i = number(frontier.and_then(|f| f.get("i")), "frontier.i")?;
        let (Ok(t), Ok(i)) = (u32::try_from(t), u32::try_from(i)) else {
            return Err(invalid(path, "`frontier` is out of range"));
        };
        let token = match value.get("token") {
            None | Some(Value::Null) => None,
            Some(token) => {
                let mut bytes = Vec::new();
                changeflow_core::extjson::transcode(token.to_string().as_bytes(), &mut bytes)
                    .map_err(|e| invalid(path, format!("`token`: {e}")))?;
                let doc = Document::from_bytes(bytes)
                    .map_err(|e| invalid(path, format!("`token`: {e}")))?;
                Some(ResumeToken::from_document(doc))
            }
        };
        let mut participants = BTreeMap::new();
        if let Some(map) = value.get("participants").and_then(Value::as_object) {
            for (name, p) in map {
                let position = number(p.get("position"), &format!("{name}.position"))?;
                let files = p
                    .get("files")
                    .and_then(Value::as_array)
                    .map(|files| {
                        files
                            .iter()
                            .filter_map(|f| f.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                participants.insert(name.clone(), ParticipantState { position, files });
            }
        }
        Ok(Manifest {
            checkpoint,
            frontier: ClusterTime::new(t, i),
            token,
            participants,
        })
    }

    /// Reads `dir/manifest.json` (`None` if there is none: a first start). A manifest of
    /// another layout, or one that does not parse, is an error: never a guess.
    pub fn read(dir: &Path) -> Result<Option<Manifest>, SinkError> {
        let path = dir.join(FILE_NAME);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(invalid(&path, e)),
        };
        let value: Value = serde_json::from_str(&text).map_err(|e| invalid(&path, e))?;
        Manifest::from_json(&path, &value).map(Some)
    }

    /// Writes `dir/manifest.json` atomically and durably (see the module docs).
    pub fn write(&self, dir: &Path) -> Result<(), SinkError> {
        let path = dir.join(FILE_NAME);
        let temporary = dir.join(format!(".{FILE_NAME}.tmp"));
        let text = serde_json::to_string_pretty(&self.to_json()).map_err(|e| invalid(&path, e))?;
        write_durably(&temporary, &path, text.as_bytes()).map_err(|e| invalid(&path, e))?;
        crate::checkpoint::crash_point("manifest-renamed");
        Ok(())
    }
}

/// Writes `bytes` to `temporary`, fsyncs it, renames it to `path` and fsyncs the directory.
pub(crate) fn write_durably(temporary: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = File::create(temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    crate::checkpoint::crash_point("manifest-before-rename");
    std::fs::rename(temporary, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Fsyncs a directory, so a rename in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
