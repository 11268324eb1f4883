//! The TOML configuration: schema, defaults, validation and secrets.
//!
//! Loading never guesses: an unknown key, a wrong type or a questionnaire that
//! cannot work is reported with the file and the dotted key path, so an
//! operator can fix it without reading code. Secrets (password, store
//! passphrase) never live in this file; they come from the environment or
//! from files named here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::desk::Setup;
use crate::hours::Hours;
use crate::intake::Settings;
use crate::intake::questionnaire::{Question, QuestionKind};
use crate::intake::text::{self, TextKey};
use crate::outcome::stats::{MonitorFigure, default_monitor_for};
use crate::routing::Policy;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[matrix]`
    pub matrix: MatrixConfig,
    /// `[storage]`
    pub storage: StorageConfig,
    /// `[staff]`
    pub staff: StaffConfig,
    /// `[hours]`; absent means always open.
    #[serde(default)]
    pub hours: Option<HoursConfig>,
    /// `[intake]` and its `[[intake.questions]]`
    #[serde(default)]
    pub intake: IntakeConfig,
    /// `[safety]`
    #[serde(default)]
    pub safety: SafetyConfig,
    /// `[outcomes]`
    #[serde(default)]
    pub outcomes: OutcomesConfig,
    /// `[privacy]`
    #[serde(default)]
    pub privacy: PrivacyConfig,
    /// `[stats]`
    #[serde(default)]
    pub stats: StatsConfig,
    /// `[metrics]`
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Per language, overrides of built-in texts: `[texts.en] greeting = "..."`.
    #[serde(default)]
    pub texts: BTreeMap<String, BTreeMap<String, String>>,
}

/// `[matrix]`: how the bot reaches its homeserver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixConfig {
    /// The homeserver's client-server API base, `http://` or `https://`.
    pub homeserver_url: String,
    /// The bot's full user id, `@intake:example.org`.
    pub user_id: String,
    /// The display name of the bot's device, set at the first login.
    #[serde(default = "default_device_name")]
    pub device_name: String,
    /// A file holding the bot's password (else `INTAKE_BOT_PASSWORD`).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A file holding the store passphrase (else `INTAKE_BOT_STORE_PASSPHRASE`).
    #[serde(default)]
    pub store_passphrase_file: Option<PathBuf>,
    /// The bot's display name, set on every start when it differs.
    #[serde(default)]
    pub display_name: Option<String>,
    /// An image file (PNG, JPEG, GIF or WebP) for the bot's avatar, uploaded
    /// when it changes.
    #[serde(default)]
    pub avatar_file: Option<PathBuf>,
}

fn default_device_name() -> String {
    "intake-bot".to_owned()
}

/// `[storage]`: the only directory the bot writes to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Everything the bot writes: its store, the SDK's encrypted store, the session.
    pub data_dir: PathBuf,
}

/// `[staff]`: the counsellors and how cases are offered to them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaffConfig {
    /// Room id of the staff room (room version 12 ids have no server part).
    pub room: String,
    /// The counsellors' full user ids; only they get cases and staff commands.
    #[serde(default)]
    pub counsellors: Vec<String>,
    /// Most cases one counsellor is offered or has at once.
    #[serde(default = "default_max_active")]
    pub max_active_per_counsellor: u32,
    /// How long an offer stands before the next counsellor is tried.
    #[serde(default = "default_accept_timeout")]
    pub accept_timeout_secs: u64,
    /// A case waiting longer than this is announced again in the staff room.
    #[serde(default = "default_wait_alert")]
    pub wait_alert_secs: u64,
    /// The name the bot gives a case room when it offers it, where it may,
    /// so counsellors see a neutral name rather than the visitor's. `{case}`
    /// is the case id. Empty leaves room names alone.
    #[serde(default = "default_room_name")]
    pub room_name: String,
}

fn default_room_name() -> String {
    "Chat {case}".to_owned()
}

fn default_wait_alert() -> u64 {
    600
}

fn default_max_active() -> u32 {
    2
}
fn default_accept_timeout() -> u64 {
    120
}

/// `[hours]`: opening hours; absent means always open.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoursConfig {
    /// The IANA time zone of `open`, e.g. `Europe/Amsterdam`.
    pub timezone: String,
    /// Opening ranges like `mon-fri 09:00-17:00`.
    #[serde(default)]
    pub open: Vec<String>,
}

/// `[intake]`: languages and the questionnaire.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeConfig {
    /// The languages offered, the first also the staff's.
    #[serde(default = "default_languages")]
    pub languages: Vec<String>,
    /// Whether a room that cannot be encrypted gets no intake.
    #[serde(default = "default_true")]
    pub require_encryption: bool,
    /// The questions, asked in this order.
    #[serde(default)]
    pub questions: Vec<Question>,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        Self { languages: default_languages(), require_encryption: true, questions: Vec::new() }
    }
}

fn default_languages() -> Vec<String> {
    vec!["en".to_owned()]
}
fn default_true() -> bool {
    true
}

/// `[safety]`: the emergency number and keywords.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyConfig {
    /// The number every safety text gives.
    #[serde(default = "default_emergency_number")]
    pub emergency_number: String,
    /// Per language; languages not given here use the built-in list.
    #[serde(default)]
    pub emergency_keywords: BTreeMap<String, Vec<String>>,
}

impl Default for SafetyConfig {
    fn default() -> Self {
        Self { emergency_number: default_emergency_number(), emergency_keywords: BTreeMap::new() }
    }
}

fn default_emergency_number() -> String {
    "112".to_owned()
}

/// `[outcomes]`: the tags a counsellor may close a case with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomesConfig {
    /// The tags of `!close <tag>`.
    #[serde(default = "default_tags")]
    pub tags: Vec<String>,
}

impl Default for OutcomesConfig {
    fn default() -> Self {
        Self { tags: default_tags() }
    }
}

fn default_tags() -> Vec<String> {
    ["advice", "referred", "reported", "no_help_needed", "other"].map(String::from).to_vec()
}

/// `[privacy]`: how long a case in progress may be kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// After this, a case in progress is ended and its state deleted.
    #[serde(default = "default_retention")]
    pub in_progress_retention_hours: u64,
    /// A file holding a Synapse admin access token. When set, the room of
    /// every finished case is deleted and purged from the homeserver.
    #[serde(default)]
    pub purge_admin_token_file: Option<PathBuf>,
    /// Seconds between the goodbye and the purge, so the visitor's client
    /// has time to show the goodbye and its help numbers.
    #[serde(default = "default_purge_delay")]
    pub purge_delay_secs: u64,
}

fn default_purge_delay() -> u64 {
    120
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            in_progress_retention_hours: default_retention(),
            purge_admin_token_file: None,
            purge_delay_secs: default_purge_delay(),
        }
    }
}

fn default_retention() -> u64 {
    72
}

/// `[stats]`: how `stats` reports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsConfig {
    /// Counts from 1 to `min_count - 1` are suppressed; 1 shows every count.
    #[serde(default = "default_min_count")]
    pub min_count: u32,
    /// The monitor's figures; absent means the built-in ones for the
    /// default questionnaire (those whose question is configured).
    #[serde(default)]
    pub monitor: Option<Vec<MonitorFigure>>,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self { min_count: default_min_count(), monitor: None }
    }
}

fn default_min_count() -> u32 {
    5
}

/// `[metrics]`: the optional Prometheus listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve `/metrics` and `/healthz` on, e.g. `127.0.0.1:9100`.
    #[serde(default)]
    pub listen: Option<String>,
}

/// A configuration that could not be loaded or is not usable.
#[derive(Debug)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// One line per problem, each naming its key.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        if self.problems.len() == 1 {
            write!(f, "{}", self.problems[0])
        } else {
            writeln!(f, "{} problems:", self.problems.len())?;
            for p in &self.problems {
                writeln!(f, "  - {p}")?;
            }
            Ok(())
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, parses and validates a config file. Relative paths inside it
    /// are resolved against the file's own directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |problems: Vec<String>| ConfigError { file: path.to_owned(), problems };
        let text = std::fs::read_to_string(path).map_err(|e| err(vec![format!("cannot read the file: {e}")]))?;
        let mut config = Config::parse(&text).map_err(|p| err(vec![p]))?;
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(err(problems));
        }
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.resolve_paths(&base);
        Ok(config)
    }

    /// Parses TOML text; the error names the dotted key that failed.
    pub fn parse(text: &str) -> Result<Config, String> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.message().to_owned();
            let line = inner.span().map(|s| line_of(text, s.start));
            let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
            if path == "." || path.is_empty() { format!("{msg}{at}") } else { format!("key `{path}`{at}: {msg}") }
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.storage.data_dir);
        if let Some(p) = self.matrix.password_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.matrix.store_passphrase_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.privacy.purge_admin_token_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.matrix.avatar_file.as_mut() {
            fix(p);
        }
    }

    /// Checks everything serde cannot: returns one line per problem, each
    /// naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        self.validate_matrix(&mut p);
        self.validate_staff(&mut p);
        self.validate_hours(&mut p);
        self.validate_intake(&mut p);
        self.validate_safety(&mut p);
        self.validate_outcomes(&mut p);
        p.extend(self.validate_stats());
        self.validate_rest(&mut p);
        p
    }

    fn validate_matrix(&self, p: &mut Vec<String>) {
        let m = &self.matrix;
        if !(m.homeserver_url.starts_with("http://") || m.homeserver_url.starts_with("https://")) {
            p.push("key `matrix.homeserver_url`: expected an http:// or https:// URL".into());
        }
        if !is_user_id(&m.user_id) {
            p.push("key `matrix.user_id`: expected a full user id like @intake:example.org".into());
        }
        if let Some(n) = &m.display_name
            && (n.trim().is_empty() || n.chars().count() > 100)
        {
            p.push("key `matrix.display_name`: expected 1 to 100 characters".into());
        }
        if let Some(f) = &m.avatar_file
            && avatar_mime(f).is_none()
        {
            p.push("key `matrix.avatar_file`: expected a .png, .jpg, .jpeg, .gif or .webp file".into());
        }
    }

    fn validate_staff(&self, p: &mut Vec<String>) {
        let s = &self.staff;
        if !s.room.starts_with('!') || s.room.len() < 2 {
            p.push("key `staff.room`: expected a room id starting with `!`".into());
        }
        for (i, c) in s.counsellors.iter().enumerate() {
            if !is_user_id(c) {
                p.push(format!("key `staff.counsellors[{i}]`: expected a full user id like @name:example.org"));
            }
            if c == &self.matrix.user_id {
                p.push(format!("key `staff.counsellors[{i}]`: the bot cannot be its own counsellor"));
            }
        }
        if s.max_active_per_counsellor == 0 {
            p.push("key `staff.max_active_per_counsellor`: expected at least 1".into());
        }
        if s.wait_alert_secs == 0 {
            p.push("key `staff.wait_alert_secs`: expected at least 1 second".into());
        }
        if s.accept_timeout_secs == 0 {
            p.push("key `staff.accept_timeout_secs`: expected at least 1 second".into());
        }
    }

    fn validate_hours(&self, p: &mut Vec<String>) {
        let Some(h) = &self.hours else { return };
        if h.timezone.parse::<chrono_tz::Tz>().is_err() {
            p.push(format!("key `hours.timezone`: `{}` is not an IANA time zone like Europe/Amsterdam", h.timezone));
        }
        for (i, r) in h.open.iter().enumerate() {
            if let Err(e) = crate::hours::parse_range(r) {
                p.push(format!("key `hours.open[{i}]`: {e}"));
            }
        }
    }

    fn validate_intake(&self, p: &mut Vec<String>) {
        let langs = &self.intake.languages;
        if langs.is_empty() {
            p.push("key `intake.languages`: expected at least one language code".into());
        }
        let mut seen = BTreeSet::new();
        for (i, l) in langs.iter().enumerate() {
            if !seen.insert(l) {
                p.push(format!("key `intake.languages[{i}]`: `{l}` is listed twice"));
            }
            if l.is_empty() || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                p.push(format!("key `intake.languages[{i}]`: expected a language code like `en`"));
            }
        }
        let mut ids = BTreeSet::new();
        for (qi, q) in self.intake.questions.iter().enumerate() {
            let key = format!("intake.questions[{qi}]");
            if q.id.trim().is_empty() {
                p.push(format!("key `{key}.id`: must not be empty"));
            } else if !ids.insert(q.id.as_str()) {
                p.push(format!("key `{key}.id`: duplicate question id `{}`", q.id));
            }
            validate_question(q, &key, langs, p);
        }
    }

    fn validate_safety(&self, p: &mut Vec<String>) {
        if self.safety.emergency_number.trim().is_empty() {
            p.push("key `safety.emergency_number`: must not be empty".into());
        }
        for (l, words) in &self.safety.emergency_keywords {
            for (i, w) in words.iter().enumerate() {
                if text::fold(w).is_empty() {
                    p.push(format!("key `safety.emergency_keywords.{l}[{i}]`: has no letters or digits"));
                }
            }
        }
    }

    fn validate_outcomes(&self, p: &mut Vec<String>) {
        if self.outcomes.tags.is_empty() {
            p.push("key `outcomes.tags`: expected at least one tag".into());
        }
        let mut tags = BTreeSet::new();
        for (i, t) in self.outcomes.tags.iter().enumerate() {
            if t.is_empty() || t.contains(char::is_whitespace) {
                p.push(format!("key `outcomes.tags[{i}]`: expected one word without spaces"));
            } else if !tags.insert(t) {
                p.push(format!("key `outcomes.tags[{i}]`: duplicate tag `{t}`"));
            }
            if matches!(t.as_str(), "abandoned" | "stopped" | "expired" | "unencrypted" | "group") {
                p.push(format!("key `outcomes.tags[{i}]`: `{t}` is reserved for the bot"));
            }
        }
    }

    /// `[metrics]`, `[privacy]` and `[texts]`.
    fn validate_rest(&self, p: &mut Vec<String>) {
        if let Some(l) = &self.metrics.listen
            && l.parse::<std::net::SocketAddr>().is_err()
        {
            p.push(format!("key `metrics.listen`: `{l}` is not an address like 127.0.0.1:9100"));
        }
        if self.privacy.in_progress_retention_hours == 0 {
            p.push("key `privacy.in_progress_retention_hours`: expected at least 1".into());
        }
        for (lang, overrides) in &self.texts {
            for (name, value) in overrides {
                if name == TextKey::Weekdays.name() && value.split_whitespace().count() != 7 {
                    p.push(format!("key `texts.{lang}.{name}`: expected seven day names, Monday first"));
                }
                if TextKey::from_name(name).is_none() {
                    p.push(format!(
                        "key `texts.{lang}.{name}`: unknown text; known texts are {}",
                        TextKey::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
    }
}

/// The checks of one question (`key` is its dotted path): prompts and
/// labels in every language, choices that fit its kind, unique choice ids.
fn validate_question(q: &Question, key: &str, langs: &[String], p: &mut Vec<String>) {
    for l in langs {
        if q.prompt.get(l).is_none_or(|s| s.trim().is_empty()) {
            p.push(format!("key `{key}.prompt.{l}`: missing prompt for language `{l}`"));
        }
    }
    match q.kind {
        QuestionKind::Choice if q.choices.is_empty() => {
            p.push(format!("key `{key}.choices`: a choice question needs at least one choice"));
        }
        QuestionKind::Text if !q.choices.is_empty() => {
            p.push(format!("key `{key}.choices`: a text question takes no choices"));
        }
        _ => {}
    }
    let mut cids = BTreeSet::new();
    for (ci, c) in q.choices.iter().enumerate() {
        let ckey = format!("{key}.choices[{ci}]");
        if c.id.trim().is_empty() {
            p.push(format!("key `{ckey}.id`: must not be empty"));
        } else if !cids.insert(c.id.as_str()) {
            p.push(format!("key `{ckey}.id`: duplicate choice id `{}`", c.id));
        }
        if matches!(c.id.as_str(), "skipped" | "answered") {
            p.push(format!("key `{ckey}.id`: `{}` is reserved", c.id));
        }
        for l in langs {
            if c.label.get(l).is_none_or(|s| s.trim().is_empty()) {
                p.push(format!("key `{ckey}.label.{l}`: missing label for language `{l}`"));
            }
        }
    }
    for (ui, u) in q.urgent_choices.iter().enumerate() {
        if !cids.contains(u.as_str()) {
            p.push(format!("key `{key}.urgent_choices[{ui}]`: `{u}` is not a choice id of this question"));
        }
    }
}

impl Config {
    fn validate_stats(&self) -> Vec<String> {
        let mut p = Vec::new();
        let Some(figures) = &self.stats.monitor else { return p };
        let mut ids = BTreeSet::new();
        for (i, f) in figures.iter().enumerate() {
            let key = format!("stats.monitor[{i}]");
            if f.id.trim().is_empty() || !ids.insert(f.id.as_str()) {
                p.push(format!("key `{key}.id`: expected a unique, non-empty id"));
            }
            let Some(q) = self.intake.questions.iter().find(|q| q.id == f.question) else {
                p.push(format!("key `{key}.question`: `{}` is not a question id", f.question));
                continue;
            };
            if q.kind != QuestionKind::Choice {
                p.push(format!("key `{key}.question`: `{}` is not a choice question", f.question));
            }
            if f.choices.is_empty() {
                p.push(format!("key `{key}.choices`: expected at least one choice id"));
            }
            for (ci, c) in f.choices.iter().enumerate() {
                if !q.choices.iter().any(|x| &x.id == c) {
                    p.push(format!("key `{key}.choices[{ci}]`: `{c}` is not a choice of question `{}`", q.id));
                }
            }
        }
        p
    }

    /// The monitor figures `stats` reports: the configured ones, or the
    /// built-in ones whose question and choices this questionnaire has.
    pub fn monitor_figures(&self) -> Vec<MonitorFigure> {
        match &self.stats.monitor {
            Some(f) => f.clone(),
            None => default_monitor_for(&self.intake.questions),
        }
    }

    /// The conversation engine's settings.
    pub fn settings(&self) -> Settings {
        Settings::new(
            self.intake.languages.clone(),
            self.intake.questions.clone(),
            self.texts.clone(),
            self.safety.emergency_number.clone(),
            &self.safety.emergency_keywords,
            self.outcomes.tags.clone(),
        )
    }

    /// What the desk is made of: settings, routing policy, opening hours.
    /// Fails only on a config that [`Config::validate`] would reject.
    pub fn desk_setup(&self) -> Result<Setup, String> {
        let secs = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let policy = Policy {
            max_active: self.staff.max_active_per_counsellor,
            accept_timeout_secs: secs(self.staff.accept_timeout_secs),
            wait_alert_secs: secs(self.staff.wait_alert_secs),
        };
        let hours = match &self.hours {
            Some(h) => Some(Hours::new(&h.timezone, &h.open).map_err(|e| format!("key `hours`: {e}"))?),
            None => None,
        };
        Ok(Setup { settings: self.settings(), policy, hours })
    }
}

/// The media type of an avatar file, from its extension.
pub fn avatar_mime(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        _ => return None,
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

fn is_user_id(s: &str) -> bool {
    s.starts_with('@') && s.find(':').is_some_and(|i| i > 1 && i + 1 < s.len())
}

/// The secrets the bot needs at run time, never read from the config itself.
pub struct Secrets {
    /// The bot's account password (needed for the first login only).
    pub password: String,
    /// Encrypts the SDK's store; also keys the hashes of room ids.
    pub store_passphrase: String,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

impl Secrets {
    /// From `INTAKE_BOT_PASSWORD` / `INTAKE_BOT_STORE_PASSPHRASE`, else from
    /// the files named in `[matrix]`.
    pub fn load(m: &MatrixConfig) -> anyhow::Result<Secrets> {
        Ok(Secrets {
            password: secret("INTAKE_BOT_PASSWORD", m.password_file.as_deref(), "matrix.password_file")?,
            store_passphrase: secret(
                "INTAKE_BOT_STORE_PASSPHRASE",
                m.store_passphrase_file.as_deref(),
                "matrix.store_passphrase_file",
            )?,
        })
    }
}

fn secret(var: &str, file: Option<&Path>, key: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    if let Ok(v) = std::env::var(var)
        && !v.is_empty()
    {
        return Ok(v);
    }
    let Some(file) = file else {
        anyhow::bail!("no secret: set {var} or the config key `{key}`");
    };
    let v = std::fs::read_to_string(file).with_context(|| format!("reading `{key}` ({})", file.display()))?;
    let v = v.trim_end_matches(['\n', '\r']).to_owned();
    anyhow::ensure!(!v.is_empty(), "`{key}` ({}) is empty", file.display());
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[matrix]
homeserver_url = "http://127.0.0.1:8008"
user_id = "@bot:localhost"
[storage]
data_dir = "data"
[staff]
room = "!abc"
counsellors = ["@c:localhost"]
[[intake.questions]]
id = "q"
kind = "choice"
prompt = { en = "Q?" }
choices = [ { id = "a", label = { en = "A" } } ]
"#;

    #[test]
    fn minimal_is_valid() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.validate(), Vec::<String>::new());
        assert_eq!(c.staff.accept_timeout_secs, 120);
        assert_eq!(c.safety.emergency_number, "112");
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../config.example.toml");
        let c = Config::parse(text).unwrap();
        assert_eq!(c.validate(), Vec::<String>::new());
        assert_eq!(c.intake.questions.len(), 6);
    }

    #[test]
    fn wrong_type_names_key() {
        let t = MINIMAL.replace("counsellors = [\"@c:localhost\"]", "max_active_per_counsellor = \"three\"");
        let e = Config::parse(&t).unwrap_err();
        assert!(e.contains("staff.max_active_per_counsellor"), "{e}");
    }

    #[test]
    fn unknown_key_names_key() {
        let t = MINIMAL.replace("[staff]", "[staff]\nroom_id = \"x\"");
        let e = Config::parse(&t).unwrap_err();
        assert!(e.contains("room_id"), "{e}");
        assert!(e.contains("staff"), "{e}");
    }

    #[test]
    fn choice_without_choices_and_duplicate_id() {
        let t =
            format!("{MINIMAL}\n[[intake.questions]]\nid = \"q\"\nkind = \"choice\"\nprompt = {{ en = \"again\" }}\n");
        let c = Config::parse(&t).unwrap();
        let p = c.validate();
        assert!(p.iter().any(|l| l.contains("intake.questions[1].id") && l.contains("duplicate")), "{p:?}");
        assert!(p.iter().any(|l| l.contains("intake.questions[1].choices")), "{p:?}");
    }

    #[test]
    fn missing_translation_and_bad_ids() {
        let t = MINIMAL.replace("[staff]", "[intake]\nlanguages = [\"en\", \"nl\"]\n[staff]").replace("!abc", "abc");
        let p = Config::parse(&t).unwrap().validate();
        assert!(p.iter().any(|l| l.contains("intake.questions[0].prompt.nl")), "{p:?}");
        assert!(p.iter().any(|l| l.contains("intake.questions[0].choices[0].label.nl")), "{p:?}");
        assert!(p.iter().any(|l| l.contains("staff.room")), "{p:?}");
    }

    #[test]
    fn unknown_text_override() {
        let t = format!("{MINIMAL}\n[texts.en]\ngreting = \"hi\"\n");
        let p = Config::parse(&t).unwrap().validate();
        assert!(p.iter().any(|l| l.contains("texts.en.greting")), "{p:?}");
    }

    #[test]
    fn weekday_names_override_needs_seven() {
        let t = format!("{MINIMAL}\n[texts.en]\nweekdays = \"Mon Tue\"\n");
        let p = Config::parse(&t).unwrap().validate();
        assert!(p.iter().any(|l| l.contains("texts.en.weekdays") && l.contains("seven")), "{p:?}");
        let t = format!("{MINIMAL}\n[texts.en]\nweekdays = \"Mo Tu We Th Fr Sa Su\"\n");
        assert_eq!(Config::parse(&t).unwrap().validate(), Vec::<String>::new());
    }

    #[test]
    fn bad_hours() {
        let t = format!("{MINIMAL}\n[hours]\ntimezone = \"Mars/Base\"\nopen = [\"mon-fri 9-17\"]\n");
        let p = Config::parse(&t).unwrap().validate();
        assert!(p.iter().any(|l| l.contains("hours.timezone")), "{p:?}");
        assert!(p.iter().any(|l| l.contains("hours.open[0]")), "{p:?}");
    }

    #[test]
    fn load_names_file_and_resolves_paths() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bot.toml");
        std::fs::write(&f, MINIMAL).unwrap();
        let c = Config::load(&f).unwrap();
        assert_eq!(c.storage.data_dir, dir.path().join("data"));
        std::fs::write(&f, "[matrix]\nuser_id = 3\n").unwrap();
        let e = Config::load(&f).unwrap_err().to_string();
        assert!(e.contains("bot.toml") && e.contains("matrix"), "{e}");
    }

    #[test]
    fn the_default_questionnaire_wires_up_every_monitor_figure() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
        let c = Config::load(&path).unwrap();
        let ids: Vec<String> = c.monitor_figures().into_iter().map(|f| f.id).collect();
        assert_eq!(ids, ["minors", "under_15", "still_exploited", "several_perpetrators", "for_themselves"]);
        // A questionnaire without an age question drops the age figures.
        let mut c = c;
        c.intake.questions.retain(|q| q.id != "age");
        assert!(c.monitor_figures().iter().all(|f| f.question != "age"));
    }

    #[test]
    fn configured_monitor_figures_are_checked() {
        let base = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml")).unwrap();
        let base = base.replace("min_count = 5", "min_count = 10");
        let bad = format!(
            "{base}\n[[stats.monitor]]\nid = \"x\"\nlabel = \"X\"\nquestion = \"age\"\nchoices = [\"under_12\"]\n[[stats.monitor]]\nid = \"y\"\nlabel = \"Y\"\nquestion = \"shoe_size\"\nchoices = [\"42\"]\n"
        );
        let c = Config::parse(&bad).unwrap();
        let p = c.validate();
        assert!(p.iter().any(|l| l.contains("`stats.monitor[0].choices[0]`") && l.contains("under_12")), "{p:?}");
        assert!(p.iter().any(|l| l.contains("`stats.monitor[1].question`") && l.contains("shoe_size")), "{p:?}");
        assert_eq!(c.stats.min_count, 10);
    }
}
