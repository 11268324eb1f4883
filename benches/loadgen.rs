#![recursion_limit = "256"]
// A test (or the load generator) that cannot go on fails loudly: unwrap is fine.
#![allow(clippy::unwrap_used)]
//! Load generator: a local Synapse, the bot (release build), N visitors on
//! their own E2EE clients doing whole intakes at once, counsellors who
//! accept and close; then the same visitors against a bare echo bot on the
//! same SDK, as the floor the homeserver sets.
//!
//!     cargo bench --bench loadgen -- --visitors 200 --ramp-secs 30
//!     cargo bench --bench loadgen -- --visitors 50 --restart-rooms 1000
//!     cargo bench --bench loadgen -- --flood 300 --flood-secs 60 [--flood-max-open 50]
//!     cargo bench --bench loadgen -- --visitors 200 --ramp-secs 60 --postgres
//!
//! `--postgres`: Synapse on a PostgreSQL server of its own (started here,
//! from Debian's `postgresql` package) instead of SQLite; its CPU is
//! reported beside Synapse's. On one 2-core machine it is the slower
//! choice (docs/benchmarks.md, "Build J"); it is there for runs where the
//! database has cores of its own.
//!
//! `--flood N`: under attack. N accounts (plain HTTP clients, as a flooder
//! would use) each open a chat with the bot within `--flood-secs`, while
//! one real visitor on an E2EE client does a whole intake and types an
//! emergency word; reports the real visitor's emergency reply and turn
//! latencies, the bot's peak RSS and how many flood rooms got a case.
//!
//! `--web`: the visitors sign up through the web chat's path (a token from
//! the bot's `/signup`, registration by token on a homeserver closed to
//! anyone else), then do the same intakes (on matrix-sdk clients: one
//! browser per visitor does not fit on these machines; the browser itself
//! is tested in tests/web.rs). No echo baseline (the bot deletes the
//! accounts once their chats end); reports how many web accounts are still
//! active a minute after the last case.
//!
//! Built (not run) by the test command, so it cannot rot. Runs only on
//! request. Writes its report to `target/loadgen-report.md` and stdout.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Scene, Synapse, TestClient, unique};
use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::events::room::member::StrippedRoomMemberEvent;
use matrix_sdk::ruma::events::room::message::{MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent};

use matrix_sdk::ruma::{OwnedRoomId, RoomId};
use matrix_sdk::{Client, Room, RoomState};

const ANSWERS: [&str; 6] = ["1", "2", "1", "1", "2", "1"];

#[derive(Debug, Clone)]
struct Args {
    visitors: usize,
    /// Visitors start spread over this many seconds (0 = all at once).
    ramp_secs: f64,
    counsellors: usize,
    restart_rooms: usize,
    baseline: bool,
    /// Flooding accounts (0: no flood run).
    flood: usize,
    flood_secs: f64,
    /// `limits.max_open_cases` for the flood run (0: the default).
    flood_max_open: usize,
    /// Visitors sign up through the web chat.
    web: bool,
    /// Synapse on PostgreSQL instead of SQLite.
    postgres: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        visitors: 20,
        ramp_secs: 0.0,
        counsellors: 0,
        restart_rooms: 0,
        baseline: true,
        flood: 0,
        flood_secs: 60.0,
        flood_max_open: 0,
        web: false,
        postgres: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = || it.next().and_then(|v| v.parse().ok()).expect("a number after the flag");
        match arg.as_str() {
            "--visitors" => a.visitors = num(),
            "--ramp-secs" => a.ramp_secs = num() as f64,
            "--counsellors" => a.counsellors = num(),
            "--restart-rooms" => a.restart_rooms = num(),
            "--no-baseline" => a.baseline = false,
            "--web" => {
                a.web = true;
                a.baseline = false;
            }
            "--flood" => a.flood = num(),
            "--flood-secs" => a.flood_secs = num() as f64,
            "--flood-max-open" => a.flood_max_open = num(),
            "--postgres" => a.postgres = true,
            "--bench" => {}
            other => panic!("unknown argument {other}; see the header of benches/loadgen.rs"),
        }
    }
    if a.counsellors == 0 {
        a.counsellors = (a.visitors / 20).max(2);
    }
    a
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--echo-bot") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(echo_bot(args[2].clone(), args[3].clone(), args[4].clone(), args[5].clone()));
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench targets too: only build-check.
        println!("loadgen: run it with `cargo bench --bench loadgen -- --visitors N`; nothing to do here");
        return;
    }
    let args = parse_args();
    common::ON_POSTGRES.store(args.postgres, std::sync::atomic::Ordering::Relaxed);
    if std::env::var_os("INTAKE_BOT_TEST_LOG").is_none() {
        // SAFETY: single-threaded here, before the runtime starts.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("INTAKE_BOT_TEST_LOG", "info");
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run(args));
}

/// Latency samples and outcomes of one run.
#[derive(Default, Debug)]
struct Run {
    turns: Vec<Duration>,
    /// The same samples by turn number (0 = first answer).
    by_turn: Vec<Vec<Duration>>,
    invites: Vec<Duration>,
    /// Room created -> first question received (greeting latency).
    greetings: Vec<Duration>,
    completed: usize,
    no_room: usize,
    lost: usize,
    stuck: usize,
    wall: Duration,
}

impl Run {
    /// "turn 1: p50/max ms, ..." to see which step of a case is slow.
    fn turn_breakdown(&self) -> String {
        let mut out = Vec::new();
        for (i, v) in self.by_turn.iter().enumerate() {
            let mut v = v.clone();
            out.push(format!("{}: {}/{}", i + 1, ms(pct(&mut v, 0.5)), ms(pct(&mut v, 1.0))));
        }
        out.join(", ")
    }

    /// Waits for every visitor and sorts the outcomes.
    async fn collect(tasks: Vec<tokio::task::JoinHandle<Result<Vec<Duration>, Outcome>>>) -> Run {
        let mut run = Run::default();
        for t in tasks {
            match t.await.expect("visitor task") {
                Ok(turns) => {
                    for (i, t) in turns.iter().enumerate() {
                        if run.by_turn.len() <= i {
                            run.by_turn.resize(i + 1, Vec::new());
                        }
                        run.by_turn[i].push(*t);
                    }
                    run.turns.extend(turns);
                    run.completed += 1;
                }
                Err(Outcome::Lost) => run.lost += 1,
                Err(Outcome::Stuck) => run.stuck += 1,
                Err(Outcome::NoRoom) => run.no_room += 1,
            }
        }
        run
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

/// CPU seconds (user + system) and peak RSS in MB of a process.
fn proc_usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let cpu = stat.rsplit_once(')').map_or(0.0, |(_, rest)| {
        let f: Vec<&str> = rest.split_whitespace().collect();
        (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / 100.0
    });
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0;
    (cpu, hwm)
}

fn synapse_pid() -> u32 {
    std::fs::read_to_string(Synapse::get().dir.join("synapse.pid")).unwrap().trim().parse().unwrap()
}

/// CPU seconds of the homeserver's PostgreSQL so far (0 on SQLite): the
/// postmaster, its ended children (the kernel adds them to its own on
/// reaping) and its live backends.
fn postgres_cpu() -> f64 {
    let Some(pg) = &Synapse::get().postgres else { return 0.0 };
    let master = pg.pid();
    let fields = |pid: &str| -> Option<Vec<String>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, rest) = stat.rsplit_once(')')?;
        Some(rest.split_whitespace().map(str::to_owned).collect())
    };
    // After the ')': [1] ppid, [11] utime, [12] stime, [13] cutime, [14] cstime.
    let ticks = |f: &[String], range: std::ops::Range<usize>| -> f64 {
        range.map(|i| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)).sum::<f64>()
    };
    let master = master.to_string();
    let mut total = fields(&master).map_or(0.0, |f| ticks(&f, 11..15));
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        if let Some(f) = fields(pid)
            && f.get(1).is_some_and(|p| *p == master)
        {
            total += ticks(&f, 11..13);
        }
    }
    total / 100.0
}

/// The web chat of a `--web` run: its config section and sign-ups.
struct WebSetup {
    config: String,
    page: String,
    prefix: String,
    admin: String,
}

impl WebSetup {
    async fn new() -> WebSetup {
        let hs = Synapse::get();
        let admin = hs.admin_token().await;
        let token_file = std::env::temp_dir().join(unique("intake-bot-admin-token-"));
        std::fs::write(&token_file, &admin).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let prefix = format!("{}-", unique("lw"));
        let config = format!(
            "\n[web]\nlisten = \"127.0.0.1:{port}\"\npublic_homeserver_url = \"{}\"\n\
             quick_exit_url = \"https://exit.example/\"\naccount_prefix = \"{prefix}\"\nsignups_per_minute = 10000\n\
             [privacy]\npurge_admin_token_file = \"{}\"\npurge_delay_secs = 3600\n",
            hs.url,
            token_file.display()
        );
        WebSetup { config, page: format!("http://127.0.0.1:{port}/"), prefix, admin }
    }

    /// `n` visitors signed up through the page's path, a few at a time.
    async fn visitors(&self, n: usize) -> Vec<Arc<TestClient>> {
        let mut out = Vec::new();
        for chunk in (0..n).collect::<Vec<_>>().chunks(10) {
            let made = futures_join(chunk.iter().map(|_| {
                let page = self.page.clone();
                let local = format!("{}{}", self.prefix, unique("v"));
                async move {
                    let user = Synapse::get().register_via_web(&page, &local, "web-password").await;
                    Arc::new(TestClient::log_in(&user, "web-password").await)
                }
            }))
            .await;
            out.extend(made);
        }
        out
    }

    /// (active, all) accounts with the run's prefix.
    async fn accounts(&self) -> (usize, usize) {
        let hs = Synapse::get();
        let mut counts = [0usize; 2];
        for (i, deactivated) in ["false", "true"].iter().enumerate() {
            let url = format!(
                "{}/_synapse/admin/v2/users?from=0&limit=1000&deactivated={deactivated}&name={}",
                hs.url, self.prefix
            );
            let v: serde_json::Value =
                reqwest::Client::new().get(&url).bearer_auth(&self.admin).send().await.unwrap().json().await.unwrap();
            counts[i] = v["users"].as_array().map_or(0, |u| {
                u.iter().filter(|x| x["name"].as_str().is_some_and(|n| n[1..].starts_with(&self.prefix))).count()
            });
        }
        (counts[0], counts[1])
    }
}

/// Registers and logs in `n` visitors, a few at a time.
async fn visitors(n: usize) -> Vec<Arc<TestClient>> {
    let mut out = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10) {
        let made = futures_join(chunk.iter().map(|_| async { Arc::new(TestClient::new(&unique("lv")).await) })).await;
        out.extend(made);
    }
    out
}

async fn futures_join<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

async fn run(args: Args) {
    if args.flood > 0 {
        return flood_run(&args).await;
    }
    let t_setup = Instant::now();
    let hs = Synapse::get();
    eprintln!("loadgen: {} visitors, {} counsellors", args.visitors, args.counsellors);
    let web = if args.web { Some(WebSetup::new().await) } else { None };
    let vs = if web.is_some() { Vec::new() } else { visitors(args.visitors).await };
    if web.is_none() {
        eprintln!("loadgen: visitors ready after {:?}", t_setup.elapsed());
    }

    let mut report = String::new();
    report.push_str(&format!(
        "Command: `cargo bench --bench loadgen -- --visitors {} --ramp-secs {} --counsellors {}{}{}{}`\n\n",
        args.visitors,
        args.ramp_secs,
        args.counsellors,
        if args.restart_rooms > 0 { format!(" --restart-rooms {}", args.restart_rooms) } else { String::new() },
        if args.web { " --web" } else { "" },
        if args.postgres { " --postgres" } else { "" }
    ));

    // The intake bot.
    let cap = (args.visitors / args.counsellors + 2) as u32;
    // The caps of [limits] are for floods; here many rooms of one visitor
    // (--restart-rooms) and hundreds of visitors are the point.
    let mut extra = "[limits]\nmax_open_cases = 100000\nmax_open_cases_per_user = 1000\n".to_owned();
    if let Some(w) = &web {
        extra.push_str(&w.config);
    }
    let mut scene = Scene::with_capacity(args.counsellors, &["en"], 600, cap, &extra).await;
    for i in 0..args.counsellors {
        scene.staff(i, "!available", "You are available").await;
    }
    let vs = match &web {
        Some(w) => {
            let vs = w.visitors(args.visitors).await;
            eprintln!("loadgen: {} visitors signed up through the web chat after {:?}", vs.len(), t_setup.elapsed());
            vs
        }
        None => vs,
    };
    let bot_pid = scene.bot.pid();
    let syn_pid = synapse_pid();
    let (syn_cpu0, _) = proc_usage(syn_pid);
    let pg_cpu0 = postgres_cpu();
    let (bot_cpu0, _) = proc_usage(bot_pid);
    let bot = intake_run(&scene, &vs, args.ramp_secs, args.web).await;
    // A visitor is done at the goodbye; the bot then removes the case's
    // messages (13-16 redactions a case) and leaves. That work belongs to
    // the intake half: without this wait it ran on under the echo half and
    // slowed the baseline (at 200 visitors, hundreds of redactions were in
    // flight during the echo half's room creations).
    let (tail, closed) = wait_for_closes(&scene.bot.log, bot.completed).await;
    let (bot_cpu1, bot_hwm) = proc_usage(bot_pid);
    let (syn_cpu1, _) = proc_usage(syn_pid);
    let pg_cpu1 = postgres_cpu();

    // The baseline: same visitors, same number of turns, an echo bot.
    let echo = if args.baseline { Some(echo_run(&vs, args.ramp_secs).await) } else { None };
    let (syn_cpu2, _) = proc_usage(syn_pid);
    let pg_cpu2 = postgres_cpu();

    let mut b = bot;
    let (p50, p95, p99) = (pct(&mut b.turns, 0.5), pct(&mut b.turns, 0.95), pct(&mut b.turns, 0.99));
    report.push_str("| measure | intake-bot | echo baseline | ratio |\n|---|---|---|---|\n");
    let (e50, e95, e99) = match &echo {
        Some(e) => {
            let mut t = e.turns.clone();
            (pct(&mut t, 0.5), pct(&mut t, 0.95), pct(&mut t, 0.99))
        }
        None => (Duration::ZERO, Duration::ZERO, Duration::ZERO),
    };
    let ratio = |a: Duration, b: Duration| {
        if b.is_zero() { "-".to_owned() } else { format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64()) }
    };
    for (name, a, e) in
        [("per-turn p50 (ms)", p50, e50), ("per-turn p95 (ms)", p95, e95), ("per-turn p99 (ms)", p99, e99)]
    {
        report.push_str(&format!("| {name} | {} | {} | {} |\n", ms(a), ms(e), ratio(a, e)));
    }
    let three = |samples: &[Duration]| {
        if samples.is_empty() {
            return String::new();
        }
        let mut v = samples.to_vec();
        format!("{} / {} / {}", ms(pct(&mut v, 0.5)), ms(pct(&mut v, 0.95)), ms(pct(&mut v, 0.99)))
    };
    let echo_greetings = echo.as_ref().map(|e| e.greetings.clone()).unwrap_or_default();
    let greet_ratio = if echo_greetings.is_empty() {
        String::new()
    } else {
        ratio(pct(&mut b.greetings.clone(), 0.5), pct(&mut echo_greetings.clone(), 0.5)) + " (p50)"
    };
    report.push_str(&format!(
        "| open chat -> first question (echo: first reply) p50 / p95 / p99 (ms) | {} | {} | {} |\n",
        three(&b.greetings),
        three(&echo_greetings),
        greet_ratio
    ));
    report
        .push_str(&format!("| last answer -> counsellor invite p50 / p95 / p99 (ms) | {} | | |\n", three(&b.invites)));
    report.push_str(&format!(
        "| cases completed / lost / stuck | {} / {} / {} | {} | |\n",
        b.completed,
        b.lost,
        b.stuck,
        echo.as_ref().map(|e| format!("{} / {} / {}", e.completed, e.lost, e.stuck)).unwrap_or_default()
    ));
    report.push_str(&format!(
        "| rooms the homeserver failed to create (visitor never started) | {} | {} | |\n",
        b.no_room,
        echo.as_ref().map(|e| e.no_room.to_string()).unwrap_or_default()
    ));
    report.push_str(&format!(
        "| wall time of the run (s) | {:.1} | {} | |\n",
        b.wall.as_secs_f64(),
        echo.as_ref().map(|e| format!("{:.1}", e.wall.as_secs_f64())).unwrap_or_default()
    ));
    report.push_str(&format!(
        "| closes finished after the last goodbye (s; closes seen / cases completed) | {:.1} ({closed} / {}) | | |\n",
        tail.as_secs_f64(),
        b.completed
    ));
    report.push_str(&format!("| bot peak RSS (MB) | {bot_hwm:.0} | | |\n"));
    report.push_str(&format!("| bot CPU seconds | {:.1} | | |\n", bot_cpu1 - bot_cpu0));
    // The echo half has no counsellors: less work for the homeserver.
    report.push_str(&format!(
        "| Synapse CPU seconds | {:.1} | {} | |\n",
        syn_cpu1 - syn_cpu0,
        if echo.is_some() { format!("{:.1}", syn_cpu2 - syn_cpu1) } else { String::new() }
    ));
    if args.postgres {
        report.push_str(&format!(
            "| PostgreSQL CPU seconds | {:.1} | {} | |\n",
            pg_cpu1 - pg_cpu0,
            if echo.is_some() { format!("{:.1}", pg_cpu2 - pg_cpu1) } else { String::new() }
        ));
    }
    report.push_str(&format!(
        "| turns measured | {} | {} | |\n",
        b.turns.len(),
        echo.as_ref().map_or(0, |e| e.turns.len())
    ));
    report.push_str(&format!(
        "| per turn number, p50/max (ms) | {} | {} | |\n",
        b.turn_breakdown(),
        echo.as_ref().map(|e| e.turn_breakdown()).unwrap_or_default()
    ));

    if let Some(w) = &web {
        // The bot deletes each account 10 s after its chat ends.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let (active, all) = w.accounts().await;
        report.push_str(&format!(
            "| web accounts still active 60 s after the last case / made | {active} / {all} | | |\n"
        ));
    }
    if args.restart_rooms > 0 {
        let secs = restart_run(&mut scene, args.restart_rooms).await;
        report.push_str(&format!(
            "| restart with {} rooms: start to next question (s) | {secs:.1} | | |\n",
            args.restart_rooms
        ));
    }
    let _ = hs;
    println!("{report}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/loadgen-report.md");
    std::fs::write(&path, &report).unwrap();
    eprintln!("loadgen: report written to {}", path.display());
}

/// Every visitor does a whole intake at once; counsellors accept and close.
/// With `web`, each visitor's client stops at the end of its chat, as the
/// page does (the bot deletes the account; a client that went on would
/// only hammer the homeserver with refused requests).
async fn intake_run(scene: &Scene, vs: &[Arc<TestClient>], ramp_secs: f64, web: bool) -> Run {
    let last_answer: Arc<Mutex<HashMap<OwnedRoomId, Instant>>> = Default::default();
    let invites: Arc<Mutex<Vec<Duration>>> = Default::default();
    let greetings: Arc<Mutex<Vec<Duration>>> = Default::default();
    // Counsellors: accept every invite, read the summary, close.
    let mut counsellor_tasks = Vec::new();
    for c in &scene.counsellors {
        let client = c.client.clone();
        let last = last_answer.clone();
        let inv = invites.clone();
        counsellor_tasks.push(tokio::spawn(counsellor_loop(client, last, inv)));
    }
    let t0 = Instant::now();
    let tasks: Vec<_> = vs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let v = v.clone();
            let bot = scene.bot.user_id.clone();
            let last = last_answer.clone();
            let greet = greetings.clone();
            let delay = Duration::from_secs_f64(ramp_secs * i as f64 / vs.len() as f64);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let r = visitor_intake(v.clone(), bot, last, greet).await;
                if web {
                    v.stop_syncing();
                }
                r
            })
        })
        .collect();
    let mut run = Run::collect(tasks).await;
    run.wall = t0.elapsed();
    for t in counsellor_tasks {
        t.abort();
    }
    run.invites = invites.lock().unwrap().clone();
    run.greetings = greetings.lock().unwrap().clone();
    run
}

enum Outcome {
    /// The homeserver did not create the visitor's room (its limit, not the bot's).
    NoRoom,
    Lost,
    Stuck,
}

/// Waits until the bot's log shows `cases` closes finished ("the case's
/// messages removed from the room", logged once the redactions are done),
/// or no new one for 60 s (a run with `privacy.redact_at_close` off logs
/// none). Reads the log as it grows (at trace it is large). Returns how
/// long it waited and how many closes it saw.
async fn wait_for_closes(log: &std::path::Path, cases: usize) -> (Duration, usize) {
    use std::io::BufRead;
    const DONE: &str = "the case's messages removed from the room";
    let t = Instant::now();
    let Ok(file) = std::fs::File::open(log) else { return (Duration::ZERO, 0) };
    let mut reader = std::io::BufReader::new(file);
    let (mut seen, mut line, mut progress) = (0, String::new(), Instant::now());
    loop {
        // A line not yet ended stays in `line` until the rest is written.
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if !line.ends_with('\n') {
                break;
            }
            if line.contains(DONE) {
                seen += 1;
                progress = Instant::now();
            }
            line.clear();
        }
        if seen >= cases || progress.elapsed() > Duration::from_secs(60) {
            // The leave and forget follow the last removal.
            tokio::time::sleep(Duration::from_secs(2)).await;
            return (t.elapsed(), seen);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn wait_text(v: &TestClient, room: &RoomId, needle: &str) -> Option<Instant> {
    tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            if let Some(at) = v.try_find(room, needle) {
                return at;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .ok()
}

async fn visitor_intake(
    v: Arc<TestClient>,
    bot: String,
    last: Arc<Mutex<HashMap<OwnedRoomId, Instant>>>,
    greetings: Arc<Mutex<Vec<Duration>>>,
) -> Result<Vec<Duration>, Outcome> {
    let t = Instant::now();
    let room = v.try_open_dm(&bot).await.map_err(|_| Outcome::NoRoom)?;
    let at = wait_text(&v, &room, "(1/6)").await.ok_or(Outcome::Lost)?;
    greetings.lock().unwrap().push(at.saturating_duration_since(t));
    let mut turns = Vec::new();
    for (i, a) in ANSWERS.iter().enumerate() {
        let next = if i < 5 { format!("({}/6)", i + 2) } else { "looking for a counsellor".to_owned() };
        let t = Instant::now();
        if i == 5 {
            last.lock().unwrap().insert(room.clone(), t);
        }
        v.send(&room, a).await;
        let at = wait_text(&v, &room, &next).await.ok_or(Outcome::Stuck)?;
        turns.push(at.saturating_duration_since(t));
    }
    wait_text(&v, &room, "ended this chat").await.ok_or(Outcome::Stuck)?;
    Ok(turns)
}

async fn counsellor_loop(
    client: Client,
    last: Arc<Mutex<HashMap<OwnedRoomId, Instant>>>,
    inv: Arc<Mutex<Vec<Duration>>>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(OwnedRoomId, Instant)>();
    client.add_event_handler(move |ev: StrippedRoomMemberEvent, c: Client, room: Room| {
        let tx = tx.clone();
        async move {
            if Some(ev.state_key.as_ref()) == c.user_id() && room.state() == RoomState::Invited {
                let _ = tx.send((room.room_id().to_owned(), Instant::now()));
            }
        }
    });
    // Join every offer, then close the case once the summary has come.
    while let Some((room, at)) = rx.recv().await {
        if let Some(t) = last.lock().unwrap().get(&room) {
            inv.lock().unwrap().push(at.saturating_duration_since(*t));
        }
        let c = client.clone();
        tokio::spawn(async move {
            for _ in 0..50 {
                if c.join_room_by_id(&room).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // Give the summary time to arrive, then close.
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Some(r) = c.get_room(&room) {
                let _ = r.send(RoomMessageEventContent::text_plain("!close advice")).await;
            }
        });
    }
}

/// The same visitors, the same number of turns, against an echo bot.
async fn echo_run(vs: &[Arc<TestClient>], ramp_secs: f64) -> Run {
    let hs = Synapse::get();
    let local = unique("echo");
    let user = hs.register(&local, "echo-password").await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--echo-bot", &hs.url, &user, "echo-password", dir.path().to_str().unwrap()])
        .spawn()
        .expect("starting the echo bot");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let greetings: Arc<Mutex<Vec<Duration>>> = Default::default();
    let t0 = Instant::now();
    let tasks: Vec<_> = vs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let v = v.clone();
            let user = user.clone();
            let delay = Duration::from_secs_f64(ramp_secs * i as f64 / vs.len() as f64);
            let greet = greetings.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let t = Instant::now();
                let room = v.try_open_dm(&user).await.map_err(|_| Outcome::NoRoom)?;
                let at = wait_text(&v, &room, "echo ready").await.ok_or(Outcome::Lost)?;
                greet.lock().unwrap().push(at.saturating_duration_since(t));
                let mut turns = Vec::new();
                for (i, a) in ANSWERS.iter().enumerate() {
                    let t = Instant::now();
                    let text = format!("{a} #{i}");
                    v.send(&room, &text).await;
                    let at = wait_text(&v, &room, &format!("echo: {text}")).await.ok_or(Outcome::Stuck)?;
                    turns.push(at.saturating_duration_since(t));
                }
                Ok::<_, Outcome>(turns)
            })
        })
        .collect();
    let mut run = Run::collect(tasks).await;
    run.wall = t0.elapsed();
    run.greetings = greetings.lock().unwrap().clone();
    let _ = child.kill();
    let _ = child.wait();
    run
}

/// The baseline bot: joins every invite, says "echo ready", and answers
/// each text at once with "echo: <text>". Same SDK, same store settings.
async fn echo_bot(url: String, user: String, password: String, dir: String) {
    let client =
        Client::builder().homeserver_url(&url).sqlite_store(&dir, Some("echo passphrase")).build().await.unwrap();
    client.matrix_auth().login_username(&user, &password).await.unwrap();
    client.add_event_handler(|ev: StrippedRoomMemberEvent, c: Client, room: Room| async move {
        if Some(ev.state_key.as_ref()) != c.user_id() {
            return;
        }
        tokio::spawn(async move {
            for _ in 0..20 {
                if room.join().await.is_ok() {
                    let _ = room.send(RoomMessageEventContent::notice_plain("echo ready")).await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
    });
    let resp = client.sync_once(SyncSettings::default()).await.unwrap();
    client.add_event_handler(|ev: OriginalSyncRoomMessageEvent, c: Client, room: Room| async move {
        if Some(ev.sender.as_ref()) == c.user_id() {
            return;
        }
        if let MessageType::Text(t) = ev.content.msgtype {
            // Answer in a task, as the intake bot's worker is off the sync path too.
            tokio::spawn(async move {
                let _ = room.send(RoomMessageEventContent::notice_plain(format!("echo: {}", t.body))).await;
            });
        }
    });
    let mut settings = SyncSettings::default().token(resp.next_batch);
    loop {
        match client.sync_once(settings.clone()).await {
            Ok(r) => settings = settings.token(r.next_batch),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Opens `rooms` cases (from a few visitors), restarts the bot, and times
/// from the start of the new process to the next question in one room.
async fn restart_run(scene: &mut Scene, rooms: usize) -> f64 {
    let per = 50;
    let vs = visitors(rooms.div_ceil(per)).await;
    let mut opened = Vec::new();
    for (i, v) in vs.iter().enumerate() {
        let n = per.min(rooms - i * per);
        let mut batch = Vec::new();
        for _ in 0..n {
            let v = v.clone();
            let bot = scene.bot.user_id.clone();
            batch.push(tokio::spawn(async move {
                let room = v.open_dm(&bot).await;
                wait_text(&v, &room, "(1/6)").await.map(|_| (v, room))
            }));
        }
        for b in batch {
            if let Some(x) = b.await.unwrap() {
                opened.push(x);
            }
        }
        eprintln!("loadgen: {} rooms open", opened.len());
    }
    scene.bot.stop();
    let t = Instant::now();
    scene.bot.start();
    let (v, room) = opened.last().expect("rooms were opened").clone();
    v.send(&room, "1").await;
    wait_text(&v, &room, "(2/6)").await.expect("answered after restart");
    t.elapsed().as_secs_f64()
}

/// One flooding account: registered through the admin API, then plain
/// HTTP with its access token.
struct Flooder {
    token: String,
}

async fn flooders(n: usize) -> Vec<Flooder> {
    let hs = Synapse::get();
    let admin = hs.admin_token().await;
    let http = reqwest::Client::new();
    let tag = unique("flood");
    let mut out = Vec::new();
    for i in 0..n {
        let user = format!("@{tag}n{i}:localhost");
        let r = http
            .put(format!("{}/_synapse/admin/v2/users/{user}", hs.url))
            .bearer_auth(&admin)
            .json(&serde_json::json!({ "password": "flood-password" }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "creating {user}");
        out.push(Flooder { token: hs.login(&user, "flood-password").await });
    }
    out
}

/// Opens an encrypted DM with the bot the way Element does, over HTTP.
async fn flood_dm(http: &reqwest::Client, f: &Flooder, bot: &str) -> bool {
    let body = serde_json::json!({
        "preset": "trusted_private_chat",
        "is_direct": true,
        "invite": [bot],
        "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
    });
    let url = format!("{}/_matrix/client/v3/createRoom", Synapse::get().url);
    http.post(url).bearer_auth(&f.token).json(&body).send().await.is_ok_and(|r| r.status().is_success())
}

/// The real visitor's intake under the flood: (turn latencies, time from
/// the emergency word to its answer).
async fn real_visitor(v: &TestClient, bot: &str) -> (Vec<Duration>, Option<Duration>, Option<Duration>) {
    let t = Instant::now();
    let Ok(room) = v.try_open_dm(bot).await else { return (Vec::new(), None, None) };
    let Some(first) = wait_text(v, &room, "(1/6)").await else { return (Vec::new(), None, None) };
    let greeting = Some(first.saturating_duration_since(t));
    let mut turns = Vec::new();
    let mut emergency = None;
    for (i, a) in ANSWERS.iter().enumerate() {
        if i == 2 {
            let t = Instant::now();
            v.send(&room, "please help, I am in danger").await;
            emergency = wait_text(v, &room, "call 112").await.map(|at| at.saturating_duration_since(t));
        }
        let next = if i < 5 { format!("({}/6)", i + 2) } else { "looking for a counsellor".to_owned() };
        let t = Instant::now();
        v.send(&room, a).await;
        match wait_text(v, &room, &next).await {
            Some(at) => turns.push(at.saturating_duration_since(t)),
            None => break,
        }
    }
    (turns, emergency, greeting)
}

/// Under attack: see `--flood` in the header.
async fn flood_run(args: &Args) {
    let t0 = Instant::now();
    let n = args.flood;
    let flood = flooders(n).await;
    let real = TestClient::new(&unique("real")).await;
    eprintln!("loadgen: {n} flooders and a real visitor ready after {:?}", t0.elapsed());
    // All accounts here are on the bot's own homeserver, which counts only
    // towards max_open_cases: --flood-max-open shows a flood over a cap.
    let limits = if args.flood_max_open > 0 {
        format!("[limits]\nmax_open_cases = {}\n", args.flood_max_open)
    } else {
        String::new()
    };
    let scene = Scene::with_capacity(1, &["en"], 600, 2, &limits).await;
    let bot_pid = scene.bot.pid();
    let (_, rss0) = proc_usage(bot_pid);
    let bot = scene.bot.user_id.clone();
    let http = reqwest::Client::new();
    let spacing = Duration::from_secs_f64(args.flood_secs / n.max(1) as f64);
    let started = Instant::now();
    let mut opened = Vec::new();
    for (i, f) in flood.into_iter().enumerate() {
        let (http, bot) = (http.clone(), bot.clone());
        let at = started + spacing * u32::try_from(i).unwrap();
        opened.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            flood_dm(&http, &f, &bot).await
        }));
    }
    // The real visitor comes a third of the way into the flood.
    tokio::time::sleep(Duration::from_secs_f64(args.flood_secs / 3.0)).await;
    let (turns, emergency, greeting) = real_visitor(&real, &bot).await;
    let mut created = 0;
    for o in opened {
        created += usize::from(o.await.unwrap_or(false));
    }
    // Let the bot finish with the last rooms.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (_, rss_peak) = proc_usage(bot_pid);
    let log = scene.bot.log_text();
    let cases = log.matches("new case").count();
    let refused = log.matches("room refused; no case").count();
    let mut t = turns.clone();
    let msf = |d: Option<Duration>| d.map_or("-".to_owned(), ms);
    let report = format!(
        "Command: `cargo bench --bench loadgen -- --flood {n} --flood-secs {}{}`\n\n\
         | measure | value |\n|---|---|\n\
         | flood rooms created (of {n}, over {} s) | {created} |\n\
         | cases opened (flood and the real visitor) / rooms refused | {cases} / {refused} |\n\
         | bot RSS before / peak (MB) | {rss0:.0} / {rss_peak:.0} |\n\
         | real visitor: open chat -> first question (ms) | {} |\n\
         | real visitor: emergency word -> emergency answer (ms) | {} |\n\
         | real visitor: per-turn p50 / max (ms), {} turns | {} / {} |\n",
        args.flood_secs,
        if args.flood_max_open > 0 { format!(" --flood-max-open {}", args.flood_max_open) } else { String::new() },
        args.flood_secs,
        msf(greeting),
        msf(emergency),
        turns.len(),
        ms(pct(&mut t, 0.5)),
        ms(pct(&mut t, 1.0)),
    );
    println!("{report}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/loadgen-flood-report.md");
    std::fs::write(&path, &report).unwrap();
    eprintln!("loadgen: report written to {}", path.display());
}
