//! The live path with no database installed: the test kit's change-stream server plays a
//! replica set, a generated stream of `shop.orders` changes is written to it in bursts, and the
//! orders views follow it through the real `mongodb` driver, printed as they change with the
//! source's lag (events written to the server and not yet delivered). It ends by itself after
//! the last burst: the source's input is ended with its `Stopper`, the frontier empties and the
//! views settle. Ctrl-C stops it at any time.
//!
//! ```text
//! cargo run --example live_demo --features live
//! ```
//!
//! ```text
//!   feeder thread ──push bursts──▶ ChangeStreamServer (127.0.0.1:0, wire protocol)
//!                                      │ OP_MSG aggregate / getMore
//!                                      ▼
//!   mongodb driver ──▶ live::watch ──▶ document_state ──▶ V1 (per region) ──▶ ViewHandle ──▶ stdout
//! ```

changeflow::global_allocator!();

use std::time::{Duration, Instant};

use changeflow::jobs::orders_by_region::v1_definition;
use changeflow::operators::documents::{DocumentStats, document_state};
use changeflow::operators::handle::ViewHandle;
use changeflow::operators::views::Row;
use changeflow::sinks::table;
use changeflow::sources::live::{LiveOptions, WatchTarget, watch};
use changeflow_core::ClusterTime;
use changeflow_testkit::orders::{OrdersConfig, OrdersWorkload};
use changeflow_testkit::server::ChangeStreamServer;

const BURSTS: usize = 6;
const EVENTS_PER_BURST: usize = 2_000;

fn main() -> std::process::ExitCode {
    changeflow::runtime::keep_freed_memory();
    let server = match ChangeStreamServer::start() {
        Ok(server) => std::sync::Arc::new(server),
        Err(e) => {
            eprintln!("error: cannot start the test server: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("test server (a one-member replica set) at {}", server.uri());

    let mut options = LiveOptions::new(&server.uri(), WatchTarget::collection("shop", "orders"));
    options.max_await_time = Some(Duration::from_millis(100));
    let status = options.status();
    let stopper = options.stopper.clone();

    let feeder = {
        let server = std::sync::Arc::clone(&server);
        let status = status.clone();
        std::thread::spawn(move || {
            // Wait until the stream is open: it starts "now".
            while server.commands_named("aggregate").is_empty() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let mut workload = OrdersWorkload::new(OrdersConfig {
                seed: 7,
                events: BURSTS * EVENTS_PER_BURST,
                ..OrdersConfig::default()
            });
            for _ in 0..BURSTS {
                for _ in 0..EVENTS_PER_BURST {
                    if let Some(event) = workload.next_document()
                        && let Err(e) = server.push(event)
                    {
                        eprintln!("feeder: {e}");
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(400));
            }
            // Everything written was delivered: end the source's input, the views settle.
            let waiting = Instant::now();
            while (status.events() as usize) < server.log_len()
                && waiting.elapsed() < Duration::from_secs(30)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            stopper.stop();
        })
    };

    let handle = ViewHandle::<Row>::new();
    let (watched, view, lag) = (
        status.clone(),
        handle.clone(),
        std::sync::Arc::clone(&server),
    );
    let started = Instant::now();
    timely::execute_directly(move |worker| {
        let probe = worker.dataflow::<ClusterTime, _, _>(|scope| {
            let events = watch(scope, options.clone());
            let documents = document_state(events, DocumentStats::new());
            let v1 = v1_definition().build(documents);
            view.attach(v1.clone());
            v1.probe().0
        });
        let mut shown = None;
        let mut printed = Instant::now();
        loop {
            let done = watched.is_finished() && probe.done();
            if watched.error().is_some() {
                break;
            }
            worker.step_or_park(Some(Duration::from_millis(20)));
            let snapshot = view.snapshot();
            // At most twice a second, and once more at the end.
            if snapshot.time != shown && (printed.elapsed() > Duration::from_millis(500) || done) {
                printed = Instant::now();
                shown = snapshot.time;
                let rows: Vec<Row> = snapshot
                    .rows
                    .into_iter()
                    .flat_map(|(row, n)| std::iter::repeat_n(row, n.max(0) as usize))
                    .collect();
                let delivered = watched.events() as usize;
                println!(
                    "\nV1 at {} ({delivered} events delivered, source lag {} events):",
                    shown.map_or("-".into(), |t| t.to_string()),
                    lag.log_len().saturating_sub(delivered),
                );
                print!(
                    "{}",
                    table::format_table(&["region", "orders", "amount"], &rows)
                );
            }
            if done {
                break;
            }
        }
        if watched.error().is_some() {
            for dataflow in worker.installed_dataflows() {
                worker.drop_dataflow(dataflow);
            }
        }
    });
    let _ = feeder.join();
    match status.error() {
        Some(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
        None => {
            println!(
                "\ndone: {} events in {:.1} s",
                status.events(),
                started.elapsed().as_secs_f64()
            );
            std::process::ExitCode::SUCCESS
        }
    }
}
