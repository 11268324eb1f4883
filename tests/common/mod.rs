//! Test harness: a real Synapse (installed from PyPI on first use, one per
//! test binary), users registered with the shared secret, matrix-sdk clients
//! acting as visitor and counsellor, and the real `intake-bot` binary run as
//! a child process.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use matrix_sdk::config::{RequestConfig, SyncSettings};
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset};
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::member::StrippedRoomMemberEvent;
use matrix_sdk::ruma::events::room::message::{MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent};
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, RoomId};
use matrix_sdk::{Client, Room};

pub const TIMEOUT: Duration = Duration::from_secs(60);

/// A running Synapse.
pub struct Synapse {
    pub url: String,
    pub dir: PathBuf,
    port: u16,
    python: PathBuf,
    child: Mutex<Child>,
    /// Its PostgreSQL server, when it runs on one (see [`ON_POSTGRES`]).
    pub postgres: Option<Postgres>,
}

static SYNAPSE: OnceLock<Synapse> = OnceLock::new();
/// Set before the first [`Synapse::get`] to run that Synapse on a
/// PostgreSQL server of its own instead of SQLite (the load generator's
/// `--postgres`; the tests keep SQLite). Needs PostgreSQL's server
/// binaries (Debian's `postgresql` package).
pub static ON_POSTGRES: AtomicBool = AtomicBool::new(false);
static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python, installing Synapse from PyPI if it is not there yet.
/// A file lock keeps parallel test binaries from installing twice.
pub fn synapse_python() -> PathBuf {
    if let Ok(p) = std::env::var("INTAKE_BOT_SYNAPSE_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = repo().join(".venv-synapse");
    let python = venv.join("bin/python");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(repo().join(".venv-synapse.lock"))
        .expect("lock file for the Synapse install");
    lock.lock().expect("locking the Synapse install");
    let ok =
        python.exists() && Command::new(&python).args(["-c", "import synapse"]).status().is_ok_and(|s| s.success());
    if !ok {
        eprintln!("installing Synapse from PyPI into {} ...", venv.display());
        let st = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().expect("python3 -m venv");
        assert!(st.success(), "creating the Synapse venv failed");
        let st = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "matrix-synapse==1.163.*"])
            .status()
            .expect("pip install matrix-synapse");
        assert!(st.success(), "installing matrix-synapse from PyPI failed");
    }
    drop(lock);
    python
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().unwrap().port()
}

/// A PostgreSQL server of the benchmark's Synapse: a fresh cluster in a
/// temporary directory, on a free loopback port, trust auth, stopped when
/// this process goes away. As root it runs as the `postgres` user (the
/// server refuses root).
pub struct Postgres {
    pub port: u16,
    pub data: PathBuf,
    /// The server and its watchdog, kept so that they are not lost track of
    /// (the watchdog stops the server; statics are never dropped).
    _processes: [Child; 2],
}

impl Postgres {
    fn start(python: &Path) -> Postgres {
        let t0 = Instant::now();
        // Synapse's PostgreSQL driver, into the same venv.
        let has_driver = Command::new(python).args(["-c", "import psycopg2"]).status().is_ok_and(|s| s.success());
        if !has_driver {
            let pip = python.with_file_name("pip");
            let st = Command::new(pip).args(["install", "-q", "psycopg2-binary==2.9.*"]).status().expect("pip install");
            assert!(st.success(), "installing psycopg2-binary from PyPI failed");
        }
        let bin = Postgres::bin_dir();
        let data = tempfile::Builder::new().prefix("intake-pg-").tempdir().unwrap().keep();
        let as_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if as_root {
            let st = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&data).status().expect("chown");
            assert!(st.success(), "chown of the PostgreSQL directory failed");
        }
        let user_cmd = |program: PathBuf| {
            let mut c = if as_root {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=postgres", "--regid=postgres", "--clear-groups"]).arg(program);
                c
            } else {
                Command::new(program)
            };
            c.current_dir(&data);
            c
        };
        let st = user_cmd(bin.join("initdb"))
            .args(["-U", "synapse", "--auth=trust", "-E", "UTF8", "--locale=C", "-D"])
            .arg(data.join("db"))
            .stdout(Stdio::null())
            .status()
            .expect("initdb (install Debian's postgresql package)");
        assert!(st.success(), "initdb failed");
        let port = free_port();
        let log = OpenOptions::new().create(true).append(true).open(data.join("postgres.log")).unwrap();
        let mut server = user_cmd(bin.join("postgres"));
        server
            .arg("-D")
            .arg(data.join("db"))
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-k"])
            .arg(&data)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = server.spawn().expect("starting PostgreSQL");
        // Stopped (fast shutdown) when this process goes away.
        let script = format!(
            "while kill -0 {parent} 2>/dev/null && kill -0 {pg} 2>/dev/null; do sleep 1; done; kill -INT {pg} 2>/dev/null",
            parent = std::process::id(),
            pg = child.id()
        );
        let watchdog = Command::new("sh").args(["-c", &script]).spawn().expect("PostgreSQL watchdog");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "PostgreSQL did not start; see {}/postgres.log", data.display());
            std::thread::sleep(Duration::from_millis(200));
        }
        let st = Command::new(bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "synapse", "-T", "template0", "synapse"])
            .status()
            .expect("createdb");
        assert!(st.success(), "createdb failed");
        eprintln!("PostgreSQL on port {port} in {} (started in {:?})", data.display(), t0.elapsed());
        Postgres { port, data, _processes: [child, watchdog] }
    }

    /// Debian's server binaries (newest version), else whatever is on PATH.
    fn bin_dir() -> PathBuf {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|d| d.flatten().map(|e| e.path().join("bin")).filter(|p| p.join("postgres").exists()).collect())
            .unwrap_or_default();
        dirs.sort_by_key(|p| p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()?.parse::<u32>().ok()));
        dirs.pop().unwrap_or_default()
    }

    /// The postmaster's pid (its backends are its children).
    pub fn pid(&self) -> u32 {
        let pid = std::fs::read_to_string(self.data.join("db/postmaster.pid")).expect("postmaster.pid");
        pid.lines().next().and_then(|l| l.trim().parse().ok()).expect("a pid in postmaster.pid")
    }
}

impl Synapse {
    /// The Synapse of this test binary, started on first use.
    pub fn get() -> &'static Synapse {
        SYNAPSE.get_or_init(Synapse::start)
    }

    fn start() -> Synapse {
        let t0 = Instant::now();
        let python = synapse_python();
        let dir = tempfile::Builder::new().prefix("intake-synapse-").tempdir().unwrap().keep();
        let port = free_port();
        let postgres = ON_POSTGRES.load(Ordering::Relaxed).then(|| Postgres::start(&python));
        let database = match &postgres {
            // Synapse's default pool (cp_min 5, cp_max 10).
            Some(pg) => format!(
                "{{name: psycopg2, args: {{user: synapse, database: synapse, host: 127.0.0.1, port: {}, cp_min: 5, cp_max: 10}}}}",
                pg.port
            ),
            None => format!("{{name: sqlite3, args: {{database: {}/homeserver.db}}}}", dir.display()),
        };
        let config = format!(
            r#"server_name: localhost
pid_file: {dir}/homeserver.pid
report_stats: false
signing_key_path: {dir}/localhost.signing.key
media_store_path: {dir}/media_store
database: {database}
listeners:
  - {{port: {port}, bind_addresses: ['127.0.0.1'], type: http, tls: false, x_forwarded: false, resources: [{{names: [client], compress: false}}]}}
registration_shared_secret: test-shared-secret
enable_registration: true
registration_requires_token: true
bcrypt_rounds: 4
trusted_key_servers: []
suppress_key_server_warning: true
url_preview_enabled: false
rc_message: {{per_second: 1000, burst_count: 1000}}
rc_registration: {{per_second: 1000, burst_count: 1000}}
rc_login: {{address: {{per_second: 1000, burst_count: 1000}}, account: {{per_second: 1000, burst_count: 1000}}, failed_attempts: {{per_second: 1000, burst_count: 1000}}}}
rc_joins: {{local: {{per_second: 1000, burst_count: 1000}}, remote: {{per_second: 1000, burst_count: 1000}}}}
rc_joins_per_room: {{per_second: 1000, burst_count: 1000}}
rc_invites: {{per_room: {{per_second: 1000, burst_count: 1000}}, per_user: {{per_second: 1000, burst_count: 1000}}, per_issuer: {{per_second: 1000, burst_count: 1000}}}}
rc_room_creation: {{per_second: 1000, burst_count: 1000}}
rc_key_requests: {{per_second: 1000, burst_count: 1000}}
rc_3pid_validation: {{per_second: 1000, burst_count: 1000}}
rc_admin_redaction: {{per_second: 1000, burst_count: 1000}}
"#,
            dir = dir.display()
        );
        std::fs::write(dir.join("homeserver.yaml"), config).unwrap();
        let st = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "-c", "homeserver.yaml", "--generate-keys"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .status()
            .expect("generating Synapse keys");
        assert!(st.success(), "synapse --generate-keys failed");
        let child = Synapse::spawn(&python, &dir);
        let url = format!("http://127.0.0.1:{port}");
        Synapse::wait_ready(port, &dir);
        eprintln!("Synapse {url} running in {} (started in {:?})", dir.display(), t0.elapsed());
        Synapse { url, dir, port, python, child: Mutex::new(child), postgres }
    }

    /// Starts Synapse in `dir` under a watchdog shell that stops it when
    /// this test process goes away (statics are never dropped).
    fn spawn(python: &Path, dir: &Path) -> Child {
        let log = OpenOptions::new().create(true).append(true).open(dir.join("synapse.log")).unwrap();
        let script = format!(
            "\"{py}\" -m synapse.app.homeserver -c homeserver.yaml & s=$!; echo $s > synapse.pid; \
             while kill -0 {parent} 2>/dev/null && kill -0 $s 2>/dev/null; do sleep 1; done; kill $s 2>/dev/null; wait $s",
            py = python.display(),
            parent = std::process::id()
        );
        Command::new("sh")
            .args(["-c", &script])
            .current_dir(dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting Synapse")
    }

    /// Stops Synapse (SIGTERM through its pid file) and waits for it.
    pub fn stop(&self) {
        let pid = std::fs::read_to_string(self.dir.join("synapse.pid")).expect("Synapse pid file");
        let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
        let mut child = self.child.lock().unwrap();
        let _ = child.wait();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts Synapse again after [`Synapse::stop`], same port and data.
    pub fn restart(&self) {
        *self.child.lock().unwrap() = Synapse::spawn(&self.python, &self.dir);
        Synapse::wait_ready(self.port, &self.dir);
    }

    fn wait_ready(port: u16, dir: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"GET /_matrix/client/versions HTTP/1.0\r\n\r\n");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "Synapse did not start; see {}/synapse.log", dir.display());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Registers a user with the shared secret; returns the full user id.
    pub async fn register(&self, localpart: &str, password: &str) -> String {
        self.register_as(localpart, password, false).await
    }

    /// Registers a server admin and returns an access token for it.
    pub async fn admin_token(&self) -> String {
        let local = unique("admin");
        self.register_as(&local, "admin-password", true).await;
        self.login(&local, "admin-password").await
    }

    /// Logs a user in over plain HTTP and returns the access token.
    pub async fn login(&self, user: &str, password: &str) -> String {
        let body = serde_json::json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
        });
        let resp: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/_matrix/client/v3/login", self.url))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        resp["access_token"].as_str().expect("login").to_owned()
    }

    /// Registers `localpart` the way the web chat page does: a sign-up
    /// token from the bot's `/signup` at `page`, then the homeserver's
    /// user-interactive registration (token stage, dummy stage). Returns
    /// the user id.
    pub async fn register_via_web(&self, page: &str, localpart: &str, password: &str) -> String {
        let http = reqwest::Client::new();
        let signup: serde_json::Value = http.post(format!("{page}signup")).send().await.unwrap().json().await.unwrap();
        let token = signup["token"].as_str().unwrap_or_else(|| panic!("no sign-up token: {signup}")).to_owned();
        let url = format!("{}/_matrix/client/v3/register", self.url);
        let mut body = serde_json::json!({ "username": localpart, "password": password, "inhibit_login": true });
        for _ in 0..4 {
            let resp = http.post(&url).json(&body).send().await.unwrap();
            let status = resp.status();
            let v: serde_json::Value = resp.json().await.unwrap();
            if status.is_success() {
                return v["user_id"].as_str().unwrap().to_owned();
            }
            let session = v["session"].as_str().unwrap_or_else(|| panic!("registration refused: {v}")).to_owned();
            let done: Vec<&str> =
                v["completed"].as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect()).unwrap_or_default();
            body["auth"] = if done.contains(&"m.login.registration_token") {
                serde_json::json!({ "type": "m.login.dummy", "session": session })
            } else {
                serde_json::json!({ "type": "m.login.registration_token", "token": token, "session": session })
            };
        }
        panic!("registration did not finish");
    }

    async fn register_as(&self, localpart: &str, password: &str, admin: bool) -> String {
        let http = reqwest::Client::new();
        let url = format!("{}/_synapse/admin/v1/register", self.url);
        let nonce: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
        let nonce = nonce["nonce"].as_str().unwrap().to_owned();
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"test-shared-secret").unwrap();
        let kind = if admin { "admin" } else { "notadmin" };
        mac.update(format!("{nonce}\0{localpart}\0{password}\0{kind}").as_bytes());
        let body = serde_json::json!({
            "nonce": nonce, "username": localpart, "password": password, "admin": admin,
            "mac": hex::encode(mac.finalize().into_bytes()),
        });
        let resp = http.post(&url).json(&body).send().await.unwrap();
        assert!(resp.status().is_success(), "registering {localpart}: {}", resp.text().await.unwrap());
        format!("@{localpart}:localhost")
    }
}

/// A unique name for this test run.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}{}x{n}", std::process::id())
}

/// A message a test client received.
#[derive(Debug, Clone)]
pub struct Received {
    pub room: OwnedRoomId,
    pub sender: OwnedUserId,
    pub body: String,
    /// The HTML body, when the message has one.
    pub html: Option<String>,
    /// When the (decrypted) message reached this client.
    pub at: Instant,
}

/// Messages per room, so waits in different rooms never steal each other's.
type Inbox = Arc<Mutex<HashMap<OwnedRoomId, VecDeque<Received>>>>;

/// A visitor's or counsellor's own E2EE client.
pub struct TestClient {
    pub client: Client,
    pub user_id: OwnedUserId,
    inbox: Inbox,
    invites: Arc<Mutex<VecDeque<OwnedRoomId>>>,
    /// Cleared to stop the background sync (an account that is gone).
    syncing: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl TestClient {
    /// Registers `localpart`, logs in on a fresh encrypted store and syncs
    /// in the background.
    pub async fn new(localpart: &str) -> TestClient {
        let user = Synapse::get().register(localpart, "password").await;
        TestClient::log_in(&user, "password").await
    }

    /// Logs `user` in on a fresh encrypted store and syncs in the background.
    pub async fn log_in(user: &str, password: &str) -> TestClient {
        let hs = Synapse::get();
        let dir = tempfile::tempdir().unwrap();
        let client = Client::builder()
            .homeserver_url(&hs.url)
            .sqlite_store(dir.path(), None)
            .request_config(RequestConfig::short_retry())
            .build()
            .await
            .unwrap();
        client.matrix_auth().login_username(user, password).initial_device_display_name("test").await.unwrap();
        let inbox: Inbox = Default::default();
        let invites: Arc<Mutex<VecDeque<OwnedRoomId>>> = Default::default();
        client.sync_once(SyncSettings::default()).await.unwrap();
        let i = inbox.clone();
        client.add_event_handler(move |ev: OriginalSyncRoomMessageEvent, room: Room| {
            let i = i.clone();
            async move {
                let (body, html) = match ev.content.msgtype {
                    MessageType::Text(t) => (t.body, t.formatted.map(|f| f.body)),
                    MessageType::Notice(t) => (t.body, t.formatted.map(|f| f.body)),
                    _ => return,
                };
                let at = Instant::now();
                let room = room.room_id().to_owned();
                i.lock().unwrap().entry(room.clone()).or_default().push_back(Received {
                    room,
                    sender: ev.sender,
                    body,
                    html,
                    at,
                });
            }
        });
        let inv = invites.clone();
        client.add_event_handler(move |ev: StrippedRoomMemberEvent, client: Client, room: Room| {
            let inv = inv.clone();
            async move {
                if Some(ev.state_key.as_ref()) == client.user_id() {
                    inv.lock().unwrap().push_back(room.room_id().to_owned());
                }
            }
        });
        // Keeps syncing through homeserver outages (Client::sync stops at
        // the first error).
        let c = client.clone();
        let syncing = Arc::new(AtomicBool::new(true));
        let on = syncing.clone();
        tokio::spawn(async move {
            let mut settings = SyncSettings::default().timeout(Duration::from_secs(5));
            while on.load(Ordering::Relaxed) {
                match c.sync_once(settings.clone()).await {
                    Ok(r) => settings = settings.token(r.next_batch),
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        });
        TestClient { user_id: user.try_into().unwrap(), client, inbox, invites, syncing, _dir: dir }
    }

    /// Stops the background sync after the current request, as a client
    /// whose account is gone would (the page stops its client at the end).
    pub fn stop_syncing(&self) {
        self.syncing.store(false, Ordering::Relaxed);
    }

    /// Creates an encrypted DM the way Element does and invites `bot`.
    pub async fn open_dm(&self, bot: &str) -> OwnedRoomId {
        self.try_open_dm(bot).await.unwrap()
    }

    /// [`TestClient::open_dm`], returning the homeserver's error.
    pub async fn try_open_dm(&self, bot: &str) -> Result<OwnedRoomId, matrix_sdk::Error> {
        let mut req = CreateRoom::new();
        req.invite = vec![bot.try_into().unwrap()];
        req.is_direct = true;
        req.preset = Some(RoomPreset::TrustedPrivateChat);
        req.initial_state = vec![
            InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults())
                .to_raw_any(),
        ];
        // Never retried: a createRoom that timed out on a loaded server may
        // still have created the room, and a retry would make a second one.
        let config = RequestConfig::new().disable_retry().timeout(Duration::from_secs(180));
        let resp = self.client.send(req).with_request_config(config).await.map_err(matrix_sdk::Error::from)?;
        Ok(resp.room_id)
    }

    /// Creates a private room and invites `users` (the staff room).
    pub async fn create_room(&self, invite: &[&str], encrypted: bool) -> OwnedRoomId {
        let mut req = CreateRoom::new();
        req.invite = invite.iter().map(|u| (*u).try_into().unwrap()).collect();
        req.preset = Some(RoomPreset::PrivateChat);
        if encrypted {
            req.initial_state = vec![
                InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults())
                    .to_raw_any(),
            ];
        }
        self.client.create_room(req).await.unwrap().room_id().to_owned()
    }

    pub async fn room(&self, id: &RoomId) -> Room {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(r) = self.client.get_room(id) {
                return r;
            }
            assert!(Instant::now() < deadline, "room never appeared");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn send(&self, room: &RoomId, text: &str) {
        let r = self.room(room).await;
        r.send(RoomMessageEventContent::text_plain(text)).await.unwrap();
    }

    /// Waits for a message in `room` from someone else that satisfies
    /// `pred`, dropping the ones before it. Panics after the timeout with
    /// what did arrive.
    pub async fn wait_for(&self, room: &RoomId, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_for_at(room, what, pred).await.0
    }

    /// Like [`TestClient::wait_for`], also returning when it arrived.
    pub async fn wait_for_at(&self, room: &RoomId, what: &str, pred: impl Fn(&str) -> bool) -> (String, Instant) {
        let m = self.wait_for_msg(room, what, pred).await;
        (m.body, m.at)
    }

    /// Waits for a message containing `needle`, returned whole.
    pub async fn expect_msg(&self, room: &RoomId, needle: &str) -> Received {
        self.wait_for_msg(room, needle, |b| b.contains(needle)).await
    }

    async fn wait_for_msg(&self, room: &RoomId, what: &str, pred: impl Fn(&str) -> bool) -> Received {
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let next = self.inbox.lock().unwrap().get_mut(room).and_then(VecDeque::pop_front);
            match next {
                Some(m) if m.sender != self.user_id => {
                    if pred(&m.body) {
                        return m;
                    }
                    seen.push(m.body);
                }
                Some(_) => {}
                None => {
                    assert!(Instant::now() < deadline, "timed out waiting for {what}; got instead: {seen:#?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Waits for a message containing `needle`.
    pub async fn expect(&self, room: &RoomId, needle: &str) -> String {
        self.wait_for(room, needle, |b| b.contains(needle)).await
    }

    /// The next message from someone else in `room`, whatever it says.
    pub async fn next(&self, room: &RoomId) -> String {
        self.wait_for(room, "any message", |_| true).await
    }

    /// Without waiting: drops messages in `room` up to the first from
    /// someone else containing `needle`, and returns when it arrived.
    pub fn try_find(&self, room: &RoomId, needle: &str) -> Option<Instant> {
        let mut inbox = self.inbox.lock().unwrap();
        let q = inbox.get_mut(room)?;
        while let Some(m) = q.pop_front() {
            if m.sender != self.user_id && m.body.contains(needle) {
                return Some(m.at);
            }
        }
        None
    }

    /// Messages from others in `room` received so far, without waiting.
    pub fn drain(&self, room: &RoomId) -> Vec<String> {
        let mut inbox = self.inbox.lock().unwrap();
        let msgs: Vec<Received> = inbox.get_mut(room).map(|q| q.drain(..).collect()).unwrap_or_default();
        msgs.into_iter().filter(|m| m.sender != self.user_id).map(|m| m.body).collect()
    }

    /// Waits for an invite to a room and returns its id.
    pub async fn wait_invite(&self) -> OwnedRoomId {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(r) = self.invites.lock().unwrap().pop_front() {
                return r;
            }
            assert!(Instant::now() < deadline, "no invite arrived");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether an invite arrived within `wait`.
    pub async fn invite_within(&self, wait: Duration) -> Option<OwnedRoomId> {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Some(r) = self.invites.lock().unwrap().pop_front() {
                return Some(r);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    pub async fn join(&self, room: &RoomId) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.client.join_room_by_id(room).await {
                Ok(_) => return,
                Err(e) => {
                    assert!(Instant::now() < deadline, "join failed: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    pub async fn leave(&self, room: &RoomId) {
        self.room(room).await.leave().await.unwrap();
    }
}

/// The bot's side of a test: its accounts, config and process.
pub struct BotProcess {
    pub user_id: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    starts: usize,
}

/// Options for a test bot's config.
pub struct BotOptions<'a> {
    pub counsellors: &'a [&'a str],
    pub staff_room: &'a str,
    pub languages: &'a [&'a str],
    pub accept_timeout_secs: u64,
    pub max_active: u32,
    pub extra: &'a str,
}

pub const PASSPHRASE: &str = "test store passphrase";

impl BotProcess {
    /// Registers a bot account and writes its config (the example
    /// questionnaire, with the given staff settings).
    pub async fn new(o: BotOptions<'_>) -> BotProcess {
        let hs = Synapse::get();
        let local = unique("bot");
        let user_id = hs.register(&local, "bot-password").await;
        let dir = tempfile::Builder::new().prefix("intake-bot-").tempdir().unwrap().keep();
        let example = std::fs::read_to_string(repo().join("config.example.toml")).unwrap();
        // Keep the questionnaire and texts of the example; replace the rest.
        let questions = &example[example.find("[[intake.questions]]").unwrap()..example.find("[safety]").unwrap()];
        let counsellors = o.counsellors.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
        let languages = o.languages.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
        let config = format!(
            r#"[matrix]
homeserver_url = "{url}"
user_id = "{user_id}"
device_name = "intake-bot test"

[storage]
data_dir = "data"

[staff]
room = "{staff}"
counsellors = [{counsellors}]
max_active_per_counsellor = {max_active}
accept_timeout_secs = {timeout}

[intake]
languages = [{languages}]

{questions}

[outcomes]
tags = ["advice", "referred", "other"]

{extra}
"#,
            url = hs.url,
            staff = o.staff_room,
            timeout = o.accept_timeout_secs,
            max_active = o.max_active,
            extra = o.extra,
        );
        let path = dir.join("bot.toml");
        std::fs::write(&path, config).unwrap();
        BotProcess { user_id, log: dir.join("bot.log"), config: path, dir, child: None, starts: 0 }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Starts `intake-bot run`, logging at the most verbose level to a file.
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// Starts the bot so that it ends itself (exit 137, as a kill -9) at
    /// the failpoint `point` (see `crash_point` in the worker).
    pub fn start_crashing_at(&mut self, point: &str) {
        self.start_with(&[("INTAKE_BOT_TEST_CRASH_AT", point)]);
    }

    pub fn start_with(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "already running");
        self.starts += 1;
        let log = OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        // INTAKE_BOT_TEST_BIN: a frozen copy for long runs (the chaos soak),
        // so that building meanwhile does not change the bot under test.
        let bin = std::env::var_os("INTAKE_BOT_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_intake-bot").into());
        let child = Command::new(bin)
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .env("INTAKE_BOT_PASSWORD", "bot-password")
            .env("INTAKE_BOT_STORE_PASSPHRASE", PASSPHRASE)
            // Debug builds only: lets a test make the worker panic.
            .env("INTAKE_BOT_TEST_FAILPOINTS", "1")
            .env("RUST_LOG", std::env::var("INTAKE_BOT_TEST_LOG").unwrap_or_else(|_| "trace".into()))
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting intake-bot");
        self.child = Some(child);
    }

    /// Stops the bot with SIGTERM and returns its exit status and how long
    /// it took.
    pub fn stop(&mut self) -> (std::process::ExitStatus, Duration) {
        let mut child = self.child.take().expect("bot is running");
        let t = Instant::now();
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return (st, t.elapsed());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("bot did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (at most `limit`) for the process to exit on its own.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process is still running (it has not exited).
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// The running bot's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("bot is running").id()
    }

    /// Kills the bot with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs a CLI subcommand against this bot's config.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_intake-bot"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("running intake-bot")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Exported records as JSON values (the bot must be stopped).
    pub fn export(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["export", "--format", "jsonl"]);
        assert!(out.status.success(), "export failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

impl Drop for BotProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A test's cast: a bot with a staff room, counsellors and a visitor.
pub struct Scene {
    pub bot: BotProcess,
    pub staff_room: OwnedRoomId,
    pub counsellors: Vec<TestClient>,
    pub visitor: TestClient,
}

impl Scene {
    /// Registers everyone, makes the staff room (the first counsellor
    /// creates it and invites the bot and the others), starts the bot and
    /// waits for its online notice.
    pub async fn new(n_counsellors: usize, languages: &[&str], accept_timeout_secs: u64, extra: &str) -> Scene {
        Scene::with_capacity(n_counsellors, languages, accept_timeout_secs, 2, extra).await
    }

    /// [`Scene::new`] with `max_active_per_counsellor` set.
    pub async fn with_capacity(
        n_counsellors: usize,
        languages: &[&str],
        accept_timeout_secs: u64,
        max_active: u32,
        extra: &str,
    ) -> Scene {
        Scene::build(n_counsellors, languages, accept_timeout_secs, max_active, extra, None).await
    }

    /// [`Scene::new`] with the bot (only) reaching the homeserver at `url`,
    /// a proxy in front of the shared Synapse.
    pub async fn with_bot_homeserver(url: &str, languages: &[&str], extra: &str) -> Scene {
        Scene::build(1, languages, 120, 2, extra, Some(url)).await
    }

    async fn build(
        n_counsellors: usize,
        languages: &[&str],
        accept_timeout_secs: u64,
        max_active: u32,
        extra: &str,
        bot_url: Option<&str>,
    ) -> Scene {
        let t0 = Instant::now();
        let mut counsellors = Vec::new();
        for _ in 0..n_counsellors {
            counsellors.push(TestClient::new(&unique("counsellor")).await);
        }
        let visitor = TestClient::new(&unique("visitor")).await;
        let ids: Vec<String> = counsellors.iter().map(|c| c.user_id.to_string()).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        // The bot's account must exist before it can be invited.
        let mut bot = BotProcess::new(BotOptions {
            counsellors: &id_refs,
            staff_room: "!placeholder",
            languages,
            accept_timeout_secs,
            max_active,
            extra,
        })
        .await;
        let mut invite: Vec<&str> = vec![bot.user_id.as_str()];
        invite.extend(id_refs.iter().skip(1));
        let staff_room = counsellors[0].create_room(&invite, true).await;
        for c in counsellors.iter().skip(1) {
            c.join(&c.wait_invite().await).await;
        }
        let mut cfg = std::fs::read_to_string(&bot.config).unwrap().replace("!placeholder", staff_room.as_str());
        if let Some(url) = bot_url {
            let hs = Synapse::get();
            cfg = cfg.replace(&format!("homeserver_url = \"{}\"", hs.url), &format!("homeserver_url = \"{url}\""));
        }
        std::fs::write(&bot.config, cfg).unwrap();
        eprintln!("scene: accounts and staff room ready after {:?}", t0.elapsed());
        bot.start();
        counsellors[0].expect(&staff_room, "intake-bot is online").await;
        eprintln!("scene: bot online after {:?}", t0.elapsed());
        Scene { bot, staff_room, counsellors, visitor }
    }

    /// The visitor opens a chat and answers every question with `answers`;
    /// counsellor 0 (available) takes the case and reads the summary.
    pub async fn case_with_counsellor(&self, answers: [&str; 6]) -> OwnedRoomId {
        let v = &self.visitor;
        let room = v.open_dm(&self.bot.user_id).await;
        for (i, a) in answers.iter().enumerate() {
            v.expect(&room, &format!("({}/6)", i + 1)).await;
            v.send(&room, a).await;
        }
        self.counsellor_takes(&room).await;
        room
    }

    /// Counsellor 0 gets the invite to `room`, joins and reads the summary.
    pub async fn counsellor_takes(&self, room: &RoomId) {
        let c = &self.counsellors[0];
        assert_eq!(c.wait_invite().await, room);
        c.join(room).await;
        c.expect(room, "New chat").await;
    }

    /// Counsellor `i` types in the staff room and waits for the bot's answer.
    pub async fn staff(&self, i: usize, command: &str, answer: &str) {
        self.counsellors[i].send(&self.staff_room, command).await;
        self.counsellors[i].expect(&self.staff_room, answer).await;
    }
}

/// Every file under `dir`, recursively, as bytes.
pub fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push((p, b));
            }
        }
    }
    out
}

/// Where `needle` occurs in `hay`.
pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// One of the bot's messages as a client fetched it from the server.
#[derive(Debug)]
pub struct BotMessage {
    /// Sent encrypted.
    pub encrypted: bool,
    /// The fetching client could decrypt it.
    pub decrypted: bool,
    /// Its body, or its event type when unreadable.
    pub body: String,
}

/// Every message the bot sent in `room`, as `who`'s client fetches it from
/// the server (newest first).
pub async fn bot_messages(who: &TestClient, room: &RoomId, bot: &str) -> Vec<BotMessage> {
    let r = who.room(room).await;
    let msgs = r.messages(matrix_sdk::room::MessagesOptions::backward()).await.unwrap();
    let mut out = Vec::new();
    for ev in msgs.chunk {
        let raw = ev.raw();
        if raw.get_field::<String>("sender").unwrap().as_deref() != Some(bot) {
            continue;
        }
        let ty = raw.get_field::<String>("type").unwrap().unwrap_or_default();
        if ty == "m.room.message" || ty == "m.room.encrypted" {
            let content = raw.get_field::<serde_json::Value>("content").unwrap().unwrap_or_default();
            let body = content["body"].as_str().unwrap_or(&ty).to_owned();
            let decrypted = ty == "m.room.message";
            out.push(BotMessage { encrypted: ev.encryption_info().is_some() || !decrypted, decrypted, body });
        }
    }
    out
}

/// The last 100 events of `room` as the server stores them (newest first,
/// ciphertexts as they are), read with `reader`'s token; `filter` is a
/// room event filter.
pub async fn raw_history(
    reader: &TestClient,
    room: &RoomId,
    filter: Option<serde_json::Value>,
) -> Vec<serde_json::Value> {
    let mut url = format!("{}/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100", Synapse::get().url);
    if let Some(f) = filter {
        url.push_str(&format!("&filter={f}"));
    }
    let token = reader.client.access_token().unwrap();
    let resp: serde_json::Value =
        reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap().json().await.unwrap();
    resp["chunk"].as_array().unwrap().clone()
}

/// Opens a value the bot sealed in its sled store (`S1`, nonce, ciphertext;
/// XChaCha20-Poly1305 under HMAC-SHA256(passphrase, "intake-bot seal key v1")),
/// as a test that edits the store while the bot is down must.
pub fn unseal(stored: &[u8]) -> Vec<u8> {
    use chacha20poly1305::aead::Aead;
    let sealed = stored.strip_prefix(b"S1").expect("a sealed value");
    let (nonce, body) = sealed.split_at(24);
    seal_cipher().decrypt(chacha20poly1305::XNonce::from_slice(nonce), body).expect("opens with the test passphrase")
}

/// Seals a value as the bot does (see [`unseal`]).
pub fn seal(plain: &[u8]) -> Vec<u8> {
    use chacha20poly1305::aead::{Aead, AeadCore, OsRng};
    let nonce = chacha20poly1305::XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let mut out = b"S1".to_vec();
    out.extend_from_slice(&nonce);
    out.extend(seal_cipher().encrypt(&nonce, plain).unwrap());
    out
}

fn seal_cipher() -> chacha20poly1305::XChaCha20Poly1305 {
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(PASSPHRASE.as_bytes()).unwrap();
    mac.update(b"intake-bot seal key v1");
    let key = mac.finalize().into_bytes();
    <chacha20poly1305::XChaCha20Poly1305 as chacha20poly1305::aead::KeyInit>::new(&key)
}
