#![recursion_limit = "256"]
//! The homeserver goes away mid-case and comes back (own Synapse: stopping
//! it must not disturb other tests).

mod common;

use std::time::Duration;

use common::{Scene, Synapse};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_rides_out_a_homeserver_outage() {
    let s = Scene::new(1, &["en"], 120, "").await;
    let room = s.visitor.open_dm(&s.bot.user_id).await;
    s.visitor.expect(&room, "(1/6)").await;
    s.visitor.send(&room, "1").await;
    s.visitor.expect(&room, "(2/6)").await;
    let hs = Synapse::get();
    hs.stop();
    // Down for a while: the bot must back off, not spin.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let cpu_during = bot_cpu_ticks(&s);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let spent = bot_cpu_ticks(&s) - cpu_during;
    assert!(spent < 100, "bot used {spent} CPU ticks in 4 s of outage: busy loop?");
    hs.restart();
    // The case resumes.
    s.visitor.send(&room, "2").await;
    s.visitor.expect(&room, "(3/6)").await;
    let log = s.bot.log_text();
    let outage_lines = log.lines().filter(|l| l.contains("sync failed; retrying")).count();
    assert_eq!(outage_lines, 1, "the outage is logged once:\n{log}");
    assert!(log.contains("homeserver reachable again"), "{log}");
}

/// User plus system CPU ticks of the bot process so far.
fn bot_cpu_ticks(s: &Scene) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", s.bot.pid())).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}
