//! pepper's query layer.
//!
//! This crate holds pure, storage-free code, each module usable and tested
//! on its own: the CIM-style model repository's parts and the federated
//! query's decisions. It reads no clock and touches no socket.
//!
//! - [`value`]: CIM property types (`uint32`, `datetime`, `reference`,
//!   arrays, ...) and typed values, checked from JSON.
//! - [`path`]: object paths (`root/cimv2:Class.Key="v"`), their grammar,
//!   canonical key order, escaping and case-insensitive identity.
//! - [`wql`]: the query language, a WQL/CQL subset, with a real parser, clear
//!   errors and three-valued evaluation.
//! - [`schema`]: classes with single inheritance, keys and associations,
//!   validation of class changes and of instances, and the built-in
//!   `root/cimv2` core set.
//! - [`model`]: enumeration (deep or shallow), WQL selection, references and
//!   associators with their filters, paging, and [`model::MemoryModel`], an
//!   in-memory repository with the reference and deletion rules.
//! - [`federated`]: a query asked of several sites at once: its scope and
//!   deadline, the sites in scope, the merge of their answers and the
//!   manifest of who answered.
//!
//! The instance store (materialized from the log in the same batch as each
//! change) and the HTTP API build on these. Tuple queries live in
//! `pepper-adapters` (`api/tuples.rs`) over the store's views; the adapters
//! send a federated query to its sites and hand the answers to
//! [`federated::conclude`].

mod error;
pub mod federated;
pub mod model;
pub mod path;
pub mod schema;
pub mod value;
pub mod wql;

pub use error::{Error, Result};
