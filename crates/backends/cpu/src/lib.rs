//! cpu backend.
