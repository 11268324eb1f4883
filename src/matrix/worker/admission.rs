//! Admission of a new visitor room: look at it before joining, join it,
//! look again, and open a case, or leave with at most one short notice.
//!
//! Anyone on any server can invite the bot (DESIGN.md, privacy rule 8).
//! Before joining, the invite's stripped state and the room summary tell
//! the join rule, whether history is world-readable and how many have
//! joined: public, knock, restricted and world-readable rooms and rooms
//! that others have joined are declined unseen, so a room of thousands
//! costs one request and no member list. After joining, the member list
//! must hold only the inviter (the visitor), the bot and counsellors,
//! joined, invited or knocking. Where it may, the bot sets history
//! visibility to `joined`, so that room keys go to joined members only and
//! a pending invitee never gets one. Over a cap of `[limits]`, a room gets
//! one short notice and no case.
//!
//! Joining and checking run in a spawned task per room (a bounded number
//! at once, so a flood of invites cannot crowd out the conversations in
//! hand); the verdict comes back over a channel and the worker opens the
//! case in order with everything else.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use matrix_sdk::ruma::api::client::room::get_summary;
use matrix_sdk::ruma::events::StateEventType;
use matrix_sdk::ruma::events::room::history_visibility::HistoryVisibility;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::room::{JoinRule, JoinRuleSummary};
use matrix_sdk::ruma::{OwnedUserId, ServerName, UserId};
use matrix_sdk::{EncryptionState, Room, RoomMemberships};
use rand::RngCore;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info, warn};

use super::Worker;
use super::now;
use super::outbox::{Job, spawn_sender};
use crate::config::LimitsConfig;
use crate::desk::Event;
use crate::intake::text::TextKey;
use crate::matrix::purge::Purger;
use crate::matrix::{JoinWatch, scrub_err};

/// How long a room the room summary could not be read for (or a refused
/// group) waits for the sync that brings the join before the bot looks at
/// it again. Longer only when the homeserver is slow or away.
const JOIN_SYNC_LIMIT: Duration = Duration::from_secs(20);

/// How long the change of history visibility (in the background, nobody
/// waits for it) waits for the sync that brings the join and with it the
/// power levels. Under load that sync can take well over 20 s (at 200 new
/// chats a minute on 2 cores, 190 of 200 rooms missed a 20 s limit and
/// kept history visible to invitees).
const VISIBILITY_SYNC_LIMIT: Duration = Duration::from_secs(600);

/// How many rooms are looked at and joined at once (the room summary and
/// the join request; see [`prepare`]). This bounds the bot's requests in
/// flight for new rooms, not its work: with 8 places held until the case
/// opened, a saturated homeserver let in 10-25 new visitors a minute while
/// 100-200 arrived (docs/benchmarks.md, issue #17).
pub(super) const ADMISSIONS_AT_ONCE: usize = 32;

/// How many rooms over a cap get their one notice at once (a lane of their
/// own, beside the admissions).
pub(super) const REFUSALS_AT_ONCE: usize = 2;

/// With this many refusals waiting, further rooms over a cap are declined
/// without a notice.
const REFUSALS_WAITING: usize = 100;

/// How long the room summary may take before the bot joins without it.
const SUMMARY_LIMIT: Duration = Duration::from_secs(10);

/// How long the bot waits for its `joined` history visibility to come
/// back before it says anything in a room it is refusing.
const VISIBILITY_ECHO_LIMIT: Duration = Duration::from_secs(5);

/// A random case id, never derived from any Matrix id.
fn new_case_id() -> String {
    let mut b = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// A random outcome record id, drawn apart from the case id so the two
/// cannot be linked (privacy rule 1).
pub(super) fn new_record_id() -> String {
    let mut b = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Why a room gets no case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Anyone may join or knock (join rule public, knock or restricted).
    Open,
    /// Its history is world-readable.
    WorldReadable,
    /// Others besides the inviter have joined, are invited or knock.
    Group,
    /// The inviter's server is not in `matrix.allowed_servers`.
    Server,
    /// A cap of `[limits]` was reached.
    Cap(Cap),
}

impl Refusal {
    /// The label of the refusal in logs and metrics.
    pub(super) fn label(self) -> &'static str {
        match self {
            Refusal::Open => "open_room",
            Refusal::WorldReadable => "world_readable",
            Refusal::Group => "group",
            Refusal::Server => "server_not_allowed",
            Refusal::Cap(Cap::User) => "cap_user",
            Refusal::Cap(Cap::Server) => "cap_server",
            Refusal::Cap(Cap::Total) => "cap_total",
        }
    }
}

/// Which cap of `[limits]` a new room would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cap {
    /// `max_open_cases_per_user`
    User,
    /// `max_open_cases_per_server`
    Server,
    /// `max_open_cases`
    Total,
}

/// What preparing a new visitor room found.
#[derive(Debug)]
pub(super) enum Verdict {
    /// Encrypted (already, or the bot turned it on): start the intake.
    Ready,
    /// Not encrypted and the bot may not encrypt it: to be recorded,
    /// explained and left.
    Unencrypted,
    /// No case: declined unseen, or left with at most one short notice.
    Refused(Refusal),
    /// Could not join.
    Failed,
}

/// What an admission task needs from the worker.
struct Admission {
    require_encryption: bool,
    counsellors: Arc<[OwnedUserId]>,
    joins: Arc<JoinWatch>,
    /// The cap a room is over and its one notice, else `None`.
    notice: Option<(Cap, String)>,
    /// The one notice of a room that turned out to be a group.
    group_notice: String,
    /// Purges a refused room the bot joined (it holds the bot's notice);
    /// rooms declined unseen hold nothing of the bot.
    purger: Option<Purger>,
}

impl Worker {
    /// Starts looking at a room the bot was invited to. The invite shows up
    /// in every sync until the join lands: each room is looked at once.
    pub(super) fn admit(&mut self, room: Room, inviter: OwnedUserId) {
        let key = self.keyer.key(room.room_id().as_str());
        if self.desk.cases.contains_key(&key) || self.preparing.contains(&key) {
            return;
        }
        self.preparing.insert(key.clone());
        let lang = self.desk.settings.staff_language().to_owned();
        let refusal = if self.allowed_servers.is_empty()
            || self.allowed_servers.iter().any(|s| s == inviter.server_name().as_str())
        {
            self.over_cap(&inviter).map(Refusal::Cap)
        } else {
            Some(Refusal::Server)
        };
        let notice = match refusal {
            Some(Refusal::Cap(cap)) => {
                let text = if cap == Cap::User { TextKey::BusyOneChat } else { TextKey::Busy };
                Some((cap, self.desk.settings.say(&lang, text, &[])))
            }
            _ => None,
        };
        if refusal.is_none() {
            // Counts towards the caps from now on, while being joined.
            self.visitors.insert(key, inviter.clone());
        }
        let tx = self.prepared_tx.clone();
        // Rooms that may become cases and rooms that get no case queue
        // apart: a flood over the caps never delays a real visitor's chat.
        let lane = if refusal.is_none() { &self.admissions } else { &self.refusals };
        let permits = lane.clone();
        // With too many refusals waiting, the rest are declined unseen
        // (the notice is "at most one"): the bot's work per refused room
        // stays minimal and its memory bounded.
        let crowded = refusal.is_some() && self.refusals_waiting.load(Ordering::Relaxed) >= REFUSALS_WAITING;
        let waiting = self.refusals_waiting.clone();
        if refusal.is_some() {
            waiting.fetch_add(1, Ordering::Relaxed);
        }
        let admission = Admission {
            require_encryption: self.require_encryption,
            counsellors: self.counsellors.clone(),
            joins: self.joins.clone(),
            notice,
            group_notice: self.desk.settings.say(&lang, TextKey::GroupRoom, &[]),
            purger: self.purger.clone(),
        };
        tokio::spawn(async move {
            let verdict = match (refusal, permits.acquire_owned().await) {
                (_, Err(_)) => Verdict::Failed,
                (Some(why), Ok(_permit)) if why == Refusal::Server || crowded => {
                    decline(&room).await;
                    Verdict::Refused(why)
                }
                // A room that may become a case gives its place back once
                // joined; a refused one keeps it until its notice is out
                // (the refusal lane's bound).
                (None, Ok(permit)) => prepare(&room, &inviter, &admission, Some(permit)).await,
                (Some(_), Ok(_permit)) => prepare(&room, &inviter, &admission, None).await,
            };
            if refusal.is_some() {
                waiting.fetch_sub(1, Ordering::Relaxed);
            }
            let _ = tx.send((room, verdict)).await;
        });
    }

    /// Which cap a new room of `inviter` would pass, if any. Rooms being
    /// joined count with the open cases.
    fn over_cap(&self, inviter: &UserId) -> Option<Cap> {
        let own = self.client.user_id().map(|u| u.server_name());
        cap_for(self.visitors.values(), inviter, own, &self.limits)
    }

    /// Opens the case of a room that passed, or records and leaves one
    /// that may not be encrypted.
    pub(super) async fn prepared(&mut self, room: Room, verdict: Verdict) {
        let key = self.keyer.key(room.room_id().as_str());
        self.preparing.remove(&key);
        if self.desk.cases.contains_key(&key) {
            return;
        }
        if !matches!(verdict, Verdict::Ready) {
            self.visitors.remove(&key);
        }
        let case_id = new_case_id();
        match verdict {
            Verdict::Ready => {
                self.rooms.insert(key.clone(), room);
                info!(case = %case_id, "new case");
                self.metrics.case_started();
                self.dispatch(Event::Opened { key: key.clone(), case_id, record_id: new_record_id() }).await;
                self.tell_source(&key);
            }
            Verdict::Unencrypted => {
                info!(case = %case_id, "room not encrypted and cannot be; explaining and leaving");
                // The record is durable before anything is visible: a stop
                // right after the explanation must not lose it.
                let rec = self.desk.refuse_unencrypted(now(), case_id.clone(), new_record_id());
                self.record(&case_id, rec);
                let text = self.desk.settings.say(self.desk.settings.staff_language(), TextKey::NoEncryption, &[]);
                let guard = Some(self.counsellors.clone());
                let q = spawn_sender(room, case_id.clone(), guard, &mut self.senders);
                let _ = q.send(Job::Say(text));
                let _ = q.send(Job::Leave {
                    case_id,
                    purger: self.purger.clone().map(Box::new),
                    retire: None,
                    redact: false,
                });
            }
            Verdict::Refused(why) => {
                info!(reason = why.label(), "room refused; no case");
                self.metrics.room_refused(why.label());
            }
            Verdict::Failed => {}
        }
    }

    /// After a restart: the visitor of each restored case, from the room's
    /// members as the client knows them (memory only, as before).
    pub(super) async fn learn_visitors(&mut self) {
        for (key, room) in self.rooms.clone() {
            let me = room.own_user_id();
            if let Ok(members) = room.members_no_sync(RoomMemberships::JOIN).await
                && let Some(v) =
                    members.iter().map(|m| m.user_id()).find(|u| *u != me && !self.counsellors.iter().any(|c| c == u))
            {
                self.visitors.insert(key.clone(), v.to_owned());
                self.tell_source(&key);
            }
        }
    }
}

/// Which cap of `limits` a new room of `inviter` would pass, given the
/// visitors of the open cases (and rooms being joined): per account, per
/// homeserver (not the bot's own, `own`: the web chat's accounts count only
/// in all), then in all.
fn cap_for<'a>(
    open: impl Iterator<Item = &'a OwnedUserId> + Clone,
    inviter: &UserId,
    own: Option<&ServerName>,
    limits: &LimitsConfig,
) -> Option<Cap> {
    if open.clone().filter(|v| *v == inviter).count() >= limits.max_open_cases_per_user {
        return Some(Cap::User);
    }
    let server = inviter.server_name();
    if Some(server) != own
        && open.clone().filter(|v| v.server_name() == server).count() >= limits.max_open_cases_per_server
    {
        return Some(Cap::Server);
    }
    (open.count() >= limits.max_open_cases).then_some(Cap::Total)
}

/// Looks at a room before and after joining it (see the module doc);
/// joins only a room that may become a case, and leaves any other.
///
/// `permit`, a place among [`ADMISSIONS_AT_ONCE`], is held for the room
/// summary and the join, the homeserver's work, and given back once the
/// join is answered, so that a slow sync does not keep the next visitors out.
async fn prepare(room: &Room, inviter: &UserId, a: &Admission, permit: Option<OwnedSemaphorePermit>) -> Verdict {
    let summary_read = match refuse_unseen(room, inviter).await {
        Err(why) => {
            decline(room).await;
            return Verdict::Refused(why);
        }
        Ok(read) => read,
    };
    let client = room.client();
    // Watched from before the join, so that its sync is caught however
    // fast it comes (see JoinWatch).
    let mut join_synced = a.joins.expect(room.room_id());
    let join = async move {
        let _permit = permit;
        let mut delay = Duration::from_millis(500);
        let mut tries = 0;
        loop {
            // The SDK's own `join_room_by_id` would add the room to the
            // bot's `m.direct` account data on the homeserver, with the
            // visitor's user id (patched in: vendor/README.md).
            match client.join_room_by_id_not_direct(room.room_id()).await {
                Ok(_) => return Ok(()),
                Err(e) if tries + 1 >= 8 => return Err(e),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    };
    if let Err(e) = join.await {
        warn!(error = %scrub_err(&e), "could not join a visitor's room");
        return Verdict::Failed;
    }
    // The room summary showed the room as the homeserver has it now; the
    // invite's stripped state alone is what its sender chose to show, so
    // without a summary the bot waits for the join's sync, which brings
    // the room's whole state, before looking again.
    let synced = if summary_read { false } else { join_synced.wait(JOIN_SYNC_LIMIT).await };
    // The whole member list, from the homeserver: the sync lazy-loads
    // members, so a silent member who joined long ago is not in it. (The
    // SDK fetches this list before the first encrypted message in a room
    // anyway: no request more per case.)
    let everyone = RoomMemberships::JOIN | RoomMemberships::INVITE | RoomMemberships::KNOCK;
    let members = room.members(everyone).await;
    let me = room.own_user_id();
    let strangers: Vec<bool> = match &members {
        Ok(m) => m
            .iter()
            .filter(|m| m.user_id() != me && m.user_id() != inviter && !a.counsellors.iter().any(|c| c == m.user_id()))
            .map(|m| *m.membership() == matrix_sdk::ruma::events::room::member::MembershipState::Join)
            .collect(),
        Err(e) => {
            warn!(error = %scrub_err(e), "could not read a new room's members; leaving it");
            leave(room, a).await;
            return Verdict::Failed;
        }
    };
    if is_open(room.join_rule().as_ref()) {
        leave(room, a).await;
        return Verdict::Refused(Refusal::Open);
    }
    if room.history_visibility() == Some(HistoryVisibility::WorldReadable) {
        leave(room, a).await;
        return Verdict::Refused(Refusal::WorldReadable);
    }
    if !strangers.is_empty() {
        // One short notice, only where its key goes to joined members and
        // no stranger has joined: never a key for anyone but the visitor.
        // (Setting history visibility needs the power levels: the sync.)
        let synced = join_synced.wait(JOIN_SYNC_LIMIT).await;
        let joined_only = only_joined_get_keys(room, true).await;
        if joined_only && !strangers.iter().any(|joined| *joined) && encrypted(room, synced).await {
            let _ = room.send(RoomMessageEventContent::notice_plain(a.group_notice.clone())).await;
        }
        leave(room, a).await;
        return Verdict::Refused(Refusal::Group);
    }
    // Room keys for joined members only from now on, once the join's sync
    // has brought the power levels; the first messages need not wait for it
    // (the visitor alone is in the room, and the outbox checks the members
    // before each message), so the greeting does not wait for that sync nor
    // behind this state change in the homeserver's queue.
    {
        let room = room.clone();
        tokio::spawn(async move {
            join_synced.wait(VISIBILITY_SYNC_LIMIT).await;
            only_joined_get_keys(&room, false).await
        });
    }
    if let Some((cap, text)) = &a.notice {
        let _ = room.send(RoomMessageEventContent::notice_plain(text.clone())).await;
        leave(room, a).await;
        return Verdict::Refused(Refusal::Cap(*cap));
    }
    if encrypted(room, synced).await || !a.require_encryption {
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

/// What the invite and the room summary tell before joining: a reason to
/// decline, or whether the room summary was read (then the bot looks again
/// after joining, at the members).
async fn refuse_unseen(room: &Room, inviter: &UserId) -> Result<bool, Refusal> {
    // The invite's stripped state (join rule and encryption, where the
    // inviter's server sends them).
    if is_open(room.join_rule().as_ref()) {
        return Err(Refusal::Open);
    }
    if room.history_visibility() == Some(HistoryVisibility::WorldReadable) {
        return Err(Refusal::WorldReadable);
    }
    // The room summary (MSC3266, in the spec since 1.15), which an invited
    // user may read: how many have joined, without joining.
    let request =
        get_summary::v1::Request::new(room.room_id().to_owned().into(), vec![inviter.server_name().to_owned()]);
    match tokio::time::timeout(SUMMARY_LIMIT, room.client().send(request)).await {
        Ok(Ok(r)) => {
            let s = r.summary;
            if !matches!(s.join_rule, JoinRuleSummary::Invite | JoinRuleSummary::Private) {
                return Err(Refusal::Open);
            }
            if s.world_readable {
                return Err(Refusal::WorldReadable);
            }
            // The inviter alone has joined a new chat.
            if u64::from(s.num_joined_members) > 1 {
                return Err(Refusal::Group);
            }
            Ok(true)
        }
        Ok(Err(e)) => {
            debug!(error = %scrub_err(&e), "no room summary; looking after joining");
            Ok(false)
        }
        Err(_) => {
            debug!("room summary took too long; looking after joining");
            Ok(false)
        }
    }
}

/// Whether a join rule lets people in without an invite.
fn is_open(rule: Option<&JoinRule>) -> bool {
    !matches!(rule, None | Some(JoinRule::Invite | JoinRule::Private))
}

/// Makes room keys go to joined members only: sets the history visibility
/// to `joined` where the bot may and, with `wait`, waits (briefly) until
/// the client sees it, since the SDK decides whom to share a key with from
/// its own copy. Says whether that holds now.
async fn only_joined_get_keys(room: &Room, wait: bool) -> bool {
    if room.history_visibility() == Some(HistoryVisibility::Joined) {
        return true;
    }
    let me = room.own_user_id().to_owned();
    let may =
        room.power_levels().await.is_ok_and(|p| p.user_can_send_state(&me, StateEventType::RoomHistoryVisibility));
    if !may {
        debug!("no power to set history visibility; invitees stay out of the room by the member checks");
        return false;
    }
    if let Err(e) = room.privacy_settings().update_room_history_visibility(HistoryVisibility::Joined).await {
        debug!(error = %scrub_err(&e), "setting history visibility failed");
        return false;
    }
    if !wait {
        return false;
    }
    let deadline = tokio::time::Instant::now() + VISIBILITY_ECHO_LIMIT;
    while tokio::time::Instant::now() < deadline {
        if room.history_visibility() == Some(HistoryVisibility::Joined) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Whether the room is encrypted, from the join's sync or by asking.
async fn encrypted(room: &Room, synced: bool) -> bool {
    if synced {
        matches!(room.encryption_state(), EncryptionState::Encrypted)
    } else {
        matches!(room.latest_encryption_state().await, Ok(EncryptionState::Encrypted))
    }
}

/// Declines an invite without joining.
async fn decline(room: &Room) {
    if let Err(e) = room.leave().await {
        debug!(error = %scrub_err(&e), "declining an invite failed");
    }
}

/// Leaves a refused room the bot had joined, and queues its purge where
/// configured.
async fn leave(room: &Room, a: &Admission) {
    if room.leave().await.is_ok() {
        let _ = room.forget().await;
    }
    if let Some(p) = &a.purger {
        p.schedule(room.room_id().to_owned(), "refused").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(ids: &[&str]) -> Vec<OwnedUserId> {
        ids.iter().map(|u| UserId::parse(*u).unwrap()).collect()
    }

    #[test]
    fn caps_per_account_per_server_and_in_all() {
        let limits = LimitsConfig { max_open_cases: 5, max_open_cases_per_server: 2, max_open_cases_per_user: 1 };
        let own = ServerName::parse("helpline.example").ok();
        let own = own.as_deref();
        let open = users(&["@a:evil.example", "@b:evil.example", "@c:matrix.example"]);
        let cap = |who: &str| cap_for(open.iter(), &UserId::parse(who).unwrap(), own, &limits);
        assert_eq!(cap("@a:evil.example"), Some(Cap::User), "a second chat of one account");
        assert_eq!(cap("@z:evil.example"), Some(Cap::Server), "a third of one server");
        assert_eq!(cap("@d:matrix.example"), None, "another server still has room");
        // The bot's own server (the web chat) counts only in all.
        let web = users(&["@w1:helpline.example", "@w2:helpline.example", "@w3:helpline.example"]);
        assert_eq!(cap_for(web.iter(), &UserId::parse("@w4:helpline.example").unwrap(), own, &limits), None);
        let full = users(&["@1:a.example", "@2:b.example", "@3:c.example", "@4:d.example", "@5:e.example"]);
        assert_eq!(cap_for(full.iter(), &UserId::parse("@6:f.example").unwrap(), own, &limits), Some(Cap::Total));
    }
}
