//! Integration tests of changeflow-sources: the live source through the real `mongodb` driver
//! against the wire-protocol change-stream server of the test kit, each fault scenario checked
//! against the server's event log (no loss, no duplicates); and the same scenarios against a real
//! replica set when `MONGODB_URI` is set.

// Helpers here panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod cosmos;
mod failures;
mod invalidate;
mod real;
mod record;
mod resume;
mod scopes;
mod snapshot;
mod support;
