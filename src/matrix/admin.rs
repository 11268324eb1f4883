//! Synapse's admin API, with the helpline's dedicated admin token: room
//! purges, single-use registration tokens for the web chat, and deleting
//! (deactivating with erase) the web chat's throwaway accounts.
//!
//! Logs never carry a user or room id: callers log by case id or by count.

use std::time::Duration;

use anyhow::{Context, Result};
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde::Deserialize;

/// A client of the admin API.
#[derive(Clone)]
pub struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admin { .. }")
    }
}

/// Where a room purge stands on the homeserver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeStatus {
    /// Scheduled, shutting the room down, or purging.
    Running,
    /// The room is gone.
    Complete,
    /// The homeserver gave up (Synapse on SQLite sometimes does, with a
    /// foreign-key error, when it purges while the kicks it just sent are
    /// still being processed); asking again works.
    Failed,
}

/// One account as the admin API lists it.
#[derive(Debug, Clone)]
pub struct Account {
    pub user: OwnedUserId,
    /// Unix seconds.
    pub created: i64,
}

impl Admin {
    /// A client for the homeserver at `homeserver_url` with `token`.
    pub fn new(homeserver_url: &str, token: String) -> Result<Admin> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        Ok(Admin { http, base: homeserver_url.trim_end_matches('/').to_owned(), token })
    }

    /// Asks the homeserver to delete and purge a room (in the background);
    /// returns the id to ask [`Admin::purge_status`] with, or `None` when
    /// the homeserver knows no such room (already purged).
    pub async fn purge_room(&self, room: &OwnedRoomId) -> Result<Option<String>> {
        #[derive(Deserialize)]
        struct Started {
            delete_id: String,
        }
        let url = format!("{}/_synapse/admin/v2/rooms/{}", self.base, urlencode(room.as_str()));
        let r =
            self.http.delete(&url).bearer_auth(&self.token).json(&serde_json::json!({ "purge": true, "block": false }));
        let resp = r.send().await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let started: Started = check(resp).await?.json().await.context("the homeserver's purge answer")?;
        Ok(Some(started.delete_id))
    }

    /// Where a purge started by [`Admin::purge_room`] stands.
    pub async fn purge_status(&self, delete_id: &str) -> Result<PurgeStatus> {
        #[derive(Deserialize)]
        struct Status {
            status: String,
        }
        let url = format!("{}/_synapse/admin/v2/rooms/delete_status/{}", self.base, urlencode(delete_id));
        let resp = check(self.http.get(&url).bearer_auth(&self.token).send().await?).await?;
        let status: Status = resp.json().await.context("the homeserver's purge status")?;
        Ok(match status.status.as_str() {
            "complete" => PurgeStatus::Complete,
            "failed" => PurgeStatus::Failed,
            _ => PurgeStatus::Running,
        })
    }

    /// A new registration token that works once and lapses after `valid`.
    pub async fn registration_token(&self, valid: Duration, now_ms: i64) -> Result<String> {
        #[derive(Deserialize)]
        struct Minted {
            token: String,
        }
        let expiry = now_ms.saturating_add(i64::try_from(valid.as_millis()).unwrap_or(i64::MAX));
        let url = format!("{}/_synapse/admin/v1/registration_tokens/new", self.base);
        let body = serde_json::json!({ "uses_allowed": 1, "expiry_time": expiry, "length": 32 });
        let resp = check(self.http.post(&url).bearer_auth(&self.token).json(&body).send().await?).await?;
        let minted: Minted = resp.json().await.context("the homeserver's registration token answer")?;
        Ok(minted.token)
    }

    /// Deactivates an account and marks its messages erased for anyone who
    /// has not seen them yet. An account already gone counts as done.
    pub async fn deactivate(&self, user: &UserId) -> Result<()> {
        let url = format!("{}/_synapse/admin/v1/deactivate/{}", self.base, urlencode(user.as_str()));
        let resp =
            self.http.post(&url).bearer_auth(&self.token).json(&serde_json::json!({ "erase": true })).send().await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        check(resp).await.map(drop)
    }

    /// The active accounts whose localpart starts with `prefix`.
    pub async fn accounts_with_prefix(&self, prefix: &str) -> Result<Vec<Account>> {
        #[derive(Deserialize)]
        struct Page {
            users: Vec<Listed>,
            next_token: Option<serde_json::Value>,
        }
        #[derive(Deserialize)]
        struct Listed {
            name: String,
            #[serde(default)]
            creation_ts: i64,
            #[serde(default)]
            deactivated: bool,
        }
        let mut out = Vec::new();
        let mut from = String::from("0");
        // Bounded: a flood of accounts is handled over several rounds.
        for _ in 0..20 {
            let url = format!(
                "{}/_synapse/admin/v2/users?from={from}&limit=200&guests=false&deactivated=false&name={}",
                self.base,
                urlencode(prefix)
            );
            let resp = check(self.http.get(&url).bearer_auth(&self.token).send().await?).await?;
            let page: Page = resp.json().await.context("the homeserver's account list")?;
            for u in page.users {
                let Ok(user) = UserId::parse(u.name.as_str()) else { continue };
                // `name` also matches display names and the middle of localparts.
                if u.deactivated || !user.localpart().starts_with(prefix) {
                    continue;
                }
                // Synapse has answered in seconds and in milliseconds over the years.
                let created = if u.creation_ts > 100_000_000_000 { u.creation_ts / 1000 } else { u.creation_ts };
                out.push(Account { user, created });
            }
            match page.next_token {
                Some(serde_json::Value::String(s)) => from = s,
                Some(serde_json::Value::Number(n)) => from = n.to_string(),
                _ => break,
            }
        }
        Ok(out)
    }
}

/// The response if it succeeded, else an error with its status and errcode
/// (never the URL, which names users and rooms).
async fn check(resp: reqwest::Response) -> Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let code = resp
        .json::<serde_json::Value>()
        .await
        .ok()
        .and_then(|v| v.get("errcode").and_then(|c| c.as_str()).map(str::to_owned))
        .unwrap_or_default();
    anyhow::bail!("the homeserver answered {status} {code}")
}

/// Percent-encodes everything but unreserved characters.
pub fn urlencode(s: &str) -> String {
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
