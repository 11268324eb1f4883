//! The Matrix edge: the sync loop, and the event handlers that turn Matrix
//! events into desk inputs.
//!
//! Handlers never do slow work inline (they run inside sync processing):
//! they hand events to the `worker` over a channel, or spawn. Nothing here
//! logs a room id, a visitor's user id or message text; SDK errors pass
//! through `scrub_err` before they are logged, since they can quote ids.
//!
//! - this file: [`run`], the sync loop, the handlers, joining the staff room;
//! - `session`: the client on its encrypted store, login or restore, profile;
//! - `worker`: the one task that owns the desk and the store;
//! - `late_keys`: messages whose room key has not come yet;
//! - `admin`, `purge`: Synapse's admin API (room purge, the web chat's
//!   sign-up tokens and account deletion).

pub(crate) mod admin;
mod late_keys;
mod purge;
mod session;
mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::api::client::filter::{Filter, FilterDefinition, LazyLoadOptions, RoomEventFilter};
use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::events::room::history_visibility::{HistoryVisibility, OriginalSyncRoomHistoryVisibilityEvent};
use matrix_sdk::ruma::events::room::join_rules::OriginalSyncRoomJoinRulesEvent;
use matrix_sdk::ruma::events::room::member::{MembershipState, OriginalSyncRoomMemberEvent, StrippedRoomMemberEvent};
use matrix_sdk::ruma::events::room::message::{
    MessageType, OriginalSyncRoomMessageEvent, Relation, RoomMessageEventContent,
};
use matrix_sdk::ruma::events::sticker::OriginalSyncStickerEvent;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt};
use matrix_sdk::{Client, Room, RoomState};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::config::{Config, Secrets};
pub(crate) use crate::logging::scrub_err;
use crate::store::Store;

/// What the handlers tell the worker.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// The bot was invited to a room (not the staff room) by `inviter`.
    Invited { room: Room, inviter: OwnedUserId },
    /// A message in a room the bot is in.
    Message { room: Room, sender: OwnedUserId, body: Body, event_id: OwnedEventId },
    /// Someone's membership changed in a room the bot is in.
    Member { room: Room, user: OwnedUserId, change: MemberChange },
    /// A room's join rule or history visibility changed so that strangers
    /// may join or read it.
    Exposed(Room),
    /// The staff room is joined and writable.
    StaffReady(Room),
}

/// The part of a message the desk may see.
#[derive(Debug)]
pub(crate) enum Body {
    Text(String),
    NonText,
    Undecryptable,
}

/// A membership change that matters to routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemberChange {
    Joined,
    /// Invited by someone (the bot's own invites of counsellors included).
    Invited,
    /// Asked to join (only possible where the join rule allows knocking).
    Knocked,
    /// Left, was kicked, banned, or declined an invite.
    Left,
}

/// Lets a task wait until a room it just joined has come back in a whole
/// sync iteration.
///
/// Why: a room the bot has just joined is known to the client only from
/// the invite's stripped state until a sync brings it: its power levels,
/// for instance, come with that sync. A visitor's greeting does not wait
/// for it (the SDK asks the homeserver for the encryption state and the
/// members, and queries the members' keys, before the first encrypted
/// message); what needs the whole state waits: making history visible to
/// joined members only, a room the room summary could not be read for, and
/// the staff room's first notice.
#[derive(Debug, Default)]
pub(crate) struct JoinWatch {
    waiting: std::sync::Mutex<HashMap<OwnedRoomId, oneshot::Sender<()>>>,
}

impl JoinWatch {
    /// Starts watching for the sync that brings `room` as joined. Call it
    /// before joining, so that the iteration is caught however fast it
    /// comes.
    pub fn expect(self: &Arc<Self>, room: &RoomId) -> JoinSynced {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(room.to_owned(), tx);
        JoinSynced { watch: self.clone(), room: room.to_owned(), rx: Some(rx), synced: false }
    }

    /// Runs `join`; when it succeeds, waits (at most `limit`) until a sync
    /// iteration that includes `room` as joined has finished, and says
    /// whether one did.
    pub async fn join_then_wait<T, E>(
        self: &Arc<Self>,
        room: &RoomId,
        limit: Duration,
        join: impl Future<Output = Result<T, E>>,
    ) -> Result<(T, bool), E> {
        let mut watch = self.expect(room);
        let out = join.await?;
        Ok((out, watch.wait(limit).await))
    }

    /// Called by the sync loop after each whole iteration.
    fn synced<'a>(&self, joined: impl Iterator<Item = &'a OwnedRoomId>) {
        let mut waiting = self.lock();
        if waiting.is_empty() {
            return;
        }
        for room in joined {
            if let Some(tx) = waiting.remove(room) {
                let _ = tx.send(());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedRoomId, oneshot::Sender<()>>> {
        // A panic elsewhere while holding it leaves a plain map: keep going.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One room's watch (see [`JoinWatch::expect`]); dropping it ends the watch.
#[derive(Debug)]
pub(crate) struct JoinSynced {
    watch: Arc<JoinWatch>,
    room: OwnedRoomId,
    rx: Option<oneshot::Receiver<()>>,
    synced: bool,
}

impl JoinSynced {
    /// Waits (at most `limit`, the first time) until a whole sync iteration
    /// has brought the room as joined; says whether one did.
    pub async fn wait(&mut self, limit: Duration) -> bool {
        if let Some(rx) = self.rx.take() {
            self.synced = tokio::time::timeout(limit, rx).await.is_ok_and(|r| r.is_ok());
            self.watch.lock().remove(&self.room);
            if !self.synced {
                debug!(waited_s = limit.as_secs(), "no sync brought a joined room back in time; going on");
            }
        }
        self.synced
    }
}

impl Drop for JoinSynced {
    fn drop(&mut self) {
        if self.rx.is_some() {
            self.watch.lock().remove(&self.room);
        }
    }
}

/// How long a message may wait for its room key before the sender is asked
/// to send it again.
const LATE_KEY_GRACE: Duration = Duration::from_secs(20);

/// How long the staff room's first notice waits for the sync that brings
/// the bot's join.
const STAFF_JOIN_SYNC_LIMIT: Duration = Duration::from_secs(20);

/// Shared read-only context of the handlers.
#[derive(Debug)]
struct Ctx {
    tx: mpsc::Sender<Inbound>,
    staff_room: OwnedRoomId,
    /// Where messages whose key has not come yet wait for it.
    late: mpsc::UnboundedSender<late_keys::Parked>,
}

/// How [`run`] ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ran {
    /// Shutdown was asked for.
    Stopped,
    /// The bot's Matrix device was replaced (see `privacy.forget_after_minutes`);
    /// the caller starts the bot again, as a new process, to log in anew.
    Restart,
}

/// Runs the bot until `shutdown` resolves.
pub async fn run(config: Config, secrets: Secrets, shutdown: impl Future<Output = ()>) -> Result<Ran> {
    info!("starting");
    // SIGTERM is honoured at any point, also while the homeserver is still
    // being reached at start (the SDK retries for up to a minute).
    let mut shutdown = std::pin::pin!(shutdown);
    let store = Store::open(&config.storage.data_dir, true)?
        .sealed_with(crate::store::Sealer::from_secret(&secrets.store_passphrase));
    debug!("state store open");
    // A device change cut off after its session was dropped: this start
    // finishes it (`session::connect`), and it need not run again.
    let finishing_change = session::device_change_interrupted(&config.storage.data_dir);
    let (client, fresh_login) = tokio::select! {
        r = session::connect(&config, &secrets) => r?,
        () = &mut shutdown => return stopped_while_starting(),
    };
    if finishing_change {
        store.clear_forget_due().await?;
    }
    let staff_room: OwnedRoomId =
        config.staff.room.as_str().try_into().map_err(|_| anyhow::anyhow!("key `staff.room`: not a valid room id"))?;
    let metrics = crate::metrics::Metrics::new();
    let listener = match &config.metrics.listen {
        Some(l) => Some(crate::metrics::bind(l).await?),
        None => None,
    };
    let admin = match &secrets.admin_token {
        Some(t) => Some(admin::Admin::new(&config.matrix.homeserver_url, t.clone())?),
        None => None,
    };
    let web = match (&config.web, &admin) {
        (Some(w), Some(a)) => {
            let bot = client.user_id().map_or_else(|| config.matrix.user_id.clone(), ToString::to_string);
            let web = Arc::new(crate::web::Web::new(w, &bot, a.clone())?);
            Some((crate::web::bind(&w.listen).await?, web))
        }
        (Some(_), None) => anyhow::bail!(
            "key `matrix.admin_token_file`: the web chat needs a Synapse admin token (this key or INTAKE_BOT_ADMIN_TOKEN)"
        ),
        (None, _) => None,
    };
    let (tx, rx) = mpsc::channel::<Inbound>(1024);
    let late = late_keys::spawn(tx.clone(), LATE_KEY_GRACE);
    let ctx = Arc::new(Ctx { tx: tx.clone(), staff_room: staff_room.clone(), late });

    // Invites first, so none is missed by the first sync.
    {
        let ctx = ctx.clone();
        client.add_event_handler(move |ev: StrippedRoomMemberEvent, client: Client, room: Room| {
            let ctx = ctx.clone();
            async move {
                on_invite(ev, client, room, &ctx).await;
            }
        });
    }
    let mut settings = sync_settings();
    if fresh_login {
        // First start: skip the account's history, but upload device keys.
        let resp = tokio::select! {
            r = sync_with_retry(&client, settings.clone()) => r?,
            () = &mut shutdown => return stopped_while_starting(),
        };
        settings = settings.token(resp);
    }
    register_handlers(&client, ctx.clone());

    let joins = Arc::new(JoinWatch::default());
    let parts = worker::Parts {
        store,
        client: client.clone(),
        staff_room_id: staff_room.clone(),
        metrics: metrics.clone(),
        joins: joins.clone(),
        admin,
    };
    let worker = worker::Worker::new(&config, &secrets, parts)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(l) = listener {
        let mut stop = stop_rx.clone();
        tokio::spawn(crate::metrics::serve(l, metrics.clone(), async move {
            let _ = stop.changed().await;
        }));
    }
    if let Some((l, web)) = web {
        let mut stop = stop_rx.clone();
        tokio::spawn(crate::web::serve(l, web, async move {
            let _ = stop.changed().await;
        }));
    }
    let mut worker_task = tokio::spawn(worker.run(rx, stop_rx));
    let mut sync_task = tokio::spawn(sync_loop(client.clone(), settings, metrics.clone(), joins.clone()));
    tokio::spawn(join_staff_room(client.clone(), staff_room, tx.clone(), joins));
    tokio::spawn(session::forget_direct_rooms(client.clone()));
    if let Some(pass) = secrets.recovery_passphrase.clone() {
        tokio::spawn(session::keep_identity_in_secret_storage(client.clone(), pass));
    }
    tokio::spawn(session::apply_profile(client.clone(), config.matrix.clone(), config.storage.data_dir.clone()));
    drop(tx);

    // Supervision: the worker and the sync loop run until shutdown. If
    // either ends before, the bot would be deaf while looking alive: it
    // says so on /healthz and exits non-zero, for the service manager to
    // restart it.
    tokio::select! {
        () = &mut shutdown => {}
        r = &mut worker_task => match r {
            Ok(Ok(worker::WorkerEnd::ReplaceDevice(store))) => {
                sync_task.abort();
                let _ = stop_tx.send(true);
                drop(ctx);
                return session::replace_device(client, &config, &secrets, store).await;
            }
            Ok(Ok(worker::WorkerEnd::Stopped)) => return task_died(&metrics, "worker", Ok(())).await.map(|()| Ran::Stopped),
            Ok(Err(e)) => return task_died(&metrics, "worker", Err(format!("{e:#}"))).await.map(|()| Ran::Stopped),
            Err(e) => return task_died(&metrics, "worker", Err(e.to_string())).await.map(|()| Ran::Stopped),
        },
        r = &mut sync_task => return task_died(&metrics, "sync loop", r.map_err(|e| e.to_string())).await.map(|()| Ran::Stopped),
    }
    info!("shutting down: finishing the event in hand");
    sync_task.abort();
    let _ = stop_tx.send(true);
    drop(ctx);
    match tokio::time::timeout(Duration::from_secs(8), worker_task).await {
        Ok(Ok(Ok(_))) => info!("stopped cleanly"),
        Ok(Ok(Err(e))) => return Err(e),
        Ok(Err(e)) => anyhow::bail!("worker task failed: {e}"),
        Err(_) => warn!("worker did not finish within 8 s; exiting anyway"),
    }
    Ok(Ran::Stopped)
}

/// A task the bot cannot do without ended before shutdown: reported on
/// /healthz for a moment (so monitoring sees it), then the bot exits with
/// an error.
async fn task_died(metrics: &crate::metrics::Metrics, task: &str, how: Result<(), String>) -> Result<()> {
    metrics.broken();
    let how = match how {
        Ok(()) => "returned".to_owned(),
        Err(e) => scrub_err(&e),
    };
    error!(task, how = %how, "a task of the bot ended unexpectedly; exiting so that the service manager restarts it");
    tokio::time::sleep(Duration::from_secs(2)).await;
    anyhow::bail!("the {task} ended unexpectedly ({how})")
}

fn stopped_while_starting() -> Result<Ran> {
    info!("stopped while starting; nothing was in hand");
    Ok(Ran::Stopped)
}

fn sync_settings() -> SyncSettings {
    SyncSettings::default().timeout(Duration::from_secs(30)).filter(sync_filter().into())
}

/// What the bot's syncs ask for.
fn sync_filter() -> FilterDefinition {
    let mut filter = FilterDefinition::default();
    // Synapse's default of 10 events per room per sync would drop messages
    // sent while the bot was down; a "limited" sync skips handlers.
    filter.room.timeline.limit = Some(UInt::from(100u32));
    // Members lazy-loaded: a sync carries only the member events of those
    // who sent something in it, not every room's whole member list (the
    // staff room, rooms coming back). Membership changes still come in the
    // timeline; a room's full list is asked for once, by admission, before
    // the bot says anything there (the SDK asks for it before its first
    // encrypted message anyway).
    filter.room.state.lazy_load_options = LazyLoadOptions::Enabled { include_redundant_members: false };
    // Nothing the bot never reads: presence (of every visitor it shares a
    // room with), typing notices and read receipts, and per-room account
    // data. Each of them is work for the homeserver in every sync of an
    // account in hundreds of rooms (issue #17: at 200 visitors the bot's
    // own sync took the homeserver 8-21 s). Global account data stays: the
    // SDK reads its secret storage and cross-signing settings from it.
    filter.presence = Filter::ignore_all();
    filter.room.ephemeral = RoomEventFilter::ignore_all();
    filter.room.account_data = RoomEventFilter::ignore_all();
    filter
}

async fn sync_with_retry(client: &Client, settings: SyncSettings) -> Result<String> {
    let mut delay = Duration::from_secs(1);
    loop {
        match client.sync_once(settings.clone()).await {
            Ok(r) => return Ok(r.next_batch),
            Err(e) => {
                warn!(error = %scrub_err(&e), retry_in_s = delay.as_secs(), "first sync failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// Syncs forever, with backoff while the homeserver is unreachable. An
/// outage is logged once when it starts and once when it ends.
async fn sync_loop(
    client: Client,
    mut settings: SyncSettings,
    metrics: Arc<crate::metrics::Metrics>,
    joins: Arc<JoinWatch>,
) {
    let mut delay = Duration::from_secs(1);
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        match client.sync_once(settings.clone()).await {
            Ok(r) => {
                joins.synced(r.rooms.joined.keys());
                settings = settings.token(r.next_batch);
                metrics.sync_ok();
                if let Some(t) = failing_since.take() {
                    info!(outage_s = t.elapsed().as_secs(), "homeserver reachable again; sync resumed");
                }
                delay = Duration::from_secs(1);
            }
            Err(e) => {
                metrics.sync_error();
                if failing_since.is_none() {
                    failing_since = Some(std::time::Instant::now());
                    warn!(error = %scrub_err(&e), "sync failed; retrying with backoff until the homeserver answers");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Joins the staff room by id (accepting a pending invite), retrying, then
/// tells the worker it can post there.
async fn join_staff_room(client: Client, room_id: OwnedRoomId, tx: mpsc::Sender<Inbound>, joins: Arc<JoinWatch>) {
    let mut delay = Duration::from_secs(1);
    let mut warned = false;
    loop {
        let joined = match client.get_room(&room_id) {
            Some(r) if r.state() == RoomState::Joined => Ok(r),
            // A fresh join: the online notice waits for the sync that brings
            // it (see JoinWatch).
            _ => joins
                .join_then_wait(&room_id, STAFF_JOIN_SYNC_LIMIT, client.join_room_by_id(&room_id))
                .await
                .map(|(room, _)| room),
        };
        match joined {
            Ok(room) => {
                let _ = tx.send(Inbound::StaffReady(room)).await;
                return;
            }
            Err(e) => {
                if !warned {
                    warn!(error = %scrub_err(&e), "cannot join the staff room yet (is the bot invited to staff.room?); retrying");
                    warned = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// Fetches one user's device keys now, outside the SDK's tracked queries
/// (so it never clears their "pending" state; see [`JoinWatch`]).
pub(crate) async fn refresh_user_keys(client: &Client, user: &matrix_sdk::ruma::UserId) {
    if let Err(e) = client.encryption().request_user_identity(user).await {
        debug!(error = %scrub_err(&e), "key query failed; the SDK will retry on the next sync");
    }
}

async fn on_invite(ev: StrippedRoomMemberEvent, client: Client, room: Room, ctx: &Ctx) {
    if Some(ev.state_key.as_ref()) != client.user_id() || ev.content.membership != MembershipState::Invite {
        return;
    }
    if room.room_id() == ctx.staff_room {
        // join_staff_room handles it.
        return;
    }
    let _ = ctx.tx.send(Inbound::Invited { room, inviter: ev.sender }).await;
}

/// Hands a message in a joined room, not from the bot, to the worker.
async fn forward(ctx: &Ctx, client: &Client, room: Room, sender: OwnedUserId, body: Body, event_id: OwnedEventId) {
    if room.state() != RoomState::Joined || Some(sender.as_ref()) == client.user_id() {
        return;
    }
    let _ = ctx.tx.send(Inbound::Message { room, sender, body, event_id }).await;
}

/// What of a message the desk sees; None for notices, which bots send and
/// the bot never answers. An edit counts with its new text.
pub(crate) fn message_body(content: RoomMessageEventContent) -> Option<Body> {
    let msgtype = match content.relates_to {
        Some(Relation::Replacement(r)) => r.new_content.msgtype,
        _ => content.msgtype,
    };
    Some(match msgtype {
        MessageType::Text(t) => Body::Text(t.body),
        MessageType::Notice(_) => return None,
        MessageType::Emote(t) => Body::Text(t.body),
        _ => Body::NonText,
    })
}

fn register_handlers(client: &Client, ctx: Arc<Ctx>) {
    let c = ctx.clone();
    client.add_event_handler(move |ev: OriginalSyncRoomMessageEvent, client: Client, room: Room| {
        let ctx = c.clone();
        async move {
            let Some(body) = message_body(ev.content) else { return };
            forward(&ctx, &client, room, ev.sender, body, ev.event_id).await;
        }
    });
    let c = ctx.clone();
    client.add_event_handler(move |ev: OriginalSyncStickerEvent, client: Client, room: Room| {
        let ctx = c.clone();
        async move {
            forward(&ctx, &client, room, ev.sender, Body::NonText, ev.event_id).await;
        }
    });
    let c = ctx.clone();
    // Only events that stayed encrypted reach this handler: most often their
    // key is on its way (see late_keys).
    client.add_event_handler(move |raw: Raw<OriginalSyncRoomEncryptedEvent>, client: Client, room: Room| {
        let ctx = c.clone();
        async move {
            let Ok(ev) = raw.deserialize() else { return };
            if room.state() != RoomState::Joined || Some(ev.sender.as_ref()) == client.user_id() {
                return;
            }
            let _ = ctx.late.send(late_keys::Parked { room, event: raw, event_id: ev.event_id, sender: ev.sender });
        }
    });
    let c = ctx.clone();
    client.add_event_handler(move |ev: OriginalSyncRoomJoinRulesEvent, room: Room| {
        let ctx = c.clone();
        async move {
            use matrix_sdk::ruma::room::JoinRule;
            if !matches!(ev.content.join_rule, JoinRule::Invite | JoinRule::Private) {
                let _ = ctx.tx.send(Inbound::Exposed(room)).await;
            }
        }
    });
    let c = ctx.clone();
    client.add_event_handler(move |ev: OriginalSyncRoomHistoryVisibilityEvent, room: Room| {
        let ctx = c.clone();
        async move {
            if ev.content.history_visibility == HistoryVisibility::WorldReadable {
                let _ = ctx.tx.send(Inbound::Exposed(room)).await;
            }
        }
    });
    let c = ctx;
    client.add_event_handler(move |ev: OriginalSyncRoomMemberEvent, client: Client, room: Room| {
        let ctx = c.clone();
        async move {
            if Some(ev.state_key.as_ref()) == client.user_id() {
                return;
            }
            let prev = ev.unsigned.prev_content.as_ref().map(|p| p.membership.clone());
            let change = match ev.content.membership {
                MembershipState::Join if prev != Some(MembershipState::Join) => MemberChange::Joined,
                MembershipState::Leave | MembershipState::Ban => MemberChange::Left,
                MembershipState::Invite if prev != Some(MembershipState::Invite) => MemberChange::Invited,
                MembershipState::Knock if prev != Some(MembershipState::Knock) => MemberChange::Knocked,
                _ => return,
            };
            let _ = ctx.tx.send(Inbound::Member { room, user: ev.state_key, change }).await;
        }
    });
}
#[cfg(test)]
mod tests {
    use super::*;
    use matrix_sdk::ruma::room_id;

    #[test]
    fn syncs_leave_out_what_the_bot_never_reads() {
        let f = serde_json::to_value(sync_filter()).unwrap();
        let none = serde_json::json!([]);
        assert_eq!(f["presence"]["types"], none, "no presence");
        assert_eq!(f["room"]["ephemeral"]["types"], none, "no typing or receipts");
        assert_eq!(f["room"]["account_data"]["types"], none, "no room account data");
        assert!(f["account_data"].get("types").is_none(), "global account data stays (the SDK's own settings)");
        assert_eq!(f["room"]["timeline"]["limit"], 100);
        assert_eq!(f["room"]["state"]["lazy_load_members"], true);
        assert!(f["room"]["timeline"].get("types").is_none(), "every timeline event");
    }

    #[tokio::test]
    async fn join_watch_wakes_on_the_sync_that_brings_the_room() {
        let watch = Arc::new(JoinWatch::default());
        let room = room_id!("!a:example.org");
        let other = room_id!("!b:example.org").to_owned();
        let w = watch.clone();
        // The "sync" runs while the join is in flight: an unrelated room first.
        let join = async move {
            w.synced([other].iter());
            Ok::<_, ()>(7)
        };
        let w = watch.clone();
        let waiter = tokio::spawn(async move { w.join_then_wait(room, Duration::from_secs(600), join).await });
        // Until the room itself comes in a sync, the waiter keeps waiting.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        watch.synced([room.to_owned()].iter());
        let out = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").unwrap();
        assert_eq!(out, Ok((7, true)));
        assert!(watch.lock().is_empty(), "nothing left registered");
    }

    #[tokio::test]
    async fn join_watch_gives_up_after_the_limit_and_skips_failed_joins() {
        let watch = Arc::new(JoinWatch::default());
        let room = room_id!("!a:example.org");
        let out = watch.join_then_wait(room, Duration::from_millis(20), async { Ok::<_, ()>(()) }).await;
        assert_eq!(out, Ok(((), false)), "no sync came: said so");
        assert!(watch.lock().is_empty());
        // A failed join returns at once, whatever the limit.
        let failed = watch.join_then_wait(room, Duration::from_secs(600), async { Err::<(), _>("no") });
        let out = tokio::time::timeout(Duration::from_secs(5), failed).await.expect("no wait after a failed join");
        assert_eq!(out, Err("no"));
        assert!(watch.lock().is_empty());
    }

    #[tokio::test]
    async fn a_join_watch_is_waited_for_once_and_ends_when_dropped() {
        let watch = Arc::new(JoinWatch::default());
        let room = room_id!("!a:example.org");
        // The sync comes before anyone waits: the wait still sees it.
        let mut synced = watch.expect(room);
        watch.synced([room.to_owned()].iter());
        assert!(synced.wait(Duration::from_secs(600)).await);
        // Asked again later, the answer stands, without waiting.
        let again = tokio::time::timeout(Duration::from_secs(5), synced.wait(Duration::from_secs(600))).await;
        assert_eq!(again, Ok(true));
        // A watch nobody waits for ends with its handle.
        let unwaited = watch.expect(room_id!("!b:example.org"));
        assert_eq!(watch.lock().len(), 1);
        drop(unwaited);
        assert!(watch.lock().is_empty(), "a dropped watch is not left registered");
    }
}
