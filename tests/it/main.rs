//! Integration tests of the `changeflow` facade: the orders job end to end against the reference
//! model, bad input, following a growing file, several workers, and a live change stream through the test server.

mod arrow_interop;
mod bad_input;
mod checkpoints;
mod crash_trials;
mod follow;
mod handles;
mod live;
mod orders_oracle;
mod pipeline_view;
mod support;
mod transactions;
