//! Every transition of the engine, without a homeserver.

use super::testing::{example_questions, settings_with};
use super::*;

fn says(fx: &[Effect]) -> Vec<&str> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Say(s) => Some(s.as_str()),
            _ => None,
        })
        .collect()
}

fn started(langs: &[&str]) -> (Settings, Case) {
    let s = settings_with(langs);
    let (c, _) = Case::start(&s, "case1".into(), 1000);
    (s, c)
}

#[test]
fn single_language_greets_and_asks_first_question() {
    let s = settings_with(&["en"]);
    let (c, fx) = Case::start(&s, "abc".into(), 1000);
    let said = says(&fx);
    assert_eq!(said.len(), 2);
    assert!(said[0].contains("anonymous") && said[0].contains("112") && said[0].contains("stop"));
    assert!(said[1].starts_with("(1/6) Who are you chatting for?"));
    assert!(said[1].contains("1. For myself") && said[1].contains("2. For someone else"));
    assert_eq!(c.step, Step::Question(0));
    assert_eq!(c.language.as_deref(), Some("en"));
}

#[test]
fn several_languages_ask_language_first() {
    let s = settings_with(&["nl", "en"]);
    let (c, fx) = Case::start(&s, "abc".into(), 1000);
    let said = says(&fx);
    assert_eq!(said.len(), 1);
    assert!(said[0].contains("Welke taal") && said[0].contains("Which language"));
    assert!(said[0].contains("1. Nederlands") && said[0].contains("2. English"));
    assert!(said[0].contains("112"));
    assert_eq!(c.step, Step::Language);
    for (answer, lang) in [("2", "en"), ("English", "en"), (" NEDERLANDS ", "nl"), ("nl", "nl"), ("1.", "nl")] {
        let mut c2 = c.clone();
        let fx = c2.handle(&s, 1001, Input::Text(answer));
        assert_eq!(c2.language.as_deref(), Some(lang), "answer {answer:?}");
        assert_eq!(c2.step, Step::Question(0));
        assert_eq!(says(&fx).len(), 2);
    }
    let mut c3 = c;
    let fx = c3.handle(&s, 1001, Input::Text("klingon"));
    assert_eq!(c3.step, Step::Language);
    assert!(says(&fx)[0].contains("Sorry") && says(&fx)[0].contains("1. Nederlands"));
    let fx = c3.handle(&s, 1001, Input::Text("3"));
    assert_eq!(c3.step, Step::Language);
    assert_eq!(says(&fx).len(), 1);
}

#[test]
fn answers_by_number_label_accents_and_other_language() {
    let (s, c) = started(&["nl", "en"]);
    let mut c = c;
    c.handle(&s, 1001, Input::Text("1"));
    for (answer, id) in [
        ("1", "self"),
        ("2", "other"),
        ("voor MEZELF", "self"),
        ("For someone else!", "other"),
        ("  for myself ", "self"),
    ] {
        let mut c2 = c.clone();
        c2.handle(&s, 1002, Input::Text(answer));
        assert_eq!(c2.answers.get("for_whom"), Some(&Answer::Choice(id.into())), "answer {answer:?}");
        assert_eq!(c2.step, Step::Question(1));
    }
    // Accents: "Eén" folds to "een".
    let mut c4 = c.clone();
    for a in ["1", "1", "1", "1"] {
        c4.handle(&s, 1003, Input::Text(a));
    }
    assert_eq!(c4.step, Step::Question(4));
    c4.handle(&s, 1004, Input::Text("EEN"));
    assert_eq!(c4.answers.get("perpetrators"), Some(&Answer::Choice("one".into())));
}

#[test]
fn invalid_answers_are_reasked_kindly() {
    let (s, mut c) = started(&["en"]);
    for bad in ["0", "3", "maybe", "", "!!!", "1 2"] {
        let fx = c.handle(&s, 1001, Input::Text(bad));
        assert_eq!(c.step, Step::Question(0), "answer {bad:?}");
        let said = says(&fx);
        assert_eq!(said.len(), 1);
        assert!(said[0].starts_with("Sorry, I did not understand"), "{}", said[0]);
        assert!(said[0].contains("(1/6) Who are you chatting for?"));
        assert!(c.answers.is_empty());
    }
}

#[test]
fn skip_records_skipped() {
    let (s, mut c) = started(&["en"]);
    c.handle(&s, 1001, Input::Text("Skip"));
    assert_eq!(c.answers.get("for_whom"), Some(&Answer::Skipped));
    c.handle(&s, 1001, Input::Text("overslaan"));
    assert_eq!(c.answers.get("age"), Some(&Answer::Skipped));
    assert_eq!(c.step, Step::Question(2));
}

#[test]
fn stop_ends_at_any_step_but_only_as_a_whole_message() {
    let (s, c) = started(&["nl", "en"]);
    for step_answers in [vec![], vec!["2"], vec!["2", "1", "1", "1", "1", "1", "1"]] {
        let mut c2 = c.clone();
        for a in &step_answers {
            c2.handle(&s, 1001, Input::Text(a));
        }
        let fx = c2.handle(&s, 1002, Input::Text("STOP"));
        assert_eq!(fx, vec![Effect::End(Ending::Stopped)], "after {step_answers:?}");
    }
    let mut c3 = c.clone();
    c3.handle(&s, 1001, Input::Text("2"));
    let fx = c3.handle(&s, 1001, Input::Text("I can't stop crying"));
    assert!(!fx.contains(&Effect::End(Ending::Stopped)));
    let mut c4 = c;
    assert_eq!(c4.handle(&s, 1001, Input::Text("stoppen")), vec![Effect::End(Ending::Stopped)]);
}

#[test]
fn with_a_counsellor_in_stop_words_are_talk_but_emergencies_still_count() {
    let (s, mut c) = started(&["nl", "en"]);
    for a in ["2", "1", "1", "1", "1", "1", "1"] {
        c.handle(&s, 1001, Input::Text(a));
    }
    assert_eq!(c.step, Step::Waiting);
    c.counsellor_joined(&s, 1002);
    for word in ["stop", "klaar", "end", "exit", "Einde"] {
        assert!(c.handle(&s, 1003, Input::Text(word)).is_empty(), "{word} ended a counselling conversation");
    }
    assert_eq!(c.step, Step::Counsellor);
    let fx = c.handle(&s, 1004, Input::Text("I am in danger"));
    assert!(fx.contains(&Effect::BecameUrgent), "{fx:?}");
}

#[test]
fn emergency_keyword_anywhere_keeps_question_open() {
    let (s, mut c) = started(&["en"]);
    let fx = c.handle(&s, 1001, Input::Text("Please, I am IN DANGER!!"));
    assert!(says(&fx)[0].contains("call 112"));
    assert!(fx.contains(&Effect::BecameUrgent));
    assert!(c.urgent);
    assert_eq!(c.step, Step::Question(0));
    assert!(c.answers.is_empty());
    // A second time: the text again, but urgent only once.
    let fx = c.handle(&s, 1002, Input::Text("noodgeval"));
    assert_eq!(says(&fx).len(), 1);
    assert!(!fx.contains(&Effect::BecameUrgent));
    // "1" containing a keyword never counts as an answer.
    let fx = c.handle(&s, 1003, Input::Text("1 sos"));
    assert!(c.answers.is_empty() && says(&fx).len() == 1);
    // Accent and case folding: "Nood" matches in the language step too.
    let (s2, mut c2) = started(&["nl", "en"]);
    let fx = c2.handle(&s2, 1001, Input::Text("NÓÓD"));
    assert!(fx.contains(&Effect::BecameUrgent));
    assert_eq!(c2.step, Step::Language);
    // Not a substring of a longer word.
    let (s3, mut c3) = started(&["en"]);
    let fx = c3.handle(&s3, 1001, Input::Text("endangered"));
    assert!(!fx.contains(&Effect::BecameUrgent));
}

#[test]
fn configured_keywords_replace_builtins() {
    let keywords = [("en".to_owned(), vec!["Red Alert".to_owned()])].into();
    let s = Settings::new(vec!["en".into()], example_questions(), BTreeMap::new(), "113".into(), &keywords, vec![]);
    let (mut c, _) = Case::start(&s, "x".into(), 0);
    let fx = c.handle(&s, 1, Input::Text("red-alert now"));
    assert!(fx.contains(&Effect::BecameUrgent));
    assert!(says(&fx)[0].contains("113"));
    let (mut c2, _) = Case::start(&s, "y".into(), 0);
    assert!(!c2.handle(&s, 1, Input::Text("in danger")).contains(&Effect::BecameUrgent));
}

#[test]
fn full_intake_with_urgent_choice() {
    let (s, mut c) = started(&["en"]);
    let mut last = Vec::new();
    for a in ["1", "2", "1", "yes", "more than one", "No"] {
        last = c.handle(&s, 1100, Input::Text(a));
    }
    assert!(c.urgent);
    assert!(last.contains(&Effect::BecameUrgent));
    assert!(last.contains(&Effect::IntakeDone));
    assert_eq!(c.step, Step::Waiting);
    assert!(c.intake_completed);
    assert_eq!(c.queued_at, Some(1100));
    let ids: Vec<&str> = c.answers.values().map(Answer::as_record).collect();
    assert_eq!(ids.len(), 6);
    assert_eq!(c.answers["safe_now"], Answer::Choice("no".into()));
    assert_eq!(c.answers["perpetrators"], Answer::Choice("more".into()));
    let said = says(&last);
    assert!(said.iter().any(|t| t.contains("looking for a counsellor")));
}

fn text_question_settings() -> Settings {
    let mut questions = example_questions();
    questions.truncate(1);
    questions.push(Question {
        id: "story".into(),
        kind: QuestionKind::Text,
        prompt: [("en".to_owned(), "Tell us more?".to_owned())].into(),
        choices: vec![],
        urgent_choices: vec![],
    });
    testing::settings_from(&["en"], questions, &BTreeMap::new())
}

#[test]
fn text_answers_stay_in_memory_only() {
    let s = text_question_settings();
    let (mut c, _) = Case::start(&s, "x".into(), 0);
    c.handle(&s, 1, Input::Text("2"));
    let fx = c.handle(&s, 2, Input::Text("He took my passport CANARY-TEXT"));
    assert!(fx.contains(&Effect::IntakeDone));
    assert_eq!(c.answers["story"], Answer::Answered);
    let json = serde_json::to_string(&c).unwrap();
    assert!(!json.contains("CANARY"), "{json}");
    let (summary, notice) = c.counsellor_joined(&s, 50);
    assert!(summary.plain.contains("He took my passport CANARY-TEXT"));
    assert!(summary.html.contains("He took my passport CANARY-TEXT"));
    assert!(notice.contains("counsellor is here"));
    assert!(c.free_text.is_empty());
    // Restored from the store: the text is gone, the summary says so.
    let mut restored: Case = serde_json::from_str(&json).unwrap();
    assert!(summary_mentions_lost_text(&s, &mut restored));
}

fn summary_mentions_lost_text(s: &Settings, c: &mut Case) -> bool {
    let (summary, _) = c.counsellor_joined(s, 60);
    summary.plain.contains("not kept after a restart")
}

#[test]
fn visitor_text_in_the_html_summary_is_escaped() {
    let (s, mut c) = started(&["en"]);
    for a in ["1", "1", "1", "1", "1", "1"] {
        c.handle(&s, 10, Input::Text(a));
    }
    c.handle(&s, 20, Input::Text("<b>x</b> & <script>alert(1)</script>"));
    let (summary, _) = c.counsellor_joined(&s, 30);
    assert!(!summary.html.contains("<script>") && !summary.html.contains("<b>x"), "{}", summary.html);
    assert!(summary.html.contains("&lt;b&gt;x&lt;/b&gt; &amp; &lt;script&gt;"), "{}", summary.html);
    assert!(summary.plain.contains("<b>x</b> & <script>"));
}

#[test]
fn staff_notices_render_as_html() {
    use crate::intake::text::plain_to_html;
    assert_eq!(plain_to_html("Case 1a <urgent>"), "Case 1a &lt;urgent&gt;");
    assert_eq!(
        plain_to_html("Commands:\n- !available: take cases\n- !away: stop\nThat is all."),
        "<strong>Commands:</strong><ul><li>!available: take cases</li><li>!away: stop</li></ul>That is all."
    );
    assert_eq!(plain_to_html("a\nb\nc"), "<strong>a</strong><br>b<br>c");
}

#[test]
fn waiting_messages_get_one_note_and_reach_the_summary() {
    let (s, mut c) = started(&["en"]);
    for a in ["1", "1", "1", "1", "1", "1"] {
        c.handle(&s, 10, Input::Text(a));
    }
    let fx = c.handle(&s, 20, Input::Text("are you there?"));
    assert_eq!(says(&fx).len(), 1);
    let fx = c.handle(&s, 21, Input::Text("hello?"));
    assert!(fx.is_empty());
    let (summary, _) = c.counsellor_joined(&s, 30);
    assert!(summary.plain.contains("are you there?") && summary.plain.contains("hello?"));
    assert!(summary.plain.contains("For myself"));
    assert!(summary.plain.contains("!close"));
    // The HTML has the same content, marked up, and escapes what visitors typed.
    assert!(summary.html.starts_with("<p><strong>New chat"), "{}", summary.html);
    assert!(summary.html.contains("<strong>For myself</strong>"), "{}", summary.html);
    assert!(summary.html.contains("<blockquote>are you there?<br>hello?</blockquote>"), "{}", summary.html);
    assert!(summary.html.contains("!close"));
    // With the counsellor, the bot keeps quiet.
    assert!(c.handle(&s, 31, Input::Text("1")).is_empty());
    assert_eq!(c.step, Step::Counsellor);
    assert_eq!(c.joined_at, Some(30));
}

#[test]
fn non_text_undecryptable_and_long_messages() {
    let (s, mut c) = started(&["en"]);
    let fx = c.handle(&s, 1, Input::NonText);
    assert!(says(&fx)[0].contains("only read text"));
    let fx = c.handle(&s, 1, Input::Undecryptable);
    assert!(says(&fx)[0].contains("send it again"));
    assert!(c.handle(&s, 1, Input::Undecryptable).is_empty(), "asks to resend once");
    let long = "a".repeat(MAX_MESSAGE_CHARS + 1);
    let fx = c.handle(&s, 1, Input::Text(&long));
    assert!(says(&fx)[0].contains("very long"));
    assert_eq!(c.step, Step::Question(0));
    let long_danger = format!("sos {}", "a ".repeat(MAX_MESSAGE_CHARS));
    let fx = c.handle(&s, 1, Input::Text(&long_danger));
    assert!(fx.contains(&Effect::BecameUrgent));
}

#[test]
fn step_reached_labels() {
    let (s, c) = started(&["nl", "en"]);
    assert_eq!(c.step.reached(&s), "language");
    assert_eq!(Step::Question(1).reached(&s), "age");
    assert_eq!(Step::Waiting.reached(&s), "waiting");
}

#[test]
fn stored_case_round_trips() {
    let (s, mut c) = started(&["en"]);
    c.handle(&s, 1, Input::Text("2"));
    let json = serde_json::to_string(&c).unwrap();
    let back: Case = serde_json::from_str(&json).unwrap();
    assert_eq!(back, c);
}

#[test]
fn floods_get_one_notice_then_quiet_until_calm() {
    let (s, mut c) = started(&["en"]);
    let mut notices = 0;
    for i in 0..FLOOD_MESSAGES {
        let fx = c.handle(&s, 100, Input::Text(&format!("spam {i}")));
        assert!(says(&fx)[0].starts_with("Sorry"));
    }
    for _ in 0..20 {
        let fx = c.handle(&s, 101, Input::Text("spam"));
        notices += says(&fx).iter().filter(|t| t.contains("many messages")).count();
        assert!(says(&fx).iter().all(|t| t.contains("many messages")));
    }
    assert_eq!(notices, 1);
    // Still ignoring while the flood goes on, but danger is always heard.
    let fx = c.handle(&s, 105, Input::Text("sos"));
    assert!(fx.contains(&Effect::BecameUrgent));
    assert_eq!(c.step, Step::Question(0));
    // Quiet for a window: answers count again.
    c.handle(&s, 120, Input::Text("1"));
    assert_eq!(c.step, Step::Question(1));
}
