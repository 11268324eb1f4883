//! Operational metrics and health: counters the bot updates as it works,
//! rendered as Prometheus text, and an optional HTTP listener serving
//! `/metrics` and `/healthz`.
//!
//! Nothing here ever names a case, a room or a person: the only label is
//! the outcome tag, a value from the config or the bot's own fixed list.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use anyhow::{Context, Result};
use tracing::info;

use crate::clock::unix_now as now;

/// Upper bounds (seconds) of the wait-time histogram's buckets.
pub const WAIT_BUCKETS_SECS: &[u64] = &[30, 60, 120, 300, 600, 900, 1800, 3600];

/// A sync that has not succeeded for this long makes the bot unhealthy,
/// even while a request is still hanging (a sync long-polls for 30 s).
const HEALTHY_WITHIN_SECS: i64 = 120;

/// The worker beats at least this often while it runs.
pub const WORKER_BEAT_SECS: u64 = 10;

/// A worker silent for this long makes the bot unhealthy (it is stuck).
const WORKER_SILENT_SECS: i64 = 60;

/// The gauges, as the worker last saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Cases in progress (intake, waiting, with a counsellor).
    pub active_cases: u64,
    /// Cases waiting for a counsellor, offered ones included.
    pub queue_length: u64,
    pub counsellors_available: u64,
}

/// All metrics of one bot process; shared between the worker, the sync
/// loop and the listener.
#[derive(Debug, Default)]
pub struct Metrics {
    cases_started: AtomicU64,
    intakes_completed: AtomicU64,
    urgent: AtomicU64,
    offer_timeouts: AtomicU64,
    sync_errors: AtomicU64,
    /// Outcome tag -> cases ended with it.
    ended: Mutex<BTreeMap<String, u64>>,
    /// Reason -> rooms that got no case (over a cap, open, a group...).
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Per bucket of [`WAIT_BUCKETS_SECS`] plus +Inf: observations; and the sum.
    waits: Mutex<(Vec<u64>, u64)>,
    gauges: Mutex<Gauges>,
    /// Unix time of the last successful sync; 0 before the first.
    last_sync_ok: AtomicI64,
    sync_failing: AtomicBool,
    /// Unix time of the worker's last beat; 0 before its first.
    worker_beat: AtomicI64,
    /// Set when a task the bot cannot do without has ended.
    broken: AtomicBool,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    pub fn case_started(&self) {
        self.cases_started.fetch_add(1, Ordering::Relaxed);
    }

    /// A case ended with `outcome`; `intake_completed` from its record.
    pub fn case_ended(&self, outcome: &str, intake_completed: bool) {
        if intake_completed {
            self.intakes_completed.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut m) = self.ended.lock() {
            *m.entry(outcome.to_owned()).or_insert(0) += 1;
        }
    }

    /// A room got no case, for `reason` (a fixed label, never an id).
    pub fn room_refused(&self, reason: &'static str) {
        if let Ok(mut m) = self.refused.lock() {
            *m.entry(reason).or_insert(0) += 1;
        }
    }

    /// Adds to the counters the desk keeps (urgent, offer timeouts) and
    /// observes waits, then sets the gauges.
    pub fn update(&self, urgent: u64, offer_timeouts: u64, waits: &[i64], gauges: Gauges) {
        self.urgent.fetch_add(urgent, Ordering::Relaxed);
        self.offer_timeouts.fetch_add(offer_timeouts, Ordering::Relaxed);
        if !waits.is_empty()
            && let Ok(mut h) = self.waits.lock()
        {
            if h.0.is_empty() {
                h.0 = vec![0; WAIT_BUCKETS_SECS.len() + 1];
            }
            for &w in waits {
                let w = w.max(0) as u64;
                let i = WAIT_BUCKETS_SECS.iter().position(|b| w <= *b).unwrap_or(WAIT_BUCKETS_SECS.len());
                h.0[i] += 1;
                h.1 += w;
            }
        }
        if let Ok(mut g) = self.gauges.lock() {
            *g = gauges;
        }
    }

    pub fn sync_ok(&self) {
        self.last_sync_ok.store(now(), Ordering::Relaxed);
        self.sync_failing.store(false, Ordering::Relaxed);
    }

    pub fn sync_error(&self) {
        self.sync_errors.fetch_add(1, Ordering::Relaxed);
        self.sync_failing.store(true, Ordering::Relaxed);
    }

    /// The worker is alive and turning (see [`WORKER_BEAT_SECS`]).
    pub fn worker_beat(&self) {
        self.worker_beat.store(now(), Ordering::Relaxed);
    }

    /// A task the bot cannot do without has ended: unhealthy from now on.
    pub fn broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    /// Healthy: the worker turns and the last sync succeeded, recently. The
    /// reason when not.
    pub fn health(&self) -> Result<(), &'static str> {
        let last = self.last_sync_ok.load(Ordering::Relaxed);
        let beat = self.worker_beat.load(Ordering::Relaxed);
        if self.broken.load(Ordering::Relaxed) {
            Err("stopping: a task of the bot ended unexpectedly")
        } else if beat != 0 && now() - beat > WORKER_SILENT_SECS {
            Err("the worker has not turned for over a minute")
        } else if last == 0 {
            Err("not synced yet")
        } else if self.sync_failing.load(Ordering::Relaxed) {
            Err("sync failing: the homeserver does not answer")
        } else if now() - last > HEALTHY_WITHIN_SECS {
            Err("no successful sync for over 2 minutes")
        } else {
            Ok(())
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ =
                writeln!(o, "# HELP intake_bot_{name} {help}\n# TYPE intake_bot_{name} counter\nintake_bot_{name} {v}");
        };
        counter(
            &mut o,
            "cases_started_total",
            "Cases started (bot joined an encrypted visitor room).",
            self.cases_started.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "intakes_completed_total",
            "Ended cases whose intake was completed.",
            self.intakes_completed.load(Ordering::Relaxed),
        );
        counter(&mut o, "cases_urgent_total", "Cases marked urgent.", self.urgent.load(Ordering::Relaxed));
        counter(
            &mut o,
            "offer_timeouts_total",
            "Offers to a counsellor withdrawn after the accept timeout.",
            self.offer_timeouts.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "sync_errors_total",
            "Failed syncs with the homeserver.",
            self.sync_errors.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP intake_bot_cases_ended_total Cases ended, by outcome tag.\n# TYPE intake_bot_cases_ended_total counter"
        );
        if let Ok(m) = self.ended.lock() {
            for (tag, n) in m.iter() {
                let _ = writeln!(o, "intake_bot_cases_ended_total{{outcome=\"{}\"}} {n}", label(tag));
            }
        }
        let _ = writeln!(
            o,
            "# HELP intake_bot_rooms_refused_total Rooms that got no case, by reason (over a cap, open, group...).\n# TYPE intake_bot_rooms_refused_total counter"
        );
        if let Ok(m) = self.refused.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(o, "intake_bot_rooms_refused_total{{reason=\"{reason}\"}} {n}");
            }
        }
        let g = self.gauges.lock().map(|g| *g).unwrap_or_default();
        let gauge = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ =
                writeln!(o, "# HELP intake_bot_{name} {help}\n# TYPE intake_bot_{name} gauge\nintake_bot_{name} {v}");
        };
        gauge(&mut o, "cases_active", "Cases in progress.", g.active_cases);
        gauge(&mut o, "queue_length", "Cases waiting for a counsellor (offered ones included).", g.queue_length);
        gauge(&mut o, "counsellors_available", "Counsellors who said !available.", g.counsellors_available);
        gauge(
            &mut o,
            "sync_healthy",
            "1 while the sync with the homeserver is healthy.",
            u64::from(self.health().is_ok()),
        );
        let _ = writeln!(
            o,
            "# HELP intake_bot_wait_seconds Time from the end of the intake to a counsellor joining.\n# TYPE intake_bot_wait_seconds histogram"
        );
        let (buckets, sum) = self.waits.lock().map(|h| h.clone()).unwrap_or_default();
        let mut cum = 0;
        for (i, b) in WAIT_BUCKETS_SECS.iter().enumerate() {
            cum += buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(o, "intake_bot_wait_seconds_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += buckets.get(WAIT_BUCKETS_SECS.len()).copied().unwrap_or(0);
        let _ = writeln!(o, "intake_bot_wait_seconds_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(o, "intake_bot_wait_seconds_sum {sum}\nintake_bot_wait_seconds_count {cum}");
        o
    }
}

/// A label value made safe for the text format.
fn label(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')).collect()
}

/// Binds the listener now, so a bad or busy address stops the start with
/// a clear error rather than failing later unseen.
pub async fn bind(listen: &str) -> Result<tokio::net::TcpListener> {
    let addr: SocketAddr =
        listen.parse().with_context(|| format!("key `metrics.listen`: `{listen}` is not an address"))?;
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("key `metrics.listen`: cannot listen on {addr}"))
}

/// Serves `/metrics` and `/healthz` until `shutdown` resolves.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, shutdown: impl Future<Output = ()>) {
    use hyper::{Method, Response, StatusCode};

    if let Ok(a) = listener.local_addr() {
        info!(address = %a, "metrics listener up: /metrics and /healthz");
    }
    let answer = move |method: Method, path: String| {
        let metrics = metrics.clone();
        async move {
            let (status, ctype, body) = match (&method, path.as_str()) {
                (&Method::GET, "/metrics") => {
                    (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", metrics.render())
                }
                (&Method::GET, "/healthz") => match metrics.health() {
                    Ok(()) => (StatusCode::OK, "text/plain; charset=utf-8", "ok\n".to_owned()),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", format!("{why}\n")),
                },
                (&Method::GET, _) => (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n".into()),
                _ => (StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "GET only\n".into()),
            };
            let mut r = Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
            *r.status_mut() = status;
            r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static(ctype));
            r
        }
    };
    crate::http::serve(listener, "metrics", answer, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.case_started();
        m.case_started();
        m.case_ended("advice", true);
        m.case_ended("abandoned", false);
        m.case_ended("abandoned", false);
        m.update(1, 2, &[10, 45, 45, 4000], Gauges { active_cases: 3, queue_length: 1, counsellors_available: 2 });
        m.update(0, 1, &[], Gauges { active_cases: 1, queue_length: 0, counsellors_available: 2 });
        let t = m.render();
        for line in [
            "intake_bot_cases_started_total 2",
            "intake_bot_intakes_completed_total 1",
            "intake_bot_cases_urgent_total 1",
            "intake_bot_offer_timeouts_total 3",
            "intake_bot_cases_ended_total{outcome=\"abandoned\"} 2",
            "intake_bot_cases_ended_total{outcome=\"advice\"} 1",
            "intake_bot_cases_active 1",
            "intake_bot_queue_length 0",
            "intake_bot_counsellors_available 2",
            "intake_bot_wait_seconds_bucket{le=\"30\"} 1",
            "intake_bot_wait_seconds_bucket{le=\"60\"} 3",
            "intake_bot_wait_seconds_bucket{le=\"3600\"} 3",
            "intake_bot_wait_seconds_bucket{le=\"+Inf\"} 4",
            "intake_bot_wait_seconds_sum 4100",
            "intake_bot_wait_seconds_count 4",
            "intake_bot_sync_healthy 0",
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line:?} in\n{t}");
        }
        // Every sample line belongs to a declared metric.
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            let base = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
            assert!(t.contains(&format!("# TYPE {base} ")), "{name} undeclared");
        }
    }

    #[test]
    fn health_follows_the_sync() {
        let m = Metrics::default();
        assert_eq!(m.health(), Err("not synced yet"));
        m.sync_ok();
        assert_eq!(m.health(), Ok(()));
        m.sync_error();
        assert!(m.health().is_err());
        m.sync_ok();
        assert_eq!(m.health(), Ok(()));
        m.last_sync_ok.store(now() - 3 * 60, Ordering::Relaxed);
        assert!(m.health().is_err());
        assert_eq!(m.sync_errors.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn health_follows_the_worker() {
        let m = Metrics::default();
        m.sync_ok();
        m.worker_beat();
        assert_eq!(m.health(), Ok(()));
        // Stuck: the sync loop still runs, but nothing is handled.
        m.worker_beat.store(now() - 2 * 60, Ordering::Relaxed);
        assert_eq!(m.health(), Err("the worker has not turned for over a minute"));
        m.worker_beat();
        assert_eq!(m.health(), Ok(()));
        m.broken();
        assert!(m.health().is_err());
    }

    #[test]
    fn labels_cannot_break_the_format() {
        assert_eq!(label("no_help_needed"), "no_help_needed");
        assert_eq!(label("a\"}\n b"), "ab");
    }
}
