//! Reading a view from outside the dataflow, and receiving its changes per closed time.
//!
//! ```text
//!   View ──exchange to worker 0──▶ [ClosedTimes] stash by time ──▶ at each closed time t:
//!                                                                 callback(t, changes of t)
//!                                                                   ├─▶ ViewHandle (snapshot)
//!                                                                   └─▶ sinks (changelogs)
//! ```
//!
//! [`on_closed_times`] calls back once per closed time with that time's consolidated changes,
//! retractions first, sorted by row. [`ViewHandle`] uses it to keep the view's contents in a
//! shared map that any thread can read: every read sees the view exactly as of a closed time,
//! never half of one.
//!
//! # Progress tracking
//!
//! The operator stashes by time (one capability at the least stashed time) and runs the
//! callback when the input frontier passes a time; it emits nothing downstream.

use std::any::Any;
use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::sync::{Arc, Condvar, Mutex};

use changeflow_core::ClusterTime;
use differential_dataflow::VecCollection;
use differential_dataflow::consolidation::consolidate;
use serde::{Serialize, de::DeserializeOwned};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use crate::fxhash::FxHashMap;
use crate::stash::TimeStash;

/// The (empty) output of a consumer of closed times ([`on_closed_times`], [`ViewHandle::attach`]).
/// Its frontier passes a time once the consumer has taken that time's changes, so probing it
/// tells when the view has been read up to a time. Prefer it to probing the view itself: a
/// second consumer of the view would copy every change for the probe.
pub type Done<'scope> = timely::dataflow::Stream<'scope, ClusterTime, Vec<()>>;

/// Calls `callback(time, changes)` for every closed time with changes, in time order, on worker
/// 0; `changes` are consolidated, retractions before insertions, each group sorted by row.
/// `on_frontier(frontier)` is told, on worker 0, each time the closed frontier moves (`None`:
/// complete), after the changes of every time before it were given to `callback`.
pub fn on_closed_times<'scope, D, F, G>(
    view: VecCollection<'scope, ClusterTime, D, isize>,
    mut callback: F,
    on_frontier: G,
) -> Done<'scope>
where
    D: Ord + Clone + Serialize + DeserializeOwned + Send + 'static,
    F: FnMut(ClusterTime, &[(D, isize)]) + 'static,
    G: FnMut(Option<ClusterTime>) + 'static,
{
    on_closed(view, true, move |t, c| callback(t, c), on_frontier)
}

/// Like [`on_closed_times`], but each call covers every time closed since the last call: the
/// changes of all of them, with the last of those times, neither consolidated nor sorted (the
/// consumer accumulates them, as a view handle's map does). For consumers that need the view
/// *at* closed times but not each time's own changes.
pub fn on_closed_batches<'scope, D, F, G>(
    view: VecCollection<'scope, ClusterTime, D, isize>,
    mut callback: F,
    on_frontier: G,
) -> Done<'scope>
where
    D: Ord + Clone + Serialize + DeserializeOwned + Send + 'static,
    F: FnMut(ClusterTime, &[(D, isize)]) + 'static,
    G: FnMut(Option<ClusterTime>) + 'static,
{
    on_closed(view, false, move |t, c| callback(t, c), on_frontier)
}

/// The operator behind [`on_closed_times`] and [`on_closed_batches`]; `callback` may take the
/// changes out of the vector (a view handle moves rows into its map instead of cloning them).
fn on_closed<'scope, D, F, G>(
    view: VecCollection<'scope, ClusterTime, D, isize>,
    per_time: bool,
    mut callback: F,
    mut on_frontier: G,
) -> Done<'scope>
where
    D: Ord + Clone + Serialize + DeserializeOwned + Send + 'static,
    F: FnMut(ClusterTime, &mut Vec<(D, isize)>) + 'static,
    G: FnMut(Option<ClusterTime>) + 'static,
{
    // Only worker 0 receives the changes, so only it may report the frontier: another worker's
    // frontier can pass a time whose changes are still on their way to worker 0.
    let leader = view.scope().index() == 0;
    view.inner
        .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Exchange::new(|_: &(D, ClusterTime, isize)| 0),
            "ClosedTimes",
            move |_, _| {
                let mut stash: TimeStash<(D, isize)> = TimeStash::new();
                let mut reported: Option<Option<ClusterTime>> = None;
                move |(input, frontier), _output| {
                    input.for_each(|cap, data| {
                        stash.stash(&cap, 0, data.drain(..).map(|(d, t, r)| (t, (d, r))))
                    });
                    if let Some(closed) = stash.take_closed(frontier) {
                        let mut changes = Vec::new();
                        let mut buffer = closed.records;
                        let mut records = buffer.drain(..).peekable();
                        while let Some((time, change)) = records.next() {
                            changes.clear();
                            changes.push(change);
                            let mut last = time;
                            while let Some((t, next)) =
                                records.next_if(|(t, _)| !per_time || *t == time)
                            {
                                last = t;
                                changes.push(next);
                            }
                            if per_time {
                                consolidate(&mut changes);
                                changes.sort_by(|a, b| {
                                    (a.1 > 0).cmp(&(b.1 > 0)).then_with(|| a.0.cmp(&b.0))
                                });
                            }
                            if !changes.is_empty() {
                                callback(last, &mut changes);
                            }
                        }
                        drop(records);
                        stash.recycle(buffer);
                    }
                    let now = frontier.frontier().iter().next().copied();
                    if leader && reported != Some(now) {
                        reported = Some(now);
                        on_frontier(now);
                    }
                }
            },
        )
}

/// Calls `callback(time, records)` on worker 0 for every closed time of a timed stream (records
/// that carry their own times, like an `EventStream` or the transaction metadata stream), in
/// time order, with that time's records in arrival order. For sinks of streams that are not
/// collections, e.g. a transaction log that must be written in commit order.
///
/// ```
/// use changeflow_core::ClusterTime;
/// use changeflow_operators::handle::on_closed_records;
/// use timely::dataflow::operators::vec::ToStream;
/// let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
/// let sink = seen.clone();
/// timely::execute_directly(move |worker| {
///     worker.dataflow::<ClusterTime, _, _>(|scope| {
///         let records = vec![("b".to_string(), ClusterTime::new(2, 0)), ("a".to_string(), ClusterTime::new(1, 0))];
///         on_closed_records(records.to_stream(scope), move |time, batch: &[String]| {
///             sink.lock().unwrap().push((time.seconds(), batch.to_vec()))
///         });
///     });
/// });
/// assert_eq!(*seen.lock().unwrap(), vec![(1, vec!["a".to_string()]), (2, vec!["b".to_string()])]);
/// ```
pub fn on_closed_records<'scope, D, F>(
    stream: timely::dataflow::Stream<'scope, ClusterTime, Vec<(D, ClusterTime)>>,
    mut callback: F,
) where
    D: timely::ExchangeData,
    F: FnMut(ClusterTime, &[D]) + 'static,
{
    stream.unary_frontier::<timely::container::CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Exchange::new(|_: &(D, ClusterTime)| 0),
        "ClosedRecords",
        move |_, _| {
            let mut stash: TimeStash<D> = TimeStash::new();
            let mut batch = Vec::new();
            move |(input, frontier), _output| {
                input.for_each(|cap, data| {
                    stash.stash(&cap, 0, data.drain(..).map(|(d, t)| (t, d)))
                });
                if let Some(closed) = stash.take_closed(frontier) {
                    let mut buffer = closed.records;
                    let mut records = buffer.drain(..).peekable();
                    while let Some(&(time, _)) = records.peek() {
                        batch.clear();
                        while let Some((_, record)) = records.next_if(|(t, _)| *t == time) {
                            batch.push(record);
                        }
                        callback(time, &batch);
                    }
                    drop(records);
                    stash.recycle(buffer);
                }
            }
        },
    );
}

/// The contents of a view as of a closed time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot<D> {
    /// The last closed time with changes applied (`None` before any).
    pub time: Option<ClusterTime>,
    /// Whether the view is final (its input ended).
    pub complete: bool,
    /// The rows, sorted, with their multiplicities.
    pub rows: Vec<(D, isize)>,
}

struct Shared<D> {
    /// Rows with non-zero multiplicity (hashed: views churn a row out and its successor in at
    /// every change; snapshots sort).
    rows: FxHashMap<D, isize>,
    /// Contents kept in place by the operator that computes them (see [`InPlace`]); a snapshot
    /// adds their rows to `rows`.
    in_place: Option<Box<dyn InPlace<D>>>,
    /// Whether a view is attached ([`ViewHandle::attach`]): contents cannot then be kept in
    /// place as well.
    attached: bool,
    time: Option<ClusterTime>,
    frontier: Option<ClusterTime>,
    complete: bool,
}

/// A view's contents kept by the operator that computes them, which a handle reads in place
/// instead of replaying the view's changes into its own map (see
/// [`crate::views::materialize`]). The operator changes them only under the handle's lock, a
/// closed batch of times at once, so a snapshot still sees them as of a closed time.
pub(crate) trait InPlace<D>: Any + Send {
    /// The current rows, with their multiplicities.
    fn rows(&self) -> Vec<(D, isize)>;
}

/// A view's contents, readable from any thread at closed times.
///
/// ```
/// use changeflow_core::ClusterTime;
/// use changeflow_operators::handle::ViewHandle;
/// use differential_dataflow::input::Input;
/// let handle: ViewHandle<String> = ViewHandle::new();
/// let reader = handle.clone();
/// timely::execute_directly(move |worker| {
///     let mut input = worker.dataflow::<ClusterTime, _, _>(|scope| {
///         let (input, words) = scope.new_collection::<String, isize>();
///         handle.attach(words);
///         input
///     });
///     input.advance_to(ClusterTime::new(1, 0));
///     input.insert("hello".to_string());
///     input.advance_to(ClusterTime::new(2, 0));
/// });
/// let snapshot = reader.snapshot();
/// assert!(snapshot.complete);
/// assert_eq!(snapshot.rows, vec![("hello".to_string(), 1)]);
/// assert_eq!(snapshot.time, Some(ClusterTime::new(1, 0)));
/// ```
pub struct ViewHandle<D> {
    shared: Arc<(Mutex<Shared<D>>, Condvar)>,
}

impl<D> Clone for ViewHandle<D> {
    fn clone(&self) -> Self {
        ViewHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<D: Ord + Hash + Clone + Serialize + DeserializeOwned + Send + 'static> Default
    for ViewHandle<D>
{
    fn default() -> Self {
        Self::new()
    }
}

impl<D: Ord + Hash + Clone + Serialize + DeserializeOwned + Send + 'static> ViewHandle<D> {
    /// An empty handle; [`ViewHandle::attach`] it to a view (on every worker).
    pub fn new() -> Self {
        ViewHandle {
            shared: Arc::new((
                Mutex::new(Shared {
                    rows: FxHashMap::default(),
                    in_place: None,
                    attached: false,
                    time: None,
                    frontier: Some(ClusterTime::MIN),
                    complete: false,
                }),
                Condvar::new(),
            )),
        }
    }

    /// Feeds this handle from `view` (call on every worker; worker 0 keeps the contents).
    /// Probe the returned [`Done`] stream to know when the handle has applied a time.
    ///
    /// # Panics
    ///
    /// If the handle keeps a view's contents in place ([`crate::views::materialize`]).
    pub fn attach<'scope>(
        &self,
        view: VecCollection<'scope, ClusterTime, D, isize>,
    ) -> Done<'scope> {
        let (lock, _) = &*self.shared;
        if let Ok(mut shared) = lock.lock() {
            assert!(
                shared.in_place.is_none(),
                "a ViewHandle holds one view: this one keeps a view's contents in place"
            );
            shared.attached = true;
        }
        let apply = self.clone();
        let frontier = self.clone();
        on_closed(
            view,
            false,
            move |time, changes| {
                let (lock, cvar) = &*apply.shared;
                if let Ok(mut shared) = lock.lock() {
                    for (row, diff) in changes.drain(..) {
                        match shared.rows.entry(row) {
                            Entry::Occupied(mut n) => {
                                *n.get_mut() += diff;
                                if *n.get() == 0 {
                                    n.remove();
                                }
                            }
                            Entry::Vacant(slot) => {
                                if diff != 0 {
                                    slot.insert(diff);
                                }
                            }
                        }
                    }
                    shared.time = Some(time);
                }
                cvar.notify_all();
            },
            move |now| frontier.set_frontier(now),
        )
    }

    /// Records that every time before `now` is reflected (`None`: the view is final).
    pub(crate) fn set_frontier(&self, now: Option<ClusterTime>) {
        let (lock, cvar) = &*self.shared;
        if let Ok(mut shared) = lock.lock() {
            shared.frontier = now;
            shared.complete = now.is_none();
        }
        cvar.notify_all();
    }

    /// Claims the handle for contents kept in place, starting as `contents`; false if the
    /// handle is attached to a view or another operator keeps its contents in place.
    pub(crate) fn keep_in_place<S: InPlace<D>>(&self, contents: S) -> bool {
        let (lock, _) = &*self.shared;
        match lock.lock() {
            Ok(mut shared) if shared.in_place.is_none() && !shared.attached => {
                shared.in_place = Some(Box::new(contents));
                true
            }
            _ => false,
        }
    }

    /// Changes the contents kept in place (claimed with [`ViewHandle::keep_in_place`]) under
    /// the handle's lock; `change` returns the last time it applied, if any.
    pub(crate) fn change_in_place<S: InPlace<D>>(
        &self,
        change: impl FnOnce(&mut S) -> Option<ClusterTime>,
    ) {
        let (lock, cvar) = &*self.shared;
        let Ok(mut shared) = lock.lock() else { return };
        let contents = shared
            .in_place
            .as_deref_mut()
            .and_then(|c| (c as &mut dyn Any).downcast_mut::<S>());
        if let Some(time) = contents.and_then(change) {
            shared.time = Some(time);
            drop(shared);
            cvar.notify_all();
        }
    }

    /// The view as of the last closed time.
    pub fn snapshot(&self) -> Snapshot<D> {
        let (lock, _) = &*self.shared;
        match lock.lock() {
            Ok(shared) => {
                let mut rows: Vec<(D, isize)> =
                    shared.rows.iter().map(|(d, r)| (d.clone(), *r)).collect();
                match &shared.in_place {
                    Some(contents) => {
                        rows.extend(contents.rows());
                        consolidate(&mut rows);
                    }
                    None => rows.sort_unstable_by(|a, b| a.0.cmp(&b.0)),
                }
                Snapshot {
                    time: shared.time,
                    complete: shared.complete,
                    rows,
                }
            }
            Err(_) => Snapshot {
                time: None,
                complete: false,
                rows: Vec::new(),
            },
        }
    }

    /// The closed frontier: every time before it is reflected (`None`: the view is final).
    pub fn frontier(&self) -> Option<ClusterTime> {
        let (lock, _) = &*self.shared;
        lock.lock().ok().and_then(|s| s.frontier)
    }

    /// Blocks until every time before `time` is closed (or the view is final), or `timeout`.
    pub fn wait_past(&self, time: ClusterTime, timeout: std::time::Duration) -> bool {
        let (lock, cvar) = &*self.shared;
        let Ok(guard) = lock.lock() else { return false };
        let result =
            cvar.wait_timeout_while(guard, timeout, |s| s.frontier.is_some_and(|f| f <= time));
        result.map(|(_, t)| !t.timed_out()).unwrap_or(false)
    }
}
