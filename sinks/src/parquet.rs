//! Parquet files: one-shot snapshots ([`write_parquet`]) and rolling changelogs
//! ([`ParquetWriter`]).
//!
//! Files are written under a temporary name in the same directory and renamed when complete,
//! so a reader never opens a half-written file. The frontier up to which a file is complete is
//! stored in its key-value metadata as `changeflow.frontier` (packed cluster time; absent when
//! the input ended, `changeflow.complete = true`); see [`crate::writer`] for the rules. The Arrow
//! schema (with extension names) is embedded as usual (`ARROW:schema`), so Arrow readers get
//! back the exact types.
//!
//! Compression: [`ParquetCompression`]; this build has Snappy and LZ4 (raw), and refuses the
//! others with [`SinkError::Unsupported`] (they need parquet's `zstd` / `flate2` / `brotli`
//! features, which pull in C builds).
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
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_schema::{DataType, SchemaRef};
use changeflow_core::ClusterTime;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::SinkError;
use crate::rolling::{FileFormat, Rolling};
use crate::writer::{BatchWriter, RollPolicy, file_metadata};

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
    let format = ParquetFormat::new(&ParquetOptions::default())?;
    let result = (|| -> Result<(), SinkError> {
        let file = File::create(&temporary).map_err(|e| err(e.to_string()))?;
        let mut open = format.open(file, &batch.schema()).map_err(err)?;
        format.write(&mut open, batch).map_err(err)?;
        let metadata = file_metadata(frontier, 0)
            .into_iter()
            .filter(|(k, _)| k != "changeflow.series")
            .collect();
        let file = format.close(open, metadata).map_err(err)?;
        file.sync_all().map_err(|e| err(e.to_string()))?;
        std::fs::rename(&temporary, path).map_err(|e| err(e.to_string()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

/// A Parquet compression codec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ParquetCompression {
    /// No compression.
    Uncompressed,
    /// Snappy (the default).
    #[default]
    Snappy,
    /// LZ4 (raw framing, `LZ4_RAW`).
    Lz4,
    /// Zstandard at a level (not compiled in this build).
    Zstd(i32),
    /// Gzip (not compiled in this build).
    Gzip,
}

impl ParquetCompression {
    fn codec(self) -> Result<Compression, SinkError> {
        match self {
            ParquetCompression::Uncompressed => Ok(Compression::UNCOMPRESSED),
            ParquetCompression::Snappy => Ok(Compression::SNAPPY),
            ParquetCompression::Lz4 => Ok(Compression::LZ4_RAW),
            other => Err(SinkError::Unsupported(format!(
                "Parquet compression {other:?} is not compiled into this build (available: \
                 Uncompressed, Snappy, Lz4)"
            ))),
        }
    }
}

/// Options of Parquet output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParquetOptions {
    /// The codec of every column.
    pub compression: ParquetCompression,
    /// Rows per row group.
    pub row_group_rows: usize,
    /// When to start a new file.
    pub roll: RollPolicy,
}

impl Default for ParquetOptions {
    fn default() -> Self {
        ParquetOptions {
            compression: ParquetCompression::Snappy,
            row_group_rows: 64 * 1024,
            roll: RollPolicy::never(),
        }
    }
}

pub(crate) struct ParquetFormat {
    props: WriterProperties,
}

impl ParquetFormat {
    fn new(options: &ParquetOptions) -> Result<Self, SinkError> {
        Ok(ParquetFormat {
            props: WriterProperties::builder()
                .set_compression(options.compression.codec()?)
                .set_max_row_group_row_count(Some(options.row_group_rows.max(1)))
                .build(),
        })
    }
}

impl FileFormat for ParquetFormat {
    type Open = ArrowWriter<File>;

    fn extension(&self) -> &'static str {
        "parquet"
    }

    fn open(&self, file: File, schema: &SchemaRef) -> Result<Self::Open, String> {
        // The parquet crate panics on unions (ARROW-8817): refuse them first.
        if let Some(field) = schema.fields().iter().find(|f| has_union(f.data_type())) {
            return Err(format!(
                "column {} is a dense union, which Parquet cannot store: write it as Arrow IPC, \
                 or convert with FallbackMode::ExtJson",
                field.name()
            ));
        }
        ArrowWriter::try_new(file, schema.clone(), Some(self.props.clone()))
            .map_err(|e| e.to_string())
    }

    fn write(&self, open: &mut Self::Open, batch: &RecordBatch) -> Result<(), String> {
        open.write(batch).map_err(|e| e.to_string())
    }

    fn bytes(&self, open: &Self::Open) -> u64 {
        (open.bytes_written() + open.in_progress_size()) as u64
    }

    fn close(&self, mut open: Self::Open, metadata: Vec<(String, String)>) -> Result<File, String> {
        for (key, value) in metadata {
            open.append_key_value_metadata(KeyValue::new(key, value));
        }
        open.into_inner().map_err(|e| e.to_string())
    }
}

fn has_union(data_type: &DataType) -> bool {
    match data_type {
        DataType::Union(..) => true,
        DataType::Struct(fields) => fields.iter().any(|f| has_union(f.data_type())),
        DataType::List(item) => has_union(item.data_type()),
        _ => false,
    }
}

/// Rolling Parquet files `DIR/STEM-NNNNNN.parquet` (see [`crate::writer`]).
///
/// ```
/// use changeflow_core::ClusterTime;
/// use changeflow_operators::value::{Value, ValueType};
/// use changeflow_sinks::arrow::{changelog_schema_of, changes_to_batch};
/// use changeflow_sinks::parquet::{ParquetOptions, ParquetWriter};
/// use changeflow_sinks::writer::{BatchWriter, RollPolicy};
/// let dir = std::env::temp_dir().join(format!("cf-doc-roll-{}", std::process::id()));
/// let options = ParquetOptions { roll: RollPolicy::rows(2), ..ParquetOptions::default() };
/// let mut writer = ParquetWriter::new(&dir, "log", options).unwrap();
/// let schema = changelog_schema_of(&[("n".into(), ValueType::Int64)]);
/// for t in 1..=3 {
///     let change = [(vec![Value::Int(t)], 1)];
///     writer.write(&changes_to_batch(&schema, ClusterTime::new(t as u32, 0), &change).unwrap()).unwrap();
///     writer.commit(Some(ClusterTime::new(t as u32 + 1, 0))).unwrap();
/// }
/// writer.commit(None).unwrap();
/// assert_eq!(writer.files().len(), 2); // rows 1–2, then row 3
/// # std::fs::remove_dir_all(&dir).ok();
/// ```
pub struct ParquetWriter {
    rolling: Rolling<ParquetFormat>,
}

impl ParquetWriter {
    /// Files `dir/stem-NNNNNN.parquet`; fails if the compression is not compiled in.
    pub fn new(dir: &Path, stem: &str, options: ParquetOptions) -> Result<Self, SinkError> {
        Ok(ParquetWriter {
            rolling: Rolling::new(ParquetFormat::new(&options)?, dir, stem, options.roll),
        })
    }
}

impl BatchWriter for ParquetWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        self.rolling.write(batch)
    }
    fn commit(&mut self, frontier: Option<ClusterTime>) -> Result<(), SinkError> {
        self.rolling.commit(frontier)
    }
    fn files(&self) -> Vec<PathBuf> {
        self.rolling.files()
    }
    fn checkpoint(&mut self, frontier: ClusterTime) -> Result<u64, SinkError> {
        self.rolling.checkpoint(frontier)
    }
    fn recover(&mut self, position: u64) -> Result<(), SinkError> {
        self.rolling.recover(position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    #[test]
    fn compression_not_compiled_in_is_a_clear_error() {
        let options = ParquetOptions {
            compression: ParquetCompression::Zstd(3),
            ..ParquetOptions::default()
        };
        let err = ParquetWriter::new(Path::new("/nonexistent"), "x", options)
            .err()
            .unwrap();
        assert!(err.to_string().contains("not compiled"), "{err}");
    }

    #[test]
    fn dense_unions_are_refused_with_a_clear_error() {
        use crate::arrow::documents::DocumentBatcher;
        use crate::arrow::schema::{FallbackMode, SchemaSource};
        let mut batcher =
            DocumentBatcher::new(SchemaSource::inferred()).with_fallback(FallbackMode::DenseUnion);
        batcher.push(bson::rawdoc! { "v": { "a": [1, "x"] } }.as_bytes());
        let batch = batcher.finish().unwrap().remove(0);
        let dir = std::env::temp_dir().join(format!("cf-parquet-union-{}", std::process::id()));
        let mut writer = ParquetWriter::new(&dir, "u", ParquetOptions::default()).unwrap();
        let err = writer.write(&batch).err().unwrap();
        assert!(
            err.to_string().contains("column v is a dense union"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "no file left behind"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn files_carry_their_frontier_and_series() {
        use crate::arrow::documents::DocumentBatcher;
        use crate::arrow::schema::SchemaSource;
        let dir = std::env::temp_dir().join(format!("cf-parquet-series-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut writer = ParquetWriter::new(
            &dir,
            "t",
            ParquetOptions {
                compression: ParquetCompression::Lz4,
                ..ParquetOptions::default()
            },
        )
        .unwrap();
        let mut batcher = DocumentBatcher::new(SchemaSource::Inferred {
            sample: 1,
            widen: true,
        });
        batcher.push(bson::rawdoc! { "a": 1 }.as_bytes());
        for batch in batcher.finish().unwrap() {
            writer.write(&batch).unwrap();
        }
        writer.commit(Some(ClusterTime::new(5, 0))).unwrap();
        batcher.push(bson::rawdoc! { "a": 2, "b": 1.5 }.as_bytes());
        for batch in batcher.finish().unwrap() {
            writer.write(&batch).unwrap();
        }
        writer.commit(None).unwrap();
        let files = writer.files();
        assert_eq!(files.len(), 2);
        let kv = |path: &PathBuf| {
            let reader = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
            reader
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .unwrap()
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
                .collect::<std::collections::HashMap<_, _>>()
        };
        let first = kv(&files[0]);
        assert_eq!(
            first["changeflow.frontier"],
            ClusterTime::new(5, 0).as_u64().to_string()
        );
        assert_eq!(first["changeflow.series"], "0");
        let second = kv(&files[1]);
        assert_eq!(second["changeflow.complete"], "true");
        assert_eq!(second["changeflow.series"], "1");
        assert!(
            !dir.read_dir().unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.'))
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
