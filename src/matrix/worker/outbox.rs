//! The outbox: what the worker decided to show, on its way out.
//!
//! Each room has one sender task that runs its jobs one after another, so
//! a room's messages keep their order while rooms proceed side by side.
//! Consecutive messages for one room are merged into one (see
//! [`Job::absorb`]).

use std::sync::Arc;
use std::time::Duration;

use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::{EventId, OwnedEventId, OwnedUserId, UInt};
use matrix_sdk::{Room, RoomMemberships, RoomState};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::matrix::admin::Admin;
use crate::matrix::purge::Purger;
use crate::matrix::{refresh_user_keys, scrub_err};

/// Longest a message waits for its room to be known as joined (see
/// [`wait_joined`]).
const JOINED_LIMIT: Duration = Duration::from_secs(180);

/// Where a visible job goes.
#[derive(Debug, PartialEq)]
pub(super) enum Target {
    Staff,
    Case(String),
}

/// One thing to do in a room, in order with the room's other jobs.
#[derive(Debug)]
pub(super) enum Job {
    Say(String),
    /// A notice that goes out even when the room is no longer one-to-one:
    /// the counsellor told why the bot goes quiet (a text safe for a
    /// stranger to read).
    Warn(String),
    /// A notice with an HTML body and its plain fallback (for counsellors).
    Html(String, String),
    /// Tells the worker (by case key) that the message before it went out.
    Ack(String, mpsc::UnboundedSender<String>),
    /// Fetch a user's device keys now, before what follows is encrypted.
    RefreshKeys(OwnedUserId),
    /// Offer the case to a counsellor, first naming the room (if given).
    Invite(OwnedUserId, Option<String>),
    Withdraw(OwnedUserId),
    /// Leave and forget the room, then purge it where configured, and
    /// delete the visitor's account if the web chat made it.
    Leave {
        case_id: String,
        purger: Option<Box<Purger>>,
        retire: Option<Box<Retire>>,
        /// Remove the case's messages first (`privacy.redact_at_close`).
        redact: bool,
    },
}

/// A web chat account to delete once its chat has ended.
#[derive(Debug, Clone)]
pub(super) struct Retire {
    pub admin: Admin,
    pub user: OwnedUserId,
}

/// The page shows the goodbye from its last sync; the account goes after.
const RETIRE_AFTER: Duration = Duration::from_secs(10);

impl Retire {
    /// Deletes the account after [`RETIRE_AFTER`]; logs by case id only.
    pub(super) async fn run(self, case_id: &str) {
        tokio::time::sleep(RETIRE_AFTER).await;
        match self.admin.deactivate(&self.user).await {
            Ok(()) => info!(case = %case_id, "web chat account deleted"),
            Err(e) => warn!(
                case = %case_id,
                error = %scrub_err(&format!("{e:#}")),
                "deleting the web chat account failed; the idle-account sweep retries"
            ),
        }
    }
}

/// Longest text that consecutive messages are merged into.
const MERGE_LIMIT: usize = 8000;

impl Job {
    /// Takes `next` into this job when both are messages of the same kind
    /// for the same room, one after the other: they go out as one message,
    /// parts separated by a blank line. One notification instead of two on
    /// a phone that may be watched, and one encrypted send fewer for a busy
    /// homeserver (the greeting and the first question, "finding a
    /// counsellor" and what follows it, staff notices queued behind a slow
    /// send). A text that merely repeats the one before it (two re-asks
    /// for two quick odd messages) is said once. Gives `next` back when it
    /// cannot be merged.
    fn absorb(&mut self, next: Job) -> Result<(), Job> {
        match (self, next) {
            (Job::Say(a), Job::Say(b)) if repeats(a, &b) => Ok(()),
            (Job::Html(ap, _), Job::Html(bp, _)) if repeats(ap, &bp) => Ok(()),
            (Job::Say(a), Job::Say(b)) if a.len() + b.len() <= MERGE_LIMIT => {
                a.push_str("\n\n");
                a.push_str(&b);
                Ok(())
            }
            (Job::Html(ap, ah), Job::Html(bp, bh)) if ap.len() + bp.len() <= MERGE_LIMIT => {
                ap.push_str("\n\n");
                ap.push_str(&bp);
                ah.push_str("<br><br>");
                ah.push_str(&bh);
                Ok(())
            }
            (_, next) => Err(next),
        }
    }

    /// The message this job sends, if it is one.
    fn content(self) -> Option<RoomMessageEventContent> {
        match self {
            Job::Say(text) | Job::Warn(text) => Some(RoomMessageEventContent::notice_plain(text)),
            Job::Html(plain, html) => Some(RoomMessageEventContent::notice_html(plain, html)),
            _ => None,
        }
    }
}

/// Whether `next` is the same as the last part merged into `text`.
fn repeats(text: &str, next: &str) -> bool {
    text.strip_suffix(next).is_some_and(|head| head.is_empty() || head.ends_with("\n\n"))
}

/// Merges each message into the previous job for the same room when that
/// job is a message of the same kind (see [`Job::absorb`]); the order of
/// each room's jobs is kept.
pub(super) fn coalesce(jobs: Vec<(Target, Job)>) -> Vec<(Target, Job)> {
    let mut out: Vec<(Target, Job)> = Vec::with_capacity(jobs.len());
    for (target, job) in jobs {
        let job = match out.iter_mut().rev().find(|(t, _)| *t == target) {
            Some((_, last)) => match last.absorb(job) {
                Ok(()) => continue,
                Err(job) => job,
            },
            None => job,
        };
        out.push((target, job));
    }
    out
}

/// Starts a room's sender: jobs run one after another, so a room's
/// messages keep their order, while rooms proceed side by side.
///
/// `guard`, for a case room, is the configured counsellors: before each
/// message and each invite the room's members are checked, and nothing
/// goes out while anyone but the bot, one visitor and counsellors is
/// joined, invited or knocking (the worker ends such a case). The staff
/// room has no guard.
pub(super) fn spawn_sender(
    room: Room,
    case: String,
    guard: Option<Arc<[OwnedUserId]>>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> mpsc::UnboundedSender<Job> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
    tasks.retain(|t| !t.is_finished());
    tasks.push(tokio::spawn(async move {
        // A job taken from the queue that could not be merged into the
        // message before it: it is next.
        let mut next: Option<Job> = None;
        // The last message this room was sent: the goodbye, at the end.
        let mut last_sent: Option<OwnedEventId> = None;
        // Whether the last message job went out.
        let mut last_ok = false;
        loop {
            let job = match next.take() {
                Some(job) => job,
                None => match rx.recv().await {
                    Some(job) => job,
                    None => break,
                },
            };
            match job {
                Job::Say(_) | Job::Html(..) => {
                    last_ok = false;
                    wait_joined(&room, &case).await;
                    // Messages queued meanwhile (behind a slow send) go out
                    // with this one.
                    let mut job = job;
                    while let Ok(more) = rx.try_recv() {
                        if let Err(other) = job.absorb(more) {
                            next = Some(other);
                            break;
                        }
                    }
                    if let Some(g) = &guard
                        && !one_to_one(&room, g).await
                    {
                        warn!(case = %case, "message withheld: the room is no longer one-to-one");
                        continue;
                    }
                    if let Some(content) = job.content() {
                        let sent = send(&room, &case, content).await;
                        last_ok = sent.is_some();
                        last_sent = sent.or(last_sent);
                    }
                }
                Job::Ack(key, to) => {
                    if last_ok {
                        let _ = to.send(key);
                    }
                }
                Job::Warn(_) => {
                    if let Some(content) = job.content() {
                        last_sent = send(&room, &case, content).await.or(last_sent);
                    }
                }
                Job::Invite(uid, name) => {
                    if let Some(g) = &guard
                        && !one_to_one(&room, g).await
                    {
                        warn!(case = %case, "counsellor not invited: the room is no longer one-to-one");
                        continue;
                    }
                    if let Some(name) = name {
                        name_room(&room, name, &case).await;
                    }
                    match room.invite_user_by_id(&uid).await {
                        Ok(()) => info!(case = %case, "offered to a counsellor"),
                        Err(e) => error!(case = %case, error = %scrub_err(&e), "inviting the counsellor failed"),
                    }
                }
                Job::RefreshKeys(uid) => refresh_user_keys(&room.client(), &uid).await,
                Job::Withdraw(uid) => match room.kick_user(&uid, None).await {
                    Ok(()) => info!(case = %case, "counsellor invite withdrawn"),
                    Err(e) => {
                        warn!(case = %case, error = %scrub_err(&e), "could not withdraw the invite (no power?); it lapses");
                    }
                },
                Job::Leave { case_id, purger, retire, redact } => {
                    let room_id = room.room_id().to_owned();
                    if redact {
                        redact_case(&room, &case_id, last_sent.as_deref()).await;
                    }
                    if let Err(e) = room.leave().await {
                        warn!(case = %case_id, error = %scrub_err(&e), "leaving a finished case's room failed");
                    } else if let Err(e) = room.forget().await {
                        debug!(case = %case_id, error = %scrub_err(&e), "forgetting a finished case's room failed");
                    }
                    if let Some(r) = retire {
                        let case_id = case_id.clone();
                        tokio::spawn(async move { r.run(&case_id).await });
                    }
                    if let Some(p) = purger {
                        // Queued durably; carried out after its grace delay.
                        p.schedule(room_id, &case_id).await;
                    }
                    break;
                }
            }
        }
    }));
    tx
}

/// Waits until the client holds the room as joined, at most
/// [`JOINED_LIMIT`]. Admission goes on without the join's sync when the
/// homeserver is slow to send it (see `JOIN_SYNC_LIMIT`), and the SDK
/// refuses to send into a room it still holds as invited: without this
/// wait a new visitor's first question was lost under load (seen in the
/// 500-visitor benchmark).
async fn wait_joined(room: &Room, case: &str) {
    if room.state() == RoomState::Joined {
        return;
    }
    let start = tokio::time::Instant::now();
    while room.state() != RoomState::Joined && start.elapsed() < JOINED_LIMIT {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ms = start.elapsed().as_millis() as u64;
    if room.state() == RoomState::Joined {
        debug!(case = %case, ms, "message waited for the room's join to come through the sync");
    } else {
        warn!(case = %case, ms, "the room's join has not come through the sync; sending anyway");
    }
}

/// Whether the room holds nobody but the bot, one visitor and counsellors
/// (joined, invited or knocking), as the client knows it now (no request:
/// the state store is kept current by sync). A failed read counts as no.
pub(super) async fn one_to_one(room: &Room, counsellors: &[OwnedUserId]) -> bool {
    let me = room.own_user_id();
    match room.members_no_sync(RoomMemberships::JOIN | RoomMemberships::INVITE | RoomMemberships::KNOCK).await {
        Ok(m) => m.iter().filter(|m| m.user_id() != me && !counsellors.iter().any(|c| c == m.user_id())).count() <= 1,
        Err(e) => {
            warn!(error = %scrub_err(&e), "could not read a room's members");
            false
        }
    }
}

/// Sends one message; returns its event id once sent. Its time is logged
/// at trace (debug when slow), so an operator can tell the bot's delays
/// from the homeserver's.
async fn send(room: &Room, case: &str, content: RoomMessageEventContent) -> Option<OwnedEventId> {
    let t = std::time::Instant::now();
    match room.send(content).await {
        Ok(r) => {
            let ms = t.elapsed().as_millis() as u64;
            if ms >= 1000 {
                debug!(case = %case, ms, "slow send (encryption keys or homeserver)");
            } else {
                tracing::trace!(case = %case, ms, "sent");
            }
            Some(r.response.event_id)
        }
        Err(e) => {
            error!(case = %case, error = %scrub_err(&e), "sending a message failed");
            None
        }
    }
}

/// Most events of a case room looked at for removal at its end.
const REDACT_SCAN_LIMIT: usize = 600;

/// Before leaving a finished case's room (privacy rule 7): removes what it
/// can of the case, newest first, back to the bot's own join: its own
/// messages (questions, summary, notices) and, where its power level lets
/// it (it does in Element's DMs), the visitor's and the counsellor's. The
/// goodbye (`keep`) stays for the visitor to read; the purge, where
/// configured, takes it later. Logs counts only.
async fn redact_case(room: &Room, case: &str, keep: Option<&EventId>) {
    let me = room.own_user_id().to_owned();
    let mut from: Option<String> = None;
    let (mut removed, mut seen, mut others_allowed) = (0usize, 0usize, true);
    'pages: loop {
        let mut opts = MessagesOptions::backward();
        opts.limit = UInt::from(100u32);
        opts.from = from.take();
        let page = match room.messages(opts).await {
            Ok(p) => p,
            Err(e) => {
                warn!(case = %case, error = %scrub_err(&e), "reading the room to remove the case failed");
                break;
            }
        };
        for ev in &page.chunk {
            seen += 1;
            let raw = ev.raw();
            let ty = raw.get_field::<String>("type").ok().flatten().unwrap_or_default();
            let sender = raw.get_field::<OwnedUserId>("sender").ok().flatten();
            if raw.get_field::<String>("state_key").ok().flatten().is_some() {
                let own_join = ty == "m.room.member"
                    && sender.as_ref() == Some(&me)
                    && raw
                        .get_field::<serde_json::Value>("content")
                        .ok()
                        .flatten()
                        .is_some_and(|c| c["membership"] == "join");
                if own_join {
                    break 'pages;
                }
                continue;
            }
            if !matches!(ty.as_str(), "m.room.message" | "m.room.encrypted" | "m.reaction" | "m.sticker") {
                continue;
            }
            let Some(event_id) = ev.event_id() else { continue };
            let content_gone = raw
                .get_field::<serde_json::Value>("content")
                .ok()
                .flatten()
                .is_none_or(|c| c.as_object().is_none_or(|o| o.is_empty()));
            if content_gone || Some(event_id.as_ref()) == keep {
                continue;
            }
            let mine = sender.as_ref() == Some(&me);
            if !mine && !others_allowed {
                continue;
            }
            match room.redact(&event_id, None, None).await {
                Ok(_) => removed += 1,
                Err(e) if !mine => {
                    // No power over others' messages here: keep to our own.
                    debug!(case = %case, error = %scrub_err(&e), "cannot remove others' messages in this room");
                    others_allowed = false;
                }
                Err(e) => warn!(case = %case, error = %scrub_err(&e), "removing a message of the bot failed"),
            }
        }
        match page.end {
            Some(end) if seen < REDACT_SCAN_LIMIT && !page.chunk.is_empty() => from = Some(end),
            _ => break,
        }
    }
    info!(case = %case, removed, others = others_allowed, "the case's messages removed from the room");
}

/// Gives an unnamed case room a neutral name, where the bot may, so that
/// the counsellor's invite does not show the visitor's name.
async fn name_room(room: &Room, name: String, case: &str) {
    if room.name().is_some() {
        return;
    }
    let me = room.own_user_id().to_owned();
    let may = room
        .power_levels()
        .await
        .is_ok_and(|p| p.user_can_send_state(&me, matrix_sdk::ruma::events::StateEventType::RoomName));
    if !may {
        debug!(case = %case, "no power to name the room; left unnamed");
        return;
    }
    if let Err(e) = room.set_name(name).await {
        debug!(case = %case, error = %scrub_err(&e), "naming the room failed");
    }
}

/// Staff notices go out as HTML (bold titles, lists) with a plain fallback.
pub(super) fn staff_notice(text: String) -> Job {
    let html = crate::intake::text::plain_to_html(&text);
    Job::Html(text, html)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn say(t: &str) -> Job {
        Job::Say(t.to_owned())
    }

    fn case(k: &str) -> Target {
        Target::Case(k.to_owned())
    }

    /// A readable picture of a job list: "a:Say(x)" etc.
    fn show(jobs: &[(Target, Job)]) -> Vec<String> {
        jobs.iter()
            .map(|(t, j)| {
                let t = match t {
                    Target::Staff => "staff".to_owned(),
                    Target::Case(k) => k.clone(),
                };
                let j = match j {
                    Job::Say(s) => format!("Say({s})"),
                    Job::Warn(s) => format!("Warn({s})"),
                    Job::Html(p, h) => format!("Html({p}|{h})"),
                    Job::Invite(..) => "Invite".into(),
                    Job::Withdraw(_) => "Withdraw".into(),
                    Job::RefreshKeys(_) => "RefreshKeys".into(),
                    Job::Leave { .. } => "Leave".into(),
                    Job::Ack(..) => "Ack".into(),
                };
                format!("{t}:{j}")
            })
            .collect()
    }

    #[test]
    fn a_rooms_consecutive_texts_become_one_message() {
        let out = coalesce(vec![(case("a"), say("Hello")), (case("a"), say("(1/6) Who is this chat for?"))]);
        assert_eq!(show(&out), ["a:Say(Hello\n\n(1/6) Who is this chat for?)"]);
    }

    #[test]
    fn other_rooms_jobs_in_between_do_not_stop_a_merge_but_keep_their_place() {
        let out = coalesce(vec![
            (case("a"), say("one")),
            (Target::Staff, staff_notice("Case X waiting".into())),
            (case("b"), say("other room")),
            (case("a"), say("two")),
        ]);
        assert_eq!(show(&out), ["a:Say(one\n\ntwo)", "staff:Html(Case X waiting|Case X waiting)", "b:Say(other room)"]);
    }

    #[test]
    fn a_job_of_another_kind_keeps_the_order_of_its_room() {
        let uid: OwnedUserId = "@c:localhost".try_into().unwrap();
        let out = coalesce(vec![
            (case("a"), say("Finding a counsellor")),
            (case("a"), Job::Invite(uid, None)),
            (case("a"), say("after the invite")),
            (case("a"), Job::Html("summary".into(), "<b>summary</b>".into())),
            (case("a"), say("goodbye")),
            (case("a"), Job::Leave { case_id: "X".into(), purger: None, retire: None, redact: false }),
        ]);
        assert_eq!(
            show(&out),
            [
                "a:Say(Finding a counsellor)",
                "a:Invite",
                "a:Say(after the invite)",
                "a:Html(summary|<b>summary</b>)",
                "a:Say(goodbye)",
                "a:Leave"
            ]
        );
    }

    #[test]
    fn staff_notices_merge_as_html() {
        let out = coalesce(vec![
            (Target::Staff, staff_notice("Case A waiting".into())),
            (Target::Staff, staff_notice("Case B waiting".into())),
        ]);
        assert_eq!(show(&out), ["staff:Html(Case A waiting\n\nCase B waiting|Case A waiting<br><br>Case B waiting)"]);
    }

    #[test]
    fn a_repeated_text_is_said_once() {
        let reask = "Sorry, I did not understand that.\n\n(2/6) How old are you?";
        let out = coalesce(vec![(case("a"), say(reask)), (case("a"), say(reask)), (case("a"), say("(3/6) next"))]);
        assert_eq!(show(&out), [format!("a:Say({reask}\n\n(3/6) next)")]);
        // Only a whole part counts as a repeat, not a text's tail.
        let out = coalesce(vec![(case("a"), say("In danger? Call 112.")), (case("a"), say("112."))]);
        assert_eq!(show(&out), ["a:Say(In danger? Call 112.\n\n112.)"]);
    }

    #[test]
    fn merging_stops_at_the_length_limit() {
        let long = "x".repeat(MERGE_LIMIT - 10);
        let out = coalesce(vec![(case("a"), say(&long)), (case("a"), say("this does not fit"))]);
        assert_eq!(out.len(), 2);
        let mut job = say("short");
        assert!(job.absorb(say("also short")).is_ok());
        assert!(matches!(job.absorb(Job::Withdraw("@c:localhost".try_into().unwrap())), Err(Job::Withdraw(_))));
    }
}
