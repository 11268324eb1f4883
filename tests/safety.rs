#![recursion_limit = "256"]
//! Privacy and safety against a real Synapse: planted canaries never reach
//! disk or logs, unencrypted and group rooms get no intake, emergencies and
//! odd input are answered safely.

mod common;

use std::time::{Duration, Instant};

use common::{Scene, TIMEOUT, TestClient, all_files, contains_bytes, unique};
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::RoomId;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset};
use matrix_sdk::ruma::events::room::message::{LocationMessageEventContent, MessageType, RoomMessageEventContent};
use matrix_sdk::RoomMemberships;

/// Every message the bot sent in `room`, as the visitor's client fetches
/// it from the server: (was it encrypted, body or type).
async fn bot_messages(v: &TestClient, room: &RoomId, bot: &str) -> Vec<(bool, String)> {
    let r = v.room(room).await;
    let msgs = r.messages(MessagesOptions::backward()).await.unwrap();
    let mut out = Vec::new();
    for ev in msgs.chunk {
        let raw = ev.raw();
        if raw.get_field::<String>("sender").unwrap().as_deref() != Some(bot) {
            continue;
        }
        let ty = raw.get_field::<String>("type").unwrap().unwrap_or_default();
        if ty == "m.room.message" || ty == "m.room.encrypted" {
            let body = raw.get_field::<serde_json::Value>("content").unwrap().unwrap_or_default()["body"]
                .as_str()
                .unwrap_or(&ty)
                .to_owned();
            out.push((ev.encryption_info().is_some() || ty == "m.room.encrypted", body));
        }
    }
    out
}

async fn wait_bot_gone(v: &TestClient, room: &RoomId, bot: &str) {
    let r = v.room(room).await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let _ = r.sync_members().await;
        let members = r.members(RoomMemberships::JOIN).await.unwrap();
        if !members.iter().any(|m| m.user_id().as_str() == bot) {
            return;
        }
        assert!(Instant::now() < deadline, "bot did not leave");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_canaries_never_reach_disk_or_logs() {
    let tag = unique("");
    let free_text = format!("CanaryFreeText{tag}");
    let waiting_text = format!("CanaryWaiting{tag}");
    let display = format!("CanaryDisplay{tag}");
    let extra = r#"
[[intake.questions]]
id = "story"
kind = "text"
prompt = { en = "Tell us what happened, in a few words." }
"#;
    let mut s = Scene::new(1, &["en"], 120, extra).await;
    s.staff(0, "!available", "You are available").await;
    let v = &s.visitor;
    v.client.account().set_display_name(Some(&display)).await.unwrap();
    let room = v.open_dm(&s.bot.user_id).await;
    for (i, a) in ["1", "2", "1", "1", "2", "1"].iter().enumerate() {
        v.expect(&room, &format!("({}/7)", i + 1)).await;
        v.send(&room, a).await;
    }
    v.expect(&room, "(7/7)").await;
    v.send(&room, &format!("He took my phone {free_text}")).await;
    v.expect(&room, "looking for a counsellor").await;
    v.send(&room, &format!("still there? {waiting_text}")).await;
    v.expect(&room, "will read what you write").await;
    let c = &s.counsellors[0];
    assert_eq!(c.wait_invite().await, room);
    c.join(&room).await;
    let summary = c.expect(&room, "New chat").await;
    // The counsellor does get the visitor's own words, inside the room.
    assert!(summary.contains(&free_text) && summary.contains(&waiting_text), "{summary}");
    c.send(&room, "!close advice").await;
    v.expect(&room, "ended this chat").await;
    let (st, _) = s.bot.stop();
    assert!(st.success());

    let records = s.bot.export();
    assert_eq!(records[0]["answers"]["story"], "answered");

    let visitor_id = v.user_id.to_string();
    let localpart = v.user_id.localpart().to_owned();
    let canaries: Vec<(&str, String)> = vec![
        ("visitor user id", visitor_id),
        ("visitor localpart", localpart),
        ("visitor display name", display),
        ("room id", room.to_string()),
        ("room id without sigil", room.as_str()[1..].to_owned()),
        ("free-text answer", free_text),
        ("message while waiting", waiting_text),
    ];
    let files = all_files(&s.bot.data_dir());
    assert!(files.len() > 3, "the data dir holds the stores: {files:?}", files = files.iter().map(|f| &f.0).collect::<Vec<_>>());
    let log = s.bot.log_text();
    // Positive controls: the scan does read the stores and the log.
    assert!(
        files.iter().any(|(_, b)| contains_bytes(b, s.bot.user_id.as_bytes())),
        "the bot's own id (in session.json) should be found by the scan"
    );
    let case_id = records[0]["case"].as_str().unwrap();
    assert!(log.contains(case_id), "the log names the case by its case id");
    assert!(log.contains("DEBUG") || log.contains("TRACE") || log.contains("INFO"));
    for (what, value) in &canaries {
        for (path, bytes) in &files {
            assert!(!contains_bytes(bytes, value.as_bytes()), "{what} found in {}", path.display());
        }
        assert!(!log.contains(value.as_str()), "{what} found in the log");
    }
    // The outputs for coordinators hold nothing beyond the record either.
    for args in [&["export"][..], &["export", "--format", "csv"], &["stats"], &["stats", "--json"]] {
        let out = String::from_utf8(s.bot.cli(args).stdout).unwrap();
        for (what, value) in &canaries {
            assert!(!out.contains(value.as_str()), "{what} in {args:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emergency_word_gets_help_at_once_and_tells_staff() {
    let s = Scene::new(1, &["en"], 120, "").await;
    let v = &s.visitor;
    let room = v.open_dm(&s.bot.user_id).await;
    v.expect(&room, "(1/6)").await;
    v.send(&room, "Please, HELP me now!").await;
    let help = v.expect(&room, "call 112").await;
    assert!(help.contains("danger"));
    let staff = s.counsellors[0].expect(&s.staff_room, "URGENT").await;
    assert!(!staff.contains(v.user_id.as_str()) && !staff.contains(room.as_str()), "{staff}");
    // The question stays open: "1" still answers it.
    v.send(&room, "1").await;
    v.expect(&room, "(2/6)").await;
    // Odd input: a location is not text.
    let loc = LocationMessageEventContent::new("here".into(), "geo:52.37,4.89".into());
    v.room(&room).await.send(RoomMessageEventContent::new(MessageType::Location(loc))).await.unwrap();
    v.expect(&room, "only read text").await;
    // stop ends the case with the help numbers.
    v.send(&room, "Stop").await;
    let bye = v.expect(&room, "chat has ended").await;
    assert!(bye.contains("112"));
    wait_bot_gone(v, &room, &s.bot.user_id).await;
    // Every message the bot sent here was encrypted.
    let sent = bot_messages(v, &room, &s.bot.user_id).await;
    assert!(sent.len() >= 5, "{sent:?}");
    assert!(sent.iter().all(|(enc, _)| *enc), "{sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unencrypted_rooms_are_encrypted_or_refused() {
    let mut s = Scene::new(1, &["en"], 120, "").await;
    let v = &s.visitor;
    // Element-style DM without encryption: the bot is a creator and turns
    // encryption on; everything it says is encrypted.
    let mut req = CreateRoom::new();
    req.invite = vec![s.bot.user_id.as_str().try_into().unwrap()];
    req.is_direct = true;
    req.preset = Some(RoomPreset::TrustedPrivateChat);
    let room = v.client.create_room(req).await.unwrap().room_id().to_owned();
    v.expect(&room, "(1/6)").await;
    let sent = bot_messages(v, &room, &s.bot.user_id).await;
    assert!(!sent.is_empty() && sent.iter().all(|(enc, _)| *enc), "{sent:?}");

    // A private_chat room gives the bot no power: one plain explanation,
    // no question, and the bot leaves.
    let mut req = CreateRoom::new();
    req.invite = vec![s.bot.user_id.as_str().try_into().unwrap()];
    req.preset = Some(RoomPreset::PrivateChat);
    let plain = v.client.create_room(req).await.unwrap().room_id().to_owned();
    let why = v.expect(&plain, "not encrypted").await;
    assert!(why.contains("112"), "{why}");
    wait_bot_gone(v, &plain, &s.bot.user_id).await;
    let sent = bot_messages(v, &plain, &s.bot.user_id).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(!sent[0].1.contains("(1/6)"));

    s.bot.stop();
    let records = s.bot.export();
    assert!(records.iter().any(|r| r["outcome"] == "unencrypted"), "{records:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_rooms_are_explained_and_left() {
    let s = Scene::new(1, &["en"], 120, "").await;
    let v = &s.visitor;
    let friend = TestClient::new(&unique("friend")).await;
    let mut req = CreateRoom::new();
    req.invite = vec![friend.user_id.clone()];
    req.preset = Some(RoomPreset::TrustedPrivateChat);
    req.initial_state = vec![
        matrix_sdk::ruma::events::InitialStateEvent::with_empty_state_key(
            matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room = v.client.create_room(req).await.unwrap().room_id().to_owned();
    friend.join(&friend.wait_invite().await).await;
    let bot_id: matrix_sdk::ruma::OwnedUserId = s.bot.user_id.as_str().try_into().unwrap();
    v.room(&room).await.invite_user_by_id(&bot_id).await.unwrap();
    let why = v.expect(&room, "only for one person").await;
    assert!(why.contains("112"));
    wait_bot_gone(v, &room, &s.bot.user_id).await;
    assert!(v.drain(&room).iter().all(|m| !m.contains("(1/6)")));
}
