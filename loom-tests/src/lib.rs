//! Loom models of parjob's scheduler protocols live in `tests/`; this crate has no code of its own.
