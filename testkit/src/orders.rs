//! The orders workload: a deterministic, seeded stream of realistic change events for the
//! collection `orders` of the database `shop`.
//!
//! Each event is one line of MongoDB Extended JSON v2 (relaxed by default, canonical on request),
//! or the same event as a BSON document. The generator keeps only the live documents in memory,
//! so it can stream millions of events.
//!
//! # Documents
//!
//! `{_id: ObjectId, customer_id: int32, region: string, status: string, amount: double,
//! items: [{sku: string, qty: int32, price: double}], ts: date}`; updates may later add
//! `shipping: {carrier, tracking}` and remove `status` or `shipping`.
//!
//! * `customer_id` is in `1..=5000`, skewed towards small ids;
//! * `region` is one of [`REGIONS`], skewed from `us-east` (30 %) down to `af-south` (2 %);
//! * `status` is one of [`STATUSES`] and moves pending → paid → shipped → delivered (or
//!   cancelled);
//! * `amount` and `price` are doubles with two decimals (`amount` is the items' total, unless a
//!   discount changed it); there are 1–5 items at insert, up to 10 after appends;
//! * ObjectIds are the clusterTime seconds followed by a seed-derived 8-byte counter: unique.
//!
//! # Operations
//!
//! About 60 % inserts, 27 % updates, 3 % replaces and 10 % deletes; updates, replaces and deletes
//! pick a live document (an insert is made instead when none is live). Inserts and replaces carry
//! `fullDocument`; deletes only `documentKey`; a configurable fraction of updates carries the exact
//! post-image as `fullDocument`. Updates are described by `updateDescription` (`updatedFields`,
//! `removedFields`, `truncatedArrays`, always all three) and use top-level fields (`status`,
//! `amount`, `region`, `customer_id`), dotted paths into items (`items.1.qty`, `items.0.price`),
//! appends (`items.N` with `N` the current length), brand-new nested paths (`shipping.carrier`
//! creating `shipping`), removals (`status`, `shipping`, `shipping.tracking`) and truncations
//! (`{field: "items", newSize: k}`, sometimes followed by an append at `items.k`).
//!
//! The post-image, and so the consumer's rule, is: apply `truncatedArrays` first, then
//! `updatedFields` in document order, then `removedFields`. A dotted path whose parent is missing
//! creates intermediate documents (never arrays); an array index equal to the length appends (one
//! beyond pads with nulls, which this workload never needs); a new field is appended at the end of
//! its parent document, an existing one is replaced in place. This is what
//! [`crate::reference::ReferenceModel`] implements.
//!
//! # Times, tokens and transactions
//!
//! Every event has `_id: {_data}` (resume token), `operationType`, `clusterTime`, `wallTime`
//! (`clusterTime.t` seconds + `i` milliseconds), `ns` and `documentKey`. Outside transactions
//! each event gets a new, strictly larger clusterTime (`i` advances, `t` every few events). A
//! transaction (the configured fraction of events) is a group of 2–6 events sharing one
//! clusterTime and carrying `lsid: {id: UUID, uid: BinData(0)}` and `txnNumber` (int64); it can
//! update one document several times, or insert and then update it.
//!
//! The token's hex `_data` is `82` + `t` (8 hex digits) + `i` (8 hex digits) + `2B` + the
//! operation's index within its transaction (8 hex digits, 0 outside) + `0446645F69640064` + the
//! ObjectId (24 hex digits) + `0004`, upper case: its first 18 characters are the clusterTime, and
//! tokens compare as strings in stream order.
//!
//! ```
//! use changeflow_testkit::orders::{OrdersConfig, OrdersWorkload};
//!
//! let config = OrdersConfig { seed: 7, events: 3, ..OrdersConfig::default() };
//! let lines: Vec<String> = OrdersWorkload::new(config).collect();
//! assert_eq!(lines.len(), 3);
//! assert!(lines[0].starts_with(r#"{"_id":{"_data":"82"#));
//! assert!(lines[0].contains(r#""operationType":"insert""#));
//! ```

use std::collections::HashMap;
use std::io::{self, Write};

use bson::spec::BinarySubtype;
use bson::{Binary, Bson, DateTime, Document, Timestamp, doc, oid::ObjectId};

use crate::extjson;
use crate::rng::Rng;

/// The database of the workload.
pub const DB: &str = "shop";

/// The collection of the workload.
pub const COLLECTION: &str = "orders";

/// The regions and their relative weights (percent): `us-east` is the most frequent, `af-south`
/// the rarest.
pub const REGIONS: [(&str, u32); 8] = [
    ("us-east", 30),
    ("eu-west", 20),
    ("us-west", 15),
    ("ap-south", 12),
    ("eu-central", 9),
    ("ap-northeast", 7),
    ("sa-east", 5),
    ("af-south", 2),
];

/// The order statuses.
pub const STATUSES: [&str; 5] = ["pending", "paid", "shipped", "delivered", "cancelled"];

/// Operation weights (percent): insert, update, replace, delete.
const OPERATION_WEIGHTS: [u32; 4] = [60, 27, 3, 10];

/// Carriers used for `shipping.carrier`.
const CARRIERS: [&str; 5] = ["UPS", "FedEx", "DHL", "USPS", "La Poste"];

/// Items per order at insert (1–5) and their weights.
const ITEM_COUNT_WEIGHTS: [u32; 5] = [35, 30, 18, 10, 7];

/// Arrays never grow beyond this many items through appends.
const MAX_ITEMS: usize = 10;

/// Mean size of a transaction (sizes are uniform in 2..=6).
const MEAN_TXN_SIZE: f64 = 4.0;

/// How the orders workload is generated.
///
/// ```
/// use changeflow_testkit::orders::OrdersConfig;
///
/// let config = OrdersConfig { seed: 1, events: 10_000, canonical: true, ..OrdersConfig::default() };
/// assert_eq!(config.txn_fraction, 0.1);
/// assert_eq!(config.start_time, 1_700_000_000);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct OrdersConfig {
    /// Seed of the PRNG: the same configuration always gives the same events.
    pub seed: u64,
    /// Number of events to generate.
    pub events: usize,
    /// Fraction of events inside multi-document transactions (default 0.1).
    pub txn_fraction: f64,
    /// Fraction of update events that carry `fullDocument`, the exact post-image (default 0.5).
    pub full_document_on_update: f64,
    /// Canonical instead of relaxed Extended JSON (default false).
    pub canonical: bool,
    /// `clusterTime` seconds of the first event (default 1_700_000_000, 2023-11-14T22:13:20Z).
    pub start_time: u32,
}

impl Default for OrdersConfig {
    /// Seed 0, 10 000 events, 10 % in transactions, half of the updates with `fullDocument`,
    /// relaxed JSON, starting at 1_700_000_000.
    fn default() -> Self {
        Self {
            seed: 0,
            events: 10_000,
            txn_fraction: 0.1,
            full_document_on_update: 0.5,
            canonical: false,
            start_time: 1_700_000_000,
        }
    }
}

/// A logical session that runs transactions.
#[derive(Debug, Clone)]
struct Session {
    id: [u8; 16],
    txn_number: i64,
}

/// The transaction being generated.
#[derive(Debug, Clone)]
struct Txn {
    remaining: usize,
    op_index: u32,
    session: usize,
    txn_number: i64,
    /// Documents this transaction inserted or changed, preferred as update targets.
    touched: Vec<ObjectId>,
}

/// The operation of one event.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Insert,
    Update,
    Replace,
    Delete,
}

/// The kinds of update.
#[derive(Debug, Clone, Copy, PartialEq)]
enum UpdateKind {
    Status,
    Amount,
    ItemQty,
    ItemPrice,
    AppendItem,
    Region,
    Customer,
    Remove,
    Truncate,
    Shipping,
}

const UPDATE_KINDS: [(UpdateKind, u32); 10] = [
    (UpdateKind::Status, 26),
    (UpdateKind::Amount, 8),
    (UpdateKind::ItemQty, 12),
    (UpdateKind::ItemPrice, 7),
    (UpdateKind::AppendItem, 8),
    (UpdateKind::Region, 10),
    (UpdateKind::Customer, 7),
    (UpdateKind::Remove, 6),
    (UpdateKind::Truncate, 7),
    (UpdateKind::Shipping, 9),
];

/// An `updateDescription` under construction.
#[derive(Debug, Default)]
struct Delta {
    updated: Document,
    removed: Vec<Bson>,
    truncated: Vec<Bson>,
}

impl Delta {
    fn into_document(self) -> Document {
        doc! {
            "updatedFields": self.updated,
            "removedFields": self.removed,
            "truncatedArrays": self.truncated,
        }
    }
}

/// The orders workload generator: an iterator of Extended JSON lines (no trailing newline).
///
/// It streams: memory is proportional to the live documents, not to the number of events.
///
/// ```
/// use changeflow_testkit::orders::{OrdersConfig, OrdersWorkload};
///
/// let config = OrdersConfig { seed: 42, events: 100, ..OrdersConfig::default() };
/// let mut workload = OrdersWorkload::new(config.clone());
/// let first = workload.next_document().unwrap();
/// assert_eq!(first.get_str("operationType").unwrap(), "insert");
/// // Same configuration, same events.
/// let a: Vec<String> = OrdersWorkload::new(config.clone()).collect();
/// let b: Vec<String> = OrdersWorkload::new(config).collect();
/// assert_eq!(a, b);
/// ```
#[derive(Debug, Clone)]
pub struct OrdersWorkload {
    config: OrdersConfig,
    rng: Rng,
    emitted: usize,
    /// `(t, i)` of the last event, `None` before the first.
    clock: Option<(u32, u32)>,
    oid_base: u64,
    oid_counter: u64,
    live: Vec<(ObjectId, Document)>,
    slots: HashMap<ObjectId, usize>,
    sessions: Vec<Session>,
    uid: [u8; 32],
    txn: Option<Txn>,
    txn_start_probability: f64,
}

impl OrdersWorkload {
    /// Creates the generator. Fractions are clamped to `[0, 1]`.
    pub fn new(config: OrdersConfig) -> Self {
        let mut rng = Rng::new(config.seed);
        let oid_base = rng.next_u64();
        let mut uid = [0u8; 32];
        rng.fill_bytes(&mut uid);
        let sessions = (0..8)
            .map(|_| {
                let mut id = [0u8; 16];
                rng.fill_bytes(&mut id);
                id[6] = (id[6] & 0x0F) | 0x40; // UUID version 4
                id[8] = (id[8] & 0x3F) | 0x80; // RFC 4122 variant
                Session { id, txn_number: 0 }
            })
            .collect();
        let f = config.txn_fraction.clamp(0.0, 1.0);
        // A transaction starts with probability q per group; groups have mean size MEAN_TXN_SIZE,
        // so the fraction of events in transactions is q·m / (q·m + 1 − q) = f.
        let txn_start_probability = if f >= 1.0 {
            1.0
        } else {
            f / (MEAN_TXN_SIZE * (1.0 - f) + f)
        };
        Self {
            config,
            rng,
            emitted: 0,
            clock: None,
            oid_base,
            oid_counter: 0,
            live: Vec::new(),
            slots: HashMap::new(),
            sessions,
            uid,
            txn: None,
            txn_start_probability,
        }
    }

    /// The configuration this workload was created with.
    pub fn config(&self) -> &OrdersConfig {
        &self.config
    }

    /// Returns the next event as a `bson::Document`: the value that both the JSON lines and the
    /// BSON output are rendered from. `None` after `config.events` events.
    pub fn next_document(&mut self) -> Option<Document> {
        if self.emitted >= self.config.events {
            return None;
        }
        if self.txn.is_none() {
            self.advance_clock();
            let remaining = self.config.events - self.emitted;
            if remaining >= 2 && self.rng.chance(self.txn_start_probability) {
                let size = (self.rng.range_inclusive(2, 6) as usize).min(remaining);
                let session = self.rng.index(self.sessions.len());
                self.sessions[session].txn_number += 1;
                self.txn = Some(Txn {
                    remaining: size,
                    op_index: 0,
                    session,
                    txn_number: self.sessions[session].txn_number,
                    touched: Vec::new(),
                });
            }
        }
        let event = self.make_event();
        if let Some(txn) = &mut self.txn {
            txn.remaining -= 1;
            txn.op_index += 1;
            if txn.remaining == 0 {
                self.txn = None;
            }
        }
        self.emitted += 1;
        Some(event)
    }

    /// The generator's own view of the live documents after the events produced so far, in no
    /// particular order.
    ///
    /// ```
    /// use changeflow_testkit::orders::{OrdersConfig, OrdersWorkload};
    ///
    /// let mut w = OrdersWorkload::new(OrdersConfig { events: 1, ..OrdersConfig::default() });
    /// w.next_document();
    /// assert_eq!(w.live_documents().count(), 1);
    /// ```
    pub fn live_documents(&self) -> impl Iterator<Item = &Document> {
        self.live.iter().map(|(_, d)| d)
    }

    fn advance_clock(&mut self) {
        self.clock = Some(match self.clock {
            None => (self.config.start_time, 1),
            Some((t, i)) => {
                if i >= 999 || self.rng.chance(0.3) {
                    let gap = if self.rng.chance(0.05) {
                        1 + self.rng.below(10) as u32
                    } else {
                        1
                    };
                    (t.saturating_add(gap), 1)
                } else {
                    (t, i + 1)
                }
            }
        });
    }

    fn now(&self) -> (u32, u32) {
        self.clock.unwrap_or((self.config.start_time, 1))
    }

    fn wall_time(&self) -> DateTime {
        let (t, i) = self.now();
        DateTime::from_millis(i64::from(t) * 1000 + i64::from(i))
    }

    fn new_object_id(&mut self) -> ObjectId {
        let (t, _) = self.now();
        let counter = self.oid_base.wrapping_add(self.oid_counter);
        self.oid_counter += 1;
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&t.to_be_bytes());
        bytes[4..].copy_from_slice(&counter.to_be_bytes());
        ObjectId::from_bytes(bytes)
    }

    fn choose_op(&mut self) -> Op {
        if self.live.is_empty() {
            return Op::Insert;
        }
        match self.rng.weighted(&OPERATION_WEIGHTS) {
            0 => Op::Insert,
            1 => Op::Update,
            2 => Op::Replace,
            _ => Op::Delete,
        }
    }

    /// A live document to change: inside a transaction, half of the time one it already touched.
    fn choose_target(&mut self) -> usize {
        if let Some(txn) = &self.txn {
            let candidates: Vec<usize> = txn
                .touched
                .iter()
                .filter_map(|id| self.slots.get(id).copied())
                .collect();
            if !candidates.is_empty() && self.rng.chance(0.5) {
                return candidates[self.rng.index(candidates.len())];
            }
        }
        self.rng.index(self.live.len())
    }

    fn touch(&mut self, id: ObjectId) {
        if let Some(txn) = &mut self.txn
            && !txn.touched.contains(&id)
        {
            txn.touched.push(id);
        }
    }

    fn make_event(&mut self) -> Document {
        match self.choose_op() {
            Op::Insert => {
                let id = self.new_object_id();
                let ts = self.wall_time();
                let order = self.new_order(id, ts);
                self.slots.insert(id, self.live.len());
                self.live.push((id, order.clone()));
                self.touch(id);
                self.event("insert", id, Some(order), None)
            }
            Op::Update => {
                let slot = self.choose_target();
                let id = self.live[slot].0;
                let mut order = std::mem::take(&mut self.live[slot].1);
                let delta = self.update(&mut order);
                let full = self
                    .rng
                    .chance(self.config.full_document_on_update)
                    .then(|| order.clone());
                self.live[slot].1 = order;
                self.touch(id);
                self.event("update", id, full, Some(delta.into_document()))
            }
            Op::Replace => {
                let slot = self.choose_target();
                let id = self.live[slot].0;
                let ts = match self.live[slot].1.get("ts") {
                    Some(Bson::DateTime(ts)) => *ts,
                    _ => self.wall_time(),
                };
                let order = self.new_order(id, ts);
                self.live[slot].1 = order.clone();
                self.touch(id);
                self.event("replace", id, Some(order), None)
            }
            Op::Delete => {
                let slot = self.choose_target();
                let (id, _) = self.live.swap_remove(slot);
                self.slots.remove(&id);
                if let Some((moved, _)) = self.live.get(slot) {
                    self.slots.insert(*moved, slot);
                }
                self.event("delete", id, None, None)
            }
        }
    }

    fn event(
        &self,
        operation: &str,
        id: ObjectId,
        full_document: Option<Document>,
        update_description: Option<Document>,
    ) -> Document {
        let (t, i) = self.now();
        let op_index = self.txn.as_ref().map_or(0, |txn| txn.op_index);
        let token = format!(
            "82{t:08X}{i:08X}2B{op_index:08X}0446645F69640064{}0004",
            id.to_hex().to_uppercase()
        );
        let mut event = doc! {
            "_id": { "_data": token },
            "operationType": operation,
            "clusterTime": Timestamp { time: t, increment: i },
            "wallTime": self.wall_time(),
        };
        if let Some(txn) = &self.txn {
            event.insert(
                "lsid",
                doc! {
                    "id": Binary { subtype: BinarySubtype::Uuid, bytes: self.sessions[txn.session].id.to_vec() },
                    "uid": Binary { subtype: BinarySubtype::Generic, bytes: self.uid.to_vec() },
                },
            );
            event.insert("txnNumber", txn.txn_number);
        }
        if let Some(full) = full_document {
            event.insert("fullDocument", full);
        }
        event.insert("ns", doc! { "db": DB, "coll": COLLECTION });
        event.insert("documentKey", doc! { "_id": id });
        if let Some(description) = update_description {
            event.insert("updateDescription", description);
        }
        event
    }

    // ----- documents -----

    fn customer_id(&mut self) -> i32 {
        // Skewed: P(id <= 5000·x) = x^(1/3), so small ids are much more frequent.
        let u = self.rng.next_f64();
        (1 + (5000.0 * u * u * u) as i32).min(5000)
    }

    fn region(&mut self) -> &'static str {
        let weights = REGIONS.map(|(_, w)| w);
        REGIONS[self.rng.weighted(&weights)].0
    }

    fn item(&mut self) -> Document {
        let u = self.rng.next_f64();
        let sku = format!("SKU-{:05}", 1 + (2000.0 * u * u) as u32);
        let qty = 1 + self.rng.weighted(&[50, 25, 12, 8, 5]) as i32;
        // Log-uniform prices between 1.00 and 200.00.
        let cents = (100.0 * 200f64.powf(self.rng.next_f64())).round() as i64;
        doc! { "sku": sku, "qty": qty, "price": cents_to_f64(cents) }
    }

    fn new_order(&mut self, id: ObjectId, ts: DateTime) -> Document {
        let n = 1 + self.rng.weighted(&ITEM_COUNT_WEIGHTS);
        let items: Vec<Document> = (0..n).map(|_| self.item()).collect();
        let amount = cents_to_f64(items.iter().map(item_cents).sum());
        let status = if self.rng.chance(0.75) {
            "pending"
        } else {
            "paid"
        };
        doc! {
            "_id": id,
            "customer_id": self.customer_id(),
            "region": self.region(),
            "status": status,
            "amount": amount,
            "items": items,
            "ts": ts,
        }
    }

    // ----- updates -----

    /// Changes `order` in place and returns the matching `updateDescription`.
    fn update(&mut self, order: &mut Document) -> Delta {
        let mut delta = Delta::default();
        let weights = UPDATE_KINDS.map(|(_, w)| w);
        let kind = UPDATE_KINDS[self.rng.weighted(&weights)].0;
        self.apply_kind(kind, order, &mut delta);
        // Sometimes one update also moves the order to another group (these two fields are never
        // removed, so they never conflict with the main change).
        if !matches!(kind, UpdateKind::Region | UpdateKind::Customer) && self.rng.chance(0.1) {
            let extra = if self.rng.chance(0.5) {
                UpdateKind::Region
            } else {
                UpdateKind::Customer
            };
            self.apply_kind(extra, order, &mut delta);
        }
        delta
    }

    fn apply_kind(&mut self, kind: UpdateKind, order: &mut Document, delta: &mut Delta) {
        match kind {
            UpdateKind::Status => {
                let next = match order.get("status") {
                    None => Some("pending"),
                    Some(Bson::String(s)) => match s.as_str() {
                        "pending" if self.rng.chance(0.85) => Some("paid"),
                        "pending" => Some("cancelled"),
                        "paid" if self.rng.chance(0.92) => Some("shipped"),
                        "paid" => Some("cancelled"),
                        "shipped" => Some("delivered"),
                        _ => None,
                    },
                    Some(_) => Some("pending"),
                };
                match next {
                    Some(status) => {
                        set_top(order, delta, "status", status.into());
                        if status == "shipped" {
                            let carrier = self.carrier();
                            set_shipping(order, delta, "carrier", carrier.into());
                        }
                    }
                    // Delivered or cancelled: a late price adjustment instead.
                    None => self.apply_kind(UpdateKind::Amount, order, delta),
                }
            }
            UpdateKind::Amount => {
                let cents = match order.get("amount") {
                    Some(Bson::Double(a)) => (a * 100.0).round() as i64,
                    _ => 1000,
                };
                let percent = self.rng.range_inclusive(80, 99);
                let mut discounted = cents * percent / 100;
                if discounted == cents {
                    discounted = cents + 1;
                }
                set_top(
                    order,
                    delta,
                    "amount",
                    cents_to_f64(discounted.max(1)).into(),
                );
            }
            UpdateKind::ItemQty | UpdateKind::ItemPrice => {
                let len = items(order).len();
                if len == 0 {
                    return self.apply_kind(UpdateKind::AppendItem, order, delta);
                }
                let k = if kind == UpdateKind::ItemPrice && self.rng.chance(0.6) {
                    0
                } else {
                    self.rng.index(len)
                };
                let (field, value) = if kind == UpdateKind::ItemQty {
                    let current = match &items(order)[k] {
                        Bson::Document(item) => item.get_i32("qty").unwrap_or(1),
                        _ => 1,
                    };
                    let mut qty = self.rng.range_inclusive(1, 9) as i32;
                    if qty == current {
                        qty = current % 9 + 1;
                    }
                    ("qty", Bson::Int32(qty))
                } else {
                    let cents = (100.0 * 200f64.powf(self.rng.next_f64())).round() as i64;
                    ("price", Bson::Double(cents_to_f64(cents)))
                };
                if let Bson::Document(item) = &mut items(order)[k] {
                    item.insert(field, value.clone());
                }
                delta.updated.insert(format!("items.{k}.{field}"), value);
                self.recompute_amount(order, delta);
            }
            UpdateKind::AppendItem => {
                if items(order).len() >= MAX_ITEMS {
                    return self.apply_kind(UpdateKind::ItemQty, order, delta);
                }
                self.append_item(order, delta);
                self.recompute_amount(order, delta);
            }
            UpdateKind::Region => {
                let current = order.get_str("region").unwrap_or("").to_string();
                let mut region = self.region();
                while region == current {
                    region = self.region();
                }
                set_top(order, delta, "region", region.into());
            }
            UpdateKind::Customer => {
                let current = order.get_i32("customer_id").unwrap_or(0);
                let mut customer = self.customer_id();
                while customer == current {
                    customer = self.customer_id();
                }
                set_top(order, delta, "customer_id", customer.into());
            }
            UpdateKind::Remove => {
                let has_tracking = matches!(
                    order.get("shipping"),
                    Some(Bson::Document(s)) if s.contains_key("tracking")
                );
                let has_shipping = order.contains_key("shipping");
                let has_status = order.contains_key("status");
                let path = if has_tracking && self.rng.chance(0.3) {
                    "shipping.tracking"
                } else if has_shipping && (self.rng.chance(0.5) || !has_status) {
                    "shipping"
                } else if has_status {
                    "status"
                } else {
                    // Nothing to remove: the status comes back (appended at the end).
                    return self.apply_kind(UpdateKind::Status, order, delta);
                };
                match path.split_once('.') {
                    Some((parent, child)) => {
                        if let Some(Bson::Document(p)) = order.get_mut(parent) {
                            p.remove(child);
                        }
                    }
                    None => {
                        order.remove(path);
                    }
                }
                delta.removed.push(path.into());
            }
            UpdateKind::Truncate => {
                let len = items(order).len();
                if len < 2 {
                    return self.apply_kind(UpdateKind::AppendItem, order, delta);
                }
                let k = 1 + self.rng.index(len - 1);
                items(order).truncate(k);
                delta
                    .truncated
                    .push(doc! { "field": "items", "newSize": k as i32 }.into());
                if self.rng.chance(0.4) {
                    // Applied after the truncation: `items.k` appends to the shortened array.
                    self.append_item(order, delta);
                }
                self.recompute_amount(order, delta);
            }
            UpdateKind::Shipping => {
                let has_carrier = matches!(
                    order.get("shipping"),
                    Some(Bson::Document(s)) if s.contains_key("carrier")
                );
                if has_carrier && self.rng.chance(0.7) {
                    let tracking = format!("1Z{:016}", self.rng.below(10_000_000_000_000_000));
                    set_shipping(order, delta, "tracking", tracking.into());
                } else {
                    let carrier = self.carrier();
                    set_shipping(order, delta, "carrier", carrier.into());
                }
            }
        }
    }

    fn carrier(&mut self) -> &'static str {
        CARRIERS[self.rng.index(CARRIERS.len())]
    }

    fn append_item(&mut self, order: &mut Document, delta: &mut Delta) {
        let item = self.item();
        let items = items(order);
        delta
            .updated
            .insert(format!("items.{}", items.len()), item.clone());
        items.push(Bson::Document(item));
    }

    fn recompute_amount(&mut self, order: &mut Document, delta: &mut Delta) {
        let cents: i64 = items(order)
            .iter()
            .filter_map(|i| match i {
                Bson::Document(d) => Some(item_cents(d)),
                _ => None,
            })
            .sum();
        set_top(order, delta, "amount", cents_to_f64(cents).into());
    }
}

/// The order's `items` array (created empty if missing, which the workload never does).
fn items(order: &mut Document) -> &mut Vec<Bson> {
    if !matches!(order.get("items"), Some(Bson::Array(_))) {
        order.insert("items", Bson::Array(Vec::new()));
    }
    match order.get_mut("items") {
        Some(Bson::Array(a)) => a,
        _ => unreachable!("items was just made an array"),
    }
}

/// Sets a top-level field: in place when present, appended otherwise.
fn set_top(order: &mut Document, delta: &mut Delta, field: &str, value: Bson) {
    order.insert(field, value.clone());
    delta.updated.insert(field, value);
}

/// Sets `shipping.<field>`, creating the `shipping` document when missing.
fn set_shipping(order: &mut Document, delta: &mut Delta, field: &str, value: Bson) {
    match order.get_mut("shipping") {
        Some(Bson::Document(shipping)) => {
            shipping.insert(field, value.clone());
        }
        _ => {
            let mut shipping = Document::new();
            shipping.insert(field, value.clone());
            order.insert("shipping", shipping);
        }
    }
    delta.updated.insert(format!("shipping.{field}"), value);
}

fn item_cents(item: &Document) -> i64 {
    let qty = i64::from(item.get_i32("qty").unwrap_or(0));
    let price = item.get_f64("price").unwrap_or(0.0);
    qty * (price * 100.0).round() as i64
}

fn cents_to_f64(cents: i64) -> f64 {
    cents as f64 / 100.0
}

impl Iterator for OrdersWorkload {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let event = self.next_document()?;
        Some(extjson::to_json(&event, self.config.canonical))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.config.events - self.emitted;
        (n, Some(n))
    }
}

impl ExactSizeIterator for OrdersWorkload {}

/// Buffered output is flushed to the writer in chunks of about this many bytes.
const CHUNK: usize = 1 << 16;

/// Writes the workload as JSON lines (each line ends with `\n`) and returns the number of events
/// written.
///
/// ```
/// use changeflow_testkit::orders::{OrdersConfig, write_json_lines};
///
/// let mut out = Vec::new();
/// let n = write_json_lines(OrdersConfig { events: 5, ..OrdersConfig::default() }, &mut out).unwrap();
/// assert_eq!(n, 5);
/// assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 5);
/// ```
pub fn write_json_lines(config: OrdersConfig, out: &mut impl Write) -> io::Result<usize> {
    let canonical = config.canonical;
    let mut workload = OrdersWorkload::new(config);
    let mut buf = String::with_capacity(CHUNK + 4096);
    let mut n = 0;
    while let Some(event) = workload.next_document() {
        extjson::write_document(&mut buf, &event, canonical);
        buf.push('\n');
        n += 1;
        if buf.len() >= CHUNK {
            out.write_all(buf.as_bytes())?;
            buf.clear();
        }
    }
    out.write_all(buf.as_bytes())?;
    Ok(n)
}

/// Writes the same events as [`write_json_lines`] as concatenated BSON documents (the `bson`
/// crate's encoding) and returns the number of events written. `config.canonical` is irrelevant
/// here.
///
/// ```
/// use changeflow_testkit::orders::{OrdersConfig, write_bson};
///
/// let mut out = Vec::new();
/// let n = write_bson(OrdersConfig { events: 2, ..OrdersConfig::default() }, &mut out).unwrap();
/// assert_eq!(n, 2);
/// let first = bson::Document::from_reader(&mut out.as_slice()).unwrap();
/// assert_eq!(first.get_str("operationType").unwrap(), "insert");
/// ```
pub fn write_bson(config: OrdersConfig, out: &mut impl Write) -> io::Result<usize> {
    let mut workload = OrdersWorkload::new(config);
    let mut buf = Vec::with_capacity(CHUNK + 4096);
    let mut n = 0;
    while let Some(event) = workload.next_document() {
        event.to_writer(&mut buf).map_err(io::Error::other)?;
        n += 1;
        if buf.len() >= CHUNK {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;
    use crate::reference::{ReferenceModel, id_key, parse_json_line};

    fn config(seed: u64, events: usize) -> OrdersConfig {
        OrdersConfig {
            seed,
            events,
            ..OrdersConfig::default()
        }
    }

    /// bson's own Extended JSON route: `serde_json::Value` → `bson::Document::try_from`.
    fn via_bson_route(line: &str) -> Document {
        match serde_json::from_str::<serde_json::Value>(line).expect("valid JSON") {
            serde_json::Value::Object(map) => Document::try_from(map).expect("valid Extended JSON"),
            other => panic!("not an object: {other}"),
        }
    }

    fn bytes(doc: &Document) -> Vec<u8> {
        doc.to_vec().expect("encodable")
    }

    fn check_order_types(order: &Document) {
        assert!(
            matches!(order.get("_id"), Some(Bson::ObjectId(_))),
            "{order}"
        );
        assert!(
            matches!(order.get("customer_id"), Some(Bson::Int32(1..=5000))),
            "{order}"
        );
        assert!(
            matches!(order.get("region"), Some(Bson::String(_))),
            "{order}"
        );
        assert!(
            matches!(order.get("amount"), Some(Bson::Double(_))),
            "{order}"
        );
        assert!(
            matches!(order.get("ts"), Some(Bson::DateTime(_))),
            "{order}"
        );
        if let Some(status) = order.get("status") {
            assert!(matches!(status, Bson::String(s) if STATUSES.contains(&s.as_str())));
        }
        let Some(Bson::Array(items)) = order.get("items") else {
            panic!("no items: {order}");
        };
        assert!(!items.is_empty() && items.len() <= MAX_ITEMS);
        for item in items {
            let Bson::Document(item) = item else {
                panic!("item is not a document: {order}");
            };
            assert!(matches!(item.get("sku"), Some(Bson::String(_))));
            assert!(matches!(item.get("qty"), Some(Bson::Int32(_))));
            assert!(matches!(item.get("price"), Some(Bson::Double(_))));
        }
    }

    #[test]
    fn every_line_parses_with_the_bson_route_relaxed_and_canonical() {
        for canonical in [false, true] {
            let cfg = OrdersConfig {
                canonical,
                ..config(11, 10_000)
            };
            for line in OrdersWorkload::new(cfg) {
                assert!(!line.ends_with('\n'));
                let event = via_bson_route(&line);
                assert!(matches!(event.get("clusterTime"), Some(Bson::Timestamp(_))));
                assert!(matches!(event.get("wallTime"), Some(Bson::DateTime(_))));
                assert!(matches!(
                    event
                        .get_document("documentKey")
                        .expect("documentKey")
                        .get("_id"),
                    Some(Bson::ObjectId(_))
                ));
                if let Ok(full) = event.get_document("fullDocument") {
                    check_order_types(full);
                }
                if let Ok(lsid) = event.get_document("lsid") {
                    let id = lsid.get_binary_generic("id");
                    assert!(id.is_err(), "lsid.id must be a UUID (subtype 4)");
                    assert!(
                        matches!(lsid.get("id"), Some(Bson::Binary(b)) if b.subtype == BinarySubtype::Uuid && b.bytes.len() == 16)
                    );
                    assert!(
                        matches!(lsid.get("uid"), Some(Bson::Binary(b)) if b.subtype == BinarySubtype::Generic && b.bytes.len() == 32)
                    );
                    let txn = event.get("txnNumber").expect("txnNumber");
                    if canonical {
                        assert!(matches!(txn, Bson::Int64(_)));
                    } else {
                        // MongoDB's relaxed rule: an int64 is a plain number.
                        assert!(matches!(txn, Bson::Int32(_) | Bson::Int64(_)));
                    }
                }
            }
        }
    }

    #[test]
    fn json_and_bson_outputs_are_the_same_events() {
        for canonical in [false, true] {
            let cfg = OrdersConfig {
                canonical,
                ..config(5, 3_000)
            };
            let mut json = Vec::new();
            let mut bin = Vec::new();
            assert_eq!(
                write_json_lines(cfg.clone(), &mut json).expect("json"),
                3_000
            );
            assert_eq!(write_bson(cfg.clone(), &mut bin).expect("bson"), 3_000);
            let text = String::from_utf8(json).expect("utf-8");
            let mut reader = bin.as_slice();
            let mut n = 0;
            for (line, direct) in text.lines().zip(OrdersWorkload::new(cfg)) {
                assert_eq!(line, direct);
                let mut from_json = parse_json_line(line).expect("parses");
                let from_bson = Document::from_reader(&mut reader).expect("BSON document");
                if !canonical {
                    // Relaxed JSON turns a small int64 into an int32 (MongoDB's rule).
                    if let Some(Bson::Int32(t)) = from_json.get("txnNumber") {
                        let t = i64::from(*t);
                        from_json.insert("txnNumber", t);
                    }
                }
                assert_eq!(bytes(&from_json), bytes(&from_bson), "{line}");
                n += 1;
            }
            assert_eq!(n, 3_000);
            assert!(reader.is_empty());
        }
    }

    #[test]
    fn operation_mix_and_fractions_over_100k_events() {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let (mut in_txn, mut updates_with_full) = (0usize, 0usize);
        let mut workload = OrdersWorkload::new(config(2024, 100_000));
        let mut regions: BTreeMap<String, usize> = BTreeMap::new();
        while let Some(event) = workload.next_document() {
            let op = event.get_str("operationType").expect("op").to_string();
            if op == "update" && event.contains_key("fullDocument") {
                updates_with_full += 1;
            }
            if op == "insert" {
                let full = event.get_document("fullDocument").expect("full");
                *regions
                    .entry(full.get_str("region").expect("region").into())
                    .or_default() += 1;
            }
            *counts.entry(op).or_default() += 1;
            if event.contains_key("lsid") {
                in_txn += 1;
            }
        }
        let total = 100_000.0;
        let fraction = |op: &str| counts.get(op).copied().unwrap_or(0) as f64 / total;
        assert!((fraction("insert") - 0.60).abs() < 0.015, "{counts:?}");
        assert!((fraction("update") - 0.27).abs() < 0.015, "{counts:?}");
        assert!((fraction("replace") - 0.03).abs() < 0.005, "{counts:?}");
        assert!((fraction("delete") - 0.10).abs() < 0.01, "{counts:?}");
        assert_eq!(counts.values().sum::<usize>(), 100_000);
        assert!((in_txn as f64 / total - 0.1).abs() < 0.015, "{in_txn}");
        let full = updates_with_full as f64 / counts["update"] as f64;
        assert!((full - 0.5).abs() < 0.02, "{full}");
        // Skewed regions: us-east most frequent, af-south rarest, all present.
        assert_eq!(regions.len(), 8);
        let max = regions.iter().max_by_key(|(_, n)| **n).expect("max").0;
        let min = regions.iter().min_by_key(|(_, n)| **n).expect("min").0;
        assert_eq!((max.as_str(), min.as_str()), ("us-east", "af-south"));
    }

    #[test]
    fn fraction_extremes() {
        let none = OrdersConfig {
            txn_fraction: 0.0,
            full_document_on_update: 0.0,
            ..config(3, 5_000)
        };
        let all = OrdersConfig {
            txn_fraction: 1.0,
            full_document_on_update: 1.0,
            ..config(3, 5_000)
        };
        let mut w = OrdersWorkload::new(none);
        while let Some(e) = w.next_document() {
            assert!(!e.contains_key("lsid"));
            if e.get_str("operationType").ok() == Some("update") {
                assert!(!e.contains_key("fullDocument"));
            }
        }
        let mut w = OrdersWorkload::new(all);
        while let Some(e) = w.next_document() {
            assert!(e.contains_key("lsid"));
            if e.get_str("operationType").ok() == Some("update") {
                assert!(e.contains_key("fullDocument"));
            }
        }
    }

    #[test]
    fn same_seed_same_output_different_seed_differs() {
        let a: Vec<String> = OrdersWorkload::new(config(77, 5_000)).collect();
        let b: Vec<String> = OrdersWorkload::new(config(77, 5_000)).collect();
        let c: Vec<String> = OrdersWorkload::new(config(78, 5_000)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        // A prefix of a longer run is the shorter run.
        let longer: Vec<String> = OrdersWorkload::new(config(77, 6_000)).take(4_000).collect();
        assert_eq!(&a[..4_000], &longer[..]);
        let mut x = Vec::new();
        let mut y = Vec::new();
        write_bson(config(77, 2_000), &mut x).expect("bson");
        write_bson(config(77, 2_000), &mut y).expect("bson");
        assert_eq!(x, y);
    }

    #[test]
    fn updates_with_full_document_match_the_reference_model() {
        for canonical in [false, true] {
            let cfg = OrdersConfig {
                canonical,
                ..config(99, 20_000)
            };
            let mut workload = OrdersWorkload::new(cfg.clone());
            let mut model = ReferenceModel::new();
            let mut checked = 0;
            for line in workload.by_ref() {
                let event = parse_json_line(&line).expect("parses");
                model.apply(&event).expect("applies");
                if let Ok(full) = event.get_document("fullDocument") {
                    let id = event
                        .get_document("documentKey")
                        .expect("key")
                        .get("_id")
                        .expect("_id");
                    let state = model.get("shop.orders", id).expect("live");
                    // Byte equality: same fields, same order, same types.
                    assert_eq!(bytes(state), bytes(full), "{line}");
                    checked += 1;
                }
            }
            assert!(checked > 10_000);
            assert_eq!(model.unapplied(), 0);
            // The whole final state agrees with the generator's own, field order included.
            let expected: BTreeMap<(String, String), Vec<u8>> = workload
                .live_documents()
                .map(|d| {
                    let id = d.get("_id").expect("_id");
                    (("shop.orders".to_string(), id_key(id)), bytes(d))
                })
                .collect();
            let actual: BTreeMap<(String, String), Vec<u8>> = model
                .documents()
                .iter()
                .map(|(k, d)| (k.clone(), bytes(d)))
                .collect();
            assert_eq!(expected, actual);
        }
    }

    #[test]
    fn tokens_times_and_transactions() {
        let cfg = config(8, 50_000);
        let start = cfg.start_time;
        let mut workload = OrdersWorkload::new(cfg);
        let mut previous: Option<(String, u32, u32, bool)> = None;
        let mut ids = HashSet::new();
        let mut txn_sizes: BTreeMap<(u32, u32), usize> = BTreeMap::new();
        let mut first = true;
        while let Some(event) = workload.next_document() {
            let token = event
                .get_document("_id")
                .and_then(|d| d.get_str("_data"))
                .expect("token")
                .to_string();
            let Some(Bson::Timestamp(ts)) = event.get("clusterTime") else {
                panic!("no clusterTime");
            };
            if first {
                assert_eq!(ts.time, start);
                first = false;
            }
            assert_eq!(
                &token[..18],
                format!("82{:08X}{:08X}", ts.time, ts.increment)
            );
            assert_eq!(token, token.to_uppercase());
            assert_eq!(token.len() % 2, 0);
            let wall = event
                .get_datetime("wallTime")
                .expect("wallTime")
                .timestamp_millis();
            assert_eq!(wall / 1000, i64::from(ts.time));
            let oid = event
                .get_document("documentKey")
                .expect("key")
                .get_object_id("_id")
                .expect("oid");
            assert!(token.contains(&oid.to_hex().to_uppercase()));
            let in_txn = event.contains_key("lsid");
            if in_txn {
                *txn_sizes.entry((ts.time, ts.increment)).or_default() += 1;
            }
            if let Some((prev, t, i, prev_txn)) = &previous {
                assert!(token > *prev, "{prev} !< {token}");
                let same_time = (*t, *i) == (ts.time, ts.increment);
                if !(in_txn && *prev_txn && same_time) {
                    assert!((*t, *i) < (ts.time, ts.increment), "times must increase");
                }
            }
            if event.get_str("operationType").ok() == Some("insert") {
                assert!(ids.insert(oid), "duplicate ObjectId {oid}");
            }
            previous = Some((token, ts.time, ts.increment, in_txn));
        }
        assert!(txn_sizes.len() > 500);
        // The last transaction may be cut short by the end of the workload.
        let sizes: Vec<usize> = txn_sizes.values().copied().collect();
        assert!(
            sizes[..sizes.len() - 1].iter().all(|n| (2..=6).contains(n)),
            "{sizes:?}"
        );
    }

    #[test]
    fn realistic_updates_are_all_present() {
        let mut workload = OrdersWorkload::new(config(31, 60_000));
        let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
        // (txnNumber, lsid.id) → the transaction's (operationType, _id) in order.
        type TxnKey = (i64, Vec<u8>);
        let mut txn_touched: BTreeMap<TxnKey, Vec<(String, ObjectId)>> = BTreeMap::new();
        let mut live_shipping: HashSet<ObjectId> = HashSet::new();
        let mut lengths: HashMap<ObjectId, usize> = HashMap::new();
        while let Some(event) = workload.next_document() {
            let op = event.get_str("operationType").expect("op").to_string();
            let id = event
                .get_document("documentKey")
                .expect("key")
                .get_object_id("_id")
                .expect("oid");
            if let Ok(lsid) = event.get_document("lsid") {
                let session = match lsid.get("id") {
                    Some(Bson::Binary(b)) => b.bytes.clone(),
                    _ => panic!("lsid.id"),
                };
                let number = match event.get("txnNumber") {
                    Some(Bson::Int64(n)) => *n,
                    _ => panic!("txnNumber is an int64"),
                };
                txn_touched
                    .entry((number, session))
                    .or_default()
                    .push((op.clone(), id));
            }
            match op.as_str() {
                "insert" | "replace" => {
                    let full = event.get_document("fullDocument").expect("full");
                    lengths.insert(id, full.get_array("items").expect("items").len());
                    live_shipping.remove(&id);
                }
                "delete" => {
                    assert_eq!(event.keys().filter(|k| *k == "fullDocument").count(), 0);
                    lengths.remove(&id);
                    live_shipping.remove(&id);
                }
                "update" => {
                    let d = event
                        .get_document("updateDescription")
                        .expect("updateDescription");
                    let updated = d.get_document("updatedFields").expect("updatedFields");
                    let removed = d.get_array("removedFields").expect("removedFields");
                    let truncated = d.get_array("truncatedArrays").expect("truncatedArrays");
                    let mut len = lengths[&id];
                    for t in truncated {
                        let Bson::Document(t) = t else { panic!() };
                        let k = t.get_i32("newSize").expect("newSize") as usize;
                        assert!(k < len);
                        len = k;
                        *seen.entry("truncate").or_default() += 1;
                    }
                    for (path, _) in updated {
                        match path.as_str() {
                            "region" => *seen.entry("region").or_default() += 1,
                            "customer_id" => *seen.entry("customer_id").or_default() += 1,
                            "status" => *seen.entry("status").or_default() += 1,
                            "amount" => *seen.entry("amount").or_default() += 1,
                            "shipping.carrier" if !live_shipping.contains(&id) => {
                                *seen.entry("new nested path").or_default() += 1;
                            }
                            p if p.starts_with("items.") => {
                                let parts: Vec<&str> = p.split('.').collect();
                                let index: usize = parts[1].parse().expect("index");
                                if parts.len() == 2 {
                                    assert_eq!(index, len, "append at the current length");
                                    len += 1;
                                    *seen.entry("append").or_default() += 1;
                                } else {
                                    assert!(index < len);
                                    *seen
                                        .entry(if parts[2] == "qty" {
                                            "items.k.qty"
                                        } else {
                                            "items.k.price"
                                        })
                                        .or_default() += 1;
                                }
                            }
                            _ => {}
                        }
                        if path.starts_with("shipping") {
                            live_shipping.insert(id);
                        }
                    }
                    for r in removed {
                        if r.as_str() == Some("shipping") {
                            live_shipping.remove(&id);
                        }
                        *seen.entry("removed").or_default() += 1;
                    }
                    if !truncated.is_empty()
                        && updated
                            .keys()
                            .any(|k| k.matches('.').count() == 1 && k.starts_with("items."))
                    {
                        *seen.entry("truncate then append").or_default() += 1;
                    }
                    lengths.insert(id, len);
                }
                other => panic!("unexpected {other}"),
            }
        }
        let mut same_doc_twice = 0;
        let mut insert_then_update = 0;
        for events in txn_touched.values() {
            for (n, (op, id)) in events.iter().enumerate() {
                if op == "update" {
                    if events[..n].iter().any(|(o, i)| o == "update" && i == id) {
                        same_doc_twice += 1;
                    }
                    if events[..n].iter().any(|(o, i)| o == "insert" && i == id) {
                        insert_then_update += 1;
                    }
                }
            }
        }
        for kind in [
            "region",
            "customer_id",
            "status",
            "amount",
            "new nested path",
            "append",
            "items.k.qty",
            "items.k.price",
            "removed",
            "truncate",
            "truncate then append",
        ] {
            assert!(
                seen.get(kind).copied().unwrap_or(0) > 20,
                "{kind}: {seen:?}"
            );
        }
        assert!(same_doc_twice > 10, "{same_doc_twice}");
        assert!(insert_then_update > 10, "{insert_then_update}");
    }

    #[test]
    fn relaxed_doubles_always_print_as_doubles() {
        for line in OrdersWorkload::new(config(4, 2_000)) {
            let event = via_bson_route(&line);
            if let Ok(full) = event.get_document("fullDocument") {
                check_order_types(full);
            }
        }
        let d = doc! { "amount": 12.0 };
        assert_eq!(extjson::to_json(&d, false), r#"{"amount":12.0}"#);
    }
}
