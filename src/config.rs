//! The TOML configuration: schema, defaults, validation and secrets.
//!
//! Loading never guesses: an unknown key, a wrong type or a questionnaire that
//! cannot work is reported with the file and the dotted key path, so an
//! operator can fix it without reading code. Secrets (password, store
//! passphrase) never live in this file; they come from the environment or
//! from files named here.
//!
//! The schema is here; `validate` holds the checks serde cannot make,
//! `secrets` reads the secrets. The config builds the pure core's settings
//! ([`Config::desk_setup`]); the core never reads the config.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::desk::Setup;
use crate::hours::Hours;
use crate::intake::Settings;
use crate::intake::questionnaire::Question;
use crate::outcome::stats::{MonitorFigure, default_monitor_for};
use crate::routing::Policy;

mod secrets;
mod validate;
pub use secrets::Secrets;

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
    /// `[limits]`: caps on open cases, against floods.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[web]`: the visitor page for people without a Matrix account;
    /// absent means no web chat.
    #[serde(default)]
    pub web: Option<WebConfig>,
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
    /// When not empty: only users of these homeservers get an intake;
    /// invites from anyone else are declined unseen.
    #[serde(default)]
    pub allowed_servers: Vec<String>,
    /// A file holding a Synapse admin access token (else
    /// `INTAKE_BOT_ADMIN_TOKEN`, else `privacy.purge_admin_token_file`):
    /// room purges, and the web chat's sign-up tokens and account deletion.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// A file holding the recovery passphrase (else
    /// `INTAKE_BOT_RECOVERY_PASSPHRASE`): the bot's cross-signing keys are
    /// kept in secret storage on the homeserver under it, so a bot whose
    /// `data_dir` was lost keeps its identity.
    #[serde(default)]
    pub recovery_passphrase_file: Option<PathBuf>,
}

fn default_device_name() -> String {
    "intake-bot".to_owned()
}

/// `[web]`: the anonymous web chat (DESIGN.md, "Web chat").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Where the bot serves the page and its sign-up endpoint, `127.0.0.1:8090`;
    /// in production behind the helpline's HTTPS reverse proxy.
    pub listen: String,
    /// The homeserver's address as the visitor's browser reaches it.
    pub public_homeserver_url: String,
    /// Where "Leave quickly" takes the visitor: an ordinary, harmless page.
    pub quick_exit_url: String,
    /// The built page (`web/dist`, made by `npm run build` in `web/`).
    #[serde(default = "default_web_assets")]
    pub assets_dir: PathBuf,
    /// The localpart prefix of the throwaway accounts the page creates; the
    /// bot deletes accounts with it on its own homeserver when their chat ends.
    #[serde(default = "default_web_prefix")]
    pub account_prefix: String,
    /// Sign-up tokens handed out per minute at most (all visitors together).
    #[serde(default = "default_signups_per_minute")]
    pub signups_per_minute: u32,
    /// A web account with no open chat is deleted after this many minutes
    /// (a page closed before it opened a chat).
    #[serde(default = "default_idle_account")]
    pub idle_account_minutes: u64,
}

fn default_web_assets() -> PathBuf {
    PathBuf::from("web/dist")
}

fn default_web_prefix() -> String {
    "web-".to_owned()
}

fn default_signups_per_minute() -> u32 {
    30
}

fn default_idle_account() -> u64 {
    10
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
    /// so counsellors see a neutral name rather than the visitor's. The same
    /// for every case (no id: names are not encrypted). Empty leaves room
    /// names alone.
    #[serde(default = "default_room_name")]
    pub room_name: String,
    /// Which cases the staff room hears of when they start waiting:
    /// `"unassigned"` (only those nobody could be offered at once, and
    /// urgent ones) or `"always"` (every case).
    #[serde(default = "default_announce_waiting")]
    pub announce_waiting: String,
}

fn default_announce_waiting() -> String {
    "unassigned".to_owned()
}

fn default_room_name() -> String {
    "Chat".to_owned()
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
    /// At a case's end the bot removes (redacts) its messages in the room,
    /// and the visitor's and counsellor's where it has the power, all but
    /// its goodbye (privacy rule 7).
    #[serde(default = "default_true")]
    pub redact_at_close: bool,
    /// Minutes after a case's end before the bot replaces its Matrix
    /// device, at the first moment no chat is open, so that its store
    /// forgets the case: the visitor's devices, Olm sessions and the room's
    /// keys (privacy rule 6). The cross-signing identity is kept.
    #[serde(default = "default_forget_after")]
    pub forget_after_minutes: u64,
}

fn default_forget_after() -> u64 {
    60
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
            redact_at_close: true,
            forget_after_minutes: default_forget_after(),
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
    /// Allows a `listen` address beyond this machine (not loopback).
    #[serde(default)]
    pub allow_remote: bool,
}

/// `[limits]`: how many cases may be open at once, in total, per visitor
/// homeserver and per visitor account. Rooms being joined count too. Over
/// a cap a room gets one short notice and no case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// All open cases together.
    #[serde(default = "default_max_open")]
    pub max_open_cases: usize,
    /// Open cases of visitors on one homeserver. The bot's own homeserver
    /// (the web chat's accounts) counts only towards `max_open_cases`.
    #[serde(default = "default_max_open_per_server")]
    pub max_open_cases_per_server: usize,
    /// Open cases of one visitor account.
    #[serde(default = "default_max_open_per_user")]
    pub max_open_cases_per_user: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_open_cases: default_max_open(),
            max_open_cases_per_server: default_max_open_per_server(),
            max_open_cases_per_user: default_max_open_per_user(),
        }
    }
}

fn default_max_open() -> usize {
    300
}
fn default_max_open_per_server() -> usize {
    30
}
fn default_max_open_per_user() -> usize {
    1
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
        if let Some(p) = self.matrix.admin_token_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.matrix.recovery_passphrase_file.as_mut() {
            fix(p);
        }
        if let Some(w) = self.web.as_mut() {
            fix(&mut w.assets_dir);
        }
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
            announce_all_waiting: self.staff.announce_waiting == "always",
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

#[cfg(test)]
mod tests;
