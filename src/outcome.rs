//! The outcome record of a finished case and the statistics over many.
//!
//! A record holds exactly what privacy rule 1 allows: a random case id, the
//! ISO week, the language, each answer as a choice id / `answered` /
//! `skipped`, three flags, coarse wait and duration buckets, the outcome tag
//! and, for cases that ended early, the step reached. Nothing else.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Datelike};
use serde::{Deserialize, Serialize};

use crate::config::{Question, QuestionKind};
use crate::intake::{Case, Settings};

/// Outcome tags the bot itself sets; counsellors use the configured tags.
pub mod tags {
    pub const ABANDONED: &str = "abandoned";
    pub const STOPPED: &str = "stopped";
    pub const EXPIRED: &str = "expired";
    pub const UNENCRYPTED: &str = "unencrypted";
    /// Someone other than the visitor and counsellors joined mid-case.
    pub const GROUP: &str = "group";
}

/// One finished case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    pub case: String,
    /// ISO week the case started, `YYYY-Www`.
    pub week: String,
    pub language: String,
    /// Question id -> choice id, `answered` or `skipped`.
    pub answers: BTreeMap<String, String>,
    pub urgent: bool,
    pub intake_completed: bool,
    pub counsellor_joined: bool,
    /// Time from the end of the intake to a counsellor joining, bucketed.
    pub wait: String,
    /// Time from start to end, bucketed.
    pub duration: String,
    pub outcome: String,
    /// For cases that ended before a counsellor joined: the step reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_reached: Option<String>,
}

/// The ISO week of a Unix time, as `YYYY-Www`.
pub fn iso_week(unix: i64) -> String {
    let dt = DateTime::from_timestamp(unix, 0).unwrap_or_default();
    let w = dt.iso_week();
    format!("{}-W{:02}", w.year(), w.week())
}

/// Coarse bucket for a wait; `none` when nobody joined.
pub fn wait_bucket(secs: Option<i64>) -> &'static str {
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
pub fn duration_bucket(secs: i64) -> &'static str {
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
pub const WAIT_BUCKETS: &[&str] = &["<1m", "1-5m", "5-15m", "15-60m", ">1h"];

impl OutcomeRecord {
    /// The record of `case` ending now with `outcome`.
    pub fn from_case(s: &Settings, case: &Case, now: i64, outcome: &str) -> OutcomeRecord {
        let answers = case.answers.iter().map(|(q, a)| (q.clone(), a.as_record().to_owned())).collect();
        let wait = match (case.queued_at, case.joined_at) {
            (Some(q), Some(j)) => Some((j - q).max(0)),
            _ => None,
        };
        OutcomeRecord {
            case: case.id.clone(),
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
pub const CSV_FIXED: &[&str] = &[
    "case",
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
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
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
            r.case.clone(),
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

/// Aggregate figures over a set of records.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stats {
    pub cases: usize,
    pub intake_completed: usize,
    pub counsellor_joined: usize,
    pub urgent: usize,
    pub outcomes: BTreeMap<String, usize>,
    /// Question id -> answer (choice id / answered / skipped / unanswered) -> count.
    pub answers: BTreeMap<String, BTreeMap<String, usize>>,
}

impl Stats {
    /// Counts over `records`; questions in `questions` get every choice
    /// listed, even at zero.
    pub fn compute(records: &[OutcomeRecord], questions: &[Question]) -> Stats {
        let mut answers: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for q in questions {
            let m = answers.entry(q.id.clone()).or_default();
            if q.kind == QuestionKind::Choice {
                for c in &q.choices {
                    m.insert(c.id.clone(), 0);
                }
            }
        }
        let mut outcomes = BTreeMap::new();
        for r in records {
            *outcomes.entry(r.outcome.clone()).or_insert(0) += 1;
            for (q, a) in &r.answers {
                *answers.entry(q.clone()).or_default().entry(a.clone()).or_insert(0) += 1;
            }
            for q in questions {
                if !r.answers.contains_key(&q.id) {
                    *answers.entry(q.id.clone()).or_default().entry("unanswered".into()).or_insert(0) += 1;
                }
            }
        }
        Stats {
            cases: records.len(),
            intake_completed: records.iter().filter(|r| r.intake_completed).count(),
            counsellor_joined: records.iter().filter(|r| r.counsellor_joined).count(),
            urgent: records.iter().filter(|r| r.urgent).count(),
            outcomes,
            answers,
        }
    }

    /// A table for people: counts and shares, every share with its n.
    pub fn to_text(&self, questions: &[Question], lang: &str) -> String {
        let mut out = String::new();
        let pct = |n: usize, of: usize| if of == 0 { 0.0 } else { 100.0 * n as f64 / of as f64 };
        let _ = writeln!(out, "Cases: {}", self.cases);
        for (label, n) in [
            ("Intake completed", self.intake_completed),
            ("Reached a counsellor", self.counsellor_joined),
            ("Urgent", self.urgent),
        ] {
            let _ = writeln!(out, "{label}: {n} ({:.1}%)", pct(n, self.cases));
        }
        let _ = writeln!(out, "\nOutcomes:");
        for (tag, n) in &self.outcomes {
            let _ = writeln!(out, "  {tag:<20} {n:>6}  {:>5.1}%", pct(*n, self.cases));
        }
        for (qid, counts) in &self.answers {
            let q = questions.iter().find(|q| &q.id == qid);
            let title = q.and_then(|q| q.prompt.get(lang).or_else(|| q.prompt.values().next())).cloned();
            let _ = writeln!(out, "\n{qid}{}", title.map(|t| format!(" ({t})")).unwrap_or_default());
            let total: usize = counts.values().sum();
            for (a, n) in counts {
                let label = q
                    .and_then(|q| q.choices.iter().find(|c| &c.id == a))
                    .and_then(|c| c.label.get(lang).or_else(|| c.label.values().next()))
                    .map(|l| format!("{a} ({l})"))
                    .unwrap_or_else(|| a.clone());
                let _ = writeln!(out, "  {label:<40} {n:>6}  {:>5.1}%", pct(*n, total));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(case: &str, outcome: &str, answers: &[(&str, &str)]) -> OutcomeRecord {
        OutcomeRecord {
            case: case.into(),
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
            "case,week,language,urgent,intake_completed,counsellor_joined,wait,duration,outcome,step_reached,q:age,q:who"
        );
        assert_eq!(lines.next().unwrap(), "a1,2026-W48,en,false,true,true,<1m,5-15m,advice,,15_17,");
        assert_eq!(lines.next().unwrap(), "\"b,2\",2026-W48,en,false,true,true,<1m,5-15m,referred,,,myself");
    }

    #[test]
    fn stats_count() {
        let rs = vec![
            rec("a", "advice", &[("age", "under_15")]),
            rec("b", "advice", &[("age", "skipped")]),
            rec("c", "abandoned", &[]),
        ];
        let s = Stats::compute(&rs, &[]);
        assert_eq!(s.cases, 3);
        assert_eq!(s.outcomes["advice"], 2);
        assert_eq!(s.answers["age"]["under_15"], 1);
        assert_eq!(s.answers["age"]["skipped"], 1);
        let t = s.to_text(&[], "en");
        assert!(t.contains("Cases: 3"), "{t}");
        assert!(t.contains("66.7%"), "{t}");
    }
}
