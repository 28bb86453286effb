//! `--follow`: a file appended to while the job runs gives the same views as reading it whole.

use std::io::Write;
use std::time::Duration;

use changeflow::jobs::orders_by_region::{OrdersOptions, run};
use changeflow_testkit::orders::OrdersConfig;

use crate::support::*;

#[test]
fn following_a_growing_file_reaches_the_oracle() {
    let dir = scratch("follow");
    let lines = lines(OrdersConfig {
        seed: 31,
        events: 3000,
        txn_fraction: 0.2,
        ..OrdersConfig::default()
    });
    let input = dir.join("growing.jsonl");
    std::fs::write(&input, "").expect("create");
    let writer = {
        let (input, lines) = (input.clone(), lines.clone());
        std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&input)
                .expect("open");
            for chunk in lines.chunks(700) {
                let text = chunk.join("\n") + "\n";
                // Write each chunk in two pieces, splitting a line, to exercise partial lines.
                let (a, b) = text.split_at(text.len() / 2);
                file.write_all(a.as_bytes()).expect("append");
                file.flush().expect("flush");
                std::thread::sleep(Duration::from_millis(60));
                file.write_all(b.as_bytes()).expect("append");
                file.flush().expect("flush");
                std::thread::sleep(Duration::from_millis(60));
            }
        })
    };
    let mut options = OrdersOptions::new(&input, dir.join("out"));
    options.follow = true;
    options.idle_timeout = Some(Duration::from_millis(1500));
    let report = run(&options).expect("job runs");
    writer.join().expect("writer");
    assert_eq!(report.events as usize, lines.len());
    let (v1, v2) = oracle(&lines);
    assert_v1_eq(&read_v1(&dir.join("out/v1.parquet")), &v1);
    assert_eq!(read_v2(&dir.join("out/v2.parquet")), v2);
}
