//! Streaming results (run_iter / run_unordered).
