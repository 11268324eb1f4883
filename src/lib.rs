//! intake-bot: an end-to-end-encrypted Matrix bot that does the intake of
//! an anonymous helpline and hands each case to a counsellor.
//!
//! # Layout
//!
//! A pure core, a thin Matrix edge, a small store (see
//! `docs/architecture.md` for the path of one event through them).
//!
//! The pure core takes inputs (events and the time) and returns effects;
//! it never touches the network, the disk or the clock, and never reads
//! the config (the config builds its settings):
//! - `intake`: the conversation engine of one case, its questionnaire
//!   types and its texts;
//! - `routing`: roster, availability, capacity, queue, offer deadlines;
//! - `desk`: every open case plus routing as one state machine, events
//!   in, actions out;
//! - `hours`: opening hours in an IANA time zone;
//! - [`outcome`]: the outcome record, statistics and export formats.
//!
//! The edge:
//! - [`config`]: the TOML schema, defaults, validation with key-precise
//!   errors, secrets; builds the core's settings;
//! - [`store`]: sled: cases in progress, routing state, outcomes; schema
//!   version;
//! - [`matrix`]: login, sync, handlers, and the worker that owns the desk;
//! - `metrics`: counters, gauges, and the `/metrics` and `/healthz`
//!   listener;
//! - [`logging`]: tracing set up so that no id or message text reaches a
//!   log line;
//! - `web`: the web chat's page, settings and sign-up tokens;
//! - `http`: the small server loop of both listeners;
//! - `clock`: the one place the wall clock is read.
#![recursion_limit = "256"]

mod clock;
pub mod config;
mod desk;
mod hours;
mod http;
mod intake;
pub mod logging;
pub mod matrix;
mod metrics;
pub mod outcome;
mod routing;
pub mod store;
pub(crate) mod web;
