//! Test helpers of the pure core: the example questionnaire from
//! `config.example.toml`, read without the config module (the core does
//! not depend on it), so tests run on the questionnaire operators start
//! from.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Settings;
use super::questionnaire::Question;

#[derive(Deserialize)]
struct Example {
    intake: ExampleIntake,
    outcomes: ExampleOutcomes,
}

#[derive(Deserialize)]
struct ExampleIntake {
    questions: Vec<Question>,
}

#[derive(Deserialize)]
struct ExampleOutcomes {
    tags: Vec<String>,
}

fn example() -> Example {
    toml::from_str(include_str!("../../config.example.toml")).expect("config.example.toml parses")
}

/// The example questionnaire.
pub fn example_questions() -> Vec<Question> {
    example().intake.questions
}

/// Settings of the example config in `langs`, with the built-in texts
/// and emergency keywords and emergency number 112.
pub fn settings_with(langs: &[&str]) -> Settings {
    settings_from(langs, example_questions(), &BTreeMap::new())
}

/// Settings in `langs` over `questions`, with configured emergency keywords.
pub fn settings_from(langs: &[&str], questions: Vec<Question>, keywords: &BTreeMap<String, Vec<String>>) -> Settings {
    Settings::new(
        langs.iter().map(|s| s.to_string()).collect(),
        questions,
        BTreeMap::new(),
        "112".into(),
        keywords,
        example().outcomes.tags,
    )
}
