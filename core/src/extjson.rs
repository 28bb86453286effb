//! Extended JSON → BSON bytes (placeholder: being written).
