//! Invalidate under both policies, and split events reassembled.

use bson::{Document, doc};
use changeflow_core::OperationType;
use changeflow_sources::live::{InvalidatePolicy, WatchTarget};
use changeflow_testkit::server::{ChangeStreamServer, ServerOptions};

use crate::support::{options, run, run_with, start_option};

#[test]
fn invalidate_stops_the_stream_under_the_stop_policy() {
    let server = ChangeStreamServer::start().unwrap();
    server.insert("shop", "orders", doc! { "_id": 1 });
    server.drop_collection("shop", "orders");
    server.insert("shop", "orders", doc! { "_id": 2 });
    let run = run(options(&server, WatchTarget::collection("shop", "orders")));
    assert!(run.status.error().is_none(), "{:?}", run.status.error());
    assert!(run.status.is_finished(), "the input ended");
    let ops: Vec<&str> = run.events.iter().map(|e| e.operation().as_str()).collect();
    assert_eq!(ops, ["insert", "drop", "invalidate"]);
    assert_eq!(server.change_stream_stages().len(), 1);
}

#[test]
fn invalidate_continues_with_start_after_under_the_continue_policy() {
    let server = ChangeStreamServer::start().unwrap();
    server.insert("shop", "orders", doc! { "_id": 1 });
    server.rename_collection("shop", "orders", "orders_old");
    server.insert("shop", "orders", doc! { "_id": 2 });
    server.insert("shop", "orders", doc! { "_id": 3 });
    let mut o = options(&server, WatchTarget::collection("shop", "orders"));
    o.on_invalidate = InvalidatePolicy::ContinueWithStartAfter;
    o.max_events = Some(5);
    let run = run(o);
    assert!(run.status.error().is_none(), "{:?}", run.status.error());
    let ops: Vec<&str> = run.events.iter().map(|e| e.operation().as_str()).collect();
    assert_eq!(ops, ["insert", "rename", "invalidate", "insert", "insert"]);
    let stages = server.change_stream_stages();
    assert_eq!(stages.len(), 2);
    assert_eq!(start_option(&stages[1]), Some("startAfter"));
    let invalidate = &run.events[2];
    assert_eq!(
        stages[1]
            .get_document("startAfter")
            .unwrap()
            .get_str("_data")
            .unwrap(),
        invalidate.token().to_string()
    );
}

fn without_id(doc: &Document) -> Document {
    let mut d = doc.clone();
    d.remove("_id");
    d
}

#[test]
fn split_events_are_reassembled_in_order() {
    let server = std::sync::Arc::new(
        ChangeStreamServer::start_with(ServerOptions {
            max_event_size: 3_000,
            ..ServerOptions::default()
        })
        .unwrap(),
    );
    let big = doc! { "_id": 7, "a": "x".repeat(2_500), "b": "y".repeat(2_500), "c": [1, 2, 3] };
    server.insert("shop", "orders", doc! { "_id": 6 });
    let event = server.insert("shop", "orders", big);
    server.update("shop", "orders", 7, doc! { "a": "short" }, &["b"]);
    let mut o = options(&server, WatchTarget::collection("shop", "orders"));
    o.pipeline = vec![doc! { "$changeStreamSplitLargeEvent": {} }];
    o.max_events = Some(3);
    o.batch_size = Some(1);
    let run = run_with(o, |_| {});
    assert!(run.status.error().is_none(), "{:?}", run.status.error());
    let ops: Vec<&OperationType> = run.events.iter().map(|e| e.operation()).collect();
    assert_eq!(
        ops,
        [
            &OperationType::Insert,
            &OperationType::Insert,
            &OperationType::Update
        ]
    );
    let whole = run.events[1].raw().to_bson().unwrap();
    assert_eq!(
        without_id(&whole),
        without_id(&event),
        "every field, in order, once"
    );
    assert!(run.events[1].split_event().is_none());
    // Its token is the last fragment's: resuming after it resumes after the whole event.
    let token = run.events[1].token().to_string();
    let original = event.get_document("_id").unwrap().get_str("_data").unwrap();
    assert!(
        token.starts_with(original) && token.len() == original.len() + 2,
        "{token}"
    );
    assert!(run.events[1].token() < run.events[2].token());
}

#[test]
fn after_an_invalidate_restarts_keep_using_start_after_until_an_event_arrives() {
    let server = std::sync::Arc::new(ChangeStreamServer::start().unwrap());
    server.insert("shop", "orders", doc! { "_id": 1 });
    server.drop_collection("shop", "orders");
    // The continued stream idles once (its post-batch token is the invalidate's), then its
    // socket closes and the driver's resume aggregate fails: the source's own reopen must still
    // say startAfter, since resumeAfter cannot follow an invalidate.
    server.fail(changeflow_testkit::server::FailPoint::close_socket("getMore", 1).after(1));
    server.fail(
        changeflow_testkit::server::FailPoint::error(
            "aggregate",
            1,
            12345,
            "Transient",
            &["ResumableChangeStreamError"],
        )
        .after(2),
    );
    let mut o = options(&server, WatchTarget::collection("shop", "orders"));
    o.on_invalidate = InvalidatePolicy::ContinueWithStartAfter;
    o.max_events = Some(4);
    let s2 = std::sync::Arc::clone(&server);
    let run = run_with(o, move |_| {
        if s2.change_stream_stages().len() == 4 && s2.log_len() == 2 {
            s2.insert("shop", "orders", doc! { "_id": 2 });
        }
    });
    assert!(run.status.error().is_none(), "{:?}", run.status.error());
    let ops: Vec<&str> = run.events.iter().map(|e| e.operation().as_str()).collect();
    assert_eq!(ops, ["insert", "drop", "invalidate", "insert"]);
    let stages = server.change_stream_stages();
    assert_eq!(stages.len(), 4);
    for stage in &stages[1..] {
        assert_eq!(start_option(stage), Some("startAfter"), "{stage}");
    }
}
