//! Helpers shared by the operator tests.

use std::collections::BTreeMap;

use changeflow_core::ClusterTime;
use changeflow_operators::documents::DocKey;
use changeflow_testkit::reference::id_key;

/// Document-state updates as captured from a dataflow.
pub type DocUpdates = Vec<((DocKey, changeflow_core::Document), ClusterTime, isize)>;

/// The live documents at `time`, keyed like the reference model (`(ns, id_key)`), as BSON bytes.
/// Asserts that every version has multiplicity 0 or 1 and every key one live version.
pub fn state_at(updates: &DocUpdates, time: ClusterTime) -> BTreeMap<(String, String), Vec<u8>> {
    let mut counts: BTreeMap<(DocKey, Vec<u8>), isize> = BTreeMap::new();
    for ((key, doc), t, diff) in updates {
        if *t <= time {
            *counts
                .entry((key.clone(), doc.as_bytes().to_vec()))
                .or_default() += diff;
        }
    }
    let mut out = BTreeMap::new();
    for ((key, bytes), n) in counts {
        assert!(n == 0 || n == 1, "a version with multiplicity {n}");
        if n == 1 {
            let (k, value) = key.id();
            let mut w = changeflow_core::raw::DocWriter::new();
            w.append(k, "_id", value);
            let id = bson::Document::from_reader(&w.finish()[..])
                .expect("id")
                .get("_id")
                .cloned()
                .expect("_id");
            let previous = out.insert((key.ns().to_string(), id_key(&id)), bytes);
            assert!(previous.is_none(), "two live versions of {key}");
        }
    }
    out
}
