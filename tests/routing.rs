#![recursion_limit = "256"]
// A test (or the load generator) that cannot go on fails loudly: unwrap is fine.
#![allow(clippy::unwrap_used)]
//! Routing against a real Synapse: offers that time out, the queue, and
//! transfers.

mod common;

use std::time::{Duration, Instant};

use common::{Scene, TIMEOUT, TestClient};
use matrix_sdk::RoomState;
use matrix_sdk::ruma::RoomId;

async fn intake(s: &Scene, room: &RoomId) {
    for (i, a) in ["1", "1", "1", "1", "1", "1"].iter().enumerate() {
        s.visitor.expect(room, &format!("({}/6)", i + 1)).await;
        s.visitor.send(room, a).await;
    }
}

/// Waits until `c` sees itself out of `room` (invite withdrawn or removed).
async fn wait_removed(c: &TestClient, room: &RoomId) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if c.client.get_room(room).is_some_and(|r| r.state() == RoomState::Left) {
            return;
        }
        assert!(Instant::now() < deadline, "counsellor was not removed from the room");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_that_times_out_moves_to_the_second_counsellor() {
    let s = Scene::new(2, &["en"], 5, "").await;
    s.staff(0, "!available", "You are available").await;
    let room = s.visitor.open_dm(&s.bot.user_id).await;
    intake(&s, &room).await;
    let (c0, c1) = (&s.counsellors[0], &s.counsellors[1]);
    assert_eq!(c0.wait_invite().await, room);
    s.staff(1, "!available", "You are available").await;
    // c0 does not join: after 5 s the invite is withdrawn and c1 is asked.
    assert_eq!(c1.wait_invite().await, room);
    wait_removed(c0, &room).await;
    c1.join(&room).await;
    c1.expect(&room, "New chat").await;
    s.visitor.expect(&room, "A counsellor is here").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nobody_available_the_visitor_hears_their_place_then_gets_a_counsellor() {
    let s = Scene::new(1, &["en"], 120, "").await;
    let room = s.visitor.open_dm(&s.bot.user_id).await;
    intake(&s, &room).await;
    let place = s.visitor.expect(&room, "in line").await;
    assert!(place.contains("number 1 in line"), "{place}");
    let status = {
        s.counsellors[0].send(&s.staff_room, "!status").await;
        s.counsellors[0].expect(&s.staff_room, "Waiting:").await
    };
    assert!(status.contains("Waiting: 1"), "{status}");
    assert!(!status.contains('@') && !status.contains('!'), "status names nobody: {status}");
    assert!(s.counsellors[0].invite_within(Duration::from_secs(2)).await.is_none());
    s.staff(0, "!available", "You are available").await;
    assert_eq!(s.counsellors[0].wait_invite().await, room);
    s.counsellors[0].join(&room).await;
    s.counsellors[0].expect(&room, "New chat").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_offers_the_case_again() {
    let s = Scene::new(2, &["en"], 120, "").await;
    s.staff(0, "!available", "You are available").await;
    let room = s.visitor.open_dm(&s.bot.user_id).await;
    intake(&s, &room).await;
    let (c0, c1) = (&s.counsellors[0], &s.counsellors[1]);
    assert_eq!(c0.wait_invite().await, room);
    c0.join(&room).await;
    c0.expect(&room, "New chat").await;
    s.staff(0, "!away", "You are away").await;
    s.staff(1, "!available", "You are available").await;
    c0.send(&room, "!transfer").await;
    s.visitor.expect(&room, "another counsellor").await;
    wait_removed(c0, &room).await;
    assert_eq!(c1.wait_invite().await, room);
    c1.join(&room).await;
    c1.expect(&room, "New chat").await;
    c1.send(&room, "!close referred").await;
    s.visitor.expect(&room, "ended this chat").await;
}
