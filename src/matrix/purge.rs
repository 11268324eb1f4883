//! Optional room purge: after a case ends and the bot has left, the room is
//! deleted and purged from the homeserver through Synapse's Delete Room
//! admin API (v2, which purges in the background).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use matrix_sdk::ruma::OwnedRoomId;
use tracing::{info, warn};

/// Calls the Delete Room admin API for one room.
#[derive(Clone)]
pub struct Purger {
    http: reqwest::Client,
    base: String,
    token: String,
    delay: Duration,
}

impl std::fmt::Debug for Purger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Purger { .. }")
    }
}

impl Purger {
    /// Reads the admin token from `token_file`.
    pub fn new(homeserver_url: &str, token_file: &Path, delay: Duration) -> Result<Purger> {
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("reading `privacy.purge_admin_token_file` ({})", token_file.display()))?
            .trim()
            .to_owned();
        anyhow::ensure!(!token.is_empty(), "`privacy.purge_admin_token_file` ({}) is empty", token_file.display());
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        Ok(Purger { http, base: homeserver_url.trim_end_matches('/').to_owned(), token, delay })
    }

    /// After the grace delay, asks the homeserver to delete and purge the
    /// room. Logs by case id.
    pub async fn purge(&self, room: OwnedRoomId, case: &str) {
        info!(case = %case, delay_s = self.delay.as_secs(), "room purge scheduled");
        tokio::time::sleep(self.delay).await;
        let url = format!("{}/_synapse/admin/v2/rooms/{}", self.base, urlencode(room.as_str()));
        let resp = self
            .http
            .delete(&url)
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "purge": true, "block": false }))
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => info!(case = %case, "room purge requested from the homeserver"),
            Ok(r) => warn!(case = %case, status = %r.status(), "the homeserver refused the room purge"),
            Err(e) => warn!(case = %case, error = %crate::logging::scrub_err(&e), "room purge request failed"),
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_room_ids() {
        assert_eq!(super::urlencode("!abc:example.org"), "%21abc%3Aexample.org");
    }
}
