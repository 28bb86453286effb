//! Record batches handed to a closure in the same process.
//!
//! ```
//! use changeflow_core::ClusterTime;
//! use changeflow_operators::value::{Value, ValueType};
//! use changeflow_sinks::arrow::{rows_to_batch, schema_of};
//! use changeflow_sinks::callback::{CallbackWriter, Delivery};
//! use changeflow_sinks::writer::BatchWriter;
//! let mut rows = 0;
//! let mut last = None;
//! let mut writer = CallbackWriter::new(|delivery: Delivery<'_>| {
//!     match delivery {
//!         Delivery::Batch(batch) => rows += batch.num_rows(),
//!         Delivery::Committed(frontier) => last = Some(frontier),
//!     }
//!     Ok(())
//! });
//! let batch = rows_to_batch(&schema_of(&[("n".into(), ValueType::Int64)]), &[vec![Value::Int(1)]]).unwrap();
//! writer.write(&batch).unwrap();
//! writer.commit(Some(ClusterTime::new(3, 0))).unwrap();
//! drop(writer);
//! assert_eq!((rows, last), (1, Some(Some(ClusterTime::new(3, 0)))));
//! ```

use arrow_array::RecordBatch;
use changeflow_core::ClusterTime;

use crate::SinkError;
use crate::writer::BatchWriter;

/// What a [`CallbackWriter`]'s closure receives.
#[derive(Debug)]
pub enum Delivery<'a> {
    /// A record batch (a new schema means a new series).
    Batch(&'a RecordBatch),
    /// Every change before this frontier has been delivered (`None`: the input ended).
    Committed(Option<ClusterTime>),
}

/// Calls a closure with every batch and every commit; an error from it stops the sink.
pub struct CallbackWriter<F> {
    callback: F,
}

impl<F: FnMut(Delivery<'_>) -> Result<(), SinkError>> CallbackWriter<F> {
    /// A writer calling `callback`.
    pub fn new(callback: F) -> Self {
        CallbackWriter { callback }
    }
}

impl<F: FnMut(Delivery<'_>) -> Result<(), SinkError>> BatchWriter for CallbackWriter<F> {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        (self.callback)(Delivery::Batch(batch))
    }
    fn commit(&mut self, frontier: Option<ClusterTime>) -> Result<(), SinkError> {
        (self.callback)(Delivery::Committed(frontier))
    }
}
