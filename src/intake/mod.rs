//! The conversation engine: one visitor's intake, from greeting to hand-over.
//!
//! Pure: no network, no disk, no clock. Time comes in as `now` (Unix
//! seconds); what should happen comes out as [`Effect`]s. The Matrix edge
//! turns messages into [`Input`]s and effects into calls, which keeps every
//! transition testable without a homeserver.

pub mod questionnaire;
mod summary;
pub mod text;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use questionnaire::{Question, QuestionKind};
pub use summary::{Rich, summary};
use text::{TextKey, Texts, fold};

/// Longest message the engine reads; longer ones get a kind "keep it short".
pub const MAX_MESSAGE_CHARS: usize = 4000;
/// How many messages written while waiting are kept (in memory only) for
/// the counsellor's summary.
const MAX_WAITING_MESSAGES: usize = 20;
/// Longest stretch of one waiting message kept for the summary.
const MAX_KEPT_CHARS: usize = 1000;
/// More than this many messages within [`FLOOD_WINDOW_SECS`] is a flood:
/// one calm notice, then messages are ignored until the visitor is quiet
/// for a window (emergency words still count).
pub const FLOOD_MESSAGES: u32 = 8;
pub const FLOOD_WINDOW_SECS: i64 = 10;
/// How many handled events a case remembers for de-duplication.
pub const SEEN_EVENTS: usize = 32;

/// Everything the engine needs from the configuration, prepared once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub languages: Vec<String>,
    pub questions: Vec<Question>,
    pub texts: Texts,
    pub emergency_number: String,
    /// Folded emergency phrases of every language.
    pub emergency_phrases: Vec<String>,
    pub tags: Vec<String>,
}

impl Settings {
    /// Prepares the engine's settings from a validated configuration:
    /// `overrides` are `[texts]`, `keywords` the configured emergency
    /// keywords per language (languages without a list use the built-in
    /// one).
    pub fn new(
        languages: Vec<String>,
        questions: Vec<Question>,
        overrides: BTreeMap<String, BTreeMap<String, String>>,
        emergency_number: String,
        keywords: &BTreeMap<String, Vec<String>>,
        tags: Vec<String>,
    ) -> Settings {
        let mut phrases: Vec<String> = Vec::new();
        for lang in &languages {
            match keywords.get(lang) {
                Some(list) => phrases.extend(list.iter().map(|w| fold(w))),
                None => phrases.extend(text::default_emergency_keywords(lang).iter().map(|w| fold(w))),
            }
        }
        // A language's keywords count even where the language is not
        // offered: a visitor may write in it anyway.
        for (lang, list) in keywords {
            if !languages.contains(lang) {
                phrases.extend(list.iter().map(|w| fold(w)));
            }
        }
        phrases.retain(|p| !p.is_empty());
        phrases.sort();
        phrases.dedup();
        Settings {
            languages,
            questions,
            texts: Texts::new(overrides),
            emergency_number,
            emergency_phrases: phrases,
            tags,
        }
    }

    /// The language staff-facing texts are written in: the first configured.
    pub fn staff_language(&self) -> &str {
        self.languages.first().map_or("en", String::as_str)
    }

    /// A text in `lang` with the emergency number filled in, plus `vars`.
    pub fn say(&self, lang: &str, key: TextKey, vars: &[(&str, &str)]) -> String {
        let mut all: Vec<(&str, &str)> = vec![("emergency_number", &self.emergency_number)];
        all.extend_from_slice(vars);
        self.texts.render(lang, key, &all)
    }

    /// The name of a weekday (0 = Monday) in `lang`, from the `weekdays`
    /// text (seven names separated by spaces).
    pub fn weekday(&self, lang: &str, day: usize) -> String {
        let names = self.texts.render(lang, TextKey::Weekdays, &[]);
        names.split_whitespace().nth(day).unwrap_or("").to_owned()
    }

    /// Whether folded text contains an emergency phrase.
    pub fn is_emergency(&self, folded: &str) -> bool {
        self.emergency_phrases.iter().any(|p| text::contains_phrase(folded, p))
    }
}

/// Where a case stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", content = "index", rename_all = "snake_case")]
pub enum Step {
    /// Waiting for the visitor to pick a language.
    Language,
    /// Question `n` (index into the questionnaire) is open.
    Question(usize),
    /// Intake done; waiting for a counsellor.
    Waiting,
    /// A counsellor has joined.
    Counsellor,
}

impl Step {
    /// A label for the step reached, used in `abandoned` records.
    pub fn reached(&self, s: &Settings) -> String {
        match self {
            Step::Language => "language".into(),
            Step::Question(i) => s.questions.get(*i).map_or("question".into(), |q| q.id.clone()),
            Step::Waiting => "waiting".into(),
            Step::Counsellor => "counsellor".into(),
        }
    }
}

/// One answer as it may be stored: a choice id, or only whether a text
/// question was answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Choice(String),
    Answered,
    Skipped,
}

impl Answer {
    /// The value written to the outcome record.
    pub fn as_record(&self) -> &str {
        match self {
            Answer::Choice(id) => id,
            Answer::Answered => "answered",
            Answer::Skipped => "skipped",
        }
    }
}

/// The state of one case. Serialized to the in-progress store, except the
/// fields marked `skip`, which hold the visitor's own words and live only
/// in memory until the counsellor's summary is posted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    /// Random case id, never derived from a Matrix id; named in logs and
    /// the staff room.
    pub id: String,
    /// The case is closing without a goodbye (the visitor left, it expired,
    /// or strangers are in the room): a restart finishes it silently.
    #[serde(default)]
    pub quiet_close: bool,
    /// Random id of the outcome record this case will write, unrelated to
    /// `id` and never shown, logged or put in a room. Empty in cases saved
    /// before it existed (the edge then draws one at the end).
    #[serde(default)]
    pub record: String,
    /// When the case started (Unix seconds); for expiry and coarse buckets.
    pub started: i64,
    pub language: Option<String>,
    pub step: Step,
    pub answers: BTreeMap<String, Answer>,
    pub urgent: bool,
    pub intake_completed: bool,
    pub counsellor_joined: bool,
    /// When the case started waiting for a counsellor.
    pub queued_at: Option<i64>,
    /// When a counsellor first joined.
    pub joined_at: Option<i64>,
    /// Whether the visitor was already asked to resend an unreadable message.
    #[serde(default)]
    pub resend_asked: bool,
    /// Whether the homeserver took the summary for the counsellor who
    /// joined (a restart posts it again otherwise). Cases saved by older
    /// builds count as posted.
    #[serde(default = "posted")]
    pub summary_posted: bool,
    /// Whether the visitor was told their waiting messages will be read.
    #[serde(default)]
    pub waiting_note_sent: bool,
    /// Flood control: start of the current window, messages in it, when the
    /// last message came, and whether messages are being ignored.
    #[serde(default)]
    pub flood: Flood,
    /// Keyed hashes of the last events handled in this room, so an event
    /// seen again (after a restart, or in a back-fill) changes nothing.
    #[serde(default)]
    pub seen: std::collections::VecDeque<String>,
    /// Set while the case is being closed with this outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closing: Option<String>,
    /// Free-text answers, memory only.
    #[serde(skip)]
    pub free_text: BTreeMap<String, String>,
    /// Messages written while waiting, memory only.
    #[serde(skip)]
    pub waiting_messages: Vec<String>,
    /// Where the visitor came from, for fair routing (see
    /// `routing::Waiting::source`), memory only.
    #[serde(skip)]
    pub source: u32,
}

/// Per-case flood control state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flood {
    pub window_start: i64,
    pub count: u32,
    pub last: i64,
    pub ignoring: bool,
}

impl Flood {
    /// Counts a message at `now`; returns (ignore it, send the notice).
    fn count(&mut self, now: i64) -> (bool, bool) {
        if self.ignoring && now - self.last >= FLOOD_WINDOW_SECS {
            self.ignoring = false;
            self.count = 0;
        }
        self.last = now;
        if now - self.window_start >= FLOOD_WINDOW_SECS {
            self.window_start = now;
            self.count = 0;
        }
        self.count += 1;
        if self.ignoring {
            return (true, false);
        }
        if self.count > FLOOD_MESSAGES {
            self.ignoring = true;
            return (true, true);
        }
        (false, false)
    }
}

/// What the visitor sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    Text(&'a str),
    /// An image, file, sticker, location, voice message...
    NonText,
    /// A message the bot's device could not decrypt.
    Undecryptable,
}

/// How a case ended, when the engine ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Stopped,
}

/// What the engine wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send this text to the visitor's room.
    Say(String),
    /// The case just became urgent.
    BecameUrgent,
    /// The intake is complete: find a counsellor.
    IntakeDone,
    /// The visitor ended the case.
    End(Ending),
}

impl Case {
    /// A new case: greets, then asks the language or the first question.
    pub fn start(s: &Settings, id: String, now: i64) -> (Case, Vec<Effect>) {
        let mut case = Case {
            id,
            record: String::new(),
            quiet_close: false,
            started: now,
            language: None,
            step: Step::Language,
            answers: BTreeMap::new(),
            urgent: false,
            intake_completed: false,
            counsellor_joined: false,
            queued_at: None,
            joined_at: None,
            resend_asked: false,
            summary_posted: false,
            waiting_note_sent: false,
            flood: Flood::default(),
            seen: Default::default(),
            closing: None,
            free_text: BTreeMap::new(),
            waiting_messages: Vec::new(),
            source: 0,
        };
        let mut fx = Vec::new();
        if s.languages.len() > 1 {
            fx.push(Effect::Say(language_menu(s)));
        } else {
            case.language = s.languages.first().cloned();
            fx.push(Effect::Say(s.say(case.lang(), TextKey::Greeting, &[])));
            case.advance(s, 0, now, &mut fx);
        }
        (case, fx)
    }

    /// The case's language, or the first configured one before it is chosen.
    pub fn lang(&self) -> &str {
        self.language.as_deref().unwrap_or("en")
    }

    fn lang_or_default<'a>(&'a self, s: &'a Settings) -> &'a str {
        self.language.as_deref().unwrap_or(s.staff_language())
    }

    /// Handles one message from the visitor.
    pub fn handle(&mut self, s: &Settings, now: i64, input: Input<'_>) -> Vec<Effect> {
        let mut fx = Vec::new();
        let lang = self.lang_or_default(s).to_owned();
        if self.step != Step::Counsellor {
            let (ignore, notice) = self.flood.count(now);
            if ignore {
                if notice {
                    fx.push(Effect::Say(s.say(&lang, TextKey::Flood, &[])));
                }
                // Safety first: an emergency word is heard even in a flood.
                if let Input::Text(t) = input {
                    let folded = fold(&t.chars().take(MAX_MESSAGE_CHARS).collect::<String>());
                    if s.is_emergency(&folded) {
                        self.emergency(s, &mut fx);
                    }
                }
                return fx;
            }
        }
        let body = match input {
            Input::Text(t) => t,
            Input::NonText => {
                if matches!(self.step, Step::Language | Step::Question(_)) {
                    fx.push(Effect::Say(s.say(&lang, TextKey::NonText, &[])));
                }
                return fx;
            }
            Input::Undecryptable => {
                if !self.resend_asked && self.step != Step::Counsellor {
                    self.resend_asked = true;
                    fx.push(Effect::Say(s.say(&lang, TextKey::Undecryptable, &[])));
                }
                return fx;
            }
        };
        if body.chars().count() > MAX_MESSAGE_CHARS {
            // Safety words still count in a long message; answers do not.
            let folded = fold(&body.chars().take(MAX_MESSAGE_CHARS).collect::<String>());
            if s.is_emergency(&folded) {
                self.emergency(s, &mut fx);
            }
            if self.step != Step::Counsellor {
                fx.push(Effect::Say(s.say(&lang, TextKey::TooLong, &[])));
            }
            return fx;
        }
        let folded = fold(body);
        if s.is_emergency(&folded) {
            self.emergency(s, &mut fx);
            return fx;
        }
        // Once a counsellor is in, only the counsellor ends the case: "I want
        // this to end" must not close a counselling conversation.
        if self.step != Step::Counsellor && text::STOP_WORDS.contains(&folded.as_str()) {
            // The desk says goodbye after the record is safe.
            fx.push(Effect::End(Ending::Stopped));
            return fx;
        }
        match self.step {
            Step::Language => match pick_language(s, &folded) {
                Some(l) => {
                    self.language = Some(l);
                    fx.push(Effect::Say(s.say(self.lang(), TextKey::Greeting, &[])));
                    self.advance(s, 0, now, &mut fx);
                }
                None => fx.push(Effect::Say(format!("{}\n{}", s.say(&lang, TextKey::Reask, &[]), language_menu(s)))),
            },
            Step::Question(i) => self.answer(s, i, body, &folded, now, &mut fx),
            Step::Waiting => {
                if self.waiting_messages.len() < MAX_WAITING_MESSAGES {
                    self.waiting_messages.push(body.chars().take(MAX_KEPT_CHARS).collect());
                }
                if !self.waiting_note_sent {
                    self.waiting_note_sent = true;
                    fx.push(Effect::Say(s.say(&lang, TextKey::WaitingNote, &[])));
                }
            }
            Step::Counsellor => {}
        }
        fx
    }

    fn emergency(&mut self, s: &Settings, fx: &mut Vec<Effect>) {
        fx.push(Effect::Say(s.say(self.lang_or_default(s), TextKey::Emergency, &[])));
        if !self.urgent {
            self.urgent = true;
            fx.push(Effect::BecameUrgent);
        }
    }

    fn answer(&mut self, s: &Settings, i: usize, body: &str, folded: &str, now: i64, fx: &mut Vec<Effect>) {
        let Some(q) = s.questions.get(i) else {
            // The questionnaire shrank under a case in progress: finish it.
            self.advance(s, s.questions.len(), now, fx);
            return;
        };
        if text::SKIP_WORDS.contains(&folded) {
            self.answers.insert(q.id.clone(), Answer::Skipped);
            self.advance(s, i + 1, now, fx);
            return;
        }
        match q.kind {
            QuestionKind::Text => {
                if folded.is_empty() && body.trim().is_empty() {
                    fx.push(Effect::Say(self.reask(s, i)));
                    return;
                }
                self.answers.insert(q.id.clone(), Answer::Answered);
                self.free_text.insert(q.id.clone(), body.trim().to_owned());
                self.advance(s, i + 1, now, fx);
            }
            QuestionKind::Choice => match pick_choice(q, folded) {
                Some(idx) => {
                    let choice = &q.choices[idx];
                    self.answers.insert(q.id.clone(), Answer::Choice(choice.id.clone()));
                    if q.urgent_choices.contains(&choice.id) {
                        self.emergency(s, fx);
                    }
                    self.advance(s, i + 1, now, fx);
                }
                None => fx.push(Effect::Say(self.reask(s, i))),
            },
        }
    }

    fn reask(&self, s: &Settings, i: usize) -> String {
        format!("{}\n\n{}", s.say(self.lang(), TextKey::Reask, &[]), question_text(s, self.lang(), i))
    }

    /// Asks question `i`, or ends the intake when there is none.
    fn advance(&mut self, s: &Settings, i: usize, now: i64, fx: &mut Vec<Effect>) {
        if i < s.questions.len() {
            self.step = Step::Question(i);
            fx.push(Effect::Say(question_text(s, self.lang(), i)));
        } else {
            self.step = Step::Waiting;
            self.intake_completed = true;
            self.queued_at = Some(now);
            fx.push(Effect::Say(s.say(self.lang(), TextKey::Finding, &[])));
            fx.push(Effect::IntakeDone);
        }
    }

    /// Records an event (by keyed hash) as handled; false if it already was.
    pub fn note_event(&mut self, hash: &str) -> bool {
        if self.seen.iter().any(|h| h == hash) {
            return false;
        }
        self.seen.push_back(hash.to_owned());
        while self.seen.len() > SEEN_EVENTS {
            self.seen.pop_front();
        }
        true
    }

    /// Puts the case back to waiting (transfer, counsellor left).
    pub fn back_to_waiting(&mut self, now: i64) {
        self.step = Step::Waiting;
        if self.queued_at.is_none() {
            self.queued_at = Some(now);
        }
    }

    /// The counsellor joined: returns the summary for them and the notice
    /// for the visitor. Clears the in-memory texts once they are handed over.
    pub fn counsellor_joined(&mut self, s: &Settings, now: i64) -> (Rich, String) {
        self.step = Step::Counsellor;
        self.summary_posted = false;
        if !self.counsellor_joined {
            self.counsellor_joined = true;
            self.joined_at = Some(now);
        }
        let summary = summary(s, self);
        self.free_text.clear();
        self.waiting_messages.clear();
        (summary, s.say(self.lang(), TextKey::CounsellorJoined, &[]))
    }
}

fn posted() -> bool {
    true
}

/// The numbered language menu, its prompt in every configured language.
fn language_menu(s: &Settings) -> String {
    let mut out: Vec<String> = s.languages.iter().map(|l| s.say(l, TextKey::ChooseLanguage, &[])).collect();
    out.dedup();
    let mut menu = out.join("\n");
    for (n, l) in s.languages.iter().enumerate() {
        menu.push_str(&format!("\n{}. {}", n + 1, text::language_name(l)));
    }
    menu
}

fn pick_language(s: &Settings, folded: &str) -> Option<String> {
    if let Ok(n) = folded.parse::<usize>() {
        return s.languages.get(n.checked_sub(1)?).cloned();
    }
    s.languages.iter().find(|l| fold(l) == folded || fold(text::language_name(l)) == folded).cloned()
}

/// A choice by number (from 1, config order) or by whole label in any
/// configured language, case- and accent-folded.
pub fn pick_choice(q: &Question, folded: &str) -> Option<usize> {
    if folded.is_empty() {
        return None;
    }
    if let Ok(n) = folded.parse::<usize>() {
        return (1..=q.choices.len()).contains(&n).then(|| n - 1);
    }
    q.choices.iter().position(|c| c.label.values().any(|l| fold(l) == folded) || fold(&c.id) == folded)
}

/// Question `i` as the visitor sees it: "(2/6) prompt", numbered choices,
/// and the hint.
pub fn question_text(s: &Settings, lang: &str, i: usize) -> String {
    let q = &s.questions[i];
    let prompt = q.prompt_in(lang);
    let mut out = format!("({}/{}) {}", i + 1, s.questions.len(), prompt);
    match q.kind {
        QuestionKind::Choice => {
            for (n, c) in q.choices.iter().enumerate() {
                out.push_str(&format!("\n{}. {}", n + 1, c.label_in(lang)));
            }
            out.push('\n');
            out.push_str(&s.say(lang, TextKey::HintChoice, &[]));
        }
        QuestionKind::Text => {
            out.push('\n');
            out.push_str(&s.say(lang, TextKey::HintText, &[]));
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
