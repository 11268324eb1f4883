use super::*;
use crate::intake::questionnaire::Choice;

fn rec(week: &str, outcome: &str, answers: &[(&str, &str)]) -> OutcomeRecord {
    OutcomeRecord {
        record: format!("c{week}{outcome}"),
        week: week.into(),
        language: "en".into(),
        answers: answers.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
        urgent: false,
        intake_completed: true,
        counsellor_joined: outcome != tags::ABANDONED,
        wait: if outcome == tags::ABANDONED { "none".into() } else { "1-5m".into() },
        duration: "5-15m".into(),
        outcome: outcome.into(),
        step_reached: None,
    }
}

fn question(id: &str, choices: &[&str]) -> Question {
    Question {
        id: id.into(),
        kind: QuestionKind::Choice,
        prompt: [("en".to_owned(), format!("{id}?"))].into(),
        choices: choices
            .iter()
            .map(|c| Choice { id: c.to_string(), label: [("en".to_owned(), c.to_uppercase())].into() })
            .collect(),
        urgent_choices: vec![],
    }
}

fn questions() -> Vec<Question> {
    vec![
        question("for_whom", &["self", "other"]),
        question("age", &["under_15", "15_17", "18_23", "24_plus"]),
        question("ongoing", &["yes", "no", "unsure"]),
        question("perpetrators", &["one", "more", "unknown"]),
    ]
}

fn all(min: u32) -> Query {
    Query { from: None, to: None, by: By::Total, min_count: min }
}

fn many(n: usize, week: &str, outcome: &str, answers: &[(&str, &str)]) -> Vec<OutcomeRecord> {
    (0..n).map(|_| rec(week, outcome, answers)).collect()
}

#[test]
fn weeks_parse_from_weeks_and_dates() {
    assert_eq!(Week::parse("2026-W48").unwrap(), Week { year: 2026, week: 48 });
    assert_eq!(Week::parse("2026-w05").unwrap(), Week { year: 2026, week: 5 });
    // 2027-01-01 is a Friday in ISO week 53 of 2026.
    assert_eq!(Week::parse("2027-01-01").unwrap(), Week { year: 2026, week: 53 });
    assert_eq!(Week::parse("2026-11-30").unwrap(), Week { year: 2026, week: 49 });
    assert!(Week::parse("2025-W53").unwrap_err().contains("no ISO week 53"));
    assert!(Week::parse("2026-13-01").unwrap_err().contains("expected an ISO week"));
    assert!(Week::parse("last week").is_err());
    assert!(Week { year: 2025, week: 52 } < Week { year: 2026, week: 1 });
}

#[test]
fn a_week_counts_in_the_month_of_its_thursday() {
    // 2026-W01 runs Mon 2025-12-29 .. Sun 2026-01-04; Thursday is 1 January.
    assert_eq!(Week { year: 2026, week: 1 }.month(), "2026-01");
    // 2026-W53 runs Mon 2026-12-28 .. Sun 2027-01-03; Thursday 31 December.
    assert_eq!(Week { year: 2026, week: 53 }.month(), "2026-12");
    // 2026-W44: Mon 26 Oct .. Sun 1 Nov; Thursday 29 October.
    assert_eq!(Week { year: 2026, week: 44 }.month(), "2026-10");
}

#[test]
fn headline_counts_and_period_filter() {
    let mut rs = many(6, "2026-W10", "advice", &[("age", "15_17")]);
    rs.extend(many(5, "2026-W11", tags::ABANDONED, &[]));
    rs.extend(many(7, "2026-W12", tags::STOPPED, &[]));
    rs.push(rec("garbage", "advice", &[]));
    let r = Report::compute(&rs, &questions(), &[], &all(5));
    // The record with an unreadable week counts in no period.
    assert_eq!(r.total.cases, 18);
    assert_eq!(r.total.abandoned, Some(5));
    assert_eq!(r.total.stopped, Some(7));
    assert_eq!(r.total.counsellor_joined, Some(13));

    let q =
        Query { from: Some(Week::parse("2026-W11").unwrap()), to: Some(Week::parse("2026-03-15").unwrap()), ..all(5) };
    let r = Report::compute(&rs, &questions(), &[], &q);
    // 2026-03-15 is the Sunday of W11: W10 and W12 are out.
    assert_eq!(r.total.cases, 5);
    assert_eq!(r.total.abandoned, Some(5));
    assert_eq!(r.total.stopped, Some(0));
    assert_eq!(r.from.as_deref(), Some("2026-W11"));
    assert_eq!(r.to.as_deref(), Some("2026-W11"));
}

#[test]
fn by_week_and_by_month() {
    let mut rs = many(5, "2026-W01", "advice", &[]);
    rs.extend(many(6, "2026-W05", "advice", &[]));
    rs.extend(many(7, "2026-W53", "advice", &[]));
    let r = Report::compute(&rs, &questions(), &[], &Query { by: By::Week, ..all(5) });
    let p: Vec<(&str, usize)> = r.periods.iter().map(|s| (s.period.as_str(), s.cases)).collect();
    assert_eq!(p, vec![("2026-W01", 5), ("2026-W05", 6), ("2026-W53", 7)]);
    let r = Report::compute(&rs, &questions(), &[], &Query { by: By::Month, ..all(5) });
    let p: Vec<(&str, usize)> = r.periods.iter().map(|s| (s.period.as_str(), s.cases)).collect();
    // W05 (26-30 Jan, Thursday 29 Jan) is January too.
    assert_eq!(p, vec![("2026-01", 11), ("2026-12", 7)]);
    assert_eq!(r.total.cases, 18);
    let r = Report::compute(&rs, &questions(), &[], &all(5));
    assert!(r.periods.is_empty());
}

#[test]
fn monitor_figures_are_shares_of_known_answers() {
    let mut rs = many(10, "2026-W10", "advice", &[("age", "under_15"), ("for_whom", "self"), ("ongoing", "yes")]);
    rs.extend(many(10, "2026-W10", "advice", &[("age", "15_17"), ("for_whom", "other"), ("ongoing", "no")]));
    rs.extend(many(20, "2026-W10", "advice", &[("age", "24_plus"), ("for_whom", "self"), ("ongoing", "unsure")]));
    // Skipped and unanswered are not known: they are outside the share.
    rs.extend(many(7, "2026-W10", "advice", &[("age", "skipped")]));
    let r = Report::compute(&rs, &questions(), &default_monitor(), &all(5));
    let fig = |id: &str| r.total.monitor.iter().find(|f| f.id == id).unwrap().clone();
    let minors = fig("minors");
    assert_eq!((minors.count, minors.known), (Some(20), 40));
    assert_eq!(minors.share, Some(0.5));
    assert_eq!(fig("under_15").count, Some(10));
    assert_eq!(fig("under_15").share, Some(0.25));
    assert_eq!(fig("for_themselves").count, Some(30));
    assert_eq!(fig("for_themselves").share, Some(0.75));
    assert_eq!(fig("still_exploited").share, Some(0.25));
    // Nobody answered the perpetrators question: a figure with n = 0 of 0.
    let p = fig("several_perpetrators");
    assert_eq!((p.count, p.known, p.share), (Some(0), 0, None));
    let t = r.to_text(&questions(), "en");
    assert!(t.contains("Minors (under 18)"), "{t}");
    assert!(t.contains("20 of 40"), "{t}");
    assert!(t.contains("50.0%"), "{t}");
}

#[test]
fn a_monitor_figure_is_hidden_when_either_side_is_small() {
    // 6 known, 5 minors: "5 of 6" would show the one adult.
    let mut rs = many(5, "2026-W10", "advice", &[("age", "15_17")]);
    rs.push(rec("2026-W10", "advice", &[("age", "24_plus")]));
    let r = Report::compute(&rs, &questions(), &default_monitor(), &all(5));
    let minors = r.total.monitor.iter().find(|f| f.id == "minors").unwrap();
    assert_eq!((minors.count, minors.share, minors.known), (None, None, 6));
    // With suppression off, it is shown.
    let r = Report::compute(&rs, &questions(), &default_monitor(), &all(1));
    let minors = r.total.monitor.iter().find(|f| f.id == "minors").unwrap();
    assert_eq!(minors.count, Some(5));
}

#[test]
fn small_cells_are_suppressed_with_a_second_cell_where_needed() {
    let m = |v: &[(&str, usize)]| v.iter().map(|(k, n)| (k.to_string(), *n)).collect::<BTreeMap<_, _>>();
    let got = suppress(m(&[("a", 12), ("b", 2), ("c", 7), ("d", 0)]), 5);
    // b is small; c, the smallest other non-zero cell, goes too; 0 stays.
    assert_eq!(got["a"], Some(12));
    assert_eq!(got["b"], None);
    assert_eq!(got["c"], None);
    assert_eq!(got["d"], Some(0));
    // Two small cells hide each other already.
    let got = suppress(m(&[("a", 12), ("b", 2), ("c", 3)]), 5);
    assert_eq!((got["a"], got["b"], got["c"]), (Some(12), None, None));
    // Nothing small: nothing hidden. min 1: nothing ever hidden.
    let got = suppress(m(&[("a", 5), ("b", 6)]), 5);
    assert_eq!((got["a"], got["b"]), (Some(5), Some(6)));
    let got = suppress(m(&[("a", 1), ("b", 6)]), 1);
    assert_eq!((got["a"], got["b"]), (Some(1), Some(6)));
}

#[test]
fn one_case_shows_its_count_but_not_its_answers() {
    let rs = vec![{
        let mut r = rec("2026-W48", "advice", &[("age", "15_17")]);
        r.urgent = true;
        r
    }];
    let r = Report::compute(&rs, &questions(), &default_monitor(), &all(5));
    assert_eq!(r.total.cases, 1);
    assert_eq!(r.total.urgent, None);
    assert_eq!(r.total.answers["age"]["15_17"], None);
    assert_eq!(r.total.answers["age"]["under_15"], Some(0));
    assert_eq!(r.total.outcomes["advice"], None);
    // One wait is that person's wait.
    assert_eq!(r.total.median_wait, None);
    assert!(r.total.monitor.iter().all(|f| f.count.is_none() || f.count == Some(0)));
    let t = r.to_text(&questions(), "en");
    assert!(t.contains("Cases: 1"), "{t}");
    assert!(t.contains("<5"), "{t}");
    assert!(!t.contains("100.0%"), "{t}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["total"]["answers"]["age"]["15_17"], serde_json::Value::Null);
    assert_eq!(json["min_count"], 5);
}

#[test]
fn median_wait_bucket() {
    let mut rs = Vec::new();
    for (w, n) in [("<1m", 3), ("1-5m", 1), ("5-15m", 2), (">1h", 1)] {
        for _ in 0..n {
            let mut r = rec("2026-W10", "advice", &[]);
            r.wait = w.into();
            rs.push(r);
        }
    }
    // Sorted: <1m <1m <1m 1-5m 5-15m 5-15m >1h; the middle one is 1-5m.
    let r = Report::compute(&rs, &questions(), &[], &all(5));
    assert_eq!(r.total.median_wait.as_deref(), Some("1-5m"));
}
