//! changeflow test kit (placeholder: being written).
