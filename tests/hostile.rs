#![recursion_limit = "256"]
// A test (or the load generator) that cannot go on fails loudly: unwrap is fine.
#![allow(clippy::unwrap_used)]
//! Hostile federation against a real Synapse (DESIGN.md, privacy rule 8):
//! strangers invited beside the bot or in the middle of a case, open and
//! crowded rooms, one account opening many chats, the total cap, and the
//! bot's `m.direct`. Each test plays the attacker with its own E2EE client.

mod common;

use std::time::{Duration, Instant};

use common::{Scene, Synapse, TIMEOUT, TestClient, bot_messages, raw_history, unique};
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset};
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::room::JoinRule;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{OwnedUserId, RoomId};

/// The bot's encrypted events in `room` as the server stores them, read
/// with the token of `reader` (a member who may see them).
async fn ciphertexts(reader: &TestClient, room: &RoomId, bot: &str) -> Vec<Raw<OriginalSyncRoomEncryptedEvent>> {
    raw_history(reader, room, None)
        .await
        .iter()
        .filter(|e| e["sender"] == bot && e["type"] == "m.room.encrypted")
        .map(|e| Raw::from_json(serde_json::value::to_raw_value(e).unwrap()))
        .collect()
}

/// Whether the room's history holds a join of `user`, read with the token
/// of `reader`.
async fn ever_joined(reader: &TestClient, room: &RoomId, user: &str) -> bool {
    let chunk = raw_history(reader, room, None).await;
    assert!(chunk.iter().any(|e| e["type"] == "m.room.create"), "the whole history was read");
    chunk.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == user && e["content"]["membership"] == "join")
}

/// How many of `events` `who` can decrypt, with every key it holds.
async fn decryptable(who: &TestClient, room: &RoomId, events: &[Raw<OriginalSyncRoomEncryptedEvent>]) -> usize {
    let r = who.room(room).await;
    let mut n = 0;
    for e in events {
        if r.decrypt_event(e, None).await.is_ok_and(|ev| ev.encryption_info().is_some()) {
            n += 1;
        }
    }
    n
}

/// The bot's membership in `room` as `who` sees it from the server.
async fn bot_membership(who: &TestClient, room: &RoomId, bot: &str) -> Option<String> {
    let r = who.room(room).await;
    let _ = r.sync_members().await;
    let bot: OwnedUserId = bot.try_into().unwrap();
    let m = r.get_member_no_sync(&bot).await.unwrap()?;
    Some(m.membership().to_string())
}

/// Waits until the bot's membership in `room` is `want`.
async fn wait_bot_membership(who: &TestClient, room: &RoomId, bot: &str, want: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = bot_membership(who, room, bot).await;
        if now.as_deref() == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "bot membership stayed {now:?}, wanted {want}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// An encrypted room made the way Element makes a DM, inviting `invite`.
async fn trusted_private(creator: &TestClient, invite: &[&str]) -> matrix_sdk::ruma::OwnedRoomId {
    let mut req = CreateRoom::new();
    req.invite = invite.iter().map(|u| (*u).try_into().unwrap()).collect();
    req.is_direct = true;
    req.preset = Some(RoomPreset::TrustedPrivateChat);
    req.initial_state = vec![
        InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults()).to_raw_any(),
    ];
    creator.client.create_room(req).await.unwrap().room_id().to_owned()
}

/// Reads the bot's `m.direct` account data through the admin API.
async fn bot_direct(bot: &str) -> serde_json::Value {
    let hs = Synapse::get();
    let token = hs.admin_token().await;
    let url = format!("{}/_synapse/admin/v1/users/{bot}/accountdata", hs.url);
    let resp: serde_json::Value =
        reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap().json().await.unwrap();
    resp["account_data"]["global"]["m.direct"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accomplice_invited_beside_the_bot_decrypts_nothing() {
    let mut s = Scene::new(1, &["en"], 120, "").await;
    let v = &s.visitor;
    let accomplice = TestClient::new(&unique("accomplice")).await;
    let room = trusted_private(v, &[s.bot.user_id.as_str(), accomplice.user_id.as_str()]).await;
    // One short notice, harmless for a stranger, then the bot is gone.
    let why = v.expect(&room, "one-to-one").await;
    assert!(!why.to_lowercase().contains("helpline"), "{why}");
    wait_bot_membership(v, &room, &s.bot.user_id, "leave").await;
    let seen = bot_messages(v, &room, &s.bot.user_id).await;
    assert_eq!(seen.len(), 1, "one message and no question: {seen:?}");
    assert!(seen[0].decrypted, "the visitor reads it: {seen:?}");
    // The accomplice joins afterwards. History is `joined` now, so the
    // server does not even show them the bot's message; and handed the
    // ciphertext (as the visitor's server holds it), with time for any room
    // key to reach them, they cannot decrypt it.
    let sealed = ciphertexts(v, &room, &s.bot.user_id).await;
    assert_eq!(sealed.len(), 1, "the notice went out encrypted");
    assert_eq!(decryptable(v, &room, &sealed).await, 1, "positive control: the visitor can");
    accomplice.join(&accomplice.wait_invite().await).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(bot_messages(&accomplice, &room, &s.bot.user_id).await.iter().all(|m| !m.decrypted));
    assert_eq!(decryptable(&accomplice, &room, &sealed).await, 0, "the accomplice got a room key");
    assert!(accomplice.drain(&room).is_empty());
    s.bot.stop();
    assert!(s.bot.export().is_empty(), "a refused room leaves no record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_and_crowded_rooms_are_declined_unseen() {
    let s = Scene::new(1, &["en"], 120, "").await;
    let v = &s.visitor;
    // A public room: declined without joining; nothing said, nothing asked.
    let mut req = CreateRoom::new();
    req.invite = vec![s.bot.user_id.as_str().try_into().unwrap()];
    req.preset = Some(RoomPreset::PublicChat);
    let public = v.client.create_room(req).await.unwrap().room_id().to_owned();
    wait_bot_membership(v, &public, &s.bot.user_id, "leave").await;
    // A room that someone else has already joined: the same.
    let friend = TestClient::new(&unique("friend")).await;
    let crowded = trusted_private(v, &[friend.user_id.as_str()]).await;
    friend.join(&friend.wait_invite().await).await;
    let bot_id: OwnedUserId = s.bot.user_id.as_str().try_into().unwrap();
    v.room(&crowded).await.invite_user_by_id(&bot_id).await.unwrap();
    wait_bot_membership(v, &crowded, &s.bot.user_id, "leave").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for room in [&public, &crowded] {
        assert!(bot_messages(v, room, &s.bot.user_id).await.is_empty(), "the bot said something");
        assert!(!ever_joined(v, room, &s.bot.user_id).await, "the bot joined before declining");
    }
    let log = s.bot.log_text();
    assert!(!log.contains("new case"), "no case was opened");
    assert!(log.contains("reason=\"open_room\"") || log.contains("reason=open_room"), "public room refused as open");
    assert!(log.contains("reason=\"group\"") || log.contains("reason=group"), "crowded room refused as a group");
    // A real chat still works afterwards.
    let dm = v.open_dm(&s.bot.user_id).await;
    v.expect(&dm, "(1/6)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_invited_mid_case_reads_nothing_and_staff_hear_it() {
    let mut s = Scene::new(1, &["en"], 120, "").await;
    s.staff(0, "!available", "You are available").await;
    let v = &s.visitor;
    let room = s.case_with_counsellor(["1", "2", "1", "1", "2", "1"]).await;
    let c = &s.counsellors[0];
    v.expect(&room, "counsellor is here").await;
    // The visitor's account (or whoever holds it) invites a stranger.
    let stranger = TestClient::new(&unique("stranger")).await;
    v.room(&room).await.invite_user_by_id(&stranger.user_id).await.unwrap();
    // The counsellor is told in the room, staff by case id, and the bot leaves.
    let warn = c.expect(&room, "no longer one-to-one").await;
    assert!(!warn.contains(v.user_id.as_str()), "{warn}");
    let staff = c.expect(&s.staff_room, "no longer one-to-one").await;
    assert!(!staff.contains(v.user_id.as_str()) && !staff.contains(room.as_str()), "{staff}");
    wait_bot_membership(v, &room, &s.bot.user_id, "leave").await;
    // The visitor sees that warning too (it says nothing about them), and
    // nothing else after the invite.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after: Vec<String> = v.drain(&room).into_iter().filter(|m| !m.contains("counsellor is here")).collect();
    assert!(after.iter().all(|m| m.contains("no longer one-to-one")), "{after:?}");
    // The stranger joins and can decrypt none of the bot's messages, the
    // warning sent while they were invited included.
    let sealed = ciphertexts(v, &room, &s.bot.user_id).await;
    assert!(sealed.len() >= 3, "questions, summary, warning: {}", sealed.len());
    stranger.join(&stranger.wait_invite().await).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(decryptable(&stranger, &room, &sealed).await, 0, "the stranger got a room key");
    s.bot.stop();
    let records = s.bot.export();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["outcome"], "group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_invited_before_a_counsellor_stops_the_case_silently() {
    let mut s = Scene::new(1, &["en"], 120, "").await;
    let v = &s.visitor;
    let room = v.open_dm(&s.bot.user_id).await;
    v.expect(&room, "(1/6)").await;
    let stranger = TestClient::new(&unique("stranger")).await;
    v.room(&room).await.invite_user_by_id(&stranger.user_id).await.unwrap();
    s.counsellors[0].expect(&s.staff_room, "no longer one-to-one").await;
    wait_bot_membership(v, &room, &s.bot.user_id, "leave").await;
    // The question was the last thing the bot said; no counsellor invited
    // (the counsellor is away, and nothing is waiting for them).
    v.send(&room, "1").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(v.drain(&room).is_empty(), "the bot spoke after the stranger came");
    s.bot.stop();
    let records = s.bot.export();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["outcome"], "group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_gets_one_chat_and_the_bot_lists_no_visitor_in_m_direct() {
    let mut s = Scene::new(1, &["en"], 120, "").await;
    let v = &s.visitor;
    let first = v.open_dm(&s.bot.user_id).await;
    v.expect(&first, "(1/6)").await;
    for _ in 0..2 {
        let again = v.open_dm(&s.bot.user_id).await;
        let why = v.expect(&again, "already have a chat open").await;
        assert!(!why.contains("(1/6)"), "{why}");
        wait_bot_membership(v, &again, &s.bot.user_id, "leave").await;
        assert_eq!(bot_messages(v, &again, &s.bot.user_id).await.len(), 1);
    }
    // The first chat goes on as if nothing happened.
    v.send(&first, "1").await;
    v.expect(&first, "(2/6)").await;
    // The bot's m.direct lists no visitor, during the case and after it.
    let direct = bot_direct(&s.bot.user_id).await;
    assert!(!direct.to_string().contains(v.user_id.as_str()), "m.direct: {direct}");
    v.send(&first, "stop").await;
    v.expect(&first, "chat has ended").await;
    wait_bot_membership(v, &first, &s.bot.user_id, "leave").await;
    let direct = bot_direct(&s.bot.user_id).await;
    assert!(!direct.to_string().contains(v.user_id.as_str()), "m.direct: {direct}");
    // With the first chat over, a new one is a case again.
    let next = v.open_dm(&s.bot.user_id).await;
    v.expect(&next, "(1/6)").await;
    s.bot.stop();
    let records = s.bot.export();
    assert_eq!(records.len(), 1, "only the stopped case has a record: {records:?}");
    assert_eq!(records[0]["outcome"], "stopped");
    assert!(s.bot.log_text().contains("cap_user"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_cap_turns_new_chats_away_until_one_ends() {
    let s = Scene::new(1, &["en"], 120, "[limits]\nmax_open_cases = 2\n").await;
    let a = &s.visitor;
    let b = TestClient::new(&unique("visitor")).await;
    let c = TestClient::new(&unique("visitor")).await;
    let ra = a.open_dm(&s.bot.user_id).await;
    a.expect(&ra, "(1/6)").await;
    let rb = b.open_dm(&s.bot.user_id).await;
    b.expect(&rb, "(1/6)").await;
    // Full: one short notice with the emergency number, no question.
    let rc = c.open_dm(&s.bot.user_id).await;
    let busy = c.expect(&rc, "very busy").await;
    assert!(busy.contains("112") && !busy.contains("(1/6)"), "{busy}");
    wait_bot_membership(&c, &rc, &s.bot.user_id, "leave").await;
    // An emergency word from a visitor in a case is still answered at once.
    a.send(&ra, "I am in danger").await;
    a.expect(&ra, "call 112").await;
    // One case ends; the next new chat is a case again.
    b.send(&rb, "stop").await;
    b.expect(&rb, "chat has ended").await;
    wait_bot_membership(&b, &rb, &s.bot.user_id, "leave").await;
    let rc2 = c.open_dm(&s.bot.user_id).await;
    c.expect(&rc2, "(1/6)").await;
    assert!(s.bot.log_text().contains("cap_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_room_opened_to_strangers_ends_the_case() {
    let mut s = Scene::new(1, &["en"], 120, "").await;
    let v = &s.visitor;
    let room = v.open_dm(&s.bot.user_id).await;
    v.expect(&room, "(1/6)").await;
    v.room(&room).await.privacy_settings().update_join_rule(JoinRule::Public).await.unwrap();
    let staff = s.counsellors[0].expect(&s.staff_room, "no longer one-to-one").await;
    assert!(!staff.contains(v.user_id.as_str()), "{staff}");
    wait_bot_membership(v, &room, &s.bot.user_id, "leave").await;
    s.bot.stop();
    let records = s.bot.export();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["outcome"], "group");
}
