//! The worker: one task that owns the desk and the store, feeds them the
//! events the handlers send, fires timers, and carries out the desk's
//! actions on Matrix in order.
//!
//! One task means one writer: the desk's state and the store never race,
//! and each room's messages go out in the order the desk decided them.
//! Its parts, each in a file of its own:
//! - this file: the event loop, the desk's actions, the store commit;
//! - [`outbox`]: what goes out, one ordered sender per room;
//! - [`admission`]: joining and checking a new visitor room;
//! - [`backfill`]: after a restart, the messages missed while down.

mod admission;
mod backfill;
mod outbox;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, UserId};
use matrix_sdk::{Client, Room, RoomMemberships};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, instrument, warn};

use super::admin::Admin;
use super::purge::Purger;
use super::{Body, Inbound, JoinWatch, MemberChange, scrub_err};
use crate::clock::unix_now as now;
use crate::config::{Config, Secrets};
use crate::desk::{Action, Desk, Event, VisitorInput};
use crate::intake::text::TextKey;
use crate::metrics::{Gauges, Metrics};
use crate::outcome::OutcomeRecord;
use crate::store::{RoomKeyer, Store};
use admission::Verdict;
use outbox::{Job, Retire, Target, coalesce, one_to_one, spawn_sender, staff_notice};

/// Most events handled between two store flushes.
const BATCH: usize = 64;

/// How often cases past the retention limit are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// What the worker shares with the rest of the Matrix edge.
pub struct Parts {
    /// The bot's own store (cases in progress, routing, records).
    pub store: Store,
    /// The logged-in client.
    pub client: Client,
    /// The staff room, from `staff.room`.
    pub staff_room_id: OwnedRoomId,
    /// Counters and gauges for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Tells admission when a joined room has been through a whole sync.
    pub joins: Arc<JoinWatch>,
    /// Synapse's admin API, where an admin token is configured.
    pub admin: Option<Admin>,
}

/// The web chat's throwaway accounts: which they are, and when an idle one
/// goes.
#[derive(Debug, Clone)]
struct WebAccounts {
    admin: Admin,
    /// Localpart prefix (`web.account_prefix`) on the bot's own server.
    prefix: String,
    server: matrix_sdk::ruma::OwnedServerName,
    idle_secs: i64,
}

impl WebAccounts {
    /// Whether `user` is one of the page's accounts (never the bot or staff).
    fn owns(&self, user: &UserId, counsellors: &[OwnedUserId], bot: Option<&UserId>) -> bool {
        user.server_name() == self.server
            && user.localpart().starts_with(&self.prefix)
            && !counsellors.iter().any(|c| c == user)
            && Some(user) != bot
    }
}

/// Debug builds with `INTAKE_BOT_TEST_FAILPOINTS` only: ends the process
/// at the point `INTAKE_BOT_TEST_CRASH_AT` names, as a kill -9 there would,
/// for the crash tests. A point reached from a sync waits 3 s first, so
/// that the SDK has stored the sync position past the event.
pub(super) async fn crash_point(point: &str) {
    if !fail_point(point) {
        return;
    }
    if point == "counsellor-joined" {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    error!(point, "failpoint: the process ends here (debug builds, tests only)");
    std::process::exit(137);
}

/// Debug builds with `INTAKE_BOT_TEST_FAILPOINTS` only: whether
/// `INTAKE_BOT_TEST_CRASH_AT` names `point`. Always false in release builds.
fn fail_point(point: &str) -> bool {
    #[cfg(debug_assertions)]
    {
        std::env::var_os("INTAKE_BOT_TEST_FAILPOINTS").is_some()
            && std::env::var("INTAKE_BOT_TEST_CRASH_AT").is_ok_and(|p| p == point)
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = point;
        false
    }
}

/// Leaves (and forgets) rooms found at start without a case.
async fn leave_leftover_rooms(leftovers: Vec<Room>) {
    if leftovers.is_empty() {
        return;
    }
    info!(rooms = leftovers.len(), "leaving rooms of cases that ended before the restart");
    for room in leftovers {
        if let Err(e) = room.leave().await {
            warn!(error = %scrub_err(&e), "leaving a leftover room failed");
        } else if let Err(e) = room.forget().await {
            debug!(error = %scrub_err(&e), "forgetting a leftover room failed");
        }
    }
}

/// Seconds after a case's end for its goodbye, redactions, purge and web
/// account deletion to run, before its device may be replaced.
const SETTLE_SECS: i64 = 30;

/// Why the worker ended without an error.
pub enum WorkerEnd {
    /// Shutdown was asked for.
    Stopped,
    /// No chat is open and a finished case is due to be forgotten: the
    /// caller replaces the bot's device (keeping its cross-signing
    /// identity) and starts again. Returns the store, flushed.
    ReplaceDevice(Store),
}

/// How often web chat accounts without a chat are looked for.
const IDLE_ACCOUNTS_EVERY: Duration = Duration::from_secs(60);

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
    preparing: HashSet<String>,
    /// Case key -> room, in memory only.
    rooms: HashMap<String, Room>,
    /// Staff notices waiting for the staff room.
    pending_staff: Vec<Job>,
    retention_secs: i64,
    require_encryption: bool,
    counsellors: Arc<[OwnedUserId]>,
    /// The visitor of each open case and of each room being admitted, in
    /// memory only: for the caps of `[limits]` and to tell a stranger in
    /// a case room from its visitor.
    visitors: HashMap<String, OwnedUserId>,
    limits: crate::config::LimitsConfig,
    /// `matrix.allowed_servers`; empty allows every server.
    allowed_servers: Vec<String>,
    /// A number per visitor homeserver, for fair routing of urgent cases
    /// (memory only).
    sources: HashMap<matrix_sdk::ruma::OwnedServerName, u32>,
    /// Bounds how many rooms over a cap get their notice at once.
    refusals: Arc<tokio::sync::Semaphore>,
    /// Rooms over a cap waiting for their notice.
    refusals_waiting: Arc<std::sync::atomic::AtomicUsize>,
    /// Bounds how many new rooms are looked at and joined at once.
    admissions: Arc<tokio::sync::Semaphore>,
    purger: Option<Purger>,
    prepared_tx: mpsc::Sender<(Room, Verdict)>,
    prepared_rx: Option<mpsc::Receiver<(Room, Verdict)>>,
    metrics: Arc<Metrics>,
    /// `staff.room_name`; empty leaves room names alone.
    room_name: String,
    /// Tells `prepare` when a joined room has been through a whole sync.
    joins: Arc<JoinWatch>,
    /// The web chat's accounts, when `[web]` is set.
    web: Option<WebAccounts>,
    /// `privacy.redact_at_close`.
    redact_at_close: bool,
    /// Whether an idle-account sweep is running.
    idle_sweep: Arc<std::sync::atomic::AtomicBool>,
    /// Case keys whose summary went out (from the rooms' senders).
    acks_tx: mpsc::UnboundedSender<String>,
    acks_rx: Option<mpsc::UnboundedReceiver<String>>,
    /// `privacy.forget_after_minutes`, in seconds.
    forget_after_secs: i64,
    /// When the device is due to be replaced (see [`WorkerEnd`]).
    forget_due: Option<i64>,
    /// A store write that failed: nothing visible goes out after it, and
    /// the worker ends (the process exits non-zero; the restart re-derives
    /// the state from what is durable and the rooms' history).
    fatal: Option<String>,
}

impl Worker {
    /// Restores cases and routing from the store and maps them to the
    /// rooms the client knows.
    pub fn new(config: &Config, secrets: &Secrets, parts: Parts) -> Result<Worker> {
        let Parts { store, client, staff_room_id, metrics, joins, admin } = parts;
        let setup = config.desk_setup().map_err(anyhow::Error::msg)?;
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
        let counsellors: Arc<[OwnedUserId]> =
            config.staff.counsellors.iter().filter_map(|c| UserId::parse(c.as_str()).ok()).collect();
        // The purge is opted into by naming its token file (DESIGN.md).
        let purger = match (&config.privacy.purge_admin_token_file, &admin) {
            (Some(_), Some(a)) => Some(Purger::new(
                a.clone(),
                Duration::from_secs(config.privacy.purge_delay_secs),
                client.clone(),
                crate::store::Sealer::from_secret(&secrets.store_passphrase),
            )),
            _ => None,
        };
        let web = match (&config.web, &admin, client.user_id()) {
            (Some(w), Some(a), Some(me)) => Some(WebAccounts {
                admin: a.clone(),
                prefix: w.account_prefix.clone(),
                server: me.server_name().to_owned(),
                idle_secs: i64::try_from(w.idle_account_minutes).map_or(i64::MAX, |m| m.saturating_mul(60)),
            }),
            _ => None,
        };
        let (prepared_tx, prepared_rx) = mpsc::channel(64);
        let forget_due = store.forget_due()?;
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        Ok(Worker {
            desk: Desk::new(setup, cases, router),
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
            retention_secs: i64::try_from(config.privacy.in_progress_retention_hours)
                .map_or(i64::MAX, |h| h.saturating_mul(3600)),
            require_encryption: config.intake.require_encryption,
            counsellors,
            visitors: HashMap::new(),
            limits: config.limits.clone(),
            allowed_servers: config.matrix.allowed_servers.clone(),
            sources: HashMap::new(),
            refusals: Arc::new(tokio::sync::Semaphore::new(admission::REFUSALS_AT_ONCE)),
            refusals_waiting: Arc::default(),
            admissions: Arc::new(tokio::sync::Semaphore::new(admission::ADMISSIONS_AT_ONCE)),
            purger,
            prepared_tx,
            prepared_rx: Some(prepared_rx),
            metrics,
            room_name: config.staff.room_name.clone(),
            joins,
            web,
            redact_at_close: config.privacy.redact_at_close,
            idle_sweep: Arc::default(),
            forget_after_secs: i64::try_from(config.privacy.forget_after_minutes)
                .map_or(i64::MAX, |m| m.saturating_mul(60)),
            forget_due,
            acks_tx,
            acks_rx: Some(acks_rx),
            fatal: None,
        })
    }

    /// After a restart: membership changes whose events were taken in but
    /// not yet handled when the bot stopped (the sync position had moved
    /// past them) are read from the rooms' current members. A configured
    /// counsellor in the room of a case that has none gets the case as if
    /// they had just joined; a case whose visitor is gone ends.
    async fn resume_members(&mut self) {
        let (mut joins, mut gone) = (Vec::new(), Vec::new());
        for (key, room) in &self.rooms {
            let Some(case) = self.desk.cases.get(key) else { continue };
            if case.closing.is_some() {
                continue;
            }
            let Ok(members) = room.members_no_sync(RoomMemberships::JOIN).await else { continue };
            let me = room.own_user_id();
            let joined_counsellor =
                members.iter().map(|m| m.user_id()).find(|u| self.counsellors.iter().any(|c| c == u));
            if !case.counsellor_joined
                && let Some(c) = joined_counsellor
            {
                // Handled as the join itself would have been (keys, then the case).
                joins.push(Inbound::Member { room: room.clone(), user: c.to_owned(), change: MemberChange::Joined });
            }
            let visitor_here =
                members.iter().any(|m| m.user_id() != me && !self.counsellors.iter().any(|c| c == m.user_id()));
            if !visitor_here {
                gone.push(Event::VisitorLeft { key: key.clone() });
            }
        }
        if joins.len() + gone.len() > 0 {
            info!(changes = joins.len() + gone.len(), "membership changes not handled before the restart: handled now");
        }
        for m in joins {
            self.inbound(m).await;
        }
        for e in gone {
            self.dispatch(e).await;
        }
        self.commit().await;
    }

    /// After a restart: an offer the routing holds whose invite never went
    /// out (killed between the commit and the send) is invited now, not
    /// left to lapse at its deadline. A counsellor the room already lists
    /// as invited or joined is left alone.
    async fn resume_offers(&mut self) {
        use matrix_sdk::ruma::events::room::member::MembershipState;
        let mut resent = 0usize;
        for (key, offer) in self.desk.router.offers.clone() {
            let (Some(room), Ok(uid)) = (self.rooms.get(&key), UserId::parse(offer.counsellor.as_str())) else {
                continue;
            };
            let there = match room.get_member_no_sync(&uid).await {
                Ok(Some(m)) => matches!(m.membership(), MembershipState::Invite | MembershipState::Join),
                _ => false,
            };
            if !there {
                let name = (!self.room_name.is_empty()).then(|| self.room_name.clone());
                self.pending.push((Target::Case(key), Job::Invite(uid, name)));
                resent += 1;
            }
        }
        if resent > 0 {
            info!(offers = resent, "invites not sent before the restart: sent now");
            self.commit().await;
        }
    }

    /// At start: the rooms the bot is in that hold no case (a finished
    /// case whose leave was cut off, a refused room), the staff room aside.
    fn leftover_rooms(&self) -> Vec<Room> {
        self.client
            .joined_rooms()
            .into_iter()
            .filter(|r| {
                r.room_id() != self.staff_room_id && !self.rooms.contains_key(&self.keyer.key(r.room_id().as_str()))
            })
            .collect()
    }

    /// The account deletion due when the case of `key` ends, if its
    /// visitor came through the web chat.
    fn retire(&self, key: &str) -> Option<Box<Retire>> {
        let web = self.web.as_ref()?;
        let user = self.visitors.get(key)?;
        web.owns(user, &self.counsellors, self.client.user_id())
            .then(|| Box::new(Retire { admin: web.admin.clone(), user: user.clone() }))
    }

    /// Deletes web chat accounts that have no open chat and are older than
    /// `web.idle_account_minutes`: a page closed before its chat began, a
    /// deletion that failed, or one cut off by a restart. In the background,
    /// one sweep at a time.
    fn sweep_idle_accounts(&self) {
        use std::sync::atomic::Ordering;
        let Some(web) = self.web.clone() else { return };
        if self.idle_sweep.swap(true, Ordering::AcqRel) {
            return;
        }
        let busy: HashSet<OwnedUserId> = self.visitors.values().cloned().collect();
        let counsellors = self.counsellors.clone();
        let me = self.client.user_id().map(ToOwned::to_owned);
        let running = self.idle_sweep.clone();
        tokio::spawn(async move {
            let cutoff = now().saturating_sub(web.idle_secs);
            match web.admin.accounts_with_prefix(&web.prefix).await {
                Ok(accounts) => {
                    let mut deleted = 0usize;
                    for a in accounts {
                        if a.created > cutoff
                            || busy.contains(&a.user)
                            || !web.owns(&a.user, &counsellors, me.as_deref())
                        {
                            continue;
                        }
                        match web.admin.deactivate(&a.user).await {
                            Ok(()) => deleted += 1,
                            Err(e) => {
                                warn!(error = %scrub_err(&format!("{e:#}")), "deleting an idle web chat account failed");
                            }
                        }
                    }
                    if deleted > 0 {
                        info!(deleted, "idle web chat accounts deleted");
                    }
                }
                Err(e) => warn!(error = %scrub_err(&format!("{e:#}")), "listing web chat accounts failed"),
            }
            running.store(false, Ordering::Release);
        });
    }

    /// Whether the device is due to be replaced now: a finished case's
    /// time has come, no chat is open or being admitted, every case room's
    /// sender is done, and no room purge is queued (the queue lives in the
    /// store that goes with the device).
    async fn device_due(&self) -> bool {
        if self.forget_due.is_none_or(|at| at > now()) || !self.desk.cases.is_empty() || !self.preparing.is_empty() {
            return false;
        }
        let busy_senders = self.senders.iter().filter(|t| !t.is_finished()).count();
        if busy_senders > usize::from(self.staff.is_some()) {
            return false;
        }
        match &self.purger {
            Some(p) => p.pending().await == 0,
            None => true,
        }
    }

    /// Processes events until `stop` turns true (or the device is due to be
    /// replaced), then flushes the store.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Inbound>, mut stop: watch::Receiver<bool>) -> Result<WorkerEnd> {
        let mut prepared_rx = self.prepared_rx.take().expect("run is called once");
        let mut acks_rx = self.acks_rx.take().expect("run is called once");
        self.learn_visitors().await;
        if let Some(p) = &self.purger {
            p.resume().await;
        }
        // Before closing cases hand their rooms to their senders.
        let leftovers = self.leftover_rooms();
        let (fixed, save) = self.desk.reconcile(now());
        if fixed.dropped + fixed.requeued > 0 {
            warn!(
                dropped = fixed.dropped,
                requeued = fixed.requeued,
                "routing disagreed with the cases after the restart; fixed"
            );
        }
        self.execute(save).await;
        let closing = self.desk.finish_closing(now());
        self.execute(closing).await;
        self.commit().await;
        self.check_fatal()?;
        self.backfill().await;
        self.resume_members().await;
        self.resume_offers().await;
        let briefs = self.desk.resume_summaries();
        if !briefs.is_empty() {
            info!(cases = briefs.len(), "summaries the homeserver had not taken before the restart: posted again");
            self.execute(briefs).await;
            self.commit().await;
        }
        leave_leftover_rooms(leftovers).await;
        self.sweep().await;
        // Deadlines that passed while the bot was down fire now.
        self.dispatch(Event::Tick).await;
        self.commit().await;
        self.check_fatal()?;
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.tick().await;
        let mut beat = tokio::time::interval(Duration::from_secs(crate::metrics::WORKER_BEAT_SECS));
        let mut idle_accounts = tokio::time::interval(IDLE_ACCOUNTS_EVERY);
        let mut replace = false;
        loop {
            self.metrics.worker_beat();
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
                Some(key) = acks_rx.recv() => self.dispatch(Event::SummaryPosted { key }).await,
                _ = tokio::time::sleep(wait) => self.dispatch(Event::Tick).await,
                _ = sweep.tick() => self.sweep().await,
                _ = idle_accounts.tick() => self.sweep_idle_accounts(),
                _ = beat.tick() => {}
            }
            self.commit().await;
            self.check_fatal()?;
            if self.device_due().await {
                replace = true;
                break;
            }
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
        Ok(if replace { WorkerEnd::ReplaceDevice(self.store) } else { WorkerEnd::Stopped })
    }

    fn is_counsellor(&self, user: &UserId) -> bool {
        self.counsellors.iter().any(|c| c == user)
    }

    async fn inbound(&mut self, msg: Inbound) {
        match msg {
            Inbound::StaffReady(room) => {
                let online = self.desk.settings.say(self.desk.settings.staff_language(), TextKey::Online, &[]);
                let q = spawn_sender(room, "staff".into(), None, &mut self.senders);
                let _ = q.send(staff_notice(online));
                for job in std::mem::take(&mut self.pending_staff) {
                    let _ = q.send(job);
                }
                self.staff = Some(q);
                info!("staff room joined; online notice queued");
            }
            Inbound::Invited { room, inviter } => self.admit(room, inviter),
            Inbound::Message { room, sender, body, event_id } => {
                if room.room_id() == self.staff_room_id {
                    if let Body::Text(text) = body {
                        // Lets the tests see a dying worker taken down with
                        // the process; absent from release builds.
                        #[cfg(debug_assertions)]
                        if text == "!failpoint worker-panic" && std::env::var_os("INTAKE_BOT_TEST_FAILPOINTS").is_some()
                        {
                            panic!("failpoint: the worker panics (debug builds, tests only)");
                        }
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
            Inbound::Exposed(room) => {
                if let Some(key) = self.case_key(&room) {
                    info!(case = self.desk.case_id(&key).unwrap_or("?"), "a case room was opened to strangers");
                    self.dispatch(Event::Intruder { key }).await;
                }
            }
            Inbound::Member { room, user, change } => {
                if room.room_id() == self.staff_room_id {
                    return;
                }
                let Some(key) = self.case_key(&room) else { return };
                let event = match (self.is_counsellor(&user), change) {
                    (true, MemberChange::Joined) => {
                        crash_point("counsellor-joined").await;
                        // The summary must be encrypted for their devices:
                        // the room's sender fetches their keys first, so
                        // the worker never waits on the network for it.
                        self.pending.push((Target::Case(key.clone()), Job::RefreshKeys(user.clone())));
                        Event::CounsellorJoined { key, user: user.to_string() }
                    }
                    (true, MemberChange::Left) => Event::CounsellorLeft { key, user: user.to_string() },
                    (false, MemberChange::Left) => Event::VisitorLeft { key },
                    (true, MemberChange::Invited | MemberChange::Knocked) => return,
                    (false, MemberChange::Joined | MemberChange::Invited | MemberChange::Knocked) => {
                        // Anyone but the visitor invited, knocking or
                        // joining makes it a group. Where the visitor is
                        // not known (cannot happen after admission), the
                        // room's members tell.
                        let stranger = match self.visitors.get(&key) {
                            Some(v) => *v != user,
                            None => !one_to_one(&room, &self.counsellors).await,
                        };
                        if !stranger {
                            return;
                        }
                        info!(case = self.desk.case_id(&key).unwrap_or("?"), "someone else entered a case room");
                        Event::Intruder { key }
                    }
                };
                self.dispatch(event).await;
            }
        }
    }

    /// Tells the desk which homeserver a case's visitor is on, as a number
    /// (see `routing::Waiting::source`).
    fn tell_source(&mut self, key: &str) {
        let Some(server) = self.visitors.get(key).map(|v| v.server_name().to_owned()) else { return };
        let next = u32::try_from(self.sources.len() + 1).unwrap_or(u32::MAX);
        let source = *self.sources.entry(server).or_insert(next);
        self.desk.set_source(key, source);
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
            if self.fatal.is_some() {
                // After a failed write, no later write (a deletion above
                // all) and nothing visible: the restart takes over.
                break;
            }
            match a {
                Action::Say { key, text } => self.pending.push((Target::Case(key), Job::Say(text))),
                Action::Warn { key, text } => self.pending.push((Target::Case(key), Job::Warn(text))),
                Action::Brief { key, text, html } => {
                    self.pending.push((Target::Case(key.clone()), Job::Html(text, html)));
                    self.pending.push((Target::Case(key.clone()), Job::Ack(key, self.acks_tx.clone())));
                }
                Action::Staff { text } => self.pending.push((Target::Staff, staff_notice(text))),
                Action::Invite { key, user } => match UserId::parse(user.as_str()) {
                    Ok(uid) => {
                        crash_point("before-invite").await;
                        let name = (!self.room_name.is_empty()).then(|| self.room_name.clone());
                        self.pending.push((Target::Case(key), Job::Invite(uid, name)));
                    }
                    Err(_) => error!("a configured counsellor id does not parse"),
                },
                Action::Withdraw { key, user } => match UserId::parse(user.as_str()) {
                    Ok(uid) => self.pending.push((Target::Case(key), Job::Withdraw(uid))),
                    Err(_) => error!("a configured counsellor id does not parse"),
                },
                Action::Leave { key, case_id } => {
                    let retire = self.retire(&key);
                    let redact = self.redact_at_close;
                    self.pending.push((
                        Target::Case(key),
                        Job::Leave { case_id, purger: self.purger.clone().map(Box::new), retire, redact },
                    ));
                }
                Action::SaveCase { key } => {
                    if let Some(c) = self.desk.cases.get(&key) {
                        if let Err(e) = self.store.save_case(&key, c) {
                            error!(case = %c.id, error = %e, "saving the case failed");
                            self.fatal.get_or_insert_with(|| format!("saving a case failed: {e:#}"));
                        }
                        self.dirty = true;
                    }
                }
                Action::SaveRouter => {
                    if let Err(e) = self.store.save_router(&self.desk.router) {
                        error!(error = %e, "saving routing state failed");
                        self.fatal.get_or_insert_with(|| format!("saving the routing state failed: {e:#}"));
                    }
                    self.dirty = true;
                }
                Action::Record { case_id, record } => {
                    self.record(&case_id, record);
                    crash_point("recorded").await;
                }
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
        // What was written is consistent (closing marks come before
        // records): flushed even after a failed write, for the restart.
        if self.dirty {
            let mut tries = 0;
            while let Err(e) = self.store.flush().await {
                tries += 1;
                error!(error = %e, tries, "flushing the store failed");
                if tries == 3 {
                    self.fatal = Some(format!("flushing the store failed {tries} times: {e:#}"));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200 * tries)).await;
            }
            self.dirty = false;
        }
        if self.fatal.is_some() {
            // Nothing visible may run ahead of a state that is not durable.
            let dropped = self.pending.len();
            self.pending.clear();
            error!(dropped, "a store write failed: nothing more is sent; stopping for a restart");
            return;
        }
        // Failpoints for the crash tests: durable, not yet sent.
        if self.pending.iter().any(|(_, j)| matches!(j, Job::Invite(..))) {
            crash_point("invite-committed").await;
        }
        if self.pending.iter().any(|(t, j)| matches!((t, j), (Target::Case(_), Job::Html(..)))) {
            crash_point("summary-committed").await;
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
                    let guard = Some(self.counsellors.clone());
                    let q = self.outbox.entry(key.clone()).or_insert_with(|| spawn_sender(room, case, guard, senders));
                    let _ = q.send(job);
                    if leaving {
                        self.outbox.remove(&key);
                        self.rooms.remove(&key);
                    }
                }
            }
        }
        self.visitors.retain(|k, _| self.desk.cases.contains_key(k) || self.preparing.contains(k));
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

    /// Ends the worker with an error once a store write has failed.
    fn check_fatal(&mut self) -> Result<()> {
        match self.fatal.take() {
            Some(why) => Err(anyhow::anyhow!("{why}")),
            None => Ok(()),
        }
    }

    /// Writes an outcome record; logs by case id, never the record's id.
    /// A failure stops the case's goodbye and leaving (see `fatal`): the
    /// case is stored as closing, so the restart writes the record again.
    fn record(&mut self, case_id: &str, mut rec: OutcomeRecord) {
        if rec.record.is_empty() {
            // A case saved before cases carried their record id.
            rec.record = admission::new_record_id();
        }
        // Staged with the rest of the event; durable at the commit, before
        // anything of it is visible.
        let written = if fail_point("record-fails") {
            Err(anyhow::anyhow!("failpoint: the record write fails"))
        } else {
            self.store.stage_record(&rec)
        };
        self.dirty = true;
        if let Err(e) = &written {
            self.fatal.get_or_insert_with(|| format!("writing an outcome record failed: {e:#}"));
        }
        match written {
            Ok(()) => {
                info!(case = %case_id, outcome = %rec.outcome, "case ended; outcome recorded");
                self.metrics.case_ended(&rec.outcome, rec.intake_completed);
                let due = now().saturating_add(self.forget_after_secs).saturating_add(SETTLE_SECS);
                if self.forget_due.is_none_or(|at| due < at) {
                    // Sealed, flushed with the commit; a failure only delays it.
                    match self.store.note_forget_due(due) {
                        Ok(()) => {
                            self.forget_due = Some(due);
                            self.dirty = true;
                        }
                        Err(e) => warn!(error = %format!("{e:#}"), "could not note when to forget the case"),
                    }
                }
            }
            Err(e) => error!(case = %case_id, error = %e, "writing the outcome record failed"),
        }
    }
}
