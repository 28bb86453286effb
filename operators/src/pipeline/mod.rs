//! MongoDB aggregation pipelines as incremental views.
//!
//! A pipeline is parsed and checked before anything runs ([`parse`]), then compiled into
//! differential operators over the document state of one namespace ([`compile`]): the view's
//! contents at every closed time equal what `db.coll.aggregate(pipeline)` returns over the
//! collection at that time.
//!
//! * [`parse`]: stages, with positions, refusals and nearest-name suggestions.
//! * [`apply`]: the per-document stages.
//! * [`group`]: `$group` accumulators.
//! * [`compile`]: the dataflow, and [`compile::PipelineView`] — the entry point.
//!
//! ```
//! use changeflow_core::{ChangeEvent, ClusterTime};
//! use changeflow_operators::documents::{document_state, DocumentStats};
//! use changeflow_operators::handle::ViewHandle;
//! use changeflow_operators::pipeline::compile::PipelineView;
//! let insert = |id: u32, region: &str| ChangeEvent::from_json(format!(r#"{{"_id": {{"_data": "82{id:08X}0000000104"}},
//!     "operationType": "insert", "clusterTime": {{"$timestamp": {{"t": {id}, "i": 0}}}}, "ns": {{"db": "shop", "coll": "orders"}},
//!     "documentKey": {{"_id": {id}}}, "fullDocument": {{"_id": {id}, "region": "{region}"}}}}"#).as_bytes()).unwrap();
//! let events = vec![insert(1, "eu"), insert(2, "us"), insert(3, "eu")];
//! let view = PipelineView::from_json("shop.orders", r#"[{"$group": {"_id": "$region", "n": {"$sum": 1}}}, {"$sort": {"n": -1}}]"#).unwrap();
//! let handle = ViewHandle::new();
//! let reader = handle.clone();
//! timely::execute_directly(move |worker| {
//!     worker.dataflow::<ClusterTime, _, _>(|scope| {
//!         let docs = document_state(changeflow_sources::memory::from_events(scope, events), DocumentStats::new());
//!         handle.attach(view.build(docs));
//!     });
//! });
//! let rows: Vec<bson::Document> = reader.snapshot().rows.iter()
//!     .map(|((_, doc), _)| bson::Document::from_reader(doc.as_bytes()).unwrap()).collect();
//! assert_eq!(rows, vec![bson::doc! {"_id": "eu", "n": 2}, bson::doc! {"_id": "us", "n": 1}]);
//! ```

pub mod apply;
pub mod compile;
pub mod group;
pub mod parse;
