//! Log setup. The bot's own lines never carry message text, visitor ids or
//! room ids; the SDK's lines do at info and below, so its targets stay at
//! warn unless the operator names them on purpose in `RUST_LOG`.

use std::io::Write;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, for a log collector.
    Json,
}

/// Turns a `RUST_LOG`-style spec into the filter actually used: a bare
/// level ("debug") applies to intake-bot only; `target=level` directives
/// are kept as written; everything else stays at warn.
pub(crate) fn filter_spec(rust_log: Option<&str>) -> String {
    let mut own = "info".to_owned();
    let mut extra = Vec::new();
    for d in rust_log.unwrap_or("").split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if d.contains('=') || d.contains("::") || d.contains('[') {
            extra.push(d.to_owned());
        } else {
            own = d.to_owned();
        }
    }
    // The SDK logs expected 404s (account data it probes for) at error and
    // a backup warning every 30 s although the bot uses no key backup:
    // noise that would hide real trouble from an operator.
    let mut spec = format!("warn,matrix_sdk::http_client=off,matrix_sdk_crypto::backups=off,intake_bot={own}");
    for e in extra {
        spec.push(',');
        spec.push_str(&e);
    }
    spec
}

/// Installs the global subscriber, writing to stderr.
pub fn init(format: LogFormat) {
    let spec = filter_spec(std::env::var("RUST_LOG").ok().as_deref());
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("RUST_LOG: {e}; using the default");
        EnvFilter::new(filter_spec(None))
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(ScrubbedStderr);
    match format {
        LogFormat::Pretty => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Replaces anything that looks like a Matrix id (`@user:server`,
/// `!room`, `#alias`, `$event`) with `<id>`, and device ids and key-shaped
/// values with `<device>` and `<key>` (see [`scrub_devices_and_keys`]).
/// Every log line passes through it, the SDK's included, so an id quoted in
/// an error never reaches a log.
pub(crate) fn scrub(s: &str) -> String {
    scrub_devices_and_keys(&scrub_ids(&scrub_encoded_ids(&scrub_urls(s))))
}

/// Ids %-encoded outside a full URL (a bare request path in an SDK line,
/// `path=/_matrix/client/v3/rooms/%21abc%3Ahs/members`): `%21`, `%40`,
/// `%23` or `%24` (`!`, `@`, `#`, `$`) and what follows up to a delimiter
/// become `<id>`.
fn scrub_encoded_ids(s: &str) -> String {
    const SIGILS: [&str; 4] = ["%21", "%40", "%23", "%24"];
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = SIGILS.iter().filter_map(|sig| rest.find(sig)).min() {
        out.push_str(&rest[..start]);
        let from = &rest[start + 3..];
        let end = from
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '%' | '.' | '-' | '_' | '=' | '+' | '~')))
            .unwrap_or(from.len());
        if end == 0 {
            out.push_str(&rest[start..start + 3]);
        } else {
            out.push_str("<id>");
        }
        rest = &from[end..];
    }
    out.push_str(rest);
    out
}

/// Request URLs in errors carry ids %-encoded (`/rooms/%21abc/send/...`,
/// `/profile/%40visitor%3Aserver`) and queries may carry anything: in a
/// URL, every path segment that is not a plain API word becomes `<id>` and
/// the query becomes `<query>`. Scheme, host and the endpoint's words stay,
/// so an operator still sees which call failed.
fn scrub_urls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("http://").or_else(|| rest.find("https://")) {
        let (before, from) = rest.split_at(start);
        out.push_str(before);
        let end = from.find(|c: char| c.is_whitespace() || "\"'<>)]},".contains(c)).unwrap_or(from.len());
        let (url, after) = from.split_at(end);
        let scheme_end = url.find("://").map_or(0, |i| i + 3);
        let (scheme, tail) = url.split_at(scheme_end);
        let (tail, query) = match tail.split_once('?') {
            Some((t, _)) => (t, true),
            None => (tail, false),
        };
        let mut segments = tail.split('/');
        out.push_str(scheme);
        out.push_str(segments.next().unwrap_or(""));
        for seg in segments {
            out.push('/');
            out.push_str(if is_api_word(seg) { seg } else { "<id>" });
        }
        if query {
            out.push_str("?<query>");
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// A path segment of the Matrix APIs that names no one: lower-case words,
/// versions and event types (`_matrix`, `client`, `v3`, `m.room.message`).
fn is_api_word(seg: &str) -> bool {
    seg.len() <= 40
        && seg.chars().next().is_none_or(|c| c.is_ascii_lowercase() || c == '_')
        && seg.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
}

/// Field names whose value is a device id, as the SDK writes them.
const DEVICE_FIELDS: [&str; 4] = ["device_id", "sender_device", "device", "DeviceId"];

/// The SDK's warnings can name a device (`device_id=ABCDEFGHIJ`) and its
/// keys (`curve25519_key="curve25519:...")`, megolm session ids): stable
/// handles on a visitor's phone across chats. A device id is hidden where
/// a field names it; any 43-character unpadded base64 token (the shape of
/// curve25519 and ed25519 keys and of session ids) is hidden wherever it is.
pub(crate) fn scrub_devices_and_keys(s: &str) -> String {
    let is_delim = |c: char| c.is_whitespace() || "\"'=:,;(){}[]<>".contains(c);
    let mut out = String::with_capacity(s.len());
    // Whether the last word named a device field, and whether a `=`, `:`
    // or `(` has come after it (quotes and spaces may follow).
    let mut field = false;
    let mut separated = false;
    let mut rest = s;
    while !rest.is_empty() {
        let end = rest.find(is_delim).unwrap_or(rest.len());
        if end == 0 {
            let c = rest.chars().next().unwrap_or(' ');
            match c {
                '=' | ':' | '(' => separated = true,
                '"' | '\'' | ' ' => {}
                _ => field = false,
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let token = &rest[..end];
        rest = &rest[end..];
        let base64_key = token.len() == 43 && token.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/');
        if base64_key {
            out.push_str("<key>");
        } else if field && separated && token == "Some" {
            // `device: Some(DeviceId("..."))`: the value is still to come.
            out.push_str(token);
            continue;
        } else if field && separated && token != "<id>" {
            out.push_str("<device>");
        } else {
            out.push_str(token);
        }
        field = DEVICE_FIELDS.contains(&token);
        separated = false;
    }
    out
}

fn scrub_ids(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    let mut boundary = true;
    while let Some(c) = chars.next() {
        let starts_id = boundary
            && matches!(c, '@' | '!' | '#' | '$')
            && chars.peek().is_some_and(|n| n.is_alphanumeric() || matches!(n, '_' | '=' | '-' | '.'));
        if starts_id {
            while chars
                .peek()
                .is_some_and(|n| !n.is_whitespace() && !matches!(n, '"' | '\'' | ',' | ')' | ']' | '}' | '>' | '\\'))
            {
                chars.next();
            }
            out.push_str("<id>");
            boundary = false;
            continue;
        }
        boundary = !c.is_alphanumeric();
        out.push(c);
    }
    out
}

/// An error, scrubbed of ids, for a log field.
pub(crate) fn scrub_err(e: &dyn std::fmt::Display) -> String {
    scrub(&e.to_string())
}

/// Hands the formatter a buffer per event and writes it scrubbed to stderr.
struct ScrubbedStderr;

impl<'a> MakeWriter<'a> for ScrubbedStderr {
    type Writer = ScrubWriter;
    fn make_writer(&'a self) -> ScrubWriter {
        ScrubWriter(Vec::with_capacity(256))
    }
}

/// One event's text; scrubbed and written when the formatter drops it.
struct ScrubWriter(Vec<u8>);

impl Write for ScrubWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ScrubWriter {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let line = scrub(&String::from_utf8_lossy(&self.0));
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::{filter_spec, scrub};

    #[test]
    fn scrub_hides_ids_in_urls_in_any_encoding() {
        let line = "error sending request for url (https://hs.example:8448/_matrix/client/v3/rooms/%21MwRzLDabc%3Ahs.example/send/m.room.message/m1701.5?user_id=%40visitor%3Ahs.example): 502";
        let s = scrub(line);
        assert_eq!(
            s,
            "error sending request for url (https://hs.example:8448/_matrix/client/v3/rooms/<id>/send/m.room.message/m1701.5?<query>): 502"
        );
        let s = scrub("GET http://127.0.0.1:8008/_matrix/client/v3/profile/%40alice%3Alocalhost/displayname failed");
        assert_eq!(s, "GET http://127.0.0.1:8008/_matrix/client/v3/profile/<id>/displayname failed");
        // Room version 12 ids, %-encoded, without a server part.
        let s = scrub("url: http://h/_matrix/client/v3/rooms/%21Ab_cD-eF/members \"x\"");
        assert_eq!(s, "url: http://h/_matrix/client/v3/rooms/<id>/members \"x\"");
        // Plain endpoints stay readable.
        let s = scrub("(http://127.0.0.1:35027/_matrix/client/versions)");
        assert_eq!(s, "(http://127.0.0.1:35027/_matrix/client/versions)");
    }

    #[test]
    fn scrub_hides_ids() {
        assert_eq!(
            scrub("User @alice:localhost not in room !AbC123:localhost (event $ev_1)"),
            "User <id> not in room <id> (event <id>)"
        );
        assert_eq!(scrub("M_FORBIDDEN: \"!xyz\" denied"), "M_FORBIDDEN: \"<id>\" denied");
        assert_eq!(scrub("user_id=\"@intake:localhost\" device"), "user_id=\"<id>\" device");
        assert_eq!(scrub("a@b or 5! times"), "a@b or 5! times");
        assert_eq!(scrub("2026-11-29T23:34:31Z  INFO intake_bot: ok"), "2026-11-29T23:34:31Z  INFO intake_bot: ok");
    }

    #[test]
    fn scrub_hides_encoded_ids_outside_urls() {
        let line = "WARN request failed path=/_matrix/client/v3/rooms/%21MwRzLDabc%3Ahs.example/members \
                    user=%40visitor-7%3Ahs.example alias %23place%3Ahs event %24Ev_1-x";
        let s = scrub(line);
        for id in ["MwRzLDabc", "visitor-7", "place", "Ev_1-x", "hs.example"] {
            assert!(!s.contains(id), "{id} left in {s}");
        }
        assert!(s.contains("/rooms/<id>/members") && s.contains("user=<id>"), "{s}");
        // A lone sign is kept.
        assert_eq!(scrub("100%21 done"), "100%21 done");
        assert_eq!(scrub("50% %21"), "50% %21");
    }

    #[test]
    fn scrub_hides_devices_and_keys() {
        // A line the SDK writes at warn (seen in a real run).
        let line = "WARN matrix_sdk_crypto::identities::manager: Our own device might have been deleted \
                    user_id=\"@intake:localhost\" device_id=\"ZBSEUBMXYJ\" \
                    curve25519_key=\"curve25519:loi0WmHegVxD860BNOyTq1sR3y+Aa/9CCmXl0kgZZHQ\"";
        let got = scrub(line);
        assert_eq!(
            got,
            "WARN matrix_sdk_crypto::identities::manager: Our own device might have been deleted \
             user_id=\"<id>\" device_id=\"<device>\" curve25519_key=\"curve25519:<key>\""
        );
        assert_eq!(
            scrub("sender_device=ABCDEFGHIJ session_id=\"0123456789abcdefghijABCDEFGHIJ0123456789abc\""),
            "sender_device=<device> session_id=\"<key>\""
        );
        assert_eq!(scrub("device: Some(DeviceId(\"QWERTYUIOP\"))"), "device: Some(<device>(\"<device>\"))");
        assert_eq!(scrub("DeviceId(\"QWERTYUIOP\")"), "DeviceId(\"<device>\")");
        // Ordinary words stay, also after a device field was closed.
        assert_eq!(
            scrub("device_id=X, then the room key was shared"),
            "device_id=<device>, then the room key was shared"
        );
        assert_eq!(scrub("no device was found"), "no device was found");
    }

    #[test]
    fn bare_levels_stay_with_the_bot() {
        let base = "warn,matrix_sdk::http_client=off,matrix_sdk_crypto::backups=off";
        assert_eq!(filter_spec(None), format!("{base},intake_bot=info"));
        assert_eq!(filter_spec(Some("trace")), format!("{base},intake_bot=trace"));
        assert_eq!(filter_spec(Some("debug,matrix_sdk=info")), format!("{base},intake_bot=debug,matrix_sdk=info"));
    }
}
