//! One file per route.

pub mod chat;
pub mod detokenize;
pub mod health;
pub mod metrics;
pub mod models;
pub mod responses;
pub mod responses_events;
pub mod responses_input;
pub mod tokenize;
