//! What the live source does about each failure: the named policies.
//!
//! | failure | [`Class`] | policy |
//! |---|---|---|
//! | network error, closed socket, pool cleared, server selection timeout | `Transient` | restart from the last token, with backoff |
//! | any error labelled `ResumableChangeStreamError`, `RetryableWriteError` or `NetworkError`; 43 `CursorNotFound`; not-primary / shutdown codes | `Transient` | restart, with backoff |
//! | 16500 (Cosmos DB request rate too large) | `Throttled` | restart, with backoff, attempts not counted |
//! | 286 `ChangeStreamHistoryLost` | `HistoryLost` | fail: [`SourceError::HistoryLost`](crate::SourceError::HistoryLost) |
//! | 280 `ChangeStreamFatalError` | `Fatal` | fail |
//! | 260 `InvalidResumeToken` | `InvalidToken` | fail |
//! | 10334 `BSONObjectTooLarge` | `TooLarge` | fail, naming `$changeStreamSplitLargeEvent` |
//! | 40415 unknown option | `UnknownOption` | fail |
//! | 13 `Unauthorized`, 18 `AuthenticationFailed`, authentication errors | `Unauthorized` | fail |
//! | 40573 (standalone server) | `NotReplicaSet` | fail |
//! | 26 `NamespaceNotFound` | `NamespaceNotFound` | fail |
//! | any other server error | `Other` | fail |
//!
//! No policy restarts a stream "from now": that would skip events silently. A definite failure
//! stops the source with its capability held, so nothing downstream commits a partial time.
//!
//! ```
//! use changeflow_sources::live::policy::{classify, Class};
//! assert_eq!(classify(Some(286), &[], false), Class::HistoryLost);
//! assert_eq!(classify(Some(91), &["ResumableChangeStreamError"], false), Class::Transient);
//! assert_eq!(classify(None, &[], true), Class::Transient);
//! ```

use std::time::Duration;

/// What kind of failure an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Retry from the last token.
    Transient,
    /// Cosmos DB throttling: back off and retry.
    Throttled,
    /// 286: the resume point is gone from the oplog.
    HistoryLost,
    /// 280: the server cannot continue the stream.
    Fatal,
    /// 260: the token is invalid for resuming.
    InvalidToken,
    /// 10334: an event over 16 MB.
    TooLarge,
    /// 40415: an option the server does not know.
    UnknownOption,
    /// 13 / 18: not allowed.
    Unauthorized,
    /// 40573: not a replica set.
    NotReplicaSet,
    /// 26: the namespace does not exist.
    NamespaceNotFound,
    /// Any other server error: definite.
    Other,
}

/// Codes the server uses for transient conditions (not primary, shutting down, interrupted),
/// which older servers send without the `ResumableChangeStreamError` label.
const TRANSIENT_CODES: [i32; 17] = [
    6, 7, 43, 63, 89, 91, 133, 150, 189, 234, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];

/// Classifies an error from its server code, its labels, and whether it is a network error.
pub fn classify(code: Option<i32>, labels: &[&str], network: bool) -> Class {
    match code {
        Some(286) => return Class::HistoryLost,
        Some(280) => return Class::Fatal,
        Some(260) => return Class::InvalidToken,
        Some(10334) => return Class::TooLarge,
        Some(40415) => return Class::UnknownOption,
        Some(13 | 18) => return Class::Unauthorized,
        Some(40573) => return Class::NotReplicaSet,
        Some(26) => return Class::NamespaceNotFound,
        Some(16500) => return Class::Throttled,
        _ => {}
    }
    let labelled = labels.iter().any(|l| {
        matches!(
            *l,
            "ResumableChangeStreamError" | "RetryableWriteError" | "NetworkError"
        )
    });
    if network || labelled || code.is_some_and(|c| TRANSIENT_CODES.contains(&c)) {
        Class::Transient
    } else {
        Class::Other
    }
}

/// Exponential backoff with jitter for the restart loop.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
    /// Give up after this many consecutive failed restarts (`None`: never).
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    /// 100 ms doubling to 30 s, at most 20 consecutive attempts (about 8 minutes).
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            max_attempts: Some(20),
        }
    }
}

impl Backoff {
    /// The delay before restart `attempt` (1-based): `initial · 2^(attempt-1)` capped at `max`,
    /// then scaled by a jitter factor in `[0.5, 1.0)` drawn from `seed`.
    ///
    /// ```
    /// use changeflow_sources::live::policy::Backoff;
    /// use std::time::Duration;
    /// let b = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(1), max_attempts: None };
    /// let d = b.delay(3, 42);
    /// assert!(d >= Duration::from_millis(200) && d < Duration::from_millis(400));
    /// assert!(b.delay(30, 7) < Duration::from_secs(1));
    /// ```
    pub fn delay(&self, attempt: u32, seed: u64) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let base = self.initial.saturating_mul(1 << exp).min(self.max);
        // splitmix64 of the seed → a fraction in [0, 1).
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let fraction = (z >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(0.5 + fraction / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_code_has_its_class() {
        for (code, class) in [
            (286, Class::HistoryLost),
            (280, Class::Fatal),
            (260, Class::InvalidToken),
            (10334, Class::TooLarge),
            (40415, Class::UnknownOption),
            (13, Class::Unauthorized),
            (40573, Class::NotReplicaSet),
            (26, Class::NamespaceNotFound),
            (16500, Class::Throttled),
            (43, Class::Transient),
            (2, Class::Other),
        ] {
            assert_eq!(classify(Some(code), &[], false), class, "{code}");
        }
        // A label makes any code transient, but not the definite ones.
        assert_eq!(
            classify(Some(2), &["ResumableChangeStreamError"], false),
            Class::Transient
        );
        assert_eq!(
            classify(Some(286), &["ResumableChangeStreamError"], false),
            Class::HistoryLost
        );
    }
}
