//! Operator tests against the sequential reference model of `changeflow-testkit`.

mod documents_oracle;
mod pipeline_evaluators;
mod snapshot_reset;
mod support;
mod transactions_oracle;
mod views_oracle;
