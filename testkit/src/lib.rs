//! changeflow's test kit (not published): seeded workloads of MongoDB change events and a
//! sequential reference model to check changeflow's incremental results against.
//!
//! It depends on no changeflow crate, so it can judge them.
//!
//! * A **workload** ([`orders`]) is a deterministic stream of realistic change events (inserts,
//!   updates with `updateDescription`, replaces, deletes, multi-document transactions) for one
//!   collection, generated from a seed and written as MongoDB Extended JSON lines or as BSON. The
//!   same [`orders::OrdersConfig`] always gives byte-identical output.
//! * The **reference model** ([`reference`](mod@reference)) applies change events one by one, in
//!   stream order, to a plain map of documents, with the simplest possible code. Its final state,
//!   and the batch views computed over it, are the expected answers for changeflow's pipelines.
//! * The **change-stream server** ([`server`]) speaks MongoDB's wire protocol on `127.0.0.1:0`,
//!   so the real `mongodb` driver can open, follow and resume change streams without a database:
//!   an event log fed from the workload or from event builders, fail points, a recorder of the
//!   commands received, and a Cosmos DB mode.
//! * The **bank** workload ([`bank`]) moves money between accounts inside transactions (some
//!   spanning several clusterTimes, some interleaved at one clusterTime as on a sharded
//!   cluster), so the total of all balances is an invariant that a partial transaction breaks.
//! * [`extjson`] writes `bson::Document`s as Extended JSON (relaxed or canonical) like MongoDB's
//!   tools; [`rng`] is the small seeded PRNG behind the workloads.
//!
//! ```
//! use changeflow_testkit::orders::{OrdersConfig, OrdersWorkload};
//! use changeflow_testkit::reference::ReferenceModel;
//!
//! let mut model = ReferenceModel::new();
//! for line in OrdersWorkload::new(OrdersConfig { seed: 1, events: 1_000, ..OrdersConfig::default() }) {
//!     model.apply_json_line(&line).unwrap();
//! }
//! assert_eq!(model.unapplied(), 0);
//! let by_region = model.orders_by_region();
//! let total: i64 = by_region.values().map(|(count, _)| count).sum();
//! assert_eq!(total as usize, model.documents().len());
//! ```
#![deny(missing_docs)]

pub mod bank;
pub mod customers;
pub mod extjson;
pub mod orders;
pub mod reference;
pub mod rng;
pub mod server;
