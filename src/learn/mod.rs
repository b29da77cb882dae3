//! See the architecture in README.md.
