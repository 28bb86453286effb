//! Integration tests of the `changeflow` facade: the orders job end to end against the reference
//! model, bad input, following a growing file, several workers.

mod arrow_interop;
mod bad_input;
mod follow;
mod handles;
mod orders_oracle;
mod support;
mod transactions;
