//! The bank-transfer workload: money moves between accounts inside transactions, so the total
//! of all balances never changes — except in the middle of a transaction.
//!
//! A reader that ever sees a different total has seen part of a transaction. The workload is
//! built to make that easy to get wrong:
//!
//! * the accounts are opened by **one transaction** of `accounts` inserts spread over several
//!   oplog entries (clusterTimes), so the total jumps from 0 to its final value at one time;
//! * a transfer transaction moves money along a chain of 1–`max_hops` hops (`A → B → C`), so an
//!   account can be updated several times in one transaction;
//! * a fraction of transactions spans several oplog entries, each with its own clusterTime
//!   (`multi_entry_fraction`);
//! * with `interleave_fraction > 0` two transactions on disjoint accounts (two shards) and a
//!   plain event are interleaved **at one clusterTime**, as a sharded cluster's merged stream
//!   does;
//! * plain events between transactions (`plain_fraction`) change nothing the invariant sees:
//!   a note on an account, or a new account opened with balance 0.
//!
//! Updates carry only `updateDescription` (`{balance: <new value>}`), never `fullDocument`, so a
//! consumer has to apply them in order to be right.
//!
//! Documents: `{_id: int32, owner: string, balance: int64, note?: string}` in `bank.accounts`.
//! Tokens are `82` + `t` + `i` (8 hex digits each) + `2B` + a sequence number within the
//! clusterTime (8 hex digits) + `04`: they order as the stream does.
//!
//! ```
//! use changeflow_testkit::bank::{BankConfig, BankWorkload};
//! use changeflow_testkit::reference::ReferenceModel;
//! let config = BankConfig { seed: 3, events: 500, ..BankConfig::default() };
//! let total = config.total();
//! let mut model = ReferenceModel::new();
//! for event in BankWorkload::new(config) {
//!     model.apply(&event).unwrap();
//! }
//! let sum: i64 = model.documents().values().map(|d| d.get_i64("balance").unwrap()).sum();
//! assert_eq!(sum, total);
//! ```

use std::io::{self, Write};

use bson::spec::BinarySubtype;
use bson::{Binary, Bson, DateTime, Document, Timestamp, doc};

use crate::extjson;
use crate::rng::Rng;

/// The database of the workload.
pub const DB: &str = "bank";
/// The collection of the workload.
pub const COLLECTION: &str = "accounts";

/// How the bank workload is generated.
#[derive(Clone, Debug, PartialEq)]
pub struct BankConfig {
    /// Seed of the PRNG.
    pub seed: u64,
    /// Accounts opened by the first transaction.
    pub accounts: u32,
    /// Balance of each opened account.
    pub initial_balance: i64,
    /// Stop after the transaction or event that reaches this many events.
    pub events: usize,
    /// Probability that the next step is a plain (non-transactional) event.
    pub plain_fraction: f64,
    /// Probability that a transaction spans several oplog entries (clusterTimes).
    pub multi_entry_fraction: f64,
    /// Probability that a step is two interleaved transactions at one clusterTime (sharded).
    pub interleave_fraction: f64,
    /// At most this many hops per transfer (each hop is two updates).
    pub max_hops: u32,
    /// Events per oplog entry of the opening transaction.
    pub entry_size: usize,
    /// `clusterTime` seconds of the first event.
    pub start_time: u32,
}

impl Default for BankConfig {
    /// 100 accounts of 10 000, 10 000 events, 20 % plain, 25 % multi-entry, no interleaving,
    /// up to 3 hops.
    fn default() -> Self {
        BankConfig {
            seed: 0,
            accounts: 100,
            initial_balance: 10_000,
            events: 10_000,
            plain_fraction: 0.2,
            multi_entry_fraction: 0.25,
            interleave_fraction: 0.0,
            max_hops: 3,
            entry_size: 16,
            start_time: 1_700_000_000,
        }
    }
}

impl BankConfig {
    /// The total of all balances once the accounts are open (it never changes after that).
    pub fn total(&self) -> i64 {
        i64::from(self.accounts) * self.initial_balance
    }
}

/// One event being built: account, change, transaction (session index and number).
struct Pending {
    account: i32,
    kind: Kind,
    txn: Option<(usize, i64)>,
}

enum Kind {
    Open { balance: i64 },
    Balance(i64),
    Note(String),
}

/// The generator: an iterator of change events as `bson::Document`s.
pub struct BankWorkload {
    config: BankConfig,
    rng: Rng,
    balances: Vec<i64>,
    sessions: Vec<([u8; 16], i64)>,
    uid: [u8; 32],
    clock: (u32, u32),
    seq: u32,
    emitted: usize,
    queue: std::collections::VecDeque<Document>,
    opened: bool,
}

impl BankWorkload {
    /// Creates the generator.
    pub fn new(config: BankConfig) -> Self {
        let mut rng = Rng::new(config.seed);
        let mut uid = [0u8; 32];
        rng.fill_bytes(&mut uid);
        let sessions = (0..8)
            .map(|_| {
                let mut id = [0u8; 16];
                rng.fill_bytes(&mut id);
                id[6] = (id[6] & 0x0F) | 0x40;
                id[8] = (id[8] & 0x3F) | 0x80;
                (id, 0)
            })
            .collect();
        let clock = (config.start_time, 0);
        BankWorkload {
            config,
            rng,
            balances: Vec::new(),
            sessions,
            uid,
            clock,
            seq: 0,
            emitted: 0,
            queue: Default::default(),
            opened: false,
        }
    }

    /// The balances after the events produced so far, by account id (1-based).
    pub fn balances(&self) -> &[i64] {
        &self.balances
    }

    /// A new oplog entry: the next clusterTime.
    fn tick(&mut self) {
        let (t, i) = self.clock;
        self.clock = if self.rng.chance(0.2) {
            (t + 1, 1)
        } else {
            (t, i + 1)
        };
        self.seq = 0;
    }

    fn begin_txn(&mut self) -> (usize, i64) {
        let s = self.rng.index(self.sessions.len());
        self.sessions[s].1 += 1;
        (s, self.sessions[s].1)
    }

    /// The events of one transfer chain starting from an account in `pool`, applied to the
    /// balances.
    fn transfer(&mut self, pool: &[i32], txn: (usize, i64)) -> Vec<Pending> {
        let mut events = Vec::new();
        let hops = self
            .rng
            .range_inclusive(1, i64::from(self.config.max_hops.max(1)));
        let mut from = pool[self.rng.index(pool.len())];
        for _ in 0..hops {
            let mut to = pool[self.rng.index(pool.len())];
            if to == from {
                to = pool[(pool.iter().position(|a| *a == from).unwrap_or(0) + 1) % pool.len()];
            }
            let available = self.balances[(from - 1) as usize].max(0);
            let amount = self.rng.range_inclusive(0, available.min(5_000));
            for (account, delta) in [(from, -amount), (to, amount)] {
                let slot = &mut self.balances[(account - 1) as usize];
                *slot += delta;
                events.push(Pending {
                    account,
                    kind: Kind::Balance(*slot),
                    txn: Some(txn),
                });
            }
            from = to;
        }
        events
    }

    fn plain(&mut self, pool: &[i32]) -> Pending {
        if self.rng.chance(0.1) {
            self.balances.push(0);
            Pending {
                account: self.balances.len() as i32,
                kind: Kind::Open { balance: 0 },
                txn: None,
            }
        } else {
            let account = pool[self.rng.index(pool.len())];
            Pending {
                account,
                kind: Kind::Note(format!("n{}", self.rng.below(1_000_000))),
                txn: None,
            }
        }
    }

    /// Emits `events` as oplog entries: one clusterTime, or several when `multi_entry`.
    fn emit(&mut self, events: Vec<Pending>, multi_entry: bool) {
        self.tick();
        let cut = if multi_entry && events.len() > 1 {
            self.rng.range_inclusive(1, (events.len() - 1) as i64) as usize
        } else {
            usize::MAX
        };
        for (n, pending) in events.into_iter().enumerate() {
            if n > 0 && (n == cut || (multi_entry && n % self.config.entry_size.max(1) == 0)) {
                self.tick();
            }
            let event = self.event(pending);
            self.queue.push_back(event);
        }
    }

    fn step(&mut self) {
        if !self.opened {
            self.opened = true;
            let txn = self.begin_txn();
            let n = self.config.accounts.max(2);
            self.balances = vec![self.config.initial_balance; n as usize];
            let events = (1..=n as i32)
                .map(|account| Pending {
                    account,
                    kind: Kind::Open {
                        balance: self.config.initial_balance,
                    },
                    txn: Some(txn),
                })
                .collect();
            let multi = self.config.entry_size < n as usize;
            return self.emit(events, multi);
        }
        let accounts: Vec<i32> = (1..=self.balances.len() as i32).collect();
        if self.rng.chance(self.config.interleave_fraction) {
            // Two shards: disjoint halves of the accounts, one transaction each, and a plain
            // event, interleaved at one clusterTime.
            let (left, right) = accounts.split_at(accounts.len() / 2);
            let (a, b) = (self.begin_txn(), self.begin_txn());
            let mut first = self.transfer(left, a).into_iter();
            let mut second = self.transfer(right, b).into_iter();
            let mut events = Vec::new();
            loop {
                let (x, y) = (first.next(), second.next());
                if x.is_none() && y.is_none() {
                    break;
                }
                events.extend(x);
                events.extend(y);
                if events.len() == 2 {
                    // A new account (another shard's plain insert), between them.
                    self.balances.push(0);
                    events.push(Pending {
                        account: self.balances.len() as i32,
                        kind: Kind::Open { balance: 0 },
                        txn: None,
                    });
                }
            }
            return self.emit(events, false);
        }
        if self.rng.chance(self.config.plain_fraction) {
            let event = self.plain(&accounts);
            return self.emit(vec![event], false);
        }
        let txn = self.begin_txn();
        let events = self.transfer(&accounts, txn);
        let multi = self.rng.chance(self.config.multi_entry_fraction);
        self.emit(events, multi)
    }

    fn event(&mut self, pending: Pending) -> Document {
        let (t, i) = self.clock;
        let token = format!("82{t:08X}{i:08X}2B{:08X}04", self.seq);
        self.seq += 1;
        let operation = match pending.kind {
            Kind::Open { .. } => "insert",
            _ => "update",
        };
        let mut event = doc! {
            "_id": { "_data": token },
            "operationType": operation,
            "clusterTime": Timestamp { time: t, increment: i },
            "wallTime": DateTime::from_millis(i64::from(t) * 1000 + i64::from(i % 1000)),
            "ns": { "db": DB, "coll": COLLECTION },
            "documentKey": { "_id": pending.account },
        };
        match pending.kind {
            Kind::Open { balance } => {
                event.insert(
                    "fullDocument",
                    doc! { "_id": pending.account, "owner": format!("acct-{}", pending.account), "balance": balance },
                );
            }
            Kind::Balance(balance) => {
                event.insert("updateDescription", update(doc! { "balance": balance }));
            }
            Kind::Note(note) => {
                event.insert("updateDescription", update(doc! { "note": note }));
            }
        }
        if let Some((session, number)) = pending.txn {
            event.insert(
                "lsid",
                doc! {
                    "id": Binary { subtype: BinarySubtype::Uuid, bytes: self.sessions[session].0.to_vec() },
                    "uid": Binary { subtype: BinarySubtype::Generic, bytes: self.uid.to_vec() },
                },
            );
            event.insert("txnNumber", number);
        }
        event
    }
}

fn update(updated: Document) -> Document {
    doc! { "updatedFields": updated, "removedFields": Vec::<Bson>::new(), "truncatedArrays": Vec::<Bson>::new() }
}

impl Iterator for BankWorkload {
    type Item = Document;

    fn next(&mut self) -> Option<Document> {
        if self.queue.is_empty() && self.emitted < self.config.events {
            self.step();
        }
        let event = self.queue.pop_front()?;
        self.emitted += 1;
        Some(event)
    }
}

/// Writes the workload as relaxed Extended JSON lines; returns the number of events.
pub fn write_json_lines(config: BankConfig, out: &mut impl Write) -> io::Result<usize> {
    let mut n = 0;
    let mut line = String::new();
    for event in BankWorkload::new(config) {
        line.clear();
        extjson::write_document(&mut line, &event, false);
        line.push('\n');
        out.write_all(line.as_bytes())?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn_of(event: &Document) -> Option<(Vec<u8>, i64)> {
        let lsid = event.get_document("lsid").ok()?;
        let id = match lsid.get("id")? {
            Bson::Binary(b) => b.bytes.clone(),
            _ => return None,
        };
        Some((id, event.get_i64("txnNumber").ok()?))
    }

    #[test]
    fn streams_are_in_token_and_time_order_and_transactions_balance() {
        let config = BankConfig {
            seed: 11,
            events: 3_000,
            interleave_fraction: 0.2,
            ..BankConfig::default()
        };
        let events: Vec<Document> = BankWorkload::new(config.clone()).collect();
        assert!(events.len() >= 3_000);
        let tokens: Vec<String> = events
            .iter()
            .map(|e| {
                e.get_document("_id")
                    .unwrap()
                    .get_str("_data")
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens increase");
        // Every transaction's balance changes sum to zero (the opening one adds the total).
        let mut sums: std::collections::HashMap<(Vec<u8>, i64), i64> = Default::default();
        let mut last: std::collections::HashMap<i32, i64> = Default::default();
        let mut times: std::collections::HashMap<(Vec<u8>, i64), Vec<Timestamp>> =
            Default::default();
        for e in &events {
            let id = e
                .get_document("documentKey")
                .unwrap()
                .get_i32("_id")
                .unwrap();
            let balance = match e.get_str("operationType").unwrap() {
                "insert" => e
                    .get_document("fullDocument")
                    .unwrap()
                    .get_i64("balance")
                    .ok(),
                _ => e
                    .get_document("updateDescription")
                    .unwrap()
                    .get_document("updatedFields")
                    .unwrap()
                    .get_i64("balance")
                    .ok(),
            };
            if let (Some(b), Some(txn)) = (balance, txn_of(e)) {
                let before = last.insert(id, b).unwrap_or(0);
                *sums.entry(txn.clone()).or_default() += b - before;
                times
                    .entry(txn)
                    .or_default()
                    .push(e.get_timestamp("clusterTime").unwrap());
            }
        }
        let opening = sums.values().filter(|s| **s == config.total()).count();
        assert_eq!(opening, 1);
        assert_eq!(sums.values().filter(|s| **s != 0).count(), 1);
        let multi = times.values().filter(|t| t.first() != t.last()).count();
        assert!(multi > 10, "{multi} multi-entry transactions");
        let interleaved = events
            .windows(2)
            .filter(|w| {
                txn_of(&w[0]).is_some()
                    && txn_of(&w[1]).is_some()
                    && txn_of(&w[0]) != txn_of(&w[1])
                    && w[0].get_timestamp("clusterTime").unwrap()
                        == w[1].get_timestamp("clusterTime").unwrap()
            })
            .count();
        assert!(interleaved > 10, "{interleaved} interleavings");
    }
}
