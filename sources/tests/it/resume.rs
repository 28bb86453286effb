//! Faults mid-stream: each run must deliver exactly the server's log (no loss, no duplicate),
//! and the resume commands must carry the resume option the driver spec prescribes.

use std::time::Duration;

use changeflow_core::ClusterTime;
use changeflow_sources::live::{StartAt, WatchTarget};
use changeflow_testkit::orders::OrdersConfig;
use changeflow_testkit::server::{ChangeStreamServer, FailPoint, ServerOptions};

use crate::support::{assert_delivered, options, run, run_with, stages, start_option};

fn workload(server: &ChangeStreamServer, events: usize) {
    server
        .push_workload(OrdersConfig {
            seed: 11,
            events,
            ..OrdersConfig::default()
        })
        .unwrap();
}

/// Runs the orders collection with small batches, so faults hit mid-stream.
fn run_orders(server: &ChangeStreamServer) -> crate::support::Run {
    let mut o = options(server, WatchTarget::collection("shop", "orders"));
    o.batch_size = Some(50);
    o.max_events = Some(server.events().len() as u64);
    run(o)
}

#[test]
fn a_socket_closed_mid_get_more_is_resumed_without_loss() {
    let server = ChangeStreamServer::start().unwrap();
    workload(&server, 400);
    server.fail(FailPoint::close_socket("getMore", 1).after(2));
    let run = run_orders(&server);
    assert_delivered(&run, &server.events());
    let stages = stages(&server);
    assert_eq!(stages.len(), 2, "one resume");
    assert_eq!(start_option(&stages[1]), Some("resumeAfter"));
}

#[test]
fn a_labelled_error_is_resumed_without_loss() {
    let server = ChangeStreamServer::start().unwrap();
    workload(&server, 300);
    server.fail(
        FailPoint::error(
            "getMore",
            1,
            91,
            "ShutdownInProgress",
            &["ResumableChangeStreamError"],
        )
        .after(1),
    );
    let run = run_orders(&server);
    assert_delivered(&run, &server.events());
    assert_eq!(start_option(&stages(&server)[1]), Some("resumeAfter"));
}

#[test]
fn cursor_not_found_is_resumed_without_loss() {
    let server = ChangeStreamServer::start().unwrap();
    workload(&server, 300);
    server.fail(FailPoint::error("getMore", 1, 43, "CursorNotFound", &[]).after(3));
    let run = run_orders(&server);
    assert_delivered(&run, &server.events());
    assert_eq!(stages(&server).len(), 2);
}

#[test]
fn a_failed_resume_aggregate_is_restarted_by_the_source() {
    let server = ChangeStreamServer::start().unwrap();
    workload(&server, 300);
    // The driver resumes the closed getMore once; that aggregate fails, and so does the
    // source's first reopen: the source's own loop must bring the stream back. (The code is
    // labelled resumable but is not a retryable-read code, so the driver does not retry it.)
    server.fail(FailPoint::close_socket("getMore", 1).after(1));
    server.fail(
        FailPoint::error(
            "aggregate",
            2,
            12345,
            "Transient",
            &["ResumableChangeStreamError"],
        )
        .after(1),
    );
    let run = run_orders(&server);
    assert_delivered(&run, &server.events());
    let stages = stages(&server);
    assert_eq!(
        stages.len(),
        4,
        "initial, failed driver resume, failed reopen, reopen"
    );
    for stage in &stages[1..] {
        assert_eq!(start_option(stage), Some("resumeAfter"));
    }
    // Every restart resumed from the last event delivered before the fault.
    let token = stages[3]
        .get_document("resumeAfter")
        .unwrap()
        .get_str("_data")
        .unwrap();
    assert_eq!(run.events[99].token().to_string(), token);
}

#[test]
fn a_resume_retried_from_the_original_start_delivers_no_duplicate() {
    let server = ChangeStreamServer::start().unwrap();
    workload(&server, 300);
    // The driver's resume aggregate fails with a retryable-read code; the driver retries it,
    // but from the stream's original start (it has already used up its cached token), so the
    // server sends the first events again. The source must not deliver them twice.
    server.fail(FailPoint::close_socket("getMore", 1).after(1));
    server.fail(FailPoint::error("aggregate", 1, 189, "PrimarySteppedDown", &[]).after(1));
    let run = run_orders(&server);
    assert_delivered(&run, &server.events());
    let stages = stages(&server);
    assert_eq!(stages.len(), 3);
    assert_eq!(start_option(&stages[1]), Some("resumeAfter"));
    assert_eq!(
        start_option(&stages[2]),
        Some("startAtOperationTime"),
        "the driver's retry"
    );
}

#[test]
fn a_stream_started_after_a_token_resumes_with_start_after_until_an_event_arrives() {
    let server = ChangeStreamServer::start().unwrap();
    workload(&server, 20);
    let last = server
        .events()
        .last()
        .unwrap()
        .get_document("_id")
        .unwrap()
        .clone();
    let token = changeflow_core::ResumeToken::from_document(
        changeflow_core::Document::try_from(&last).unwrap(),
    );
    server.fail(FailPoint::close_socket("getMore", 1));
    let mut o = options(&server, WatchTarget::collection("shop", "orders"));
    o.start = StartAt::StartAfter(token);
    o.max_events = Some(2);
    let pushed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = std::sync::Arc::new(server);
    let s2 = std::sync::Arc::clone(&server);
    let flag = std::sync::Arc::clone(&pushed);
    let run = run_with(o, move |_| {
        // Once the driver has resumed (two aggregates), new events arrive.
        if !flag.load(std::sync::atomic::Ordering::SeqCst) && s2.change_stream_stages().len() >= 2 {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            s2.insert("shop", "orders", bson::doc! { "_id": 1 });
            s2.insert("shop", "orders", bson::doc! { "_id": 2 });
        }
    });
    let stages = stages(&server);
    assert_eq!(start_option(&stages[0]), Some("startAfter"));
    assert_eq!(
        start_option(&stages[1]),
        Some("startAfter"),
        "no event returned yet: startAfter again"
    );
    let all = server.events();
    assert_delivered(&run, &all[all.len() - 2..]);
}

#[test]
fn without_post_batch_tokens_the_driver_resumes_at_the_operation_time() {
    let server = ChangeStreamServer::start_with(ServerOptions {
        omit_post_batch_token: true,
        ..ServerOptions::default()
    })
    .unwrap();
    workload(&server, 10);
    server.fail(FailPoint::close_socket("getMore", 1));
    let server = std::sync::Arc::new(server);
    let s2 = std::sync::Arc::clone(&server);
    let mut o = options(&server, WatchTarget::collection("shop", "orders"));
    o.start = StartAt::Now;
    o.max_events = Some(1);
    let run = run_with(o, move |_| {
        if s2.change_stream_stages().len() == 2 && s2.events().len() == 10 {
            s2.insert("shop", "orders", bson::doc! { "_id": "after" });
        }
    });
    let stages = stages(&server);
    assert_eq!(start_option(&stages[0]), None);
    assert_eq!(start_option(&stages[1]), Some("startAtOperationTime"));
    let first_reply_time = stages[1].get_timestamp("startAtOperationTime").unwrap();
    assert!(
        ClusterTime::new(first_reply_time.time, first_reply_time.increment)
            > ClusterTime::new(0, 0)
    );
    let all = server.events();
    assert_delivered(&run, &all[10..]);
}

#[test]
fn an_idle_streams_frontier_advances_with_post_batch_tokens() {
    let server = ChangeStreamServer::start_with(ServerOptions {
        noop_on_idle: true,
        ..ServerOptions::default()
    })
    .unwrap();
    let event = server.insert("shop", "orders", bson::doc! { "_id": 1 });
    let ts = event.get_timestamp("clusterTime").unwrap();
    let event_time = ClusterTime::new(ts.time, ts.increment);
    let mut o = options(&server, WatchTarget::collection("shop", "orders"));
    o.idle_timeout = Some(Duration::from_millis(600));
    let positions = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&positions);
    let run = run_with(o, move |status| {
        if let Some((time, _)) = status.position() {
            let mut seen = seen.lock().unwrap();
            if seen.last() != Some(&time) {
                seen.push(time);
            }
        }
    });
    assert!(run.status.error().is_none(), "{:?}", run.status.error());
    assert_eq!(run.events.len(), 1);
    let positions = positions.lock().unwrap();
    assert_eq!(positions.first(), Some(&event_time));
    assert!(
        positions.len() >= 3,
        "the frontier moved on while idle: {positions:?}"
    );
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    let (last, token) = run.status.position().unwrap();
    assert!(last > event_time);
    assert_eq!(token.unwrap().cluster_time(), Some(last));
}
