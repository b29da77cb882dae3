//! Persistence (sqlx: Postgres, or embedded SQLite): turns, sessions, next states, feedback and
//! what the learner derives. Serving only ever enqueues; it never waits on the database.

pub mod capture;

pub use capture::*;
