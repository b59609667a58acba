//! ptlens: decode and index Intel PT recordings made with Linux `perf`.
//!
//! Layering (see `ARCHITECTURE.md`): [`pt`] and [`perf`] are independent leaves;
//! everything else builds on them. Nothing in this library knows LSP or JSON-RPC.

pub mod debuginfo;
pub mod decode;
pub mod index;
pub mod perf;
pub mod pt;
pub mod sideband;
