//! Integration tests: real `ferry-broker` processes on loopback with RocksDB in temp dirs,
//! driven by the real producer and consumer clients. One test binary for the crate.

// Test helpers panic on unexpected errors: the panic is the failure report.
#![allow(clippy::unwrap_used)]

mod cluster;
mod delayed;
mod groups;
mod harness;
mod membership;
mod push;
mod receiver;
mod single;
mod txn;
mod webhook;
