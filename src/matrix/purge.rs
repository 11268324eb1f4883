//! Optional room purge: after a case ends and the bot has left, the room is
//! deleted and purged from the homeserver through Synapse's Delete Room
//! admin API (v2, which purges in the background), after a grace delay.
//!
//! The queue of purges still due is kept in the SDK's store, sealed under
//! the store passphrase (the SDK stores custom values as they are given),
//! so a restart within the delay purges the room all the same
//! ([`Purger::resume`] at start) and the disk alone shows no room id.

use std::sync::Arc;
use std::time::Duration;

use matrix_sdk::Client;
use matrix_sdk::ruma::OwnedRoomId;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::admin::{Admin, PurgeStatus};
use crate::clock::unix_now;
use crate::store::Sealer;

/// How often a purge's status is asked for.
const PURGE_POLL: Duration = Duration::from_secs(2);
/// How long a running purge is followed before the next start takes over.
const PURGE_FOLLOW_LIMIT: Duration = Duration::from_secs(600);
/// Purge requests per room before the next start takes over.
const PURGE_ATTEMPTS: u32 = 5;

/// The SDK store key of the queue.
const QUEUE_KEY: &[u8] = b"intake-bot.purge-queue.v1";

/// One purge still due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Due {
    room: OwnedRoomId,
    /// Unix seconds.
    at: i64,
    /// The case id, for the log ("refused" for rooms that got no case).
    case: String,
}

/// Purges finished rooms after a grace delay, restart-safe.
#[derive(Clone)]
pub struct Purger {
    admin: Admin,
    delay: Duration,
    client: Client,
    sealer: Sealer,
    /// Serializes the queue's read-modify-writes.
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Purger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Purger { .. }")
    }
}

impl Purger {
    pub(crate) fn new(admin: Admin, delay: Duration, client: Client, sealer: Sealer) -> Purger {
        Purger { admin, delay, client, sealer, lock: Arc::default() }
    }

    /// Queues the room's purge (durably) and carries it out after the
    /// grace delay. Logs by case id.
    pub async fn schedule(&self, room: OwnedRoomId, case: &str) {
        let secs = i64::try_from(self.delay.as_secs()).unwrap_or(i64::MAX);
        let due = Due { room, at: unix_now().saturating_add(secs), case: case.to_owned() };
        {
            let _guard = self.lock.lock().await;
            let mut queue = self.load().await;
            if !queue.iter().any(|d| d.room == due.room) {
                queue.push(due.clone());
                self.save(&queue).await;
            }
        }
        info!(case = %case, delay_s = self.delay.as_secs(), "room purge scheduled");
        let me = self.clone();
        tokio::spawn(async move { me.carry_out(due).await });
    }

    /// At start: carries out the purges that were due or pending when the
    /// bot stopped. Returns how many there were.
    pub async fn resume(&self) -> usize {
        let queue = {
            let _guard = self.lock.lock().await;
            self.load().await
        };
        if !queue.is_empty() {
            info!(rooms = queue.len(), "room purges pending from before the restart");
        }
        let n = queue.len();
        for due in queue {
            let me = self.clone();
            tokio::spawn(async move { me.carry_out(due).await });
        }
        n
    }

    /// How many purges are still queued.
    pub async fn pending(&self) -> usize {
        let _guard = self.lock.lock().await;
        self.load().await.len()
    }

    async fn carry_out(&self, due: Due) {
        let wait = u64::try_from(due.at.saturating_sub(unix_now())).unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(wait)).await;
        if !self.purge_until_done(&due.case, &due.room).await {
            // Left in the queue: the next start tries again.
            return;
        }
        let _guard = self.lock.lock().await;
        let mut queue = self.load().await;
        queue.retain(|d| d.room != due.room);
        self.save(&queue).await;
    }

    /// Asks for the purge and follows it to its end, asking again when the
    /// homeserver gives up on it (a room left on the server would break the
    /// promise that it is gone). False when it did not finish: the caller
    /// keeps it queued for the next start.
    async fn purge_until_done(&self, case: &str, room: &OwnedRoomId) -> bool {
        for attempt in 1..=PURGE_ATTEMPTS {
            let delete_id = match self.admin.purge_room(room).await {
                Ok(Some(id)) => {
                    info!(case = %case, attempt, "room purge requested from the homeserver");
                    id
                }
                Ok(None) => {
                    info!(case = %case, "room purged from the homeserver (it knows the room no more)");
                    return true;
                }
                Err(e) => {
                    warn!(case = %case, error = %crate::logging::scrub_err(&format!("{e:#}")), "room purge failed");
                    return false;
                }
            };
            let deadline = tokio::time::Instant::now() + PURGE_FOLLOW_LIMIT;
            let status = loop {
                tokio::time::sleep(PURGE_POLL).await;
                match self.admin.purge_status(&delete_id).await {
                    Ok(PurgeStatus::Running) if tokio::time::Instant::now() < deadline => {}
                    Ok(s) => break Ok(s),
                    Err(e) => break Err(e),
                }
            };
            match status {
                Ok(PurgeStatus::Complete) => {
                    info!(case = %case, "room purged from the homeserver");
                    return true;
                }
                Ok(PurgeStatus::Failed) => {
                    warn!(case = %case, attempt, "the homeserver's room purge failed; asking again");
                }
                Ok(PurgeStatus::Running) => {
                    warn!(case = %case, "the homeserver's room purge is still running after 10 minutes; tried again at the next start");
                    return false;
                }
                Err(e) => {
                    warn!(case = %case, error = %crate::logging::scrub_err(&format!("{e:#}")), "could not follow the room purge; tried again at the next start");
                    return false;
                }
            }
            tokio::time::sleep(PURGE_POLL * attempt).await;
        }
        warn!(case = %case, attempts = PURGE_ATTEMPTS, "the homeserver's room purge kept failing; tried again at the next start");
        false
    }

    async fn load(&self) -> Vec<Due> {
        match self.client.state_store().get_custom_value(QUEUE_KEY).await {
            Ok(Some(sealed)) => match self.sealer.open(&sealed).and_then(|plain| serde_json::from_slice(&plain).ok()) {
                Some(queue) => queue,
                None => {
                    warn!("the room purge queue is unreadable (another passphrase?); starting it afresh");
                    Vec::new()
                }
            },
            Ok(None) => Vec::new(),
            Err(e) => {
                warn!(error = %crate::logging::scrub_err(&e), "reading the room purge queue failed");
                Vec::new()
            }
        }
    }

    async fn save(&self, queue: &[Due]) {
        let result = match serde_json::to_vec(queue) {
            Ok(bytes) => {
                self.client.state_store().set_custom_value(QUEUE_KEY, self.sealer.seal(&bytes)).await.map(drop)
            }
            Err(e) => {
                warn!(error = %e, "encoding the room purge queue failed");
                return;
            }
        };
        if let Err(e) = result {
            warn!(error = %crate::logging::scrub_err(&e), "saving the room purge queue failed");
        }
    }
}
