//! [`ClusterTime`]: the dataflow time of changeflow.
//!
//! MongoDB stamps every oplog entry, and so every change event, with a BSON `Timestamp`
//! `(t, i)`: `t` seconds since the epoch and `i` an increment within that second. changeflow uses
//! that stamp as the timely / differential time, packed into one `u64` as `(t << 32) | i`.
//!
//! # Invariants
//!
//! * The packed order is exactly MongoDB's order of timestamps: lexicographic on `(t, i)`.
//! * The order is total, so `ClusterTime` is a [`TotalOrder`] and its lattice `join` / `meet` are
//!   `max` / `min`.
//! * Path summaries are plain `u64` increments (used only by timely's internals; changeflow's
//!   dataflows have no loops over `ClusterTime`).
//!
//! ```
//! use changeflow_core::ClusterTime;
//! let a = ClusterTime::new(1_700_000_000, 1);
//! let b = ClusterTime::new(1_700_000_000, 2);
//! let c = ClusterTime::new(1_700_000_001, 0);
//! assert!(a < b && b < c);
//! assert_eq!(c.seconds(), 1_700_000_001);
//! assert_eq!(ClusterTime::from_u64(a.as_u64()), a);
//! ```

use std::fmt;

use differential_dataflow::lattice::Lattice;
use serde::{Deserialize, Serialize};
use timely::order::{PartialOrder, TotalOrder};
use timely::progress::timestamp::{PathSummary, Refines, Timestamp};

/// A MongoDB cluster time `(t, i)` packed as `(t << 32) | i`; the dataflow time.
///
/// ```
/// use changeflow_core::ClusterTime;
/// let t = ClusterTime::new(5, 7);
/// assert_eq!((t.seconds(), t.increment()), (5, 7));
/// assert_eq!(t.to_string(), "Timestamp(5, 7)");
/// ```
#[derive(Copy, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterTime(u64);

impl ClusterTime {
    /// The least time, `Timestamp(0, 0)`.
    pub const MIN: ClusterTime = ClusterTime(0);
    /// The greatest time, `Timestamp(u32::MAX, u32::MAX)`.
    pub const MAX: ClusterTime = ClusterTime(u64::MAX);

    /// The time `Timestamp(t, i)`.
    pub const fn new(t: u32, i: u32) -> Self {
        ClusterTime(((t as u64) << 32) | i as u64)
    }
    /// The time whose packed form is `packed`.
    pub const fn from_u64(packed: u64) -> Self {
        ClusterTime(packed)
    }
    /// The packed form `(t << 32) | i`.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
    /// Seconds since the Unix epoch (`t`).
    pub const fn seconds(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// The increment within the second (`i`).
    pub const fn increment(self) -> u32 {
        self.0 as u32
    }
    /// The next time after this one, if any (`(t, i + 1)`, carrying into `t`).
    ///
    /// ```
    /// use changeflow_core::ClusterTime;
    /// assert_eq!(ClusterTime::new(1, 1).successor(), Some(ClusterTime::new(1, 2)));
    /// assert_eq!(ClusterTime::MAX.successor(), None);
    /// ```
    pub fn successor(self) -> Option<Self> {
        self.0.checked_add(1).map(ClusterTime)
    }
}

impl fmt::Debug for ClusterTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({}, {})", self.seconds(), self.increment())
    }
}

impl fmt::Display for ClusterTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl From<bson::Timestamp> for ClusterTime {
    fn from(ts: bson::Timestamp) -> Self {
        ClusterTime::new(ts.time, ts.increment)
    }
}

impl From<ClusterTime> for bson::Timestamp {
    fn from(t: ClusterTime) -> Self {
        bson::Timestamp {
            time: t.seconds(),
            increment: t.increment(),
        }
    }
}

impl PartialOrder for ClusterTime {
    #[inline]
    fn less_equal(&self, other: &Self) -> bool {
        self.0 <= other.0
    }
}

impl TotalOrder for ClusterTime {}

impl Timestamp for ClusterTime {
    type Summary = ClusterTimeSummary;
    fn minimum() -> Self {
        ClusterTime::MIN
    }
}

impl Refines<()> for ClusterTime {
    fn to_inner(_: ()) -> Self {
        ClusterTime::MIN
    }
    fn to_outer(self) {}
    fn summarize(_: ClusterTimeSummary) {}
}

impl Lattice for ClusterTime {
    #[inline]
    fn join(&self, other: &Self) -> Self {
        ClusterTime(self.0.max(other.0))
    }
    #[inline]
    fn meet(&self, other: &Self) -> Self {
        ClusterTime(self.0.min(other.0))
    }
}

/// How far a path through the dataflow advances a [`ClusterTime`]: an increment of the packed
/// `u64`. Timely requires one; changeflow's dataflows only use the zero summary.
///
/// ```
/// use changeflow_core::{ClusterTime, ClusterTimeSummary};
/// use timely::progress::timestamp::PathSummary;
/// let one = ClusterTimeSummary(1);
/// assert_eq!(one.results_in(&ClusterTime::new(1, 1)), Some(ClusterTime::new(1, 2)));
/// ```
#[derive(
    Copy, Clone, Default, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct ClusterTimeSummary(pub u64);

impl PartialOrder for ClusterTimeSummary {
    fn less_equal(&self, other: &Self) -> bool {
        self.0 <= other.0
    }
}

impl PathSummary<ClusterTime> for ClusterTimeSummary {
    fn results_in(&self, src: &ClusterTime) -> Option<ClusterTime> {
        src.0.checked_add(self.0).map(ClusterTime)
    }
    fn followed_by(&self, other: &Self) -> Option<Self> {
        self.0.checked_add(other.0).map(ClusterTimeSummary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_order_is_lexicographic_on_t_then_i() {
        let samples = [
            (0, 0),
            (0, 1),
            (0, u32::MAX),
            (1, 0),
            (7, 3),
            (u32::MAX, 0),
            (u32::MAX, u32::MAX),
        ];
        for &(t1, i1) in &samples {
            for &(t2, i2) in &samples {
                let (a, b) = (ClusterTime::new(t1, i1), ClusterTime::new(t2, i2));
                assert_eq!(a.cmp(&b), (t1, i1).cmp(&(t2, i2)));
                assert_eq!(a.less_equal(&b), (t1, i1) <= (t2, i2));
                assert_eq!(a.join(&b), a.max(b));
                assert_eq!(a.meet(&b), a.min(b));
            }
        }
    }

    #[test]
    fn bson_timestamp_round_trip() {
        let ts = bson::Timestamp {
            time: 1_666_193_824,
            increment: 9,
        };
        let t = ClusterTime::from(ts);
        assert_eq!(bson::Timestamp::from(t), ts);
        assert_eq!(t.seconds(), 1_666_193_824);
    }

    #[test]
    fn summary_overflow_is_none() {
        assert_eq!(ClusterTimeSummary(2).results_in(&ClusterTime::MAX), None);
        assert_eq!(
            ClusterTimeSummary(u64::MAX).followed_by(&ClusterTimeSummary(1)),
            None
        );
    }
}
