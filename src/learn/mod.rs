//! See the architecture in README.md.

pub mod judge;
