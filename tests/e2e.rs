#![recursion_limit = "256"]
// A test (or the load generator) that cannot go on fails loudly: unwrap is fine.
#![allow(clippy::unwrap_used)]
//! Whole cases against a real Synapse: a visitor and counsellors on their
//! own E2EE clients, the real `intake-bot` binary in between.

mod common;

use std::time::Duration;

use common::{Scene, TIMEOUT};
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;

/// Answers the six questions of the example questionnaire, each after the
/// question has arrived.
/// Answers the six questions, each once it has arrived; with
/// `first_seen`, the first question has been read already.
async fn answer_all(s: &Scene, room: &matrix_sdk::ruma::RoomId, answers: [&str; 6], first_seen: bool) {
    for (i, a) in answers.iter().enumerate() {
        if i > 0 || !first_seen {
            s.visitor.expect(room, &format!("({}/6)", i + 1)).await;
        }
        s.visitor.send(room, a).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_case_ends_in_an_exported_record() {
    let mut s = Scene::new(1, &["nl", "en"], 120, "").await;
    // Dutch is the first language, so staff-facing texts are Dutch.
    s.staff(0, "!available", "Je bent beschikbaar").await;
    let v = &s.visitor;
    let room = v.open_dm(&s.bot.user_id).await;
    let menu = v.expect(&room, "Which language").await;
    assert!(menu.contains("1. Nederlands") && menu.contains("2. English"), "{menu}");
    v.send(&room, "english").await;
    // The greeting and the first question come as one message (one
    // notification on the visitor's phone, not two).
    let greeting = v.expect(&room, "anonymous").await;
    assert!(greeting.contains("112") && greeting.contains("(1/6)"), "{greeting}");
    // By number, by label with odd case, by label in the other language, skip.
    answer_all(&s, &room, ["1", "15 TO 17", "Iemand dwingt me te werken", "skip", "more than one", "yes"], true).await;
    v.expect(&room, "looking for a counsellor").await;

    let c = &s.counsellors[0];
    // The bot bootstrapped cross-signing: counsellors see its identity.
    let bot_id: matrix_sdk::ruma::OwnedUserId = s.bot.user_id.as_str().try_into().unwrap();
    let identity = c.client.encryption().request_user_identity(&bot_id).await.unwrap();
    assert!(identity.is_some(), "the bot has no cross-signing identity");
    let case_room = c.wait_invite().await;
    assert_eq!(case_room, room);
    c.join(&case_room).await;
    // The summary is readable: it was encrypted for the counsellor's device.
    let summary = c.expect(&room, "!close").await;
    assert!(summary.contains("Voor mezelf"), "{summary}");
    assert!(summary.contains("15 tot 17"), "{summary}");
    assert!(summary.contains("Iemand dwingt me te werken"), "{summary}");
    assert!(summary.contains("(overgeslagen)"), "{summary}");
    v.expect(&room, "A counsellor is here").await;

    c.send(&room, "Hi, I am here to help.").await;
    v.expect(&room, "I am here to help").await;
    c.send(&room, "!close advice").await;
    let bye = v.expect(&room, "ended this chat").await;
    assert!(bye.contains("112"));

    // The bot leaves the room once the case is over.
    let vroom = v.room(&room).await;
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let members = vroom.members(matrix_sdk::RoomMemberships::JOIN).await.unwrap();
        if !members.iter().any(|m| m.user_id().as_str() == s.bot.user_id) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "bot did not leave");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // While the bot runs, the store is in use.
    let out = s.bot.cli(&["export"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));

    let (status, took) = s.bot.stop();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");

    let records = s.bot.export();
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r["language"], "en");
    assert_eq!(r["outcome"], "advice");
    assert_eq!(r["urgent"], false);
    assert_eq!(r["intake_completed"], true);
    assert_eq!(r["counsellor_joined"], true);
    assert_eq!(r["answers"]["for_whom"], "self");
    assert_eq!(r["answers"]["age"], "15_17");
    assert_eq!(r["answers"]["what"], "labour");
    assert_eq!(r["answers"]["ongoing"], "skipped");
    assert_eq!(r["answers"]["perpetrators"], "more");
    assert_eq!(r["answers"]["safe_now"], "yes");
    let week = r["week"].as_str().unwrap();
    assert!(week.len() == 8 && &week[4..6] == "-W", "{week}");
    assert_eq!(r["record"].as_str().unwrap().len(), 24);

    let csv = s.bot.cli(&["export", "--format", "csv"]);
    let csv = String::from_utf8(csv.stdout).unwrap();
    assert!(csv.starts_with("record,week,language,"), "{csv}");
    assert!(csv.lines().nth(1).unwrap().contains(",advice,"), "{csv}");

    let stats = s.bot.cli(&["stats"]);
    let stats = String::from_utf8(stats.stdout).unwrap();
    assert!(stats.contains("Cases: 1"), "{stats}");
    assert!(stats.contains("15_17"), "{stats}");
    // One case: its count shows, its answers do not (min_count 5).
    assert!(stats.contains("<5"), "{stats}");
    let json = s.bot.cli(&["stats", "--json", "--by", "week"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["total"]["cases"], 1);
    assert_eq!(json["total"]["answers"]["age"]["15_17"], serde_json::Value::Null);
    assert_eq!(json["total"]["answers"]["age"]["under_15"], 0);
    assert_eq!(json["periods"][0]["period"], r["week"]);
    // A period without the case.
    let json = s.bot.cli(&["stats", "--json", "--to", "2020-W01"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["total"]["cases"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_answer_is_reasked() {
    let s = Scene::new(1, &["en"], 120, "").await;
    let v = &s.visitor;
    let room = v.open_dm(&s.bot.user_id).await;
    v.expect(&room, "(1/6)").await;
    v.send(&room, "banana").await;
    let reask = v.expect(&room, "Sorry").await;
    assert!(reask.contains("(1/6) Who are you chatting for?"), "{reask}");
    v.send(&room, "7").await;
    v.expect(&room, "Sorry").await;
    v.send(&room, "2").await;
    v.expect(&room, "(2/6)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_from_someone_else_changes_nothing() {
    let mut s = Scene::new(2, &["en"], 120, "").await;
    s.staff(0, "!available", "You are available").await;
    let v = &s.visitor;
    let room = v.open_dm(&s.bot.user_id).await;
    answer_all(&s, &room, ["1", "1", "1", "1", "1", "1"], false).await;
    let c0 = &s.counsellors[0];
    let c1 = &s.counsellors[1];
    assert_eq!(c0.wait_invite().await, room);
    c0.join(&room).await;
    c0.expect(&room, "!close").await;
    // The visitor typing !close is ordinary text.
    v.send(&room, "!close advice").await;
    // A counsellor who is not on the case and joins anyway is told the case
    // has moved on and removed.
    v.room(&room).await.invite_user_by_id(&c1.user_id).await.unwrap();
    c1.join(&c1.wait_invite().await).await;
    c1.expect(&room, "moved on").await;
    // Whatever c1 manages to send before removal is ordinary text.
    let _ = c1.room(&room).await.send(RoomMessageEventContent::text_plain("!close referred")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = v.drain(&room);
    assert!(!got.iter().any(|m| m.contains("ended this chat")), "{got:?}");
    // The real counsellor closes: exactly one record, with their tag.
    c0.send(&room, "!close other").await;
    v.expect(&room, "ended this chat").await;
    s.bot.stop();
    let records = s.bot.export();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["outcome"], "other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_who_leaves_gives_an_abandoned_record() {
    let mut s = Scene::new(1, &["en"], 120, "").await;
    let v = &s.visitor;
    let room = v.open_dm(&s.bot.user_id).await;
    v.expect(&room, "(1/6)").await;
    v.send(&room, "1").await;
    v.expect(&room, "(2/6)").await;
    v.leave(&room).await;
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !s.bot.log_text().contains("outcome recorded") {
        assert!(std::time::Instant::now() < deadline, "no record written:\n{}", s.bot.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.bot.stop();
    let records = s.bot.export();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["outcome"], "abandoned");
    assert_eq!(records[0]["step_reached"], "age");
    assert_eq!(records[0]["intake_completed"], false);
    assert_eq!(records[0]["answers"]["for_whom"], "self");
}

/// A 1x1 PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49,
    0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0, 0x1f, 0x00, 0x05, 0x00, 0x01, 0xff, 0x89, 0x99, 0x3d,
    0x1d, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counsellors_see_a_profile_a_neutral_room_name_and_a_rich_summary() {
    let mut s = Scene::new(1, &["en"], 120, "").await;
    // Give the bot a display name and an avatar, and restart it.
    s.bot.stop();
    std::fs::write(s.bot.config.parent().unwrap().join("avatar.png"), PNG).unwrap();
    let cfg = std::fs::read_to_string(&s.bot.config).unwrap().replace(
        "device_name = \"intake-bot test\"",
        "device_name = \"intake-bot test\"\ndisplay_name = \"Chat\"\navatar_file = \"avatar.png\"",
    );
    std::fs::write(&s.bot.config, cfg).unwrap();
    s.bot.start();
    let c = &s.counsellors[0];
    // The online notice is HTML with a plain fallback.
    let online = c.expect_msg(&s.staff_room, "intake-bot is online").await;
    assert!(online.html.is_some(), "{online:?}");
    let bot_id: matrix_sdk::ruma::OwnedUserId = s.bot.user_id.as_str().try_into().unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let p = c.client.account().fetch_user_profile_of(&bot_id).await.unwrap();
        let name = p.get("displayname").and_then(|v| v.as_str()).map(str::to_owned);
        let avatar = p.get("avatar_url").and_then(|v| v.as_str()).map(str::to_owned);
        if name.as_deref() == Some("Chat") && avatar.as_deref().is_some_and(|a| a.starts_with("mxc://")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "profile not set: {name:?} {avatar:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    s.staff(0, "!available", "You are available").await;
    let v = &s.visitor;
    let room = v.open_dm(&s.bot.user_id).await;
    answer_all(&s, &room, ["1", "1", "1", "1", "1", "1"], false).await;
    let case_room = c.wait_invite().await;
    // The invite shows a neutral name, not the visitor's.
    let name = c.client.get_room(&case_room).and_then(|r| r.name()).unwrap_or_default();
    // The same for every case: room names are not encrypted.
    assert_eq!(name, "Chat", "room name");
    c.join(&case_room).await;
    let summary = c.expect_msg(&room, "!close").await;
    let html = summary.html.expect("the summary has an HTML body");
    assert!(html.contains("<strong>For myself</strong>"), "{html}");
    assert!(html.contains("<ul>") && html.contains("<li>"), "{html}");
    assert!(summary.body.contains("- Who are you chatting for? For myself"), "{}", summary.body);
    c.send(&room, "!close advice").await;
    v.expect(&room, "ended this chat").await;
    // A restart with the same avatar does not upload it again.
    s.bot.stop();
    s.bot.start();
    c.expect(&s.staff_room, "intake-bot is online").await;
    s.bot.stop();
    let log = s.bot.log_text();
    assert_eq!(log.matches("avatar uploaded").count(), 1, "{log}");
}
