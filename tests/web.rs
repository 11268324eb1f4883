#![recursion_limit = "256"]
// A test that cannot go on fails loudly: unwrap is fine.
#![allow(clippy::unwrap_used)]
//! The web chat end to end: a real headless Chromium (Debian's `chromium`,
//! driven by `web/test/visitor.mjs` with playwright-core) plays a visitor
//! without a Matrix account on the page the bot serves, against the real
//! Synapse (registration only with a token) and the real bot; a matrix-sdk
//! client plays the counsellor. Needs `web/dist` and `web/node_modules`
//! (scripts/test.sh builds them).

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Scene, Synapse, unique};
use matrix_sdk::RoomMemberships;
use matrix_sdk::ruma::{OwnedUserId, RoomId};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// One browser at a time: these 2 cores also run Synapse and the bots.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const EXIT_URL: &str = "https://exit.example/weather";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scene whose bot also serves the web chat; returns it, the page URL and
/// the localpart prefix of its accounts.
async fn web_scene() -> (Scene, String, String) {
    let hs = Synapse::get();
    let token_file = tempfile::Builder::new().prefix("intake-bot-admin-").tempfile().unwrap().keep().unwrap().1;
    std::fs::write(&token_file, hs.admin_token().await).unwrap();
    let prefix = format!("{}-", unique("web"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let extra = format!(
        r#"[privacy]
purge_admin_token_file = "{token}"
purge_delay_secs = 5

[web]
listen = "127.0.0.1:{port}"
public_homeserver_url = "{hs}"
quick_exit_url = "{EXIT_URL}"
assets_dir = "{assets}"
account_prefix = "{prefix}"
idle_account_minutes = 1
"#,
        token = token_file.display(),
        hs = hs.url,
        assets = repo().join("web/dist").display(),
    );
    let s = Scene::new(1, &["en", "nl"], 120, &extra).await;
    s.staff(0, "!available", "You are available").await;
    (s, format!("http://127.0.0.1:{port}/"), prefix)
}

/// The browser side, running.
struct Visitor {
    child: tokio::process::Child,
    steps: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Visitor {
    fn start(page: &str, scenario: &str, lang: &str, counsellor_line: &str, offline_line: &str) -> Visitor {
        let shots = repo().join("docs");
        let mut child = tokio::process::Command::new("node")
            .arg(repo().join("web/test/visitor.mjs"))
            .current_dir(repo().join("web"))
            .env("PAGE_URL", page)
            .env("EXIT_URL", EXIT_URL)
            .env("HOMESERVER_URL", &Synapse::get().url)
            .env("SCENARIO", scenario)
            .env("UI_LANG", lang)
            .env("COUNSELLOR_LINE", counsellor_line)
            .env("OFFLINE_LINE", offline_line)
            .env("SHOTS", shots)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("starting node web/test/visitor.mjs (is Node installed?)");
        let out = child.stdout.take().unwrap();
        let (tx, steps) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                eprintln!("visitor: {l}");
                if let Some(s) = l.strip_prefix("STEP ") {
                    let _ = tx.send(s.to_owned());
                }
            }
        });
        Visitor { child, steps, seen: Vec::new() }
    }

    /// Waits for the browser side to report `step`.
    async fn step(&mut self, step: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while !self.seen.iter().any(|s| s == step) {
            match tokio::time::timeout_at(deadline, self.steps.recv()).await {
                Ok(Some(s)) => self.seen.push(s),
                Ok(None) => panic!("the browser side ended before {step:?}; it reported {:?}", self.seen),
                Err(_) => panic!("no {step:?} from the browser side within {within:?}; it reported {:?}", self.seen),
            }
        }
    }

    /// Waits for the browser side to finish, and that it passed.
    async fn finish(mut self) {
        self.step("done", Duration::from_secs(120)).await;
        let st = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.unwrap().unwrap();
        assert!(st.success(), "the browser side failed: {st}");
    }
}

/// The web visitor of `room`, as the counsellor sees the members.
async fn visitor_of(s: &Scene, room: &RoomId) -> OwnedUserId {
    let r = s.counsellors[0].room(room).await;
    let members = r.members(RoomMemberships::JOIN | RoomMemberships::LEAVE).await.unwrap();
    let me = &s.counsellors[0].user_id;
    members
        .iter()
        .map(|m| m.user_id().to_owned())
        .find(|u| u.as_str() != s.bot.user_id && u != me)
        .expect("the web visitor among the room's members")
}

/// The homeserver's admin view of an account.
async fn admin_user(user: &str, admin: &str) -> serde_json::Value {
    let hs = Synapse::get();
    let url = format!("{}/_synapse/admin/v2/users/{}", hs.url, user.replace('@', "%40").replace(':', "%3A"));
    reqwest::Client::new().get(&url).bearer_auth(admin).send().await.unwrap().json().await.unwrap()
}

/// Waits until the homeserver says the account is deactivated and erased.
async fn deactivated_within(user: &OwnedUserId, within: Duration) -> Duration {
    let admin = Synapse::get().admin_token().await;
    let t0 = Instant::now();
    loop {
        let v = admin_user(user.as_str(), &admin).await;
        if v["deactivated"] == true {
            assert_eq!(v["erased"], true, "deactivated without erase: {v}");
            return t0.elapsed();
        }
        assert!(t0.elapsed() < within, "the web account is not deactivated after {within:?}: {v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every account (active or not) whose localpart starts with `prefix`.
async fn accounts_with_prefix(prefix: &str) -> Vec<OwnedUserId> {
    let hs = Synapse::get();
    let admin = hs.admin_token().await;
    let url = format!("{}/_synapse/admin/v2/users?from=0&limit=100&deactivated=true&name={prefix}", hs.url);
    let v: serde_json::Value =
        reqwest::Client::new().get(&url).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    v["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["name"].as_str())
        .filter(|n| n.trim_start_matches('@').starts_with(prefix))
        .map(|n| OwnedUserId::try_from(n).unwrap())
        .collect()
}

/// Stops the bot and returns the outcome records.
fn records(s: &mut Scene) -> Vec<serde_json::Value> {
    let (st, _) = s.bot.stop();
    assert!(st.success());
    s.bot.export()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_case_from_the_page_to_the_counsellors_close() {
    let _one = ONE_BROWSER.lock().await;
    let (mut s, page, _) = web_scene().await;
    let hello = "Hello, I am a counsellor. WEBHELLO";
    let offline = "I am still here WEBOFFLINE";
    let mut v = Visitor::start(&page, "case", "en", hello, offline);
    v.step("intake-done", Duration::from_secs(300)).await;
    let c = &s.counsellors[0];
    let room = c.wait_invite().await;
    c.join(&room).await;
    c.expect(&room, "New chat").await;
    let visitor = visitor_of(&s, &room).await;
    assert!(visitor.localpart().starts_with("web"), "the page's account: {visitor}");
    c.send(&room, hello).await;
    v.step("offline-line-written", Duration::from_secs(180)).await;
    // Written while the browser was offline, it arrives once it is back.
    c.expect(&room, offline).await;
    c.send(&room, "!close advice").await;
    v.step("ended", Duration::from_secs(240)).await;
    let took = deactivated_within(&visitor, Duration::from_secs(60)).await;
    eprintln!("web account deactivated {took:?} after the page showed the end");
    v.finish().await;
    let recs = records(&mut s);
    assert_eq!(recs.len(), 1, "exactly one record: {recs:?}");
    assert_eq!(recs[0]["outcome"], "advice");
    assert_eq!(recs[0]["intake_completed"], true);
    assert_eq!(recs[0]["counsellor_joined"], true);
    assert_eq!(recs[0]["language"], "en");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_exit_leaves_for_the_exit_page_and_ends_the_case() {
    let _one = ONE_BROWSER.lock().await;
    let (mut s, page, _) = web_scene().await;
    let hello = "Hallo, ik ben hulpverlener. WEBHALLO";
    let mut v = Visitor::start(&page, "quick-exit", "nl", hello, "");
    v.step("intake-done", Duration::from_secs(300)).await;
    let c = &s.counsellors[0];
    let room = c.wait_invite().await;
    c.join(&room).await;
    c.expect(&room, "New chat").await;
    let visitor = visitor_of(&s, &room).await;
    c.send(&room, hello).await;
    v.step("exited", Duration::from_secs(180)).await;
    let took = deactivated_within(&visitor, Duration::from_secs(60)).await;
    eprintln!("web account deactivated {took:?} after the quick exit");
    v.finish().await;
    let recs = records(&mut s);
    assert_eq!(recs.len(), 1, "exactly one record: {recs:?}");
    assert_eq!(recs[0]["outcome"], "abandoned");
    assert_eq!(recs[0]["language"], "nl");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_ends_the_chat_cleanly() {
    let _one = ONE_BROWSER.lock().await;
    let (mut s, page, prefix) = web_scene().await;
    let mut v = Visitor::start(&page, "reload", "en", "", "");
    v.step("reloaded", Duration::from_secs(300)).await;
    v.finish().await;
    // The case ended as the page went; its account is gone within a minute.
    let t0 = Instant::now();
    loop {
        let out = s.bot.log_text();
        if out.contains("outcome recorded") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the case did not end after the reload");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let accounts = accounts_with_prefix(&prefix).await;
    assert_eq!(accounts.len(), 1, "one account made by the page: {accounts:?}");
    deactivated_within(&accounts[0], Duration::from_secs(60)).await;
    let recs = records(&mut s);
    assert_eq!(recs.len(), 1, "exactly one record: {recs:?}");
    assert_eq!(recs[0]["outcome"], "abandoned");
    assert_eq!(recs[0]["intake_completed"], false);
}

/// The bot's own part, without a page that could delete the account
/// itself: a visitor signed up through the web chat's path (on a
/// matrix-sdk client) finishes a case, and the bot deletes the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_deletes_a_web_account_when_its_chat_ends() {
    let (mut s, page, prefix) = web_scene().await;
    let hs = Synapse::get();
    let user = hs.register_via_web(&page, &format!("{prefix}{}", unique("v")), "pw-web-visitor").await;
    let v = common::TestClient::log_in(&user, "pw-web-visitor").await;
    let room = v.open_dm(&s.bot.user_id).await;
    v.expect(&room, "Which language").await;
    v.send(&room, "1").await;
    for (i, a) in ["1", "2", "1", "1", "2", "1"].iter().enumerate() {
        v.expect(&room, &format!("({}/6)", i + 1)).await;
        v.send(&room, a).await;
    }
    s.counsellor_takes(&room).await;
    s.counsellors[0].send(&room, "!close advice").await;
    v.expect(&room, "ended").await;
    let user: OwnedUserId = user.try_into().unwrap();
    let took = deactivated_within(&user, Duration::from_secs(60)).await;
    eprintln!("deactivated {took:?} after the goodbye");
    // A counsellor, also on the bot's server, is never touched.
    let counsellor = &s.counsellors[0].user_id;
    let v2 = admin_user(counsellor.as_str(), &hs.admin_token().await).await;
    assert_eq!(v2["deactivated"], false);
    let recs = records(&mut s);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["outcome"], "advice");
}

/// A page closed before its chat began leaves an account with no chat:
/// the bot deletes it once it is older than `web.idle_account_minutes`,
/// and leaves alone an account whose chat is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_web_accounts_are_deleted_and_busy_ones_kept() {
    let (s, page, prefix) = web_scene().await;
    let hs = Synapse::get();
    let idle = hs.register_via_web(&page, &format!("{prefix}{}", unique("idle")), "pw-idle").await;
    let busy = hs.register_via_web(&page, &format!("{prefix}{}", unique("busy")), "pw-busy").await;
    let v = common::TestClient::log_in(&busy, "pw-busy").await;
    let room = v.open_dm(&s.bot.user_id).await;
    v.expect(&room, "Which language").await;
    let idle: OwnedUserId = idle.try_into().unwrap();
    // Older than a minute, then the next sweep (every minute).
    let took = deactivated_within(&idle, Duration::from_secs(200)).await;
    eprintln!("idle account deleted after {took:?}");
    assert!(took > Duration::from_secs(30), "deleted before it was idle long enough: {took:?}");
    let busy_state = admin_user(&busy, &hs.admin_token().await).await;
    assert_eq!(busy_state["deactivated"], false, "an account with an open chat was deleted");
    assert!(s.bot.log_text().contains("idle web chat accounts deleted"));
}
