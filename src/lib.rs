//! crr: cross-region replication for S3-compatible object storage.
//!
//! The engine (`engine`) is a library with no knowledge of the terminal; the headless commands
//! (`cli`) and, later, the terminal UI (`tui`) drive the same engine.

pub mod cli;
pub mod config;
pub mod engine;
pub mod s3;
pub mod store;
pub mod tui;

/// Input that cannot be acted on (usage, config, preflight): exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);
