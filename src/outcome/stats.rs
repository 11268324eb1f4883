//! Statistics over outcome records, for coordinators and the national monitor.
//!
//! Pure: records and settings in, a [`Report`] out, rendered as a table or
//! JSON by the CLI. Records carry only the ISO week, so periods are whole
//! ISO weeks; a month is the month of a week's Thursday (the ISO rule that
//! puts each week in exactly one year, applied to months).
//!
//! Small counts are suppressed so that a figure cannot single anyone out:
//! a count from 1 to `min_count - 1` is shown as `<min_count` (JSON `null`),
//! and where one cell of a breakdown is hidden, the next smallest non-zero
//! cell is hidden too, so it cannot be worked out from the total.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{Datelike, NaiveDate, Weekday};
use serde::{Deserialize, Serialize};

use super::{OutcomeRecord, WAIT_BUCKETS, tags};
use crate::intake::questionnaire::{Question, QuestionKind};

/// An ISO week, ordered in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Week {
    /// The ISO year (not always the calendar year of every day).
    pub year: i32,
    /// The week of the ISO year, from 1.
    pub week: u32,
}

impl Week {
    /// Parses `YYYY-Www` (a week) or `YYYY-MM-DD` (the week holding that day).
    pub fn parse(s: &str) -> Result<Week, String> {
        let s = s.trim();
        if let Some((y, w)) = s.split_once("-W").or_else(|| s.split_once("-w")) {
            let year: i32 = y.parse().map_err(|_| format!("`{s}`: expected a year before -W"))?;
            let week: u32 = w.parse().map_err(|_| format!("`{s}`: expected a week number after -W"))?;
            if NaiveDate::from_isoywd_opt(year, week, Weekday::Mon).is_none() {
                return Err(format!("`{s}`: {year} has no ISO week {week}"));
            }
            return Ok(Week { year, week });
        }
        let d = NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map_err(|_| format!("`{s}`: expected an ISO week like 2026-W48 or a date like 2026-11-30"))?;
        let w = d.iso_week();
        Ok(Week { year: w.year(), week: w.week() })
    }

    /// The calendar month this week counts in: its Thursday's, `YYYY-MM`.
    pub fn month(&self) -> String {
        match NaiveDate::from_isoywd_opt(self.year, self.week, Weekday::Thu) {
            Some(d) => format!("{}-{:02}", d.year(), d.month()),
            None => "unknown".into(),
        }
    }
}

impl std::fmt::Display for Week {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-W{:02}", self.year, self.week)
    }
}

/// One figure of the monitor: the share of cases whose answer to `question`
/// is one of `choices`. Configured as `[[stats.monitor]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MonitorFigure {
    /// Stable id, the key in `stats --json`.
    pub id: String,
    /// What the figure is called in the text report.
    pub label: String,
    /// The id of the choice question it counts.
    pub question: String,
    /// The choice ids that count towards the share.
    pub choices: Vec<String>,
}

/// The figures a national monitor asks for, wired to the question and
/// choice ids of the default questionnaire in `config.example.toml`.
pub(crate) fn default_monitor() -> Vec<MonitorFigure> {
    let f = |id: &str, label: &str, q: &str, c: &[&str]| MonitorFigure {
        id: id.into(),
        label: label.into(),
        question: q.into(),
        choices: c.iter().map(|s| s.to_string()).collect(),
    };
    vec![
        f("minors", "Minors (under 18)", "age", &["under_15", "15_17"]),
        f("under_15", "Under 15", "age", &["under_15"]),
        f("still_exploited", "Still being exploited", "ongoing", &["yes"]),
        f("several_perpetrators", "More than one perpetrator", "perpetrators", &["more"]),
        f("for_themselves", "Reached out for themselves", "for_whom", &["self"]),
    ]
}

/// The built-in figures that `questions` can answer: those whose question
/// is a choice question with all of the figure's choices.
pub(crate) fn default_monitor_for(questions: &[Question]) -> Vec<MonitorFigure> {
    default_monitor()
        .into_iter()
        .filter(|f| {
            questions.iter().any(|q| {
                q.id == f.question && q.kind == QuestionKind::Choice && f.choices.iter().all(|c| q.choice(c).is_some())
            })
        })
        .collect()
}

/// How the report is split over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum By {
    /// One section for the whole period only.
    Total,
    /// Also one section per ISO week.
    Week,
    /// Also one section per month (of each week's Thursday).
    Month,
}

/// What to report on.
#[derive(Debug, Clone)]
pub struct Query {
    /// First week included; `None` from the first record.
    pub from: Option<Week>,
    /// Last week included; `None` up to the last record.
    pub to: Option<Week>,
    /// How to split the period.
    pub by: By,
    /// Counts from 1 to `min_count - 1` are suppressed; 0 or 1 shows all.
    pub min_count: u32,
}

/// A count that may be suppressed (`None`).
pub type Cell = Option<usize>;

/// One monitor figure: how many of the cases whose answer is known had one
/// of the figure's choices.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Figure {
    /// The figure's id from the config.
    pub id: String,
    /// What the figure is called.
    pub label: String,
    /// The question it counts.
    pub question: String,
    /// Cases with one of the figure's choices.
    pub count: Cell,
    /// Cases that answered the question with a choice (not skipped).
    pub known: usize,
    /// `count / known`, absent when suppressed or nothing is known.
    pub share: Option<f64>,
}

/// The figures for one stretch of time.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Section {
    /// The period (`2026-W48`, `2026-11`) or `total`.
    pub period: String,
    /// Cases in the period (never suppressed: a total of records).
    pub cases: usize,
    /// Cases whose intake was completed.
    pub intake_completed: Cell,
    /// Cases a counsellor joined.
    pub counsellor_joined: Cell,
    /// Cases the visitor left before the end.
    pub abandoned: Cell,
    /// Cases the visitor stopped.
    pub stopped: Cell,
    /// Cases marked urgent.
    pub urgent: Cell,
    /// The median wait bucket of cases a counsellor joined.
    pub median_wait: Option<String>,
    /// The monitor's figures.
    pub monitor: Vec<Figure>,
    /// Question id -> answer -> count; every choice listed, also at zero.
    pub answers: BTreeMap<String, BTreeMap<String, Cell>>,
    /// Outcome tag -> count.
    pub outcomes: BTreeMap<String, Cell>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// The first week asked for, if any.
    pub from: Option<String>,
    /// The last week asked for, if any.
    pub to: Option<String>,
    /// How the report is split.
    pub by: By,
    /// The suppression threshold used.
    pub min_count: u32,
    /// The whole period.
    pub total: Section,
    /// One section per week or month with cases, oldest first; empty for `By::Total`.
    pub periods: Vec<Section>,
}

impl Report {
    /// Computes the report over `records` for `query`.
    pub fn compute(
        records: &[OutcomeRecord],
        questions: &[Question],
        monitor: &[MonitorFigure],
        query: &Query,
    ) -> Report {
        let min = query.min_count as usize;
        let chosen: Vec<(&OutcomeRecord, Week)> = records
            .iter()
            .filter_map(|r| Week::parse(&r.week).ok().map(|w| (r, w)))
            .filter(|(_, w)| query.from.is_none_or(|f| *w >= f) && query.to.is_none_or(|t| *w <= t))
            .collect();
        let all: Vec<&OutcomeRecord> = chosen.iter().map(|(r, _)| *r).collect();
        let total = section("total".into(), &all, questions, monitor, min);
        let mut groups: BTreeMap<String, Vec<&OutcomeRecord>> = BTreeMap::new();
        if query.by != By::Total {
            for (r, w) in &chosen {
                let key = if query.by == By::Week { w.to_string() } else { w.month() };
                groups.entry(key).or_default().push(r);
            }
        }
        let periods = groups.into_iter().map(|(k, rs)| section(k, &rs, questions, monitor, min)).collect();
        Report {
            from: query.from.map(|w| w.to_string()),
            to: query.to.map(|w| w.to_string()),
            by: query.by,
            min_count: query.min_count,
            total,
            periods,
        }
    }

    /// A table for people: every share with its n, hidden counts as `<min`.
    pub fn to_text(&self, questions: &[Question], lang: &str) -> String {
        let mut out = String::new();
        let range = match (&self.from, &self.to) {
            (None, None) => "all records".to_owned(),
            (f, t) => format!(
                "{} to {}",
                f.as_deref().unwrap_or("the first record"),
                t.as_deref().unwrap_or("the last record")
            ),
        };
        let _ = writeln!(out, "Period: {range}");
        if self.min_count > 1 {
            let _ = writeln!(
                out,
                "Counts from 1 to {} are shown as <{} (and one more cell where needed) so nobody can be singled out.",
                self.min_count - 1,
                self.min_count
            );
        }
        let _ = writeln!(out);
        write_section(&mut out, &self.total, questions, lang, self.min_count, true);
        if !self.periods.is_empty() {
            let _ = writeln!(out, "\nBy {}:", if self.by == By::Week { "week" } else { "month" });
            let _ = writeln!(
                out,
                "  {:<10} {:>6} {:>9} {:>10} {:>10} {:>8} {:>7}  median wait",
                "period", "cases", "completed", "counsellor", "abandoned", "stopped", "urgent"
            );
            for p in &self.periods {
                let c = |v: Cell| cell(v, self.min_count);
                let _ = writeln!(
                    out,
                    "  {:<10} {:>6} {:>9} {:>10} {:>10} {:>8} {:>7}  {}",
                    p.period,
                    p.cases,
                    c(p.intake_completed),
                    c(p.counsellor_joined),
                    c(p.abandoned),
                    c(p.stopped),
                    c(p.urgent),
                    p.median_wait.as_deref().unwrap_or("-")
                );
            }
        }
        out
    }
}

fn section(
    period: String,
    rs: &[&OutcomeRecord],
    questions: &[Question],
    monitor: &[MonitorFigure],
    min: usize,
) -> Section {
    let count = |f: &dyn Fn(&OutcomeRecord) -> bool| rs.iter().filter(|r| f(r)).count();
    let small = |n: usize| n > 0 && n < min;
    let one = |n: usize| (!small(n)).then_some(n);

    let mut answers: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for q in questions {
        let m = answers.entry(q.id.clone()).or_default();
        if q.kind == QuestionKind::Choice {
            for c in &q.choices {
                m.insert(c.id.clone(), 0);
            }
        }
    }
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for r in rs {
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

    let monitor = monitor
        .iter()
        .filter_map(|f| {
            let q = questions.iter().find(|q| q.id == f.question)?;
            let is_choice = |a: &str| q.choices.iter().any(|c| c.id == a);
            let known = rs.iter().filter(|r| r.answers.get(&q.id).is_some_and(|a| is_choice(a))).count();
            let n = rs.iter().filter(|r| r.answers.get(&q.id).is_some_and(|a| f.choices.contains(a))).count();
            // Both sides of the split count: "5 of 6" would show the sixth.
            let hidden = small(n) || small(known - n);
            let count = (!hidden).then_some(n);
            let share = count.filter(|_| known > 0).map(|n| n as f64 / known as f64);
            Some(Figure { id: f.id.clone(), label: f.label.clone(), question: q.id.clone(), count, known, share })
        })
        .collect();

    let waits: Vec<usize> = rs
        .iter()
        .filter(|r| r.counsellor_joined)
        .filter_map(|r| WAIT_BUCKETS.iter().position(|b| *b == r.wait))
        .collect();
    let median_wait = if waits.is_empty() || small(waits.len()) {
        None
    } else {
        let mut w = waits;
        w.sort_unstable();
        Some(WAIT_BUCKETS[w[(w.len() - 1) / 2]].to_owned())
    };

    Section {
        period,
        cases: rs.len(),
        intake_completed: one(count(&|r| r.intake_completed)),
        counsellor_joined: one(count(&|r| r.counsellor_joined)),
        abandoned: one(count(&|r| r.outcome == tags::ABANDONED)),
        stopped: one(count(&|r| r.outcome == tags::STOPPED)),
        urgent: one(count(&|r| r.urgent)),
        median_wait,
        monitor,
        answers: answers.into_iter().map(|(q, m)| (q, suppress(m, min))).collect(),
        outcomes: suppress(outcomes, min),
    }
}

/// Hides counts from 1 to `min - 1` in a breakdown; when exactly one is
/// hidden, also the next smallest non-zero count, so the total does not
/// give it away.
pub(crate) fn suppress(counts: BTreeMap<String, usize>, min: usize) -> BTreeMap<String, Cell> {
    let small = |n: usize| n > 0 && n < min;
    let hidden = counts.values().filter(|n| small(**n)).count();
    let mut also: Option<String> = None;
    if hidden == 1 {
        also = counts.iter().filter(|(_, n)| **n >= min && **n > 0).min_by_key(|(_, n)| **n).map(|(k, _)| k.clone());
    }
    counts
        .into_iter()
        .map(|(k, n)| {
            let hide = small(n) || also.as_deref() == Some(k.as_str());
            (k, (!hide).then_some(n))
        })
        .collect()
}

fn cell(v: Cell, min: u32) -> String {
    match v {
        Some(n) => n.to_string(),
        None => format!("<{min}"),
    }
}

fn pct(v: Cell, of: usize) -> String {
    match v {
        Some(n) if of > 0 => format!("{:5.1}%", 100.0 * n as f64 / of as f64),
        _ => "    - ".into(),
    }
}

fn write_section(out: &mut String, s: &Section, questions: &[Question], lang: &str, min: u32, detail: bool) {
    let _ = writeln!(out, "Cases: {}", s.cases);
    for (label, v) in [
        ("Intake completed", s.intake_completed),
        ("Reached a counsellor", s.counsellor_joined),
        ("Abandoned", s.abandoned),
        ("Stopped by the visitor", s.stopped),
        ("Urgent", s.urgent),
    ] {
        let _ = writeln!(out, "  {label:<24} {:>6}  {}", cell(v, min), pct(v, s.cases));
    }
    let _ = writeln!(out, "  {:<24} {:>6}", "Median wait", s.median_wait.as_deref().unwrap_or("-"));
    if !detail {
        return;
    }
    if !s.monitor.is_empty() {
        let _ = writeln!(out, "\nMonitor (share of cases that answered the question):");
        for f in &s.monitor {
            let share = match f.share {
                Some(x) => format!("{:5.1}%", 100.0 * x),
                None => "    - ".into(),
            };
            let _ = writeln!(out, "  {:<36} {:>6} of {:<6} {share}", f.label, cell(f.count, min), f.known);
        }
    }
    let _ = writeln!(out, "\nOutcomes:");
    for (tag, n) in &s.outcomes {
        let _ = writeln!(out, "  {tag:<36} {:>6}  {}", cell(*n, min), pct(*n, s.cases));
    }
    for (qid, counts) in &s.answers {
        let q = questions.iter().find(|q| &q.id == qid);
        let title = q.map(|q| q.prompt_in(lang));
        let _ = writeln!(out, "\n{qid}{}", title.map(|t| format!(" ({t})")).unwrap_or_default());
        // Shares of a question are of all cases in the section, so skipped
        // and unanswered are part of the picture rather than hidden in it.
        for (a, n) in counts {
            let label =
                q.and_then(|q| q.choice(a)).map_or_else(|| a.clone(), |c| format!("{a} ({})", c.label_in(lang)));
            let _ = writeln!(out, "  {label:<36} {:>6}  {}", cell(*n, min), pct(*n, s.cases));
        }
    }
}

#[cfg(test)]
mod tests;
