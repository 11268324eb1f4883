//! Optional room purge: after a case ends and the bot has left, the room is
//! deleted and purged from the homeserver through Synapse's Delete Room
//! admin API (v2, which purges in the background).

use std::time::Duration;

use matrix_sdk::ruma::OwnedRoomId;
use tracing::{info, warn};

use super::admin::Admin;

/// Purges finished rooms after a grace delay.
#[derive(Clone, Debug)]
pub struct Purger {
    admin: Admin,
    delay: Duration,
}

impl Purger {
    pub fn new(admin: Admin, delay: Duration) -> Purger {
        Purger { admin, delay }
    }

    /// After the grace delay, asks the homeserver to delete and purge the
    /// room. Logs by case id.
    pub async fn purge(&self, room: OwnedRoomId, case: &str) {
        info!(case = %case, delay_s = self.delay.as_secs(), "room purge scheduled");
        tokio::time::sleep(self.delay).await;
        match self.admin.purge_room(&room).await {
            Ok(()) => info!(case = %case, "room purge requested from the homeserver"),
            Err(e) => warn!(case = %case, error = %crate::logging::scrub_err(&format!("{e:#}")), "room purge failed"),
        }
    }
}
