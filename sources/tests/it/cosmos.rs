//! Cosmos DB mode end to end: the required pipeline shape, upserts and soft deletes,
//! throttling, and a missing collection.

use bson::{Bson, doc};
use changeflow_core::OperationType;
use changeflow_sources::SourceError;
use changeflow_sources::live::WatchTarget;
use changeflow_sources::live::cosmos::CosmosOptions;
use changeflow_testkit::server::cosmos::CosmosOptions as ServerCosmos;
use changeflow_testkit::server::{ChangeStreamServer, FailPoint, ServerOptions};

use crate::support::{options, run};

fn cosmos_server() -> ChangeStreamServer {
    ChangeStreamServer::start_with(ServerOptions {
        cosmos: Some(ServerCosmos::default()),
        ..ServerOptions::default()
    })
    .unwrap()
}

#[test]
fn cosmos_events_become_upserts_and_soft_deletes() {
    let server = cosmos_server();
    server.insert("shop", "carts", doc! { "_id": 1, "items": 1 });
    server.insert("shop", "carts", doc! { "_id": 2, "items": 5 });
    server.update("shop", "carts", 2, doc! { "deleted": true }, &[]);
    server.delete("shop", "carts", 1);
    server.insert("shop", "carts", doc! { "_id": 3, "items": 2 });
    // Throttled once: the source backs off and carries on.
    server.fail(FailPoint::error(
        "getMore",
        1,
        16500,
        "RequestRateTooLarge",
        &[],
    ));
    let mut o = options(&server, WatchTarget::collection("shop", "carts"));
    o.start = changeflow_sources::live::StartAt::Now;
    o.cosmos = Some(CosmosOptions {
        soft_delete: Some(("deleted".into(), Bson::Boolean(true))),
        per_partition: false,
    });
    o.max_events = Some(3);
    // The stream starts "now": the writes happen once it is open.
    let server = std::sync::Arc::new(server);
    let s2 = std::sync::Arc::clone(&server);
    let wrote = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w2 = std::sync::Arc::clone(&wrote);
    let run = crate::support::run_with(o, move |_| {
        if !w2.load(std::sync::atomic::Ordering::SeqCst) && !s2.commands_named("getMore").is_empty()
        {
            w2.store(true, std::sync::atomic::Ordering::SeqCst);
            s2.insert("shop", "carts", doc! { "_id": 10, "items": 1 });
            s2.insert("shop", "carts", doc! { "_id": 11, "items": 2 });
            s2.update("shop", "carts", 11, doc! { "deleted": true }, &[]);
        }
    });
    assert!(run.status.error().is_none(), "{:?}", run.status.error());
    // The required shape was added for the user.
    let aggregate = &server.commands_named("aggregate")[0];
    let pipeline = aggregate.get_array("pipeline").unwrap();
    assert!(pipeline[1].as_document().unwrap().contains_key("$match"));
    assert!(
        pipeline
            .last()
            .unwrap()
            .as_document()
            .unwrap()
            .contains_key("$project")
    );
    assert_eq!(
        server.change_stream_stages()[0]
            .get_str("fullDocument")
            .ok(),
        Some("updateLookup")
    );
    let ops: Vec<&OperationType> = run.events.iter().map(|e| e.operation()).collect();
    // The update of 11 was read after it was soft-deleted: both reads show the current version.
    assert_eq!(ops[0], &OperationType::Replace);
    assert!(ops[1..].iter().all(|o| *o == &OperationType::Delete));
    assert!(
        run.events
            .windows(2)
            .all(|w| w[0].cluster_time() < w[1].cluster_time())
    );
    assert!(
        server.commands_named("aggregate").len() >= 2,
        "throttling reopened the stream"
    );
}

#[test]
fn a_missing_collection_is_namespace_not_found() {
    let server = cosmos_server();
    let mut o = options(&server, WatchTarget::collection("shop", "nothing"));
    o.cosmos = Some(CosmosOptions::default());
    let r = run(o);
    let error = r.status.take_error().unwrap();
    assert!(
        matches!(error, SourceError::NamespaceNotFound { .. }),
        "{error}"
    );
}

#[test]
fn per_partition_readers_follow_every_partition_once() {
    let server = std::sync::Arc::new(
        ChangeStreamServer::start_with(ServerOptions {
            cosmos: Some(ServerCosmos { partitions: 3 }),
            ..ServerOptions::default()
        })
        .unwrap(),
    );
    server.insert("shop", "carts", doc! { "_id": -1 });
    let mut o = options(&server, WatchTarget::collection("shop", "carts"));
    o.start = changeflow_sources::live::StartAt::Now;
    o.cosmos = Some(CosmosOptions {
        soft_delete: None,
        per_partition: true,
    });
    o.max_events = Some(30);
    let s2 = std::sync::Arc::clone(&server);
    let wrote = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w2 = std::sync::Arc::clone(&wrote);
    let run = crate::support::run_with(o, move |_| {
        if !w2.load(std::sync::atomic::Ordering::SeqCst) && s2.change_stream_stages().len() >= 3 {
            w2.store(true, std::sync::atomic::Ordering::SeqCst);
            for i in 0..30 {
                s2.insert("shop", "carts", doc! { "_id": i, "n": i });
            }
        }
    });
    assert!(run.status.error().is_none(), "{:?}", run.status.error());
    let tokens = server.commands_named("customAction");
    assert_eq!(tokens.len(), 1, "GetChangeStreamTokens once");
    let stages = server.change_stream_stages();
    assert_eq!(stages.len(), 3, "one stream per partition");
    assert!(stages.iter().all(|s| s.contains_key("resumeAfter")));
    let mut ids: Vec<i64> = run
        .events
        .iter()
        .map(|e| {
            assert_eq!(e.operation(), &OperationType::Replace);
            e.document_key_bytes()
                .and_then(|k| changeflow_core::raw::get(k, "_id").ok().flatten())
                .and_then(|v| v.as_i64())
                .unwrap()
        })
        .collect();
    assert!(
        run.events
            .windows(2)
            .all(|w| w[0].cluster_time() < w[1].cluster_time()),
        "merged in time order"
    );
    ids.sort();
    assert_eq!(
        ids,
        (0..30).collect::<Vec<_>>(),
        "every document once, across partitions"
    );
}
