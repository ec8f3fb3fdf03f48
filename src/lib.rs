//! The `pepper` package's library: `pepper serve`'s configuration (flags,
//! `PEPPER_*` variables, the TOML file), resolved into what
//! [`pepper_adapters::Site`] opens. The binary parses its command line with
//! it, and the integration tests run sites in-process from the same flags,
//! so a test's flags mean exactly what they mean to `pepper serve`.

pub mod config;
