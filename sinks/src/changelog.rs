//! A JSON-lines changelog: one line per change of a view, with `_time` and `_diff`.
//!
//! Each closed time's changes are written together, retractions first:
//!
//! ```text
//! {"region":"eu","orders":4,"amount":310.5,"_time":{"t":1700000012,"i":3},"_diff":-1}
//! {"region":"eu","orders":5,"amount":402.25,"_time":{"t":1700000012,"i":3},"_diff":1}
//! ```
//!
//! ```
//! use changeflow_core::ClusterTime;
//! use changeflow_operators::value::Value;
//! use changeflow_sinks::changelog::ChangelogWriter;
//! let mut out = Vec::new();
//! let mut writer = ChangelogWriter::new(&mut out, vec!["n".into()]);
//! writer.write_changes(ClusterTime::new(5, 1), &[(vec![Value::Int(1)], -1), (vec![Value::Int(2)], 1)]).unwrap();
//! let text = String::from_utf8(out).unwrap();
//! assert_eq!(text.lines().next(), Some(r#"{"n":1,"_time":{"t":5,"i":1},"_diff":-1}"#));
//! ```

use std::io::Write;

use changeflow_core::ClusterTime;
use changeflow_operators::value::Value;
use serde_json::Value as Json;

/// Writes a view's changes as JSON lines.
pub struct ChangelogWriter<W: Write> {
    out: W,
    columns: Vec<String>,
    lines: u64,
}

impl<W: Write> ChangelogWriter<W> {
    /// A writer for a view with these column names.
    pub fn new(out: W, columns: Vec<String>) -> Self {
        ChangelogWriter {
            out,
            columns,
            lines: 0,
        }
    }

    /// Writes one closed time's changes (already consolidated, retractions first).
    pub fn write_changes(
        &mut self,
        time: ClusterTime,
        changes: &[(Vec<Value>, isize)],
    ) -> std::io::Result<()> {
        let mut line = String::new();
        for (row, diff) in changes {
            // Columns in view order, then `_time` and `_diff` (serde_json's map would sort keys).
            line.clear();
            line.push('{');
            for (name, value) in self.columns.iter().zip(row) {
                line.push_str(&Json::String(name.clone()).to_string());
                line.push(':');
                line.push_str(&json_of(value).to_string());
                line.push(',');
            }
            line.push_str(&format!(
                "\"_time\":{{\"t\":{},\"i\":{}}},\"_diff\":{}}}\n",
                time.seconds(),
                time.increment(),
                diff
            ));
            self.out.write_all(line.as_bytes())?;
            self.lines += 1;
        }
        Ok(())
    }

    /// Flushes buffered output.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// Lines written so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }
}

fn json_of(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Double(d) => serde_json::Number::from_f64(d.0)
            .map(Json::Number)
            .unwrap_or(Json::Null),
        Value::String(s) => Json::String(s.to_string()),
        Value::DateTime(ms) => Json::String(
            bson::DateTime::from_millis(*ms)
                .try_to_rfc3339_string()
                .unwrap_or_default(),
        ),
        Value::ObjectId(bytes) => Json::String(bson::oid::ObjectId::from_bytes(*bytes).to_hex()),
    }
}
