#![recursion_limit = "256"]
// A test (or the load generator) that cannot go on fails loudly: unwrap is fine.
#![allow(clippy::unwrap_used)]
//! An invite to a room of thousands (DESIGN.md, privacy rule 8): the bot
//! looks before it joins, declines the room unseen, and never loads its
//! members. In a binary of its own: building the room keeps Synapse busy
//! for a while, which would slow other tests' conversations.

mod common;

use std::time::{Duration, Instant};

use common::{Scene, Synapse, TIMEOUT, raw_history};
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset};
use matrix_sdk::ruma::room::JoinRule;
use matrix_sdk::ruma::{OwnedUserId, RoomId};

/// Members of the crowded room besides its creator.
const CROWD: usize = 5000;

/// The bot process's resident memory in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Creates `n` local users through the admin API and joins each to `room`
/// (public while they join), a few requests at a time.
async fn fill(room: &RoomId, n: usize, admin: &str) {
    let hs = Synapse::get();
    let http = reqwest::Client::new();
    let tag = common::unique("crowd");
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let http = http.clone();
        let tag = tag.clone();
        let room = room.to_owned();
        let admin = admin.to_owned();
        let permit = permits.clone().acquire_owned().await.unwrap();
        tasks.spawn(async move {
            let _permit = permit;
            {
                let user = format!("@{tag}m{i}:localhost");
                let r = http
                    .put(format!("{}/_synapse/admin/v2/users/{user}", hs.url))
                    .bearer_auth(&admin)
                    .json(&serde_json::json!({}))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "creating {user}: {}", r.status());
                let r = http
                    .post(format!("{}/_synapse/admin/v1/join/{room}", hs.url))
                    .bearer_auth(&admin)
                    .json(&serde_json::json!({ "user_id": user }))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "joining {user}: {}", r.status());
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_of_thousands_is_declined_unseen_without_a_memory_jump() {
    let s = Scene::new(1, &["en"], 120, "").await;
    let v = &s.visitor;
    let hs = Synapse::get();
    let admin = hs.admin_token().await;
    let mut req = CreateRoom::new();
    req.preset = Some(RoomPreset::PublicChat);
    let room = v.client.create_room(req).await.unwrap().room_id().to_owned();
    let t = Instant::now();
    fill(&room, CROWD, &admin).await;
    eprintln!("crowd: {CROWD} members joined in {:?}", t.elapsed());
    // Invite-only again, so that only the crowd can make the bot refuse.
    let r = v.room(&room).await;
    r.privacy_settings().update_join_rule(JoinRule::Invite).await.unwrap();
    let pid = s.bot.pid();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kb(pid);
    let bot: OwnedUserId = s.bot.user_id.as_str().try_into().unwrap();
    r.invite_user_by_id(&bot).await.unwrap();
    // Declined: the bot's only event in the room is its leave (a join would
    // be an event of its own too).
    let deadline = Instant::now() + TIMEOUT;
    let events = loop {
        let chunk = raw_history(v, &room, Some(serde_json::json!({ "senders": [s.bot.user_id] }))).await;
        if !chunk.is_empty() {
            break chunk;
        }
        assert!(Instant::now() < deadline, "the bot never answered the invite");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["content"]["membership"], "leave", "{events:#?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kb(pid);
    eprintln!("crowd: bot RSS {before} kB before the invite, {after} kB after");
    // Joining would bring 5,000 member events into the SDK's store and
    // memory (tens of MB); looking costs one request.
    assert!(after < before + 10 * 1024, "RSS grew from {before} kB to {after} kB");
    assert!(s.bot.log_text().contains("reason=\"group\""), "refused as a crowded room");
    // The bot goes on answering real visitors.
    let dm = v.open_dm(&s.bot.user_id).await;
    v.expect(&dm, "(1/6)").await;
}
