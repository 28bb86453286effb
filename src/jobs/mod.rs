//! Complete pipelines. Each example job (`cargo run --example NAME`) is a thin command-line
//! wrapper around one of these, so tests and benchmarks run exactly what users run.

pub mod bank_transfers;
pub mod crash_trials;
pub mod follow;
pub mod orders_by_region;
pub mod orders_to_parquet;
pub mod pipeline_view;

use std::sync::Arc;

use changeflow_sources::status::SourceStatus;

use crate::runtime;
use orders_by_region::JobError;

/// Runs `worker_job` on `workers` workers until every input ends, then reports the source's
/// error if it stopped on one, else the first worker's failure.
pub(crate) fn run_to_end<F>(
    workers: usize,
    status: &Arc<SourceStatus>,
    worker_job: F,
) -> Result<(), JobError>
where
    F: Fn(&mut timely::worker::Worker) -> Result<(), String> + Send + Sync + 'static,
{
    run_to_end_all(workers, std::slice::from_ref(status), worker_job)
}

/// [`run_to_end`] for a job with several sources (reporting the first failed one's error).
pub(crate) fn run_to_end_all<F>(
    workers: usize,
    statuses: &[Arc<SourceStatus>],
    worker_job: F,
) -> Result<(), JobError>
where
    F: Fn(&mut timely::worker::Worker) -> Result<(), String> + Send + Sync + 'static,
{
    let results = runtime::execute(workers, worker_job).map_err(JobError::Dataflow)?;
    if let Some(error) = runtime::take_source_error(statuses) {
        return Err(error.into());
    }
    match results.into_iter().find_map(Result::err) {
        Some(e) => Err(JobError::Dataflow(e)),
        None => Ok(()),
    }
}
