//! Trace envelope v1 (being written).
