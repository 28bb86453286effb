//! A seeded `shop.customers` workload: the other side of a `$lookup` from `shop.orders`.
//!
//! Customers `1..=customers` (the orders workload's `customer_id`s are `1..=5000`, skewed towards
//! small ids, so some orders find their customer and some do not) are inserted one second
//! before `start_time`, then `changes` events spread over `seconds` seconds from `start_time`
//! change them: tier updates (with `updateDescription` only), replaces, deletes and
//! re-inserts. Documents:
//!
//! `{_id: int32, name: string, tier: "gold" | "silver" | "bronze", region: string,
//!   tags: [string] (sometimes missing), manager: int32 or null, alt_ids: [int32, int32]}`
//!
//! Events use increments from 1 000 000 so that merged with the orders stream by
//! `clusterTime` no two events share a time; this module does not touch the orders workload,
//! so existing seeds keep their output.
//!
//! ```
//! use changeflow_testkit::customers::{CustomersConfig, customer_events};
//! let events = customer_events(&CustomersConfig { customers: 10, changes: 5, ..CustomersConfig::default() });
//! assert_eq!(events.len(), 15);
//! assert_eq!(events, customer_events(&CustomersConfig { customers: 10, changes: 5, ..CustomersConfig::default() }));
//! ```

use bson::{Bson, Document, Timestamp, doc};

use crate::orders::REGIONS;
use crate::rng::Rng;

/// What to generate.
#[derive(Clone, Debug)]
pub struct CustomersConfig {
    /// Seed of the PRNG.
    pub seed: u64,
    /// Customers inserted first (`_id` 1 ..= customers).
    pub customers: u32,
    /// Change events after the inserts.
    pub changes: usize,
    /// `clusterTime` seconds of the first change (the inserts are one second earlier).
    pub start_time: u32,
    /// Seconds the changes are spread over.
    pub seconds: u32,
}

impl Default for CustomersConfig {
    /// Seed 0, 200 customers, 100 changes over 100 seconds from 1_700_000_000.
    fn default() -> Self {
        CustomersConfig {
            seed: 0,
            customers: 200,
            changes: 100,
            start_time: 1_700_000_000,
            seconds: 100,
        }
    }
}

const TIERS: [&str; 3] = ["gold", "silver", "bronze"];

fn customer(rng: &mut Rng, id: u32) -> Document {
    let id = id as i32;
    let mut d = doc! {
        "_id": id,
        "name": format!("customer-{id}"),
        "tier": TIERS[rng.index(TIERS.len())],
        "region": REGIONS[rng.index(REGIONS.len())].0,
    };
    if rng.chance(0.7) {
        let tags: Vec<Bson> = (0..rng.index(3))
            .map(|i| Bson::String(format!("t{}", (id as usize + i) % 4)))
            .collect();
        d.insert("tags", tags);
    }
    d.insert(
        "manager",
        if rng.chance(0.3) {
            Bson::Null
        } else {
            Bson::Int32(1 + rng.below(5) as i32)
        },
    );
    d.insert("alt_ids", vec![Bson::Int32(id), Bson::Int32(id + 5000)]);
    d
}

fn event(t: u32, i: u32, op: &str, id: i32, extra: Document) -> Document {
    let mut e = doc! {
        "_id": { "_data": format!("82{t:08X}{i:08X}04") },
        "operationType": op,
        "clusterTime": Timestamp { time: t, increment: i },
        "ns": { "db": "shop", "coll": "customers" },
        "documentKey": { "_id": id },
    };
    e.extend(extra);
    e
}

/// The events, in stream order, as BSON documents.
pub fn customer_documents(config: &CustomersConfig) -> Vec<Document> {
    let mut rng = Rng::new(config.seed ^ 0xC057_0E55);
    let mut live = vec![true; config.customers as usize + 1];
    let mut out = Vec::with_capacity(config.customers as usize + config.changes);
    let first = 1_000_000u32;
    let before = config.start_time.saturating_sub(1);
    for id in 1..=config.customers {
        let d = customer(&mut rng, id);
        out.push(event(
            before,
            first + id,
            "insert",
            id as i32,
            doc! { "fullDocument": d },
        ));
    }
    for k in 0..config.changes {
        let t = config.start_time
            + (k as u64 * u64::from(config.seconds.max(1)) / config.changes.max(1) as u64) as u32;
        let i = first + k as u32;
        let id = 1 + rng.below(u64::from(config.customers.max(1))) as u32;
        let slot = id as usize;
        let e = if !live[slot] {
            live[slot] = true;
            let d = customer(&mut rng, id);
            event(t, i, "insert", id as i32, doc! { "fullDocument": d })
        } else {
            match rng.index(4) {
                0 => {
                    live[slot] = false;
                    event(t, i, "delete", id as i32, doc! {})
                }
                1 => {
                    let d = customer(&mut rng, id);
                    event(t, i, "replace", id as i32, doc! { "fullDocument": d })
                }
                _ => event(
                    t,
                    i,
                    "update",
                    id as i32,
                    doc! { "updateDescription": {
                    "updatedFields": { "tier": TIERS[rng.index(TIERS.len())] },
                    "removedFields": [], "truncatedArrays": [] } },
                ),
            }
        };
        out.push(e);
    }
    out
}

/// The events as relaxed Extended JSON lines.
pub fn customer_events(config: &CustomersConfig) -> Vec<String> {
    customer_documents(config)
        .iter()
        .map(|d| crate::extjson::to_json(d, false))
        .collect()
}
