#![recursion_limit = "256"]
// A test (or the load generator) that cannot go on fails loudly: unwrap is fine.
#![allow(clippy::unwrap_used)]
//! The homeserver goes away mid-case and comes back (own Synapse: stopping
//! it must not disturb other tests), watched through `/metrics` and
//! `/healthz` the way an operator's monitoring would.

mod common;

use std::time::Duration;

use common::{Scene, Synapse};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_rides_out_a_homeserver_outage() {
    let port = free_port();
    let extra = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let s = Scene::new(1, &["en"], 120, &extra).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            let r = http.get(url).send().await.expect("metrics listener answers");
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/healthz").await, (200, "ok\n".into()));
    assert_eq!(get("/nothing").await.0, 404);
    let m = get("/metrics").await.1;
    assert_eq!(sample(&m, "intake_bot_counsellors_available"), 0);
    assert_eq!(sample(&m, "intake_bot_sync_healthy"), 1);

    let room = s.visitor.open_dm(&s.bot.user_id).await;
    s.visitor.expect(&room, "(1/6)").await;
    s.visitor.send(&room, "1").await;
    s.visitor.expect(&room, "(2/6)").await;
    let m = get("/metrics").await.1;
    assert_eq!(sample(&m, "intake_bot_cases_started_total"), 1);
    assert_eq!(sample(&m, "intake_bot_cases_active"), 1);

    let hs = Synapse::get();
    hs.stop();
    // Down for a while: the bot must back off, not spin, and say it is unhealthy.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let cpu_during = bot_cpu_ticks(&s);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let spent = bot_cpu_ticks(&s) - cpu_during;
    assert!(spent < 100, "bot used {spent} CPU ticks in 4 s of outage: busy loop?");
    let (status, why) = wait_health(&get, 503).await;
    assert!(why.contains("sync"), "{status} {why}");
    assert!(sample(&get("/metrics").await.1, "intake_bot_sync_errors_total") >= 1);
    assert_eq!(sample(&get("/metrics").await.1, "intake_bot_sync_healthy"), 0);
    hs.restart();
    wait_health(&get, 200).await;
    // The case resumes.
    s.visitor.send(&room, "2").await;
    s.visitor.expect(&room, "(3/6)").await;
    let log = s.bot.log_text();
    let outage_lines = log.lines().filter(|l| l.contains("sync failed; retrying")).count();
    assert_eq!(outage_lines, 1, "the outage is logged once:\n{log}");
    assert!(log.contains("homeserver reachable again"), "{log}");

    // The rest of the case, through a counsellor, shows in the metrics.
    for (i, a) in ["1", "1", "1", "1"].iter().enumerate() {
        if i > 0 {
            s.visitor.expect(&room, &format!("({}/6)", i + 3)).await;
        }
        s.visitor.send(&room, a).await;
    }
    s.visitor.expect(&room, "looking for a counsellor").await;
    let m = get("/metrics").await.1;
    assert_eq!(sample(&m, "intake_bot_queue_length"), 1);
    s.staff(0, "!available", "You are available").await;
    let c = &s.counsellors[0];
    let case_room = c.wait_invite().await;
    c.join(&case_room).await;
    c.expect(&room, "!close").await;
    c.send(&room, "!close advice").await;
    s.visitor.expect(&room, "ended this chat").await;
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    let m = loop {
        let m = get("/metrics").await.1;
        if sample(&m, "intake_bot_cases_active") == 0 {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "case still active:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(sample(&m, "intake_bot_cases_ended_total{outcome=\"advice\"}"), 1);
    assert_eq!(sample(&m, "intake_bot_intakes_completed_total"), 1);
    assert_eq!(sample(&m, "intake_bot_wait_seconds_count"), 1);
    assert_eq!(sample(&m, "intake_bot_counsellors_available"), 1);
    assert_eq!(sample(&m, "intake_bot_queue_length"), 0);
    // No identity in any metric.
    for id in [s.visitor.user_id.as_str(), c.user_id.as_str(), room.as_str(), s.bot.user_id.as_str()] {
        assert!(!m.contains(id), "{id} in /metrics");
    }
}

/// The value of one sample line of a Prometheus text page.
fn sample(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in\n{page}"))
        .trim()
        .parse()
        .unwrap()
}

/// Polls `/healthz` until it answers `want` (sync retries back off up to 10 s).
async fn wait_health<F, Fut>(get: &F, want: u16) -> (u16, String)
where
    F: Fn(&str) -> Fut,
    Fut: Future<Output = (u16, String)>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let r = get("/healthz").await;
        if r.0 == want {
            return r;
        }
        assert!(std::time::Instant::now() < deadline, "/healthz stayed {r:?}, wanted {want}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// User plus system CPU ticks of the bot process so far.
fn bot_cpu_ticks(s: &Scene) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", s.bot.pid())).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}
