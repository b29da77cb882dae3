//! Persistence (sqlx: Postgres, or embedded SQLite): turns, sessions, next states, feedback and
//! what the learner derives. Serving only ever enqueues; it never waits on the database.

pub mod apply;
pub mod apply_pg;
mod apply_pg_rows;
pub mod bench;
pub mod canonical;
pub mod capture;
pub mod dashboard;
pub mod db;
pub mod error;
pub mod export;
pub mod handle;
pub mod journal;
pub mod learner;
pub mod learner_queries;
pub mod linking;
pub mod ops;
pub mod queries;
pub mod reads;
pub mod responses;
pub mod responses_db;
pub mod views;
pub mod writer;

pub use capture::*;
pub use error::StoreError;
pub use handle::{Store, StoreConfig, StoreHealth};
pub use learner::{
    JudgeClaim, JudgeTask, LearnerState, NewJudgement, NewSample, NewStep, NewVersion, SampleRow,
    StepRow, VersionRow,
};
pub use ops::{FeedbackSource, NewFeedback, Rating};
pub use reads::FeedbackOutcome;
pub use views::*;
pub use writer::WriterConfig;
