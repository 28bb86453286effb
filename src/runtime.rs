//! Running a dataflow to completion: worker configuration, driving the worker until its probe is
//! done or a source fails, and resource figures for reports.
//!
//! These wrap timely's API so that version churn touches one place.

use std::sync::Arc;
use std::time::Duration;

use changeflow_core::ClusterTime;
use changeflow_sources::{SourceError, SourceStatus};
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;

/// Runs `build_and_drive` on `workers` threads of this process and waits for all of them.
///
/// ```
/// let sums = changeflow::runtime::execute(2, |worker| worker.index()).unwrap();
/// assert_eq!(sums.len(), 2);
/// ```
pub fn execute<T, F>(workers: usize, build_and_drive: F) -> Result<Vec<T>, String>
where
    T: Send + 'static,
    F: Fn(&mut Worker) -> T + Send + Sync + 'static,
{
    let config = timely::Config::process(workers.max(1));
    let guards = timely::execute(config, build_and_drive)?;
    guards.join().into_iter().collect()
}

/// Steps `worker` until `probe` has passed every time, or a source in `sources` failed.
///
/// Returns the first source failure. The worker's dataflows are then dropped without the failed
/// source releasing its times, so nothing downstream sees a partial time (timely would
/// otherwise keep stepping them until they complete, which they never would).
pub fn drive(
    worker: &mut Worker,
    probe: &ProbeHandle<ClusterTime>,
    sources: &[Arc<SourceStatus>],
) -> Result<(), String> {
    drive_until(worker, probe, sources, || None)
}

/// Like [`drive`], and also stops (dropping the dataflows) when `failed` returns an error, e.g.
/// a checkpoint that could not be written.
pub fn drive_until(
    worker: &mut Worker,
    probe: &ProbeHandle<ClusterTime>,
    sources: &[Arc<SourceStatus>],
    failed: impl Fn() -> Option<String>,
) -> Result<(), String> {
    loop {
        if let Some(error) = sources.iter().find_map(|s| s.error()).or_else(&failed) {
            for dataflow in worker.installed_dataflows() {
                worker.drop_dataflow(dataflow);
            }
            return Err(error);
        }
        if probe.done() {
            return Ok(());
        }
        worker.step_or_park(Some(Duration::from_millis(20)));
    }
}

/// Takes the typed error of the first failed source.
pub fn take_source_error(sources: &[Arc<SourceStatus>]) -> Option<SourceError> {
    sources.iter().find_map(|s| s.take_error())
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`), if known.
///
/// ```
/// let peak = changeflow::runtime::peak_rss_bytes();
/// assert!(peak.is_none_or(|b| b > 0));
/// ```
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Makes mimalloc the process's allocator when the `mimalloc` feature (on by default) is on,
/// and does nothing otherwise. For binaries (the `changeflow` command, the examples, the
/// benches): glibc's malloc was about a third of the pipelines' CPU profile. A library never
/// picks the allocator of the process it runs in, so this is a macro for `main`'s crate.
///
/// ```
/// changeflow::global_allocator!();
///
/// fn main() {
///     let v: Vec<u64> = (0..1000).collect();
///     assert_eq!(v.iter().sum::<u64>(), 499_500);
/// }
/// ```
#[cfg(feature = "mimalloc")]
#[macro_export]
macro_rules! global_allocator {
    () => {
        #[global_allocator]
        static CHANGEFLOW_ALLOCATOR: $crate::runtime::MiMalloc = $crate::runtime::MiMalloc;
    };
}

/// Makes mimalloc the process's allocator when the `mimalloc` feature is on; without it (as
/// here) the system allocator stays.
#[cfg(not(feature = "mimalloc"))]
#[macro_export]
macro_rules! global_allocator {
    () => {};
}

#[cfg(feature = "mimalloc")]
#[doc(hidden)]
pub use mimalloc::MiMalloc;

/// `mi_option_purge_delay` in the `mimalloc.h` of both versions libmimalloc-sys bundles (v2 and
/// v3); its bindings do not name it.
#[cfg(feature = "mimalloc")]
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// `mi_option_page_reclaim_on_free` in the `mimalloc.h` of mimalloc v3 (the version
/// libmimalloc-sys builds unless its `v2` feature is on; v2 numbers its options differently,
/// so it is set only when [`libmimalloc_sys::mi_version`] says 3.x).
#[cfg(feature = "mimalloc")]
const MI_OPTION_PAGE_RECLAIM_ON_FREE: std::ffi::c_int = 35;

/// Tells mimalloc (when the `mimalloc` feature is on, and it is the process's allocator through
/// [`global_allocator!`](crate::global_allocator)) to keep freed memory for reuse instead of
/// returning it to the OS after a delay (the `purge_delay` option; this overrides any
/// `MIMALLOC_PURGE_DELAY` in the environment). A dataflow frees and reallocates large
/// batches all the time; returned memory comes back as fresh pages the kernel must zero (2 MiB at
/// a time with transparent huge pages), which was 10–15% of the orders job's worker. Peak
/// memory is unchanged: only memory already used is kept.
///
/// With mimalloc v3 it also lets a thread that frees a block of a page abandoned by another
/// thread take that page over (`page_reclaim_on_free` = 1). A source's reader thread allocates
/// every event and the worker frees it; otherwise the freed pages wait in the arena while the
/// reader takes fresh ones (page faults again), which cost the orders job about a tenth of its
/// CPU. Call it first thing in `main`; without the feature it does nothing.
///
/// ```
/// changeflow::runtime::keep_freed_memory();
/// ```
pub fn keep_freed_memory() {
    #[cfg(feature = "mimalloc")]
    #[allow(unsafe_code)]
    // SAFETY: `mi_option_set` stores one integer option; -1 ("never purge") is a documented
    // value of `mi_option_purge_delay`, and 1 ("always") of v3's `page_reclaim_on_free`
    // (checked against the library's version first); options may be set at any time from any
    // thread; `mi_version` only returns a constant.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        if (30000..40000).contains(&libmimalloc_sys::mi_version()) {
            libmimalloc_sys::mi_option_set(MI_OPTION_PAGE_RECLAIM_ON_FREE, 1);
        }
    }
}
