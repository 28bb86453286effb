//! Parquet files of view snapshots.
//!
//! Files are written under a temporary name in the same directory and renamed when complete,
//! so a reader never opens a half-written file. The frontier up to which the file is complete is
//! stored in the key-value metadata as `changeflow.frontier` (packed cluster time; absent when
//! the input ended, `changeflow.complete = true`).
//!
//! ```
//! use changeflow_operators::value::{Value, ValueType};
//! use changeflow_sinks::{arrow::{schema_of, rows_to_batch}, parquet::write_parquet};
//! let schema = schema_of(&[("n".into(), ValueType::Int64)]);
//! let batch = rows_to_batch(&schema, &[vec![Value::Int(1)], vec![Value::Int(2)]]).unwrap();
//! let path = std::env::temp_dir().join(format!("cf-doc-{}.parquet", std::process::id()));
//! write_parquet(&path, &batch, None).unwrap();
//! assert!(std::fs::metadata(&path).unwrap().len() > 0);
//! # std::fs::remove_file(&path).ok();
//! ```

use std::fs::File;
use std::path::Path;

use arrow_array::RecordBatch;
use changeflow_core::ClusterTime;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::SinkError;

/// Writes `batch` to `path` (Snappy-compressed) atomically; `frontier` is the time up to which
/// the content is complete (`None`: final).
pub fn write_parquet(
    path: &Path,
    batch: &RecordBatch,
    frontier: Option<ClusterTime>,
) -> Result<(), SinkError> {
    let err = |reason: String| SinkError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let metadata = match frontier {
        Some(t) => vec![
            KeyValue::new("changeflow.frontier".into(), t.as_u64().to_string()),
            KeyValue::new("changeflow.complete".into(), "false".to_string()),
        ],
        None => vec![KeyValue::new(
            "changeflow.complete".into(),
            "true".to_string(),
        )],
    };
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(metadata))
        .build();
    let result = (|| -> Result<(), SinkError> {
        let file = File::create(&temporary).map_err(|e| err(e.to_string()))?;
        let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props))
            .map_err(|e| err(e.to_string()))?;
        writer.write(batch).map_err(|e| err(e.to_string()))?;
        let file = writer.into_inner().map_err(|e| err(e.to_string()))?;
        file.sync_all().map_err(|e| err(e.to_string()))?;
        std::fs::rename(&temporary, path).map_err(|e| err(e.to_string()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}
