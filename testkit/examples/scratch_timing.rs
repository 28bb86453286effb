use changeflow_testkit::orders::*;
use changeflow_testkit::reference::*;
use std::time::Instant;
fn main() {
    let cfg = OrdersConfig { seed: 1, events: 200_000, ..OrdersConfig::default() };
    let t = Instant::now();
    let mut w = OrdersWorkload::new(cfg.clone());
    let mut n = 0; while let Some(_d) = w.next_document() { n += 1; }
    println!("gen docs {n} {:?}", t.elapsed());
    let t = Instant::now();
    let lines: Vec<String> = OrdersWorkload::new(cfg.clone()).collect();
    println!("gen lines {:?} bytes {}", t.elapsed(), lines.iter().map(|l| l.len()+1).sum::<usize>());
    let t = Instant::now();
    let docs: Vec<_> = lines.iter().map(|l| parse_json_line(l).unwrap()).collect();
    println!("parse {:?}", t.elapsed());
    let t = Instant::now();
    let mut m = ReferenceModel::new();
    for d in &docs { m.apply(d).unwrap(); }
    println!("apply {:?} live {}", t.elapsed(), m.documents().len());
}
