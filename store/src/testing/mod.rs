//! Stores for unit tests of the pipelines, so mirror selection, hedging,
//! trust decisions, publish ordering and garbage collection can be tested
//! in milliseconds without the binary or a server: [`MemoryStore`] holds
//! objects in memory with versions and modification times like a real
//! store, [`Faulty`] wraps any store and injects errors, stalls,
//! corruption and latency on the keys it is told to, and [`FaultySink`]
//! fails writes under chosen prefixes. They complement the
//! end-to-end tests against real servers in `tests/`, which stay the proof.

mod fault;
mod memory;

pub use fault::{FailingTree, Fault, Faulty, FaultySink, WriteFault};
pub use memory::MemoryStore;
