//! Recording a live stream and replaying the recording gives back the server's events, byte for
//! byte.

use changeflow_core::ClusterTime;
use changeflow_sources::live::WatchTarget;
use changeflow_sources::live::record::record;
use changeflow_sources::reader::{EventReader, Read, ReaderOptions};
use changeflow_testkit::orders::OrdersConfig;
use changeflow_testkit::server::ChangeStreamServer;

use crate::support::{bytes_of, options};

#[test]
fn a_recording_replays_identically() {
    let server = ChangeStreamServer::start().unwrap();
    server
        .push_workload(OrdersConfig {
            seed: 5,
            events: 700,
            ..OrdersConfig::default()
        })
        .unwrap();
    let expected = server.events();
    let path = std::env::temp_dir().join(format!("cf-record-{}.jsonl", std::process::id()));
    let mut o = options(&server, WatchTarget::collection("shop", "orders"));
    o.max_events = Some(expected.len() as u64);
    o.batch_size = Some(100);
    let mut reports = 0;
    let progress = record(&o, &path, |_| reports += 1).unwrap();
    assert_eq!(progress.events, 700);
    assert!(reports >= 1);
    assert!(progress.events_per_second() > 0.0);
    assert!(progress.frontier.is_some_and(|t| t > ClusterTime::MIN));

    let mut reader = EventReader::open(ReaderOptions::new(&path)).unwrap();
    let mut replayed = Vec::new();
    loop {
        match reader.next_event().unwrap() {
            Read::Event { event, .. } => replayed.push(event.raw().as_bytes().to_vec()),
            Read::End => break,
            _ => panic!("unexpected read result"),
        }
    }
    assert_eq!(replayed, bytes_of(&expected));
    std::fs::remove_file(&path).ok();
}
