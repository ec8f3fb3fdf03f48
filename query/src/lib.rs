//! pepper's query layer.
//!
//! This crate will hold the tuple queries of PLDB (latest values by channel
//! prefix, history by time or sequence range), the CIM-style model queries
//! (enumeration with subclasses, a WQL subset, associators and references),
//! and federated queries that fan out to other sites and answer with a
//! manifest of which sites answered, with what data and how old it was. Every
//! read goes through one `pepper-storage` snapshot and states its sequence
//! number.
//!
//! Nothing is implemented here yet: the query layer arrives with the PLDB and
//! model repository issues.
