//! Definite failures surface as typed errors, with the source's capability held; transient ones
//! are retried until the backoff gives up.

use bson::doc;
use changeflow_core::{Document, ResumeToken};
use changeflow_sources::SourceError;
use changeflow_sources::live::{StartAt, WatchTarget};
use changeflow_testkit::orders::OrdersConfig;
use changeflow_testkit::server::{ChangeStreamServer, FailPoint, ServerOptions};

use crate::support::{options, run};

fn error_of(run: &crate::support::Run) -> SourceError {
    run.status.take_error().expect("the source must fail")
}

#[test]
fn a_token_older_than_the_log_is_history_lost() {
    let server = ChangeStreamServer::start().unwrap();
    server
        .push_workload(OrdersConfig {
            seed: 1,
            events: 50,
            ..OrdersConfig::default()
        })
        .unwrap();
    let first = server.events()[0].get_document("_id").unwrap().clone();
    server.truncate_history(server.clock());
    let mut o = options(&server, WatchTarget::collection("shop", "orders"));
    o.start = StartAt::ResumeAfter(ResumeToken::from_document(
        Document::try_from(&first).unwrap(),
    ));
    let run = run(o);
    let error = error_of(&run);
    assert!(matches!(error, SourceError::HistoryLost { .. }), "{error}");
    assert!(!error.is_transient());
    assert!(run.events.is_empty());
    assert!(
        !run.status.is_finished(),
        "the capability is held: nothing downstream commits"
    );
    assert_eq!(server.change_stream_stages().len(), 1, "286 is not retried");
}

#[test]
fn history_lost_while_resuming_mid_stream_is_typed_too() {
    let server = std::sync::Arc::new(ChangeStreamServer::start().unwrap());
    server
        .push_workload(OrdersConfig {
            seed: 2,
            events: 200,
            ..OrdersConfig::default()
        })
        .unwrap();
    // The second getMore waits; meanwhile the oplog rolls over; the third getMore's socket
    // closes and the driver's resume finds its token gone.
    server.fail(FailPoint::delay("getMore", 1, std::time::Duration::from_millis(1000)).after(1));
    server.fail(FailPoint::close_socket("getMore", 1).after(2));
    let mut o = options(&server, WatchTarget::collection("shop", "orders"));
    o.batch_size = Some(20);
    let s2 = std::sync::Arc::clone(&server);
    let r = crate::support::run_with(o, move |_| {
        if s2.commands_named("getMore").len() >= 2 {
            let (t, i) = s2.clock();
            s2.truncate_history((t, i + 1));
        }
    });
    let error = error_of(&r);
    assert!(matches!(error, SourceError::HistoryLost { .. }), "{error}");
    assert_eq!(
        r.events.len(),
        60,
        "the three batches before the loss were delivered"
    );
}

#[test]
fn named_server_errors_are_typed_and_not_retried() {
    for (code, name, check) in [
        (
            280,
            "ChangeStreamFatalError",
            (|e: &SourceError| matches!(e, SourceError::ChangeStreamFatal { .. }))
                as fn(&SourceError) -> bool,
        ),
        (260, "InvalidResumeToken", |e| {
            matches!(e, SourceError::InvalidResumeToken { .. })
        }),
        (10334, "BSONObjectTooLarge", |e| {
            matches!(e, SourceError::EventTooLarge { .. })
        }),
        (40415, "Location40415", |e| {
            matches!(e, SourceError::UnknownOption { .. })
        }),
        (13, "Unauthorized", |e| {
            matches!(e, SourceError::Unauthorized { code: 13, .. })
        }),
        (2, "BadValue", |e| {
            matches!(e, SourceError::Server { code: 2, .. })
        }),
    ] {
        let server = ChangeStreamServer::start().unwrap();
        server.fail(FailPoint::error("aggregate", 1, code, name, &[]));
        let r = run(options(&server, WatchTarget::collection("shop", "orders")));
        let error = error_of(&r);
        assert!(check(&error), "{code}: {error}");
        assert_eq!(
            server.change_stream_stages().len(),
            1,
            "{code} is not retried"
        );
    }
}

#[test]
fn a_standalone_server_is_not_a_replica_set() {
    let server = ChangeStreamServer::start_with(ServerOptions {
        replica_set: None,
        ..ServerOptions::default()
    })
    .unwrap();
    let error = error_of(&run(options(
        &server,
        WatchTarget::collection("shop", "orders"),
    )));
    assert!(
        matches!(error, SourceError::NotReplicaSet { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("replica set"));
}

#[test]
fn an_oversize_event_without_the_split_stage_names_the_fix() {
    let server = ChangeStreamServer::start_with(ServerOptions {
        max_event_size: 4_000,
        ..ServerOptions::default()
    })
    .unwrap();
    server.insert(
        "shop",
        "orders",
        doc! { "_id": 1, "pad": "x".repeat(10_000) },
    );
    let error = error_of(&run(options(
        &server,
        WatchTarget::collection("shop", "orders"),
    )));
    assert!(
        matches!(error, SourceError::EventTooLarge { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("$changeStreamSplitLargeEvent"));
}

#[test]
fn a_pipeline_touching_the_token_is_refused_before_opening() {
    let server = ChangeStreamServer::start().unwrap();
    let mut o = options(&server, WatchTarget::collection("shop", "orders"));
    o.pipeline = vec![doc! { "$project": { "_id": 0, "fullDocument": 1 } }];
    let error = error_of(&run(o));
    assert!(matches!(error, SourceError::BadPipeline { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("removes `_id`, the resume token"),
        "{error}"
    );
    assert!(
        server.commands_named("aggregate").is_empty(),
        "nothing was sent"
    );
}

#[test]
fn transient_failures_are_retried_with_backoff_then_given_up() {
    let server = ChangeStreamServer::start().unwrap();
    // Labelled resumable, but not a retryable-read code, so the driver does not retry it itself.
    server.fail(FailPoint::error(
        "aggregate",
        100,
        12345,
        "Transient",
        &["ResumableChangeStreamError"],
    ));
    let mut o = options(&server, WatchTarget::collection("shop", "orders"));
    o.backoff.max_attempts = Some(3);
    let error = error_of(&run(o));
    assert!(
        matches!(error, SourceError::RetriesExhausted { attempts: 3, .. }),
        "{error}"
    );
    assert!(error.is_transient());
    assert_eq!(
        server.change_stream_stages().len(),
        4,
        "the first try and three restarts"
    );
}

#[test]
fn a_password_never_appears_in_errors() {
    let server = ChangeStreamServer::start().unwrap();
    let secret = "Hunter2%21secret";
    let uri = format!(
        "mongodb://app:{secret}@{}/?replicaSet=rs0&serverSelectionTimeoutMS=2000",
        server.address()
    );
    let mut o = options(&server, WatchTarget::collection("shop", "orders"));
    o.uri = uri.clone();
    for shown in [format!("{o:?}"), o.describe()] {
        assert!(
            !shown.contains("Hunter2") && shown.contains("app:****@"),
            "{shown}"
        );
    }
    let r = run(o);
    let text = r.status.error().unwrap();
    let error = error_of(&r);
    assert!(
        matches!(error, SourceError::Unauthorized { code: 18, .. }),
        "{error}"
    );
    for shown in [text.clone(), format!("{error:?}"), error.to_string()] {
        assert!(!shown.contains("Hunter2"), "password shown: {shown}");
        assert!(!shown.contains("secret"), "password shown: {shown}");
    }
    assert!(text.contains("app:****@"), "{text}");

    // A connection string the driver rejects is shown redacted as well.
    let mut o = options(&server, WatchTarget::collection("shop", "orders"));
    o.uri = format!(
        "mongodb://app:{secret}@{}/?notAnOption=1&replicaSet=",
        server.address()
    );
    let r = run(o);
    let text = r.status.error().unwrap();
    assert!(
        !text.contains("Hunter2") && !text.contains("secret"),
        "password shown: {text}"
    );
}
