//! The questionnaire: the questions an intake asks, as the engine reads
//! them. The config file parses straight into these types (so they derive
//! `Deserialize`), and the engine never sees the rest of the config.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Text per language code (`{ nl = "...", en = "..." }`).
pub type Localized = BTreeMap<String, String>;

/// The text in `lang`, else in the first language that has one, else "".
/// Validation makes sure every configured language is there; the fallback
/// covers a language dropped from the config under a case in progress.
pub fn localized<'a>(text: &'a Localized, lang: &str) -> &'a str {
    text.get(lang).or_else(|| text.values().next()).map_or("", String::as_str)
}

/// One question of the intake.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Question {
    /// Stable id, the key of the answer in outcome records.
    pub id: String,
    /// How it is answered.
    pub kind: QuestionKind,
    /// Prompt per language code.
    pub prompt: Localized,
    /// The answers of a choice question, numbered from 1 in this order.
    #[serde(default)]
    pub choices: Vec<Choice>,
    /// Choice ids that make the case urgent (e.g. "not safe right now").
    #[serde(default)]
    pub urgent_choices: Vec<String>,
}

impl Question {
    /// The prompt in `lang` (see [`localized`]).
    pub fn prompt_in(&self, lang: &str) -> &str {
        localized(&self.prompt, lang)
    }

    /// The choice with this id.
    pub fn choice(&self, id: &str) -> Option<&Choice> {
        self.choices.iter().find(|c| c.id == id)
    }
}

/// Whether a question is answered from a list or in the visitor's own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuestionKind {
    /// One of the question's choices, by number or label.
    Choice,
    /// The visitor's own words: passed to the counsellor, never stored.
    Text,
}

/// One answer of a choice question.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Choice {
    /// Stable id, the value stored in outcome records.
    pub id: String,
    /// Label per language code.
    pub label: Localized,
}

impl Choice {
    /// The label in `lang` (see [`localized`]).
    pub fn label_in(&self, lang: &str) -> &str {
        localized(&self.label, lang)
    }
}
