//! Admission of a new visitor room: join it, check that it is fit for an
//! intake (encrypted or encryptable, one-to-one), and open a case, or
//! explain and leave.
//!
//! Joining and checking run in a spawned task per room, so a slow join
//! never holds the worker; the verdict comes back over a channel and the
//! worker opens the case in order with everything else.

use std::time::Duration;

use matrix_sdk::ruma::OwnedUserId;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::{EncryptionState, Room, RoomMemberships};
use rand::RngCore;
use tracing::{debug, info, warn};

use super::Worker;
use super::now;
use super::outbox::{Job, spawn_sender};
use crate::desk::Event;
use crate::intake::Settings;
use crate::intake::text::TextKey;
use crate::matrix::{JoinWatch, scrub_err};

/// How long a new room's first message waits for the sync that brings the
/// join. Longer only when the homeserver is slow or away; then the SDK's
/// own waits take over.
const JOIN_SYNC_LIMIT: Duration = Duration::from_secs(20);

/// A random case id, never derived from any Matrix id.
fn new_case_id() -> String {
    let mut b = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// What preparing a new visitor room found.
#[derive(Debug)]
pub(super) enum Verdict {
    /// Encrypted (already, or the bot turned it on): start the intake.
    Ready,
    /// Not encrypted and the bot may not encrypt it: to be recorded,
    /// explained and left.
    Unencrypted,
    /// More than one visitor: explained and left.
    Group,
    /// Could not join.
    Failed,
}

impl Worker {
    /// Starts joining and checking a room the bot was invited to. The
    /// invite shows up in every sync until the join lands: each room is
    /// prepared once.
    pub(super) fn admit(&mut self, room: Room) {
        let key = self.keyer.key(room.room_id().as_str());
        if self.desk.cases.contains_key(&key) || !self.preparing.insert(key) {
            return;
        }
        let tx = self.prepared_tx.clone();
        let require = self.require_encryption;
        let counsellors = self.counsellors.clone();
        let settings = self.desk.settings.clone();
        let joins = self.joins.clone();
        tokio::spawn(async move {
            let verdict = prepare(&room, require, &counsellors, &settings, &joins).await;
            let _ = tx.send((room, verdict)).await;
        });
    }

    /// Opens the case of a room that passed, or records and leaves one
    /// that did not.
    pub(super) async fn prepared(&mut self, room: Room, verdict: Verdict) {
        let key = self.keyer.key(room.room_id().as_str());
        self.preparing.remove(&key);
        if self.desk.cases.contains_key(&key) {
            return;
        }
        let case_id = new_case_id();
        match verdict {
            Verdict::Ready => {
                self.rooms.insert(key.clone(), room);
                info!(case = %case_id, "new case");
                self.metrics.case_started();
                self.dispatch(Event::Opened { key, case_id }).await;
            }
            Verdict::Unencrypted => {
                info!(case = %case_id, "room not encrypted and cannot be; explaining and leaving");
                // The record is durable before anything is visible: a stop
                // right after the explanation must not lose it.
                let rec = self.desk.refuse_unencrypted(now(), case_id.clone());
                self.record(&rec).await;
                let text = self.desk.settings.say(self.desk.settings.staff_language(), TextKey::NoEncryption, &[]);
                let q = spawn_sender(room, case_id.clone(), self.gate.clone(), &mut self.senders);
                let _ = q.send(Job::Say(text));
                let _ = q.send(Job::Leave { case_id, purger: None });
            }
            Verdict::Group => info!("invited to a group room; explained and left"),
            Verdict::Failed => {}
        }
    }
}

/// Joins a visitor's room and checks it is fit for an intake: encrypted (or
/// encryptable) and one-to-one. Explains and leaves a group room; an
/// unencrypted one is left to the worker, which records it first.
async fn prepare(
    room: &Room,
    require_encryption: bool,
    counsellors: &[OwnedUserId],
    settings: &Settings,
    joins: &JoinWatch,
) -> Verdict {
    let join = async {
        let mut delay = Duration::from_millis(500);
        let mut tries = 0;
        loop {
            match room.join().await {
                Ok(()) => return Ok(()),
                Err(e) if tries + 1 >= 8 => return Err(e),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    };
    // No message goes into the room before the sync that brings the join
    // (and the key query for its members) is through: see JoinWatch.
    let synced = match joins.join_then_wait(room.room_id(), JOIN_SYNC_LIMIT, join).await {
        Ok(((), synced)) => synced,
        Err(e) => {
            warn!(error = %scrub_err(&e), "could not join a visitor's room");
            return Verdict::Failed;
        }
    };
    let lang = settings.staff_language().to_owned();
    // After that sync the client holds the room's whole state (members are
    // not lazy-loaded): two requests per new chat fewer for a busy
    // homeserver. Without it, ask.
    let (visitors, encrypted) = if synced {
        (
            count_visitors(
                &room.members_no_sync(RoomMemberships::JOIN | RoomMemberships::INVITE).await,
                room,
                counsellors,
            ),
            matches!(room.encryption_state(), EncryptionState::Encrypted),
        )
    } else {
        (
            visitors_in(room, counsellors).await,
            matches!(room.latest_encryption_state().await, Ok(EncryptionState::Encrypted)),
        )
    };
    if visitors > 1 {
        let text = settings.say(&lang, TextKey::GroupRoom, &[]);
        let _ = room.send(RoomMessageEventContent::notice_plain(text)).await;
        leave(room).await;
        return Verdict::Group;
    }
    if encrypted || !require_encryption {
        return Verdict::Ready;
    }
    match room.enable_encryption().await {
        Ok(()) => Verdict::Ready,
        Err(e) => {
            // The worker records it, then explains and leaves.
            debug!(error = %scrub_err(&e), "turning on encryption was refused");
            Verdict::Unencrypted
        }
    }
}

/// How many members (joined or invited) are neither the bot nor a
/// configured counsellor.
pub(super) async fn visitors_in(room: &Room, counsellors: &[OwnedUserId]) -> usize {
    count_visitors(&room.members(RoomMemberships::JOIN | RoomMemberships::INVITE).await, room, counsellors)
}

/// Counts the members who are neither the bot nor a counsellor; a failed
/// read counts as one visitor (the room is not taken for a group).
fn count_visitors(
    members: &matrix_sdk::Result<Vec<matrix_sdk::room::RoomMember>>,
    room: &Room,
    counsellors: &[OwnedUserId],
) -> usize {
    let me = room.own_user_id();
    match members {
        Ok(m) => m.iter().filter(|m| m.user_id() != me && !counsellors.iter().any(|c| c == m.user_id())).count(),
        Err(e) => {
            warn!(error = %scrub_err(e), "could not read a room's members");
            1
        }
    }
}

async fn leave(room: &Room) {
    if room.leave().await.is_ok() {
        let _ = room.forget().await;
    }
}
