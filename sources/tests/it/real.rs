//! The live source against a real replica set or sharded cluster, when `MONGODB_URI` is set
//! (e.g. `MONGODB_URI='mongodb://localhost:27017/?replicaSet=rs0' cargo test --workspace`).
//! Without it these tests say so and pass: the wire-protocol server covers the same paths.

use bson::doc;
use changeflow_core::{ClusterTime, OperationType};
use changeflow_sources::live::{LiveOptions, StartAt, WatchTarget};
use mongodb::Client;

use crate::support::run;

fn uri() -> Option<String> {
    match std::env::var("MONGODB_URI") {
        Ok(uri) if !uri.is_empty() => Some(uri),
        _ => {
            eprintln!(
                "skipped: set MONGODB_URI to a replica set to run the live tests against a real deployment"
            );
            None
        }
    }
}

/// Writes 20 inserts, an update and a delete to a fresh collection; returns the cluster time
/// before the writes and the collection's name.
fn write_some(uri: &str) -> (ClusterTime, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = Client::with_uri_str(uri).await.unwrap();
        let db = client.database("changeflow_it");
        let name = format!(
            "c{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let reply = db.run_command(doc! { "ping": 1 }).await.unwrap();
        let ts = reply.get_timestamp("operationTime").unwrap();
        let coll = db.collection::<bson::Document>(&name);
        for i in 0..20 {
            coll.insert_one(doc! { "_id": i, "region": "eu" })
                .await
                .unwrap();
        }
        coll.update_one(doc! { "_id": 3 }, doc! { "$set": { "region": "us" } })
            .await
            .unwrap();
        coll.delete_one(doc! { "_id": 4 }).await.unwrap();
        (ClusterTime::new(ts.time, ts.increment), name)
    })
}

#[test]
fn real_deployment_every_scope_delivers_the_writes() {
    let Some(uri) = uri() else { return };
    let (start, name) = write_some(&uri);
    for target in [
        WatchTarget::collection("changeflow_it", &name),
        WatchTarget::Database("changeflow_it".into()),
        WatchTarget::Deployment,
    ] {
        let mut o = LiveOptions::new(&uri, target.clone());
        o.start = StartAt::OperationTime(start);
        o.pipeline = vec![doc! { "$match": { "ns.coll": &name } }];
        o.max_events = Some(22);
        let r = run(o);
        assert!(
            r.status.error().is_none(),
            "{target}: {:?}",
            r.status.error()
        );
        let ops: Vec<&OperationType> = r.events.iter().map(|e| e.operation()).collect();
        assert_eq!(ops.len(), 22, "{target}");
        assert_eq!(ops[20], &OperationType::Update);
        assert_eq!(ops[21], &OperationType::Delete);
        assert!(
            r.events.windows(2).all(|w| w[0].token() < w[1].token()),
            "{target}: stream order"
        );
    }
}

#[test]
fn real_deployment_refuses_a_pipeline_touching_the_token() {
    let Some(uri) = uri() else { return };
    let mut o = LiveOptions::new(&uri, WatchTarget::collection("changeflow_it", "x"));
    o.pipeline = vec![doc! { "$unset": "_id" }];
    let r = run(o);
    assert!(r.status.error().unwrap().contains("resume token"));
}

#[test]
fn real_deployment_initial_snapshot_reads_the_collection_at_one_time() {
    let Some(uri) = uri() else { return };
    let (_, name) = write_some(&uri);
    let mut o = LiveOptions::new(&uri, WatchTarget::collection("changeflow_it", &name));
    o.initial_snapshot = Some(changeflow_sources::live::snapshot::SnapshotOptions {
        parallelism: 4,
        batch_size: 4,
        ..Default::default()
    });
    o.idle_timeout = Some(std::time::Duration::from_secs(2));
    let r = run(o);
    assert!(r.status.error().is_none(), "{:?}", r.status.error());
    let snapshot: Vec<_> = r
        .events
        .iter()
        .filter(|e| changeflow_core::synthetic::origin(e) == Some("snapshot"))
        .collect();
    assert_eq!(snapshot.len(), 19, "20 inserted, 1 deleted");
    assert!(
        snapshot
            .windows(2)
            .all(|w| w[0].cluster_time() == w[1].cluster_time())
    );
    let progress = r.status.snapshot_progress().expect("progress");
    assert!(progress.done && progress.scanned == 19, "{progress}");
}
