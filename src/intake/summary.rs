//! The intake summary a counsellor reads when they join: the answers in
//! the staff language, what the visitor wrote while waiting, and how to
//! close the case.

use super::text::{self, TextKey};
use super::{Answer, Case, Settings};

/// A message with an HTML rendering and its plain-text fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rich {
    pub plain: String,
    pub html: String,
}

/// The intake summary for the counsellor, in the staff language: plain
/// text, and HTML that reads well in Element on a phone (a bold title, a
/// list of answers with the answer in bold, the waiting messages quoted).
pub fn summary(s: &Settings, case: &Case) -> Rich {
    use text::escape_html as esc;
    let lang = s.staff_language();
    let title = s.say(lang, TextKey::SummaryTitle, &[("case", &case.id)]);
    let mut plain = title.clone();
    let mut html = format!("<p><strong>{}</strong>", esc(&title));
    if case.urgent {
        let u = s.say(lang, TextKey::SummaryUrgent, &[]);
        plain.push_str(&format!("\n{u}"));
        html.push_str(&format!("<br><strong>⚠ {}</strong>", esc(&u)));
    }
    let language = s.say(lang, TextKey::SummaryLanguage, &[("language", text::language_name(case.lang()))]);
    plain.push_str(&format!("\n{language}"));
    html.push_str(&format!("<br>{}</p><ul>", esc(&language)));
    for q in &s.questions {
        let prompt = q.prompt_in(lang);
        let answer = match case.answers.get(&q.id) {
            None => "-".to_owned(),
            Some(Answer::Skipped) => s.say(lang, TextKey::SummarySkipped, &[]),
            Some(Answer::Answered) => match case.free_text.get(&q.id) {
                Some(t) => format!("\"{t}\""),
                None => s.say(lang, TextKey::SummaryTextLost, &[]),
            },
            Some(Answer::Choice(id)) => q.choice(id).map_or_else(|| id.clone(), |c| c.label_in(lang).to_owned()),
        };
        plain.push_str(&format!("\n- {prompt} {answer}"));
        html.push_str(&format!("<li>{}<br><strong>{}</strong></li>", esc(prompt), esc(&answer)));
    }
    html.push_str("</ul>");
    if !case.waiting_messages.is_empty() {
        let head = s.say(lang, TextKey::SummaryWaiting, &[]);
        plain.push_str(&format!("\n{head}"));
        let quoted: Vec<String> = case.waiting_messages.iter().map(|m| esc(m)).collect();
        for m in &case.waiting_messages {
            plain.push_str(&format!("\n> {m}"));
        }
        html.push_str(&format!("<p>{}</p><blockquote>{}</blockquote>", esc(&head), quoted.join("<br>")));
    }
    let help = s.say(lang, TextKey::SummaryHelp, &[("tags", &s.tags.join(", "))]);
    plain.push('\n');
    plain.push_str(&help);
    html.push_str(&format!("<p><em>{}</em></p>", esc(&help)));
    Rich { plain, html }
}
