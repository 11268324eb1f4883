//! intake-bot: an end-to-end-encrypted Matrix bot that does the intake of
//! an anonymous helpline and hands each case to a counsellor.
#![recursion_limit = "256"]

pub mod config; // TOML schema, defaults, validation with key-precise errors, secrets
pub mod desk; // pure: all open cases plus routing, events in, actions out
pub mod hours; // pure: opening hours in an IANA time zone
pub mod intake; // pure: the conversation engine of one case, and its texts
pub mod logging; // tracing setup that keeps the SDK's id-bearing lines out
pub mod matrix; // the Matrix edge: login, sync, handlers, the worker
pub mod metrics; // counters and gauges, Prometheus text, the /metrics and /healthz listener
pub mod outcome; // the outcome record, statistics and export formats
pub mod routing; // pure: roster, capacity, queue, offer deadlines
pub mod store; // sled: cases in progress, routing state, outcomes; schema version
