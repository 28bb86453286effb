//! Each watch scope, pipelines and options, against the server's log.

use bson::{Document, doc};
use changeflow_core::OperationType;
use changeflow_sources::live::{FullDocument, FullDocumentBeforeChange, WatchTarget};
use changeflow_testkit::orders::OrdersConfig;
use changeflow_testkit::server::{ChangeStreamServer, TxnOp};

use crate::support::{assert_delivered, options, run, stages};

/// A server with 600 workload events in shop.orders, then events in shop.customers and
/// other.things.
fn populated() -> ChangeStreamServer {
    let server = ChangeStreamServer::start().unwrap();
    server
        .push_workload(OrdersConfig {
            seed: 3,
            events: 600,
            ..OrdersConfig::default()
        })
        .unwrap();
    server.insert("shop", "customers", doc! { "_id": 1, "name": "Ada" });
    server.insert("other", "things", doc! { "_id": "x" });
    server.update("shop", "customers", 1, doc! { "name": "Ada L." }, &[]);
    server
}

fn log_where(server: &ChangeStreamServer, keep: impl Fn(&Document) -> bool) -> Vec<Document> {
    server.events().into_iter().filter(|e| keep(e)).collect()
}

fn ns(event: &Document) -> (String, String) {
    let ns = event.get_document("ns").unwrap();
    (
        ns.get_str("db").unwrap().into(),
        ns.get_str("coll").unwrap_or_default().into(),
    )
}

#[test]
fn a_collection_stream_delivers_that_collection_in_order() {
    let server = populated();
    let expected = log_where(&server, |e| ns(e) == ("shop".into(), "orders".into()));
    assert_eq!(expected.len(), 600);
    let mut o = options(&server, WatchTarget::collection("shop", "orders"));
    o.max_events = Some(expected.len() as u64);
    o.batch_size = Some(64);
    let run = run(o);
    assert_delivered(&run, &expected);
    // Transactions arrive whole and at one time, in the log's order.
    assert!(run.events.iter().any(|e| e.txn().is_some()));
    assert_eq!(stages(&server).len(), 1, "no restart was needed");
    // The position is the last time and the token a restart must resume after to see that
    // time again: the last event before it.
    let (time, token) = run.status.position().unwrap();
    assert_eq!(time, run.events.last().unwrap().cluster_time());
    let before_last = run.events.iter().rev().find(|e| e.cluster_time() < time);
    assert_eq!(token, before_last.map(|e| e.token()));
}

#[test]
fn a_database_stream_delivers_every_collection_of_it() {
    let server = populated();
    let expected = log_where(&server, |e| ns(e).0 == "shop");
    let mut o = options(&server, WatchTarget::Database("shop".into()));
    o.max_events = Some(expected.len() as u64);
    assert_delivered(&run(o), &expected);
    let aggregate = &server.commands_named("aggregate")[0];
    assert_eq!(aggregate.get_i32("aggregate").ok(), Some(1));
    assert_eq!(aggregate.get_str("$db").ok(), Some("shop"));
}

#[test]
fn a_deployment_stream_delivers_every_database() {
    let server = populated();
    let expected = server.events();
    let mut o = options(&server, WatchTarget::Deployment);
    o.max_events = Some(expected.len() as u64);
    assert_delivered(&run(o), &expected);
    assert_eq!(
        stages(&server)[0].get_bool("allChangesForCluster").ok(),
        Some(true)
    );
    assert_eq!(
        server.commands_named("aggregate")[0].get_str("$db").ok(),
        Some("admin")
    );
}

#[test]
fn pipeline_and_options_reach_the_server() {
    let server = populated();
    let expected = log_where(&server, |e| {
        ns(e).1 == "orders" && matches!(e.get_str("operationType"), Ok("insert" | "delete"))
    });
    let mut o = options(&server, WatchTarget::collection("shop", "orders"));
    o.pipeline = vec![doc! { "$match": { "operationType": { "$in": ["insert", "delete"] } } }];
    o.max_events = Some(expected.len() as u64);
    o.comment = Some("changeflow test".into());
    o.show_expanded_events = true;
    o.batch_size = Some(10);
    assert_delivered(&run(o), &expected);
    let aggregate = &server.commands_named("aggregate")[0];
    assert_eq!(aggregate.get_str("comment").ok(), Some("changeflow test"));
    assert_eq!(
        aggregate
            .get_document("cursor")
            .unwrap()
            .get_i32("batchSize")
            .ok(),
        Some(10)
    );
    assert_eq!(
        stages(&server)[0].get_bool("showExpandedEvents").ok(),
        Some(true)
    );
    let get_more = &server.commands_named("getMore")[0];
    assert_eq!(
        get_more
            .get_i64("maxTimeMS")
            .ok()
            .or(get_more.get_i32("maxTimeMS").ok().map(i64::from)),
        Some(50)
    );
}

#[test]
fn update_lookup_fills_updates_with_the_current_document() {
    let server = populated();
    let expected = log_where(&server, |e| ns(e) == ("shop".into(), "customers".into()));
    let mut o = options(&server, WatchTarget::collection("shop", "customers"));
    o.full_document = FullDocument::UpdateLookup;
    o.max_events = Some(expected.len() as u64);
    let run = run(o);
    assert_eq!(
        stages(&server)[0].get_str("fullDocument").ok(),
        Some("updateLookup")
    );
    let update = run
        .events
        .iter()
        .find(|e| e.operation() == &OperationType::Update)
        .unwrap();
    let full = update.full_document().unwrap().unwrap();
    assert_eq!(full.get("name").unwrap().unwrap().as_str(), Some("Ada L."));
}

#[test]
fn every_driver_option_reaches_the_server() {
    let server = ChangeStreamServer::start().unwrap();
    server.insert("shop", "orders", doc! { "_id": 1 });
    let mut o = options(&server, WatchTarget::collection("shop", "orders"));
    o.full_document = FullDocument::Required;
    o.full_document_before_change = FullDocumentBeforeChange::WhenAvailable;
    o.collation = Some(doc! { "locale": "fr" });
    o.max_events = Some(1);
    let run = run(o);
    assert!(run.status.error().is_none(), "{:?}", run.status.error());
    let stage = &stages(&server)[0];
    assert_eq!(stage.get_str("fullDocument").ok(), Some("required"));
    assert_eq!(
        stage.get_str("fullDocumentBeforeChange").ok(),
        Some("whenAvailable")
    );
    assert!(stage.contains_key("startAtOperationTime"));
    let aggregate = &server.commands_named("aggregate")[0];
    assert_eq!(
        aggregate
            .get_document("collation")
            .unwrap()
            .get_str("locale")
            .ok(),
        Some("fr")
    );
}

#[test]
fn a_transaction_arrives_whole_at_one_time_in_order() {
    let server = ChangeStreamServer::start().unwrap();
    server.insert("shop", "orders", doc! { "_id": 1, "n": 0 });
    let txn = server.transaction(vec![
        TxnOp::Insert("shop".into(), "orders".into(), doc! { "_id": 2 }),
        TxnOp::Update("shop".into(), "orders".into(), 1.into(), doc! { "n": 1 }),
        TxnOp::Delete("shop".into(), "orders".into(), 2.into()),
    ]);
    server.insert("shop", "orders", doc! { "_id": 3 });
    let mut o = options(&server, WatchTarget::collection("shop", "orders"));
    o.max_events = Some(5);
    let run = run(o);
    assert_delivered(&run, &server.events());
    let in_txn: Vec<_> = run.events.iter().filter(|e| e.txn().is_some()).collect();
    assert_eq!(in_txn.len(), txn.len());
    assert!(
        in_txn
            .iter()
            .all(|e| e.cluster_time() == in_txn[0].cluster_time())
    );
    assert!(in_txn.iter().all(|e| e.txn() == in_txn[0].txn()));
    assert!(run.events[0].cluster_time() < in_txn[0].cluster_time());
    assert!(in_txn[0].cluster_time() < run.events[4].cluster_time());
}
