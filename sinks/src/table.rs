//! Views printed as text tables for terminals.
//!
//! ```
//! use changeflow_operators::value::Value;
//! use changeflow_sinks::table::format_table;
//! let text = format_table(&["region", "orders"], &[vec![Value::String("eu".into()), Value::Int(12)]]);
//! assert_eq!(text, "region | orders\n-------+-------\neu     |     12\n");
//! ```

use changeflow_operators::value::Value;

/// Formats rows under `headers`; numbers are right-aligned, other values left-aligned; floats
/// print with two decimals.
pub fn format_table(headers: &[&str], rows: &[Vec<Value>]) -> String {
    let cells: Vec<Vec<(String, bool)>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|v| match v {
                    Value::Double(x) => (format!("{:.2}", x.0), true),
                    Value::Int(_) => (v.to_string(), true),
                    other => (other.to_string(), false),
                })
                .collect()
        })
        .collect();
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            cells
                .iter()
                .filter_map(|r| r.get(i))
                .map(|(c, _)| c.chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |parts: Vec<String>| parts.join(" | ").trim_end().to_string() + "\n";
    out += &line(
        headers
            .iter()
            .zip(&widths)
            .map(|(h, w)| format!("{h:<w$}"))
            .collect(),
    );
    out += &(widths
        .iter()
        .map(|w| "-".repeat(*w))
        .collect::<Vec<_>>()
        .join("-+-")
        + "\n");
    for row in &cells {
        out += &line(
            row.iter()
                .zip(&widths)
                .map(|((c, right), w)| {
                    if *right {
                        format!("{c:>w$}")
                    } else {
                        format!("{c:<w$}")
                    }
                })
                .collect(),
        );
    }
    out
}
