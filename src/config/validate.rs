//! Validation: everything serde cannot check, one line per problem, each
//! naming its dotted key, so an operator can fix the file without reading
//! code.

use std::collections::BTreeSet;

use super::{Config, avatar_mime, is_user_id};
use crate::intake::questionnaire::{Question, QuestionKind};
use crate::intake::text::{self, TextKey};

impl Config {
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
        let env_token = std::env::var("INTAKE_BOT_ADMIN_TOKEN").is_ok_and(|v| !v.is_empty());
        p.extend(self.validate_web(env_token));
        p
    }

    /// `[web]`: addresses, the prefix, and an admin token to mint sign-ups
    /// with (`env_token`: `INTAKE_BOT_ADMIN_TOKEN` is set).
    pub(super) fn validate_web(&self, env_token: bool) -> Vec<String> {
        let mut p = Vec::new();
        let Some(w) = &self.web else { return p };
        if w.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!("key `web.listen`: `{}` is not an address like 127.0.0.1:8090", w.listen));
        }
        for (key, url) in [("public_homeserver_url", &w.public_homeserver_url), ("quick_exit_url", &w.quick_exit_url)] {
            if crate::web::origin_of(url).is_none() {
                p.push(format!("key `web.{key}`: expected an http:// or https:// URL, not `{url}`"));
            }
        }
        let prefix_ok = !w.account_prefix.is_empty()
            && w.account_prefix.len() <= 32
            && w.account_prefix.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.'));
        if !prefix_ok {
            p.push("key `web.account_prefix`: expected 1 to 32 of a-z, 0-9, `-`, `_`, `.`".into());
        }
        if w.signups_per_minute == 0 {
            p.push("key `web.signups_per_minute`: expected at least 1".into());
        }
        if w.idle_account_minutes == 0 {
            p.push("key `web.idle_account_minutes`: expected at least 1".into());
        }
        if self.matrix.admin_token_file.is_none() && self.privacy.purge_admin_token_file.is_none() && !env_token {
            p.push("key `matrix.admin_token_file`: the web chat needs a Synapse admin token (this key or INTAKE_BOT_ADMIN_TOKEN) to hand out sign-up tokens and delete finished accounts".into());
        }
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
        for (i, s) in m.allowed_servers.iter().enumerate() {
            if s.is_empty() || s.contains(|c: char| c == '@' || c == '/' || c.is_whitespace()) {
                p.push(format!("key `matrix.allowed_servers[{i}]`: expected a server name like example.org"));
            }
        }
        if let Some(f) = &m.avatar_file
            && avatar_mime(f).is_none()
        {
            p.push("key `matrix.avatar_file`: expected a .png, .jpg, .jpeg, .gif or .webp file".into());
        }
    }

    fn validate_staff(&self, p: &mut Vec<String>) {
        if self.staff.room_name.contains("{case}") {
            p.push(
                "key `staff.room_name`: `{case}` is not allowed: room names are not encrypted and every homeserver in the room keeps them; the summary inside the room names the case".into(),
            );
        }
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
        if !["unassigned", "always"].contains(&s.announce_waiting.as_str()) {
            p.push(format!(
                "key `staff.announce_waiting`: expected \"unassigned\" or \"always\", found {:?}",
                s.announce_waiting
            ));
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
        if h.open.is_empty() {
            p.push("key `hours.open`: expected at least one range like \"mon-fri 09:00-17:00\" (remove [hours] for always open)".into());
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

    /// `[metrics]`, `[privacy]`, `[limits]` and `[texts]`.
    fn validate_rest(&self, p: &mut Vec<String>) {
        let l = &self.limits;
        for (name, v) in [
            ("max_open_cases", l.max_open_cases),
            ("max_open_cases_per_server", l.max_open_cases_per_server),
            ("max_open_cases_per_user", l.max_open_cases_per_user),
        ] {
            if v == 0 {
                p.push(format!("key `limits.{name}`: expected at least 1"));
            }
        }
        if let Some(l) = &self.metrics.listen {
            match l.parse::<std::net::SocketAddr>() {
                Err(_) => p.push(format!("key `metrics.listen`: `{l}` is not an address like 127.0.0.1:9100")),
                // The figures tell when the helpline is busy and cases are
                // urgent: not for the network unless the operator says so.
                Ok(a) if !a.ip().is_loopback() && !self.metrics.allow_remote => p.push(format!(
                    "key `metrics.listen`: `{l}` is not a loopback address; set metrics.allow_remote = true to serve beyond this machine"
                )),
                Ok(_) => {}
            }
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
}
