#![recursion_limit = "256"]
// A test that cannot go on fails loudly: unwrap is fine.
#![allow(clippy::unwrap_used)]
//! The SDK's key-query stall (issue #17, `vendor/README.md`): matrix-sdk-crypto
//! 0.18 made a message sent into *any* room wait 5 s, holding the client's
//! one-time-key lock, whenever the sync being handled marked the sender's
//! own account as "devices changed", which Synapse does in every sync that
//! brings a room the account has just joined. The sync loop, which alone
//! sends the key query that would end the wait, queued behind that lock.
//!
//! Here a plain matrix-sdk client (the same SDK build as the bot) is busy in
//! one room while it joins another; while the sync that brings the join is
//! being handled, it sends into the busy room. With the vendored patch the message goes
//! out at once; without it, it waits the SDK's 5 s and the SDK warns about
//! the own account's pending `/keys/query` (checked by removing the patch).
//!
//! In a binary of its own: it installs a process-wide log subscriber to
//! catch the SDK's warning.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Synapse, TIMEOUT, TestClient, unique};
use matrix_sdk::ruma::OwnedRoomId;
use matrix_sdk::ruma::events::room::member::{MembershipState, OriginalSyncRoomMemberEvent};
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::{Client, Room};

/// How long matrix-sdk-crypto 0.18 waits for a pending key query before it
/// encrypts anyway (`KEYS_QUERY_WAIT_TIME`): the stall, per send.
const SDK_KEY_QUERY_WAIT: Duration = Duration::from_secs(5);

/// How long the send took, and whether it went out.
type SendResult = (Duration, Result<(), String>);

/// The SDK's log lines, as written.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The sync `next_batch` token and `device_lists.changed` of a sync made
/// with the client's own access token (the same device) since `since`.
async fn raw_sync(client: &Client, since: Option<&str>) -> (String, Vec<String>) {
    let hs = Synapse::get();
    let mut url = format!("{}/_matrix/client/v3/sync?timeout=0", hs.url);
    if let Some(s) = since {
        url.push_str(&format!("&since={s}"));
    }
    let v: serde_json::Value = reqwest::Client::new()
        .get(url)
        .bearer_auth(client.access_token().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let changed = v["device_lists"]["changed"]
        .as_array()
        .map(|a| a.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    (v["next_batch"].as_str().unwrap().to_owned(), changed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_into_a_busy_room_does_not_wait_for_a_join_elsewhere() {
    let log = Captured::default();
    let sink = log.clone();
    tracing_subscriber::fmt()
        .with_env_filter("warn,matrix_sdk_crypto=debug")
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .init();

    let bot = TestClient::new(&unique("stallbot")).await;
    let busy = TestClient::new(&unique("busy")).await;
    let newcomer = TestClient::new(&unique("newcomer")).await;
    let me = bot.user_id.to_string();

    // The busy room: joined, keys shared, a message through.
    let room_b = busy.open_dm(&me).await;
    assert_eq!(bot.wait_invite().await, room_b);
    bot.join(&room_b).await;
    bot.send(&room_b, "first line in the busy room").await;
    busy.expect(&room_b, "first line in the busy room").await;
    // Let the sync loop finish the key queries of that join.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (before_join, _) = raw_sync(&bot.client, None).await;

    // In the sync that brings the join of the new room, send into the busy
    // room (as the bot does when a busy room's visitor answers meanwhile).
    let target: Arc<Mutex<Option<OwnedRoomId>>> = Default::default();
    let sent: Arc<Mutex<Option<SendResult>>> = Default::default();
    {
        let (target, sent, room_b) = (target.clone(), sent.clone(), room_b.clone());
        bot.client.add_event_handler(move |ev: OriginalSyncRoomMemberEvent, room: Room, client: Client| {
            let (target, sent, room_b) = (target.clone(), sent.clone(), room_b.clone());
            async move {
                let mine = Some(ev.state_key.as_ref()) == client.user_id();
                let is_target = target.lock().unwrap().as_deref() == Some(room.room_id());
                if !(mine && is_target && ev.content.membership == MembershipState::Join) {
                    return;
                }
                target.lock().unwrap().take();
                // Awaited here, inside the sync's handling: the send reaches
                // the SDK's key claim before the sync loop's own requests at
                // the end of `sync_once`. In the bot, whose sends run on their
                // own tasks, that is a race that sends already under way win
                // (dozens of rooms under load); here it is won every time.
                let busy_room = client.get_room(&room_b).unwrap();
                let start = Instant::now();
                let r = busy_room.send(RoomMessageEventContent::text_plain("second line in the busy room")).await;
                *sent.lock().unwrap() = Some((start.elapsed(), r.map(|_| ()).map_err(|e| e.to_string())));
            }
        });
    }
    let room_a = newcomer.open_dm(&me).await;
    *target.lock().unwrap() = Some(room_a.clone());
    assert_eq!(bot.wait_invite().await, room_a);
    bot.join(&room_a).await;

    let deadline = Instant::now() + TIMEOUT;
    let (took, result) = loop {
        if let Some(s) = sent.lock().unwrap().take() {
            break s;
        }
        assert!(Instant::now() < deadline, "the join's sync never came, or the send never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    result.expect("the send into the busy room failed");
    busy.expect(&room_b, "second line in the busy room").await;

    // The precondition of the stall: the homeserver did mark the account's
    // own devices as changed in the sync that brought the join.
    let (_, changed) = raw_sync(&bot.client, Some(&before_join)).await;
    assert!(changed.contains(&me), "the join's sync did not list the bot's own account as changed: {changed:?}");

    let text = log.text();
    let stalls: Vec<&str> = text.lines().filter(|l| l.contains("pending `/keys/query`") && l.contains(&me)).collect();
    eprintln!("send into the busy room during the join's sync took {took:?}");
    assert!(stalls.is_empty(), "the send waited for the own account's key query: {stalls:#?}");
    assert!(
        took < SDK_KEY_QUERY_WAIT,
        "the send took {took:?}, the SDK's wait for a key query is {SDK_KEY_QUERY_WAIT:?}"
    );
}
