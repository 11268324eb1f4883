//! The worker: one task that owns the desk and the store, feeds them the
//! events the handlers send, fires timers, and carries out the desk's
//! actions on Matrix in order.
//!
//! One task means one writer: the desk's state and the store never race,
//! and each room's messages go out in the order the desk decided them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::events::room::member::MembershipState;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::events::{
    AnySyncMessageLikeEvent, AnySyncStateEvent, AnySyncTimelineEvent, SyncMessageLikeEvent,
};
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, UInt, UserId};
use matrix_sdk::{Client, EncryptionState, Room, RoomMemberships};
use rand::RngCore;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, instrument, warn};

use super::gate::SendGate;
use super::{Body, Inbound, MemberChange, scrub_err};
use crate::config::{Config, Secrets};

use crate::desk::{Action, Desk, Event, VisitorInput};
use crate::hours::Hours;
use crate::intake::Settings;
use crate::intake::text::TextKey;
use crate::metrics::{Gauges, Metrics};
use crate::outcome::OutcomeRecord;
use crate::routing::Policy;
use crate::store::{RoomKeyer, Store};

/// Longest a message waits at the send gate (see [`SendGate`]).
const GATE_LIMIT: Duration = Duration::from_secs(10);

/// Most events handled between two store flushes.
const BATCH: usize = 64;

/// Where a visible job goes.
#[derive(Debug, PartialEq)]
enum Target {
    Staff,
    Case(String),
}

/// One thing to do in a room, in order with the room's other jobs.
#[derive(Debug)]
enum Job {
    Say(String),
    /// A notice with an HTML body and its plain fallback (for counsellors).
    Html(String, String),
    /// Fetch a user's device keys now, before what follows is encrypted.
    RefreshKeys(OwnedUserId),
    /// Offer the case to a counsellor, first naming the room (if given).
    Invite(OwnedUserId, Option<String>),
    Withdraw(OwnedUserId),
    /// Leave and forget the room, then purge it where configured.
    Leave {
        case_id: String,
        purger: Option<super::purge::Purger>,
    },
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
            Job::Say(text) => Some(RoomMessageEventContent::notice_plain(text)),
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
fn coalesce(jobs: Vec<(Target, Job)>) -> Vec<(Target, Job)> {
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
fn spawn_sender(
    room: Room,
    case: String,
    gate: Arc<SendGate>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> mpsc::UnboundedSender<Job> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
    tasks.retain(|t| !t.is_finished());
    tasks.push(tokio::spawn(async move {
        // A job taken from the queue that could not be merged into the
        // message before it: it is next.
        let mut next: Option<Job> = None;
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
                    hold(&gate, &case).await;
                    // Messages queued meanwhile (behind the gate or a slow
                    // send) go out with this one.
                    let mut job = job;
                    while let Ok(more) = rx.try_recv() {
                        if let Err(other) = job.absorb(more) {
                            next = Some(other);
                            break;
                        }
                    }
                    if let Some(content) = job.content() {
                        send(&room, &case, content).await;
                    }
                }
                Job::Invite(uid, name) => {
                    if let Some(name) = name {
                        name_room(&room, name, &case).await;
                    }
                    match room.invite_user_by_id(&uid).await {
                        Ok(()) => info!(case = %case, "offered to a counsellor"),
                        Err(e) => error!(case = %case, error = %scrub_err(&e), "inviting the counsellor failed"),
                    }
                }
                Job::RefreshKeys(uid) => super::refresh_user_keys(&room.client(), &uid).await,
                Job::Withdraw(uid) => match room.kick_user(&uid, None).await {
                    Ok(()) => info!(case = %case, "counsellor invite withdrawn"),
                    Err(e) => {
                        warn!(case = %case, error = %scrub_err(&e), "could not withdraw the invite (no power?); it lapses")
                    }
                },
                Job::Leave { case_id, purger } => {
                    let room_id = room.room_id().to_owned();
                    if let Err(e) = room.leave().await {
                        warn!(case = %case_id, error = %scrub_err(&e), "leaving a finished case's room failed");
                    } else if let Err(e) = room.forget().await {
                        debug!(case = %case_id, error = %scrub_err(&e), "forgetting a finished case's room failed");
                    }
                    if let Some(p) = purger {
                        // The purge waits out its grace delay on its own.
                        tokio::spawn(async move { p.purge(room_id, &case_id).await });
                    }
                    break;
                }
            }
        }
    }));
    tx
}

/// Waits at the send gate before a message (see [`SendGate`]).
async fn hold(gate: &SendGate, case: &str) {
    let waited = gate.wait_open(GATE_LIMIT).await;
    if waited >= Duration::from_secs(1) {
        debug!(case = %case, ms = waited.as_millis() as u64, "message held while the sync loop finished a response");
    }
}

/// Sends one message; its time is logged at trace (debug when slow), so
/// an operator can tell the bot's delays from the homeserver's.
async fn send(room: &Room, case: &str, content: RoomMessageEventContent) {
    let t = std::time::Instant::now();
    match room.send(content).await {
        Ok(_) => {
            let ms = t.elapsed().as_millis() as u64;
            if ms >= 1000 {
                debug!(case = %case, ms, "slow send (encryption keys or homeserver)");
            } else {
                tracing::trace!(case = %case, ms, "sent");
            }
        }
        Err(e) => error!(case = %case, error = %scrub_err(&e), "sending a message failed"),
    }
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
fn staff_notice(text: String) -> Job {
    let html = crate::intake::text::plain_to_html(&text);
    Job::Html(text, html)
}

/// How far back a restart looks for messages it missed.
const BACKFILL_LIMIT: u32 = 50;

/// How many rooms' histories a restart fetches at once.
const BACKFILL_CONCURRENCY: usize = 16;

/// How often cases past the retention limit are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// How long a new room's first message waits for the sync that brings the
/// join. Longer only when the homeserver is slow or away; then the SDK's
/// own waits take over.
const JOIN_SYNC_LIMIT: Duration = Duration::from_secs(20);

/// Unix seconds now.
fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// A random case id, never derived from any Matrix id.
fn new_case_id() -> String {
    let mut b = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// What preparing a new visitor room found.
#[derive(Debug)]
enum Verdict {
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

/// The desk's owner.
pub struct Worker {
    desk: Desk,
    store: Store,
    client: Client,
    keyer: RoomKeyer,
    staff_room_id: OwnedRoomId,
    /// The staff room's ordered sender, once joined.
    staff: Option<mpsc::UnboundedSender<Job>>,
    /// Each case room's ordered sender.
    outbox: HashMap<String, mpsc::UnboundedSender<Job>>,
    /// The sender tasks, to let them finish on shutdown.
    senders: Vec<tokio::task::JoinHandle<()>>,
    /// Visible jobs waiting for the next commit.
    pending: Vec<(Target, Job)>,
    /// Whether the store has writes not yet flushed.
    dirty: bool,
    /// Rooms being joined and checked (by case key), in memory only.
    preparing: std::collections::HashSet<String>,
    /// Case key -> room, in memory only.
    rooms: HashMap<String, Room>,
    /// Staff notices waiting for the staff room.
    pending_staff: Vec<Job>,
    retention_secs: i64,
    require_encryption: bool,
    counsellors: Vec<OwnedUserId>,
    purger: Option<super::purge::Purger>,
    prepared_tx: mpsc::Sender<(Room, Verdict)>,
    prepared_rx: Option<mpsc::Receiver<(Room, Verdict)>>,
    metrics: Arc<Metrics>,
    /// `staff.room_name`; empty leaves room names alone.
    room_name: String,
    /// Tells `prepare` when a joined room has been through a whole sync.
    joins: Arc<super::JoinWatch>,
    /// Holds messages while the sync loop handles a response.
    gate: Arc<SendGate>,
}

impl Worker {
    /// Restores cases and routing from the store and maps them to the
    /// rooms the client knows.
    pub fn new(
        config: Config,
        secrets: &Secrets,
        store: Store,
        client: Client,
        staff_room_id: OwnedRoomId,
        metrics: Arc<Metrics>,
        joins: Arc<super::JoinWatch>,
        gate: Arc<SendGate>,
    ) -> Result<Worker> {
        let settings = Settings::from_config(&config);
        let policy = Policy {
            max_active: config.staff.max_active_per_counsellor,
            accept_timeout_secs: config.staff.accept_timeout_secs as i64,
            wait_alert_secs: config.staff.wait_alert_secs as i64,
        };
        let hours = match &config.hours {
            Some(h) => Some(Hours::new(&h.timezone, &h.open).map_err(|e| anyhow::anyhow!("key `hours`: {e}"))?),
            None => None,
        };
        let cases = store.load_cases()?;
        let mut router = store.load_router()?.unwrap_or_default();
        router.sync_roster(&config.staff.counsellors);
        let keyer = RoomKeyer::from_secret(&secrets.store_passphrase);
        let mut rooms = HashMap::new();
        for room in client.joined_rooms() {
            let key = keyer.key(room.room_id().as_str());
            if cases.contains_key(&key) {
                rooms.insert(key, room);
            }
        }
        info!(cases_in_progress = cases.len(), rooms_found = rooms.len(), "state restored");
        let counsellors = config.staff.counsellors.iter().filter_map(|c| UserId::parse(c.as_str()).ok()).collect();
        let purger = match &config.privacy.purge_admin_token_file {
            Some(f) => Some(super::purge::Purger::new(
                &config.matrix.homeserver_url,
                f,
                Duration::from_secs(config.privacy.purge_delay_secs),
            )?),
            None => None,
        };
        let (prepared_tx, prepared_rx) = mpsc::channel(64);
        Ok(Worker {
            desk: Desk::new(settings, policy, hours, cases, router),
            store,
            client,
            keyer,
            staff_room_id,
            staff: None,
            outbox: HashMap::new(),
            senders: Vec::new(),
            pending: Vec::new(),
            dirty: false,
            preparing: Default::default(),
            rooms,
            pending_staff: Vec::new(),
            retention_secs: config.privacy.in_progress_retention_hours as i64 * 3600,
            require_encryption: config.intake.require_encryption,
            counsellors,
            purger,
            prepared_tx,
            prepared_rx: Some(prepared_rx),
            metrics,
            room_name: config.staff.room_name.clone(),
            joins,
            gate,
        })
    }

    /// Processes events until `stop` turns true, then flushes the store.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Inbound>, mut stop: watch::Receiver<bool>) -> Result<()> {
        let mut prepared_rx = self.prepared_rx.take().expect("run is called once");
        let closing = self.desk.finish_closing(now());
        self.execute(closing).await;
        self.commit().await;
        self.backfill().await;
        self.sweep().await;
        // Deadlines that passed while the bot was down fire now.
        self.dispatch(Event::Tick).await;
        self.commit().await;
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.tick().await;
        loop {
            let wait = match self.desk.next_deadline(now()) {
                Some(at) => Duration::from_secs((at - now()).max(0) as u64),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                msg = rx.recv() => match msg {
                    Some(m) => {
                        self.inbound(m).await;
                        // Take what else has queued up: one flush for all.
                        for _ in 0..BATCH {
                            match rx.try_recv() {
                                Ok(m) => self.inbound(m).await,
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                Some((room, verdict)) = prepared_rx.recv() => self.prepared(room, verdict).await,
                _ = tokio::time::sleep(wait) => self.dispatch(Event::Tick).await,
                _ = sweep.tick() => self.sweep().await,
            }
            self.commit().await;
        }
        self.commit().await;
        self.store.flush().await?;
        info!("store flushed");
        // Let messages already decided go out (goodbyes above all).
        self.outbox.clear();
        self.staff = None;
        let senders = std::mem::take(&mut self.senders);
        if tokio::time::timeout(Duration::from_secs(5), async {
            for t in senders {
                let _ = t.await;
            }
        })
        .await
        .is_err()
        {
            warn!("some messages were still being sent at shutdown");
        }
        Ok(())
    }

    fn is_counsellor(&self, user: &UserId) -> bool {
        self.counsellors.iter().any(|c| c == user)
    }

    async fn inbound(&mut self, msg: Inbound) {
        match msg {
            Inbound::StaffReady(room) => {
                let online = self.desk.settings.say(self.desk.settings.staff_language(), TextKey::Online, &[]);
                let q = spawn_sender(room, "staff".into(), self.gate.clone(), &mut self.senders);
                let _ = q.send(staff_notice(online));
                for job in std::mem::take(&mut self.pending_staff) {
                    let _ = q.send(job);
                }
                self.staff = Some(q);
                info!("staff room joined; online notice queued");
            }
            Inbound::Invited(room) => {
                let key = self.keyer.key(room.room_id().as_str());
                // The invite shows up in every sync until the join lands:
                // prepare each room once.
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
            Inbound::Message { room, sender, body, event_id } => {
                if room.room_id() == self.staff_room_id {
                    if let Body::Text(text) = body {
                        self.dispatch(Event::Staff { user: sender.to_string(), text }).await;
                    }
                    return;
                }
                let Some(key) = self.case_key(&room) else { return };
                if !self.desk.note_event(&key, &self.keyer.key(event_id.as_str())) {
                    debug!(case = self.desk.case_id(&key).unwrap_or("?"), "event already handled; dropped");
                    return;
                }
                self.execute(vec![Action::SaveCase { key: key.clone() }]).await;
                let event = if self.is_counsellor(&sender) {
                    match body {
                        Body::Text(text) => Event::CounsellorText { key, user: sender.to_string(), text },
                        _ => return,
                    }
                } else {
                    let input = match body {
                        Body::Text(t) => VisitorInput::Text(t),
                        Body::NonText => VisitorInput::NonText,
                        Body::Undecryptable => VisitorInput::Undecryptable,
                    };
                    Event::Visitor { key, input }
                };
                self.dispatch(event).await;
            }
            Inbound::Member { room, user, change } => {
                if room.room_id() == self.staff_room_id {
                    return;
                }
                let Some(key) = self.case_key(&room) else { return };
                let event = match (self.is_counsellor(&user), change) {
                    (true, MemberChange::Joined) => {
                        // The summary must be encrypted for their devices:
                        // the room's sender fetches their keys first, so
                        // the worker never waits on the network for it.
                        self.pending.push((Target::Case(key.clone()), Job::RefreshKeys(user.clone())));
                        Event::CounsellorJoined { key, user: user.to_string() }
                    }
                    (true, MemberChange::Left) => Event::CounsellorLeft { key, user: user.to_string() },
                    (false, MemberChange::Left) => Event::VisitorLeft { key },
                    (false, MemberChange::Joined) => {
                        // Anyone but the visitor joining makes it a group.
                        if visitors_in(&room, &self.counsellors).await <= 1 {
                            return;
                        }
                        Event::Intruder { key }
                    }
                };
                self.dispatch(event).await;
            }
        }
    }

    /// The case key of a room with a case in progress.
    fn case_key(&mut self, room: &Room) -> Option<String> {
        let key = self.keyer.key(room.room_id().as_str());
        if !self.desk.cases.contains_key(&key) {
            return None;
        }
        self.rooms.entry(key.clone()).or_insert_with(|| room.clone());
        Some(key)
    }

    async fn prepared(&mut self, room: Room, verdict: Verdict) {
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

    /// After a restart: reads each case room's recent history and handles,
    /// in order, the messages not handled yet (sent while the bot was down,
    /// or received just before a crash). Stops at the newest handled event
    /// or at the bot's own join. Events handled twice are dropped anyway.
    ///
    /// The histories are fetched side by side (a bounded number at once):
    /// with a thousand rooms, one after another would keep every visitor
    /// waiting for a minute. They are handled one room at a time, in order.
    async fn backfill(&mut self) {
        let me = self.client.user_id().map(ToOwned::to_owned);
        let limit = Arc::new(tokio::sync::Semaphore::new(BACKFILL_CONCURRENCY));
        let mut fetches = tokio::task::JoinSet::new();
        for (key, room) in self.rooms.iter().map(|(k, r)| (k.clone(), r.clone())) {
            let limit = limit.clone();
            fetches.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let mut opts = MessagesOptions::backward();
                opts.limit = UInt::from(BACKFILL_LIMIT);
                let chunk = room.messages(opts).await.map(|m| m.chunk);
                (key, room, chunk)
            });
        }
        let started = std::time::Instant::now();
        let rooms = fetches.len();
        while let Some(done) = fetches.join_next().await {
            let Ok((key, room, chunk)) = done else { continue };
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    warn!(case = self.desk.case_id(&key).unwrap_or("?"), error = %scrub_err(&e), "back-fill failed");
                    continue;
                }
            };
            let mut missed = Vec::new();
            for ev in chunk {
                let Some(event_id) = ev.event_id() else { continue };
                let seen =
                    self.desk.cases.get(&key).is_some_and(|c| c.seen.contains(&self.keyer.key(event_id.as_str())));
                if seen {
                    break;
                }
                match ev.raw().deserialize() {
                    Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
                        SyncMessageLikeEvent::Original(m),
                    ))) if Some(&m.sender) != me.as_ref() => {
                        if let Some(body) = super::message_body(m.content) {
                            missed.push(Inbound::Message { room: room.clone(), sender: m.sender, body, event_id });
                        }
                    }
                    Ok(AnySyncTimelineEvent::State(AnySyncStateEvent::RoomMember(m)))
                        if Some(m.state_key()) == me.as_ref() && m.membership() == &MembershipState::Join =>
                    {
                        break;
                    }
                    _ => {}
                }
            }
            if !missed.is_empty() {
                info!(
                    case = self.desk.case_id(&key).unwrap_or("?"),
                    messages = missed.len(),
                    "handling messages missed while down"
                );
            }
            for m in missed.into_iter().rev() {
                self.inbound(m).await;
            }
            self.commit().await;
        }
        if rooms > 0 {
            info!(rooms, took_ms = started.elapsed().as_millis() as u64, "back-fill after start done");
        }
    }

    /// Ends cases kept past `privacy.in_progress_retention_hours`.
    async fn sweep(&mut self) {
        let t = now();
        for key in self.desk.expired(t, self.retention_secs) {
            info!(case = self.desk.case_id(&key).unwrap_or("?"), "case expired after the retention limit");
            let actions = self.desk.expire(&key, t);
            self.execute(actions).await;
        }
    }

    async fn dispatch(&mut self, event: Event) {
        let kind = event.kind();
        let case = event.key().and_then(|k| self.desk.case_id(k)).map(str::to_owned);
        let actions = self.desk.handle(now(), event);
        if kind != "tick" || !actions.is_empty() {
            debug!(event = kind, case = case.as_deref().unwrap_or("-"), actions = actions.len(), "handled");
        }
        self.execute(actions).await;
    }

    /// Carries out the desk's actions in order. Store actions run here and
    /// now; what visitors or staff can see is held in `pending` until
    /// [`Worker::commit`] has made the store durable, so a crash never
    /// leaves a visible step the store does not know.
    #[instrument(skip_all)]
    async fn execute(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Say { key, text } => self.pending.push((Target::Case(key), Job::Say(text))),
                Action::Brief { key, text, html } => self.pending.push((Target::Case(key), Job::Html(text, html))),
                Action::Staff { text } => self.pending.push((Target::Staff, staff_notice(text))),
                Action::Invite { key, user } => match UserId::parse(user.as_str()) {
                    Ok(uid) => {
                        let name = (!self.room_name.is_empty())
                            .then(|| self.room_name.replace("{case}", self.desk.case_id(&key).unwrap_or("")));
                        self.pending.push((Target::Case(key), Job::Invite(uid, name)))
                    }
                    Err(_) => error!("a configured counsellor id does not parse"),
                },
                Action::Withdraw { key, user } => match UserId::parse(user.as_str()) {
                    Ok(uid) => self.pending.push((Target::Case(key), Job::Withdraw(uid))),
                    Err(_) => error!("a configured counsellor id does not parse"),
                },
                Action::Leave { key, case_id } => {
                    self.pending.push((Target::Case(key), Job::Leave { case_id, purger: self.purger.clone() }))
                }
                Action::SaveCase { key } => {
                    if let Some(c) = self.desk.cases.get(&key) {
                        if let Err(e) = self.store.save_case(&key, c) {
                            error!(case = %c.id, error = %e, "saving the case failed");
                        }
                        self.dirty = true;
                    }
                }
                Action::SaveRouter => {
                    if let Err(e) = self.store.save_router(&self.desk.router) {
                        error!(error = %e, "saving routing state failed");
                    }
                    self.dirty = true;
                }
                Action::Record(rec) => self.record(&rec).await,
                Action::MarkClosing { key, case } => {
                    if let Err(e) = self.store.save_case(&key, &case) {
                        error!(case = %case.id, error = %e, "saving the closing case failed");
                    }
                    self.dirty = true;
                }
                Action::DeleteCase { key } => {
                    if let Err(e) = self.store.delete_case(&key) {
                        error!(error = %e, "deleting a finished case failed");
                    }
                    self.dirty = true;
                }
            }
        }
    }

    /// Makes the store durable (once for a whole batch of events), then
    /// hands the held visible jobs to each room's ordered sender.
    async fn commit(&mut self) {
        if self.dirty {
            if let Err(e) = self.store.flush().await {
                error!(error = %e, "flushing the store failed");
            }
            self.dirty = false;
        }
        self.update_metrics();
        for (target, job) in coalesce(std::mem::take(&mut self.pending)) {
            match target {
                Target::Staff => match &self.staff {
                    Some(q) => {
                        let _ = q.send(job);
                    }
                    None => self.pending_staff.push(job),
                },
                Target::Case(key) => {
                    let leaving = matches!(job, Job::Leave { .. });
                    let case = self.case_label(&key);
                    let Some(room) = self.rooms.get(&key).cloned() else {
                        warn!(case = %case, "no room known for this case; nothing sent");
                        continue;
                    };
                    let senders = &mut self.senders;
                    let gate = self.gate.clone();
                    let q = self.outbox.entry(key.clone()).or_insert_with(|| spawn_sender(room, case, gate, senders));
                    let _ = q.send(job);
                    if leaving {
                        self.outbox.remove(&key);
                        self.rooms.remove(&key);
                    }
                }
            }
        }
    }

    fn update_metrics(&mut self) {
        let t = self.desk.take_tally();
        let s = self.desk.router.status();
        let gauges = Gauges {
            active_cases: self.desk.cases.len() as u64,
            queue_length: s.waiting as u64,
            counsellors_available: s.available as u64,
        };
        self.metrics.update(t.urgent, t.offer_timeouts, &t.waits, gauges);
    }

    fn case_label(&self, key: &str) -> String {
        self.desk.case_id(key).unwrap_or("ended").to_owned()
    }

    async fn record(&mut self, rec: &OutcomeRecord) {
        match self.store.record(rec).await {
            Ok(()) => {
                info!(case = %rec.case, outcome = %rec.outcome, "case ended; outcome recorded");
                self.metrics.case_ended(&rec.outcome, rec.intake_completed);
            }
            Err(e) => error!(case = %rec.case, error = %e, "writing the outcome record failed"),
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
    joins: &super::JoinWatch,
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
async fn visitors_in(room: &Room, counsellors: &[OwnedUserId]) -> usize {
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
                    Job::Html(p, h) => format!("Html({p}|{h})"),
                    Job::Invite(..) => "Invite".into(),
                    Job::Withdraw(_) => "Withdraw".into(),
                    Job::RefreshKeys(_) => "RefreshKeys".into(),
                    Job::Leave { .. } => "Leave".into(),
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
            (case("a"), Job::Leave { case_id: "X".into(), purger: None }),
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
