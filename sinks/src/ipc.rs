//! Arrow IPC output: rolling files in the IPC file or stream format ([`IpcWriter`]), and a live
//! IPC stream to any `Write` such as stdout ([`IpcStreamWriter`]).
//!
//! ```text
//!   IpcWriter:       batches ──buffer (bounded by the roll policy)──▶ at close: schema with
//!                    `changeflow.frontier` in its metadata + batches ──▶ temp file ──rename──▶
//!   IpcStreamWriter: batches ──▶ one IPC stream per schema series, back to back on the output
//! ```
//!
//! A rolled IPC file keeps its batches in memory until it closes, so the schema at its start can
//! carry the frontier it is complete up to (`changeflow.frontier`, `changeflow.complete`,
//! `changeflow.series` in the schema's metadata; the file format's footer has them too).
//! Bound a file's memory with [`RollPolicy`] rows or bytes.
//!
//! On a pipe the frontier is not known when the schema goes out: an [`IpcStreamWriter`] writes
//! each schema series as one complete IPC stream (schema, batches, end-of-stream marker), with
//! `changeflow.series` in the schema metadata; a reader reads the streams one after another
//! (`pyarrow.ipc.open_stream` on the same file object until it is exhausted). Progress is the
//! `_time` column.
//!
//! ```
//! use changeflow_operators::value::{Value, ValueType};
//! use changeflow_sinks::arrow::{rows_to_batch, schema_of};
//! use changeflow_sinks::ipc::IpcStreamWriter;
//! use changeflow_sinks::writer::BatchWriter;
//! let batch = rows_to_batch(&schema_of(&[("n".into(), ValueType::Int64)]), &[vec![Value::Int(7)]]).unwrap();
//! let mut out = Vec::new();
//! let mut writer = IpcStreamWriter::new(&mut out);
//! writer.write(&batch).unwrap();
//! writer.commit(None).unwrap();
//! drop(writer);
//! let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(out), None).unwrap();
//! let read: Vec<_> = reader.map(|b| b.unwrap()).collect();
//! assert_eq!(read[0].num_rows(), 1);
//! ```

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_ipc::writer::{FileWriter, StreamWriter};
use arrow_schema::{Schema, SchemaRef};
use changeflow_core::ClusterTime;

use crate::SinkError;
use crate::rolling::{FileFormat, Rolling};
use crate::writer::{BatchWriter, RollPolicy};

/// Which IPC format rolled files use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpcFormat {
    /// The IPC file format (random access, footer): `.arrow`.
    File,
    /// The IPC stream format: `.arrows`.
    Stream,
}

pub(crate) struct IpcFiles {
    format: IpcFormat,
}

pub(crate) struct Buffered {
    file: File,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    bytes: u64,
}

fn with_metadata(schema: &Schema, metadata: &[(String, String)]) -> SchemaRef {
    let mut all = schema.metadata().clone();
    for (key, value) in metadata {
        all.insert(key.clone(), value.clone());
    }
    Arc::new(schema.clone().with_metadata(all))
}

impl FileFormat for IpcFiles {
    type Open = Buffered;

    fn extension(&self) -> &'static str {
        match self.format {
            IpcFormat::File => "arrow",
            IpcFormat::Stream => "arrows",
        }
    }

    fn open(&self, file: File, schema: &SchemaRef) -> Result<Buffered, String> {
        Ok(Buffered {
            file,
            schema: schema.clone(),
            batches: Vec::new(),
            bytes: 0,
        })
    }

    fn write(&self, open: &mut Buffered, batch: &RecordBatch) -> Result<(), String> {
        open.bytes += batch.get_array_memory_size() as u64;
        open.batches.push(batch.clone());
        Ok(())
    }

    fn bytes(&self, open: &Buffered) -> u64 {
        open.bytes
    }

    fn close(&self, open: Buffered, metadata: Vec<(String, String)>) -> Result<File, String> {
        let schema = with_metadata(&open.schema, &metadata);
        let out = BufWriter::new(open.file);
        let retag = |b: &RecordBatch| {
            b.clone()
                .with_schema(schema.clone())
                .map_err(|e| e.to_string())
        };
        let out = match self.format {
            IpcFormat::File => {
                let mut w = FileWriter::try_new(out, &schema).map_err(|e| e.to_string())?;
                for (key, value) in &metadata {
                    w.write_metadata(key, value);
                }
                for batch in &open.batches {
                    w.write(&retag(batch)?).map_err(|e| e.to_string())?;
                }
                w.finish().map_err(|e| e.to_string())?;
                w.into_inner().map_err(|e| e.to_string())?
            }
            IpcFormat::Stream => {
                let mut w = StreamWriter::try_new(out, &schema).map_err(|e| e.to_string())?;
                for batch in &open.batches {
                    w.write(&retag(batch)?).map_err(|e| e.to_string())?;
                }
                w.finish().map_err(|e| e.to_string())?;
                w.into_inner().map_err(|e| e.to_string())?
            }
        };
        out.into_inner().map_err(|e| e.to_string())
    }
}

/// Rolling Arrow IPC files `DIR/STEM-NNNNNN.arrow` (file format) or `.arrows` (stream format).
///
/// ```
/// use changeflow_operators::value::{Value, ValueType};
/// use changeflow_sinks::arrow::{rows_to_batch, schema_of};
/// use changeflow_sinks::ipc::{IpcFormat, IpcWriter};
/// use changeflow_sinks::writer::{BatchWriter, RollPolicy};
/// let dir = std::env::temp_dir().join(format!("cf-doc-ipc-{}", std::process::id()));
/// let mut writer = IpcWriter::new(&dir, "view", IpcFormat::File, RollPolicy::never());
/// let batch = rows_to_batch(&schema_of(&[("n".into(), ValueType::Int64)]), &[vec![Value::Int(7)]]).unwrap();
/// writer.write(&batch).unwrap();
/// writer.commit(None).unwrap();
/// let file = std::fs::File::open(&writer.files()[0]).unwrap();
/// let reader = arrow_ipc::reader::FileReader::try_new(file, None).unwrap();
/// assert_eq!(reader.schema().metadata()["changeflow.complete"], "true");
/// # std::fs::remove_dir_all(&dir).ok();
/// ```
pub struct IpcWriter {
    rolling: Rolling<IpcFiles>,
}

impl IpcWriter {
    /// Files `dir/stem-NNNNNN.arrow` (or `.arrows`), rolled by `roll`.
    pub fn new(dir: &Path, stem: &str, format: IpcFormat, roll: RollPolicy) -> IpcWriter {
        IpcWriter {
            rolling: Rolling::new(IpcFiles { format }, dir, stem, roll),
        }
    }
}

impl BatchWriter for IpcWriter {
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

/// A live Arrow IPC stream on `out` (stdout, a socket, a file): one stream per schema series.
pub struct IpcStreamWriter<W: Write> {
    out: Option<W>,
    stream: Option<(StreamWriter<W>, SchemaRef)>,
    series: u64,
}

impl<W: Write> IpcStreamWriter<W> {
    /// A stream writer on `out`.
    pub fn new(out: W) -> Self {
        IpcStreamWriter {
            out: Some(out),
            stream: None,
            series: 0,
        }
    }

    fn error(reason: impl ToString) -> SinkError {
        SinkError::Write {
            path: PathBuf::from("<ipc stream>"),
            reason: reason.to_string(),
        }
    }

    fn end_stream(&mut self) -> Result<(), SinkError> {
        if let Some((mut stream, _)) = self.stream.take() {
            stream.finish().map_err(Self::error)?;
            let mut out = stream.into_inner().map_err(Self::error)?;
            out.flush().map_err(Self::error)?;
            self.out = Some(out);
            self.series += 1;
        }
        Ok(())
    }
}

impl<W: Write> BatchWriter for IpcStreamWriter<W> {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        if self
            .stream
            .as_ref()
            .is_some_and(|(_, schema)| schema.fields() != batch.schema().fields())
        {
            self.end_stream()?;
        }
        let series = self.series.to_string();
        if self.stream.is_none() {
            let out = self
                .out
                .take()
                .ok_or_else(|| Self::error("the stream is closed"))?;
            let schema = with_metadata(
                &batch.schema(),
                &[("changeflow.series".to_string(), series)],
            );
            let stream = StreamWriter::try_new(out, &schema).map_err(Self::error)?;
            self.stream = Some((stream, schema));
        }
        if let Some((stream, schema)) = self.stream.as_mut() {
            let batch = batch
                .clone()
                .with_schema(schema.clone())
                .map_err(Self::error)?;
            stream.write(&batch).map_err(Self::error)?;
        }
        Ok(())
    }

    fn commit(&mut self, frontier: Option<ClusterTime>) -> Result<(), SinkError> {
        match frontier {
            None => self.end_stream(),
            Some(_) => match self.stream.as_mut() {
                Some((stream, _)) => stream.flush().map_err(Self::error),
                None => Ok(()),
            },
        }
    }
}
