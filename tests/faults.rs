#![recursion_limit = "256"]
// A test (or the load generator) that cannot go on fails loudly: unwrap is fine.
#![allow(clippy::unwrap_used)]
//! Faults against a real Synapse: the bot killed mid-case and restarted,
//! messages sent while it was down, a second instance on the same data.

mod common;

use std::time::Duration;

use common::{BotOptions, BotProcess, Scene};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_survives_kill_9_and_messages_sent_while_down_are_answered() {
    let mut s = Scene::new(1, &["en"], 120, "").await;
    s.staff(0, "!available", "You are available").await;
    let room = s.visitor.open_dm(&s.bot.user_id).await;
    s.visitor.expect(&room, "(1/6)").await;
    s.visitor.send(&room, "1").await;
    s.visitor.expect(&room, "(2/6)").await;
    s.visitor.send(&room, "2").await;
    s.visitor.expect(&room, "(3/6)").await;
    // Give the store its flush interval, then kill without warning.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.bot.kill();
    // While the bot is down the visitor answers the open question.
    s.visitor.send(&room, "2").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.bot.start();
    s.counsellors[0].expect(&s.staff_room, "intake-bot is online").await;
    // The answer sent while down is read: the next question comes, and no
    // second greeting.
    s.visitor.expect(&room, "(4/6)").await;
    for (i, a) in ["1", "1", "1"].iter().enumerate() {
        if i > 0 {
            s.visitor.expect(&room, &format!("({}/6)", i + 4)).await;
        }
        s.visitor.send(&room, a).await;
    }
    s.visitor.expect(&room, "looking for a counsellor").await;
    let c = &s.counsellors[0];
    assert_eq!(c.wait_invite().await, room);
    c.join(&room).await;
    let summary = c.expect(&room, "New chat").await;
    assert!(
        summary.contains("For myself") && summary.contains("15 to 17") && summary.contains("Someone makes me work"),
        "{summary}"
    );
    c.send(&room, "!close advice").await;
    s.visitor.expect(&room, "ended this chat").await;
    let seen = s.visitor.drain(&room);
    assert!(!seen.iter().any(|m| m.contains("anonymous")), "greeted twice: {seen:?}");
    s.bot.stop();
    let records = s.bot.export();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["answers"]["what"], "labour");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_data_refuses_to_start() {
    let s = Scene::new(1, &["en"], 120, "").await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_intake-bot"))
        .arg("--config")
        .arg(&s.bot.config)
        .arg("run")
        .env("INTAKE_BOT_PASSWORD", "bot-password")
        .env("INTAKE_BOT_STORE_PASSPHRASE", common::PASSPHRASE)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another intake-bot process"), "{err}");
    // The first instance is unharmed.
    s.staff(0, "!status", "Waiting: 0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_right_after_an_answer_loses_nothing_and_repeats_nothing() {
    let mut s = Scene::new(1, &["en"], 120, "").await;
    let room = s.visitor.open_dm(&s.bot.user_id).await;
    s.visitor.expect(&room, "(1/6)").await;
    s.visitor.send(&room, "1").await;
    // The bot is killed the moment the next question is visible.
    s.visitor.expect(&room, "(2/6)").await;
    s.bot.kill();
    // Two answers while it is down, in quick succession.
    s.visitor.send(&room, "2").await;
    s.visitor.send(&room, "3").await;
    s.bot.start();
    // Both are handled, in order: question 3 then question 4 (as one
    // message when both answers were read in one go, as texts ready
    // together for a room are sent together).
    let q3 = s.visitor.expect(&room, "(3/6)").await;
    match q3.find("(4/6)") {
        Some(at) => assert!(q3.find("(3/6)").is_some_and(|q| q < at), "{q3}"),
        None => {
            s.visitor.expect(&room, "(4/6)").await;
        }
    }
    // Killed again at once after a restart: nothing is handled twice.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.bot.kill();
    s.bot.start();
    s.counsellors[0].expect(&s.staff_room, "intake-bot is online").await;
    s.visitor.send(&room, "1").await;
    let next = s.visitor.next(&room).await;
    assert!(next.contains("(5/6)"), "{next}");
    for a in ["1", "1"] {
        s.visitor.send(&room, a).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s.visitor.expect(&room, "looking for a counsellor").await;
    let seen = s.visitor.drain(&room);
    assert!(!seen.iter().any(|m| m.contains("(3/6)") || m.contains("(4/6)") || m.contains("anonymous")), "{seen:?}");
    s.staff(0, "!available", "You are available").await;
    let c = &s.counsellors[0];
    assert_eq!(c.wait_invite().await, room);
    c.join(&room).await;
    let summary = c.expect(&room, "New chat").await;
    assert!(
        summary.contains("For myself")
            && summary.contains("15 to 17")
            && summary.contains("Someone makes me do crimes"),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_an_offer_pending_and_right_after_a_close() {
    let mut s = Scene::new(1, &["en"], 120, "").await;
    s.staff(0, "!available", "You are available").await;
    let room = s.visitor.open_dm(&s.bot.user_id).await;
    for (i, a) in ["1", "1", "1", "1", "1", "1"].iter().enumerate() {
        s.visitor.expect(&room, &format!("({}/6)", i + 1)).await;
        s.visitor.send(&room, a).await;
    }
    let c = &s.counsellors[0];
    assert_eq!(c.wait_invite().await, room);
    // Killed while the offer is pending; the counsellor joins while it is down.
    s.bot.kill();
    c.join(&room).await;
    s.bot.start();
    let summary = c.expect(&room, "New chat").await;
    assert!(summary.contains("Under 15"), "{summary}");
    s.visitor.expect(&room, "A counsellor is here").await;
    // Killed right after the close is visible: one record, one goodbye.
    c.send(&room, "!close referred").await;
    s.visitor.expect(&room, "ended this chat").await;
    s.bot.kill();
    s.bot.start();
    s.counsellors[0].expect(&s.staff_room, "intake-bot is online").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = s.visitor.drain(&room);
    assert!(!again.iter().any(|m| m.contains("ended this chat")), "goodbye twice: {again:?}");
    s.bot.stop();
    let records = s.bot.export();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["outcome"], "referred");
    assert_eq!(records[0]["counsellor_joined"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_homeserver_cannot_be_reached_at_start_stops_at_once() {
    let mut bot = BotProcess::new(BotOptions {
        counsellors: &[],
        staff_room: "!nowhere",
        languages: &["en"],
        accept_timeout_secs: 120,
        max_active: 2,
        extra: "",
    })
    .await;
    // A homeserver that answers every request with 503 (overloaded, or
    // behind a proxy whose backend is down): the SDK retries the login.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = r#"{"errcode":"M_UNKNOWN","error":"down"}"#;
                let resp = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let cfg = std::fs::read_to_string(&bot.config).unwrap();
    let url = common::Synapse::get().url.clone();
    let cfg = cfg.replace(&url, &format!("http://127.0.0.1:{port}"));
    std::fs::write(&bot.config, cfg).unwrap();
    bot.start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(bot.running(), "the bot gave up at once instead of retrying: {}", bot.log_text());
    let (status, took) = bot.stop();
    assert!(status.success(), "{status:?}\n{}", bot.log_text());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(bot.log_text().contains("stopped while starting"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_turns_healthz_503_and_the_process_exits_non_zero() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let extra = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let mut s = Scene::new(1, &["en"], 120, &extra).await;
    let health = || async move {
        let r = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.ok()?;
        Some(r.status().as_u16())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while health().await != Some(200) {
        assert!(std::time::Instant::now() < deadline, "never healthy");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The worker dies (a failpoint of debug builds): the sync loop would go
    // on, and the bot would be deaf while looking alive.
    s.counsellors[0].send(&s.staff_room, "!failpoint worker-panic").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut saw_503 = false;
    while s.bot.running() {
        saw_503 |= health().await == Some(503);
        assert!(std::time::Instant::now() < deadline, "the bot lived on without its worker");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = s.bot.wait_exit(Duration::from_secs(1)).expect("exited");
    assert!(!status.success(), "{status:?}");
    assert!(saw_503, "/healthz never said the bot was broken");
    let log = s.bot.log_text();
    assert!(log.contains("ended unexpectedly"), "{log}");
}

/// Restarts the bot so that it ends itself at `point`, and waits until
/// it is online.
async fn restart_crashing_at(s: &mut Scene, point: &str) {
    s.bot.stop();
    s.bot.start_crashing_at(point);
    s.counsellors[0].expect(&s.staff_room, "intake-bot is online").await;
}

/// Waits for the bot to end itself at its failpoint, then starts it plainly.
async fn crashed_then_restart(s: &mut Scene) {
    let st = s.bot.wait_exit(Duration::from_secs(90)).expect("the bot did not stop at its failpoint");
    assert_eq!(st.code(), Some(137), "{st}");
    s.bot.start();
    s.counsellors[0].expect(&s.staff_room, "intake-bot is online").await;
}

/// The counsellor closes with `advice`; the visitor reads the goodbye, and
/// the stopped bot holds exactly that one record.
async fn close_with_one_record(s: &mut Scene, room: &matrix_sdk::ruma::RoomId) {
    s.counsellors[0].send(room, "!close advice").await;
    s.visitor.expect(room, "ended this chat").await;
    s.bot.stop();
    let records = s.bot.export();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        (records[0]["outcome"].as_str(), records[0]["counsellor_joined"].as_bool()),
        (Some("advice"), Some(true))
    );
}

async fn answer_all(s: &Scene, room: &matrix_sdk::ruma::RoomId) {
    for (i, a) in ["1", "2", "1", "1", "2", "1"].iter().enumerate() {
        s.visitor.expect(room, &format!("({}/6)", i + 1)).await;
        s.visitor.send(room, a).await;
    }
}

/// A counsellor available, the bot set to end itself at `point`, and a
/// visitor who has answered every question.
async fn intake_with_failpoint(point: &str) -> (Scene, matrix_sdk::ruma::OwnedRoomId) {
    let mut s = Scene::new(1, &["en"], 120, "").await;
    s.staff(0, "!available", "You are available").await;
    restart_crashing_at(&mut s, point).await;
    let room = s.visitor.open_dm(&s.bot.user_id).await;
    answer_all(&s, &room).await;
    (s, room)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_intake_and_the_invite_still_brings_a_counsellor() {
    let (mut s, room) = intake_with_failpoint("before-invite").await;
    crashed_then_restart(&mut s).await;
    s.counsellor_takes(&room).await;
    close_with_one_record(&mut s, &room).await;
}

/// Found by the chaos soak: killed after the offer was stored but before
/// the invite went out, the offer lapsed only at its deadline (two minutes
/// of a visitor waiting for nobody). Now the restart sends the invite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_offer_was_stored_sends_the_invite_at_the_restart() {
    let (mut s, room) = intake_with_failpoint("invite-committed").await;
    crashed_then_restart(&mut s).await;
    // Within the test timeout (60 s), well before the offer's 120 s deadline.
    s.counsellor_takes(&room).await;
    assert!(s.bot.log_text().contains("invites not sent before the restart: sent now"));
    close_with_one_record(&mut s, &room).await;
}

/// Found by the chaos soak: killed after the counsellor's join was stored
/// but before the summary went out, the counsellor never got it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_summary_went_out_posts_it_at_the_restart() {
    let (mut s, room) = intake_with_failpoint("summary-committed").await;
    let c = &s.counsellors[0];
    assert_eq!(c.wait_invite().await, room);
    c.join(&room).await;
    crashed_then_restart(&mut s).await;
    s.counsellors[0].expect(&room, "New chat").await;
    assert!(s.bot.log_text().contains("summaries the homeserver had not taken before the restart: posted again"));
    close_with_one_record(&mut s, &room).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_the_counsellor_joined_keeps_the_join() {
    let (mut s, room) = intake_with_failpoint("counsellor-joined").await;
    let c = &s.counsellors[0];
    assert_eq!(c.wait_invite().await, room);
    // The bot takes the join in from its sync, and dies before handling it.
    c.join(&room).await;
    crashed_then_restart(&mut s).await;
    let c = &s.counsellors[0];
    let summary = c.expect(&room, "New chat").await;
    assert!(summary.contains("Language"), "{summary}");
    s.visitor.expect(&room, "A counsellor is here").await;
    close_with_one_record(&mut s, &room).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_a_quiet_record_still_leaves_the_room() {
    let mut s = Scene::new(1, &["en"], 120, "").await;
    restart_crashing_at(&mut s, "recorded").await;
    let room = s.visitor.open_dm(&s.bot.user_id).await;
    s.visitor.expect(&room, "(1/6)").await;
    s.visitor.send(&room, "1").await;
    s.visitor.expect(&room, "(2/6)").await;
    // The visitor leaves: the case ends without a goodbye; the bot dies
    // right after writing the record.
    s.visitor.leave(&room).await;
    crashed_then_restart(&mut s).await;
    let hs = common::Synapse::get();
    let admin = hs.admin_token().await;
    let url =
        format!("{}/_synapse/admin/v1/rooms/{}/members", hs.url, room.as_str().replace('!', "%21").replace(':', "%3A"));
    let t0 = std::time::Instant::now();
    loop {
        let v: serde_json::Value =
            reqwest::Client::new().get(&url).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
        let members: Vec<&str> = v["members"].as_array().unwrap().iter().filter_map(|m| m.as_str()).collect();
        if !members.contains(&s.bot.user_id.as_str()) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the bot is still in the room after the restart: {v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s.bot.stop();
    let records = s.bot.export();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["outcome"], "abandoned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_record_write_sends_no_goodbye_and_the_restart_writes_it() {
    let (mut s, room) = intake_with_failpoint("record-fails").await;
    let c = &s.counsellors[0];
    assert_eq!(c.wait_invite().await, room);
    c.join(&room).await;
    c.expect(&room, "New chat").await;
    c.send(&room, "!close advice").await;
    // The record cannot be written: the bot stops, non-zero, before any
    // goodbye or leaving.
    let st = s.bot.wait_exit(Duration::from_secs(60)).expect("the bot went on after a failed record write");
    assert!(!st.success(), "{st}");
    assert!(s.bot.log_text().contains("a store write failed: nothing more is sent"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(s.visitor.try_find(&room, "ended this chat").is_none(), "goodbye sent without a record");
    s.bot.start();
    s.visitor.expect(&room, "ended this chat").await;
    s.bot.stop();
    let records = s.bot.export();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["outcome"], "advice");
}

/// A lost `data_dir` with a recovery passphrase: the bot logs in as a new
/// device, takes its cross-signing keys back from secret storage and signs
/// the device, so counsellors see the same identity and a verified device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_data_dir_comes_back_with_the_same_identity_from_the_recovery_passphrase() {
    const RECOVERY: [(&str, &str); 1] = [("INTAKE_BOT_RECOVERY_PASSPHRASE", "test recovery passphrase")];
    let mut s = Scene::new(1, &["en"], 120, "").await;
    s.bot.stop();
    s.bot.start_with(&RECOVERY);
    let c = &s.counsellors[0];
    c.expect(&s.staff_room, "intake-bot is online").await;
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    while !s.bot.log_text().contains("secret storage created with the recovery passphrase") {
        assert!(std::time::Instant::now() < deadline, "secret storage not created");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let bot: matrix_sdk::ruma::OwnedUserId = s.bot.user_id.as_str().try_into().unwrap();
    c.client.encryption().request_user_identity(&bot).await.unwrap();
    let master = c.client.encryption().get_user_identity(&bot).await.unwrap().expect("identity").master_key().clone();
    let old: Vec<String> =
        c.client.encryption().get_user_devices(&bot).await.unwrap().keys().map(ToString::to_string).collect();
    assert_eq!(old.len(), 1);

    s.bot.stop();
    std::fs::remove_dir_all(s.bot.data_dir()).unwrap();
    s.bot.start_with(&RECOVERY);
    c.expect(&s.staff_room, "intake-bot is online").await;
    let log = s.bot.log_text();
    assert!(log.contains("the bot's identity restored from secret storage"), "identity not restored");
    assert!(log.contains("the bot's old devices deleted on the homeserver"), "the lost device was left listed");
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    loop {
        c.client.encryption().request_user_identity(&bot).await.unwrap();
        let devices = c.client.encryption().get_user_devices(&bot).await.unwrap();
        let new = devices.devices().find(|d| !old.contains(&d.device_id().to_string()));
        if new.is_some_and(|d| d.is_cross_signed_by_owner()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no new device signed by the bot's identity");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let identity = c.client.encryption().get_user_identity(&bot).await.unwrap().expect("identity");
    assert_eq!(identity.master_key(), &master, "the bot's identity changed");
    // The new device reads the staff room.
    s.staff(0, "!status", "Available counsellors").await;
}

/// A kill in the middle of the device change (privacy rule 6), after the
/// old session was dropped and before the old device was logged out: the
/// next start finishes the change, with the same identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_change_cut_off_midway_is_finished_at_the_next_start() {
    let mut s = Scene::new(1, &["en"], 120, "[privacy]\nforget_after_minutes = 0\n").await;
    let c = &s.counsellors[0];
    let bot: matrix_sdk::ruma::OwnedUserId = s.bot.user_id.as_str().try_into().unwrap();
    c.client.encryption().request_user_identity(&bot).await.unwrap();
    let master = c.client.encryption().get_user_identity(&bot).await.unwrap().expect("identity").master_key().clone();
    restart_crashing_at(&mut s, "device-change").await;
    // A short case: the visitor stops at once.
    let room = s.visitor.open_dm(&s.bot.user_id).await;
    s.visitor.expect(&room, "(1/6)").await;
    s.visitor.send(&room, "stop").await;
    s.visitor.expect(&room, "ended").await;
    // Idle after it: the change starts and is cut off.
    crashed_then_restart(&mut s).await;
    let log = s.bot.log_text();
    assert!(log.contains("finishing an interrupted device change"), "the next start did not finish the change");
    assert!(log.contains("new device signed with the bot's cross-signing identity"), "identity not kept");
    let c = &s.counsellors[0];
    c.client.encryption().request_user_identity(&bot).await.unwrap();
    let identity = c.client.encryption().get_user_identity(&bot).await.unwrap().expect("identity");
    assert_eq!(identity.master_key(), &master, "the bot's identity changed");
    assert!(log.contains("the bot's old devices deleted on the homeserver"), "the old device was left listed");
    s.staff(0, "!status", "Available counsellors").await;
    s.bot.stop();
    assert_eq!(s.bot.export().len(), 1, "the case's record");
}
