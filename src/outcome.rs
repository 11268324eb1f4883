//! The outcome record of a finished case and the statistics over many.
//!
//! A record holds exactly what privacy rule 1 allows: a random case id, the
//! ISO week, the language, each answer as a choice id / `answered` /
//! `skipped`, three flags, coarse wait and duration buckets, the outcome tag
//! and, for cases that ended early, the step reached. Nothing else.
//! The statistics over many records are in [`stats`].

pub mod stats;

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike};
use serde::{Deserialize, Serialize};

use crate::intake::questionnaire::Question;
use crate::intake::{Case, Settings};

/// Outcome tags the bot itself sets; counsellors use the configured tags.
pub(crate) mod tags {
    /// The visitor left (or quick-exited) before a counsellor closed the case.
    pub const ABANDONED: &str = "abandoned";
    /// The visitor said `stop`.
    pub const STOPPED: &str = "stopped";
    /// Kept past `privacy.in_progress_retention_hours`.
    pub const EXPIRED: &str = "expired";
    /// The room could not be encrypted: no intake.
    pub const UNENCRYPTED: &str = "unencrypted";
    /// Someone other than the visitor and counsellors joined mid-case.
    pub const GROUP: &str = "group";
}

/// One finished case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    /// The record's own random id (privacy rule 1): not the case id, never
    /// shown, logged or put in a room. Records written before it existed
    /// carried the case id as `case`.
    #[serde(alias = "case")]
    pub record: String,
    /// ISO week the case started, `YYYY-Www`.
    pub week: String,
    /// The language the intake ran in.
    pub language: String,
    /// Question id -> choice id, `answered` or `skipped`.
    pub answers: BTreeMap<String, String>,
    /// Whether an emergency word or an urgent choice came up.
    pub urgent: bool,
    /// Whether every question was answered or skipped.
    pub intake_completed: bool,
    /// Whether a counsellor joined the case.
    pub counsellor_joined: bool,
    /// Time from the end of the intake to a counsellor joining, bucketed.
    pub wait: String,
    /// Time from start to end, bucketed.
    pub duration: String,
    /// The counsellor's tag, or one the bot sets (`tags`).
    pub outcome: String,
    /// For cases that ended before a counsellor joined: the step reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_reached: Option<String>,
}

/// The ISO week of a Unix time, as `YYYY-Www`.
pub(crate) fn iso_week(unix: i64) -> String {
    let dt = DateTime::from_timestamp(unix, 0).unwrap_or_default();
    let w = dt.iso_week();
    format!("{}-W{:02}", w.year(), w.week())
}

/// Coarse bucket for a wait; `none` when nobody joined.
pub(crate) fn wait_bucket(secs: Option<i64>) -> &'static str {
    match secs {
        None => "none",
        Some(s) if s < 60 => "<1m",
        Some(s) if s < 5 * 60 => "1-5m",
        Some(s) if s < 15 * 60 => "5-15m",
        Some(s) if s < 60 * 60 => "15-60m",
        Some(_) => ">1h",
    }
}

/// Coarse bucket for a case's duration.
pub(crate) fn duration_bucket(secs: i64) -> &'static str {
    match secs {
        s if s < 5 * 60 => "<5m",
        s if s < 15 * 60 => "5-15m",
        s if s < 30 * 60 => "15-30m",
        s if s < 60 * 60 => "30-60m",
        s if s < 4 * 60 * 60 => "1-4h",
        _ => ">4h",
    }
}

/// The order of wait buckets, for medians.
pub(crate) const WAIT_BUCKETS: &[&str] = &["<1m", "1-5m", "5-15m", "15-60m", ">1h"];

impl OutcomeRecord {
    /// The record of `case` ending now with `outcome`.
    pub(crate) fn from_case(s: &Settings, case: &Case, now: i64, outcome: &str) -> OutcomeRecord {
        let answers = case.answers.iter().map(|(q, a)| (q.clone(), a.as_record().to_owned())).collect();
        let wait = match (case.queued_at, case.joined_at) {
            (Some(q), Some(j)) => Some((j - q).max(0)),
            _ => None,
        };
        OutcomeRecord {
            record: case.record.clone(),
            week: iso_week(case.started),
            language: case.language.clone().unwrap_or_else(|| "none".into()),
            answers,
            urgent: case.urgent,
            intake_completed: case.intake_completed,
            counsellor_joined: case.counsellor_joined,
            wait: wait_bucket(wait).to_owned(),
            duration: duration_bucket(now - case.started).to_owned(),
            outcome: outcome.to_owned(),
            step_reached: (!case.counsellor_joined).then(|| case.step.reached(s)),
        }
    }
}

/// The fixed CSV columns before one column per question.
pub(crate) const CSV_FIXED: &[&str] = &[
    "record",
    "week",
    "language",
    "urgent",
    "intake_completed",
    "counsellor_joined",
    "wait",
    "duration",
    "outcome",
    "step_reached",
];

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

/// CSV with a stable header: the fixed columns, then `q:<id>` per configured
/// question in config order, then any question ids only old records have.
pub fn to_csv(records: &[OutcomeRecord], questions: &[Question]) -> String {
    let mut qids: Vec<String> = questions.iter().map(|q| q.id.clone()).collect();
    for r in records {
        for id in r.answers.keys() {
            if !qids.contains(id) {
                qids.push(id.clone());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> =
        CSV_FIXED.iter().map(|s| s.to_string()).chain(qids.iter().map(|q| format!("q:{q}"))).collect();
    out.push_str(&header.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(","));
    out.push('\n');
    for r in records {
        let mut row: Vec<String> = vec![
            r.record.clone(),
            r.week.clone(),
            r.language.clone(),
            r.urgent.to_string(),
            r.intake_completed.to_string(),
            r.counsellor_joined.to_string(),
            r.wait.clone(),
            r.duration.clone(),
            r.outcome.clone(),
            r.step_reached.clone().unwrap_or_default(),
        ];
        row.extend(qids.iter().map(|q| r.answers.get(q).cloned().unwrap_or_default()));
        out.push_str(&row.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(case: &str, outcome: &str, answers: &[(&str, &str)]) -> OutcomeRecord {
        OutcomeRecord {
            record: case.into(),
            week: "2026-W48".into(),
            language: "en".into(),
            answers: answers.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            urgent: false,
            intake_completed: true,
            counsellor_joined: true,
            wait: "<1m".into(),
            duration: "5-15m".into(),
            outcome: outcome.into(),
            step_reached: None,
        }
    }

    #[test]
    fn weeks_and_buckets() {
        // 2026-11-29 is a Sunday in ISO week 48; 2027-01-01 is in 2026-W53.
        assert_eq!(iso_week(1_795_910_400), "2026-W48");
        assert_eq!(iso_week(1_798_761_600), "2026-W53");
        assert_eq!(wait_bucket(None), "none");
        assert_eq!(wait_bucket(Some(59)), "<1m");
        assert_eq!(wait_bucket(Some(60)), "1-5m");
        assert_eq!(wait_bucket(Some(3600)), ">1h");
        assert_eq!(duration_bucket(0), "<5m");
        assert_eq!(duration_bucket(20 * 60), "15-30m");
        assert_eq!(duration_bucket(5 * 3600), ">4h");
    }

    #[test]
    fn csv_is_stable_and_quoted() {
        let q: Vec<Question> = vec![];
        let rs = vec![rec("a1", "advice", &[("age", "15_17")]), rec("b,2", "referred", &[("who", "myself")])];
        let csv = to_csv(&rs, &q);
        let mut lines = csv.lines();
        assert_eq!(
            lines.next().unwrap(),
            "record,week,language,urgent,intake_completed,counsellor_joined,wait,duration,outcome,step_reached,q:age,q:who"
        );
        assert_eq!(lines.next().unwrap(), "a1,2026-W48,en,false,true,true,<1m,5-15m,advice,,15_17,");
        assert_eq!(lines.next().unwrap(), "\"b,2\",2026-W48,en,false,true,true,<1m,5-15m,referred,,,myself");
    }

    #[test]
    fn the_documented_csv_header_is_the_real_one() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let header = CSV_FIXED.join(",");
        assert!(readme.contains(&format!("`{header}`")), "README must document the CSV header {header}");
        for b in WAIT_BUCKETS {
            assert!(readme.contains(b), "README must list wait bucket {b}");
        }
    }
}
