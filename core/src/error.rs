//! The one error type of changeflow-core.

use crate::extjson::ExtJsonError;
use crate::raw::RawError;

/// Why a change event or document could not be decoded. Each variant names where (`at`): an
/// event's resume token, or what the caller knows (a file and line).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A line of Extended JSON could not be transcoded to BSON.
    #[error("{at}: {source}")]
    ExtendedJson {
        /// Where: a file and line, or "event".
        at: String,
        /// What was wrong with the JSON.
        source: ExtJsonError,
    },
    /// Bytes are not well-formed BSON.
    #[error("{at}: {source}")]
    Bson {
        /// Where: the event's token, a file and offset.
        at: String,
        /// What was wrong with the bytes.
        source: RawError,
    },
    /// A well-formed document is not a valid change event (missing or mistyped field).
    #[error("{at}: {reason}")]
    Event {
        /// The event's token, or a description of the event.
        at: String,
        /// What is missing or wrong.
        reason: String,
    },
}

impl Error {
    /// The same error, located more precisely (e.g. `"orders.jsonl:17"`), keeping the token.
    ///
    /// ```
    /// use changeflow_core::ChangeEvent;
    /// let err = ChangeEvent::from_json(b"{").unwrap_err().located("in.jsonl:3");
    /// assert!(err.to_string().starts_with("in.jsonl:3"));
    /// ```
    pub fn located(self, place: &str) -> Self {
        let prefix = |at: String| {
            if at == "event" {
                place.to_string()
            } else {
                format!("{place} ({at})")
            }
        };
        match self {
            Error::ExtendedJson { at, source } => Error::ExtendedJson {
                at: prefix(at),
                source,
            },
            Error::Bson { at, source } => Error::Bson {
                at: prefix(at),
                source,
            },
            Error::Event { at, reason } => Error::Event {
                at: prefix(at),
                reason,
            },
        }
    }
}
