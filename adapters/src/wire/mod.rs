//! What pepper speaks on the wire, each format with its reader and writer:
//! the JSON event envelope, PsEPR's XML envelope, the peer frames sites
//! exchange, and the JSON shape of a tuple. Nothing here holds state or
//! does I/O: the handlers and loops read and write through these.

pub mod envelope;
pub mod frames;
pub mod tuples;
pub mod xml;
