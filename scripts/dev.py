#!/usr/bin/env python3
"""Try intake-bot by hand: a local Synapse, accounts, a staff room, the bot.

Everything lives in ./dev-data (delete it to start over). Synapse is
installed from PyPI into ./.venv-synapse on first use. Stop with Ctrl-C:
the bot and Synapse stop with it. Only the standard library is used.
"""

import hashlib
import hmac
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "dev-data"
PORT = int(os.environ.get("INTAKE_DEV_PORT", "8008"))
URL = f"http://127.0.0.1:{PORT}"
SHARED_SECRET = "dev-shared-secret"


def http(method, path, body=None, token=None):
    req = urllib.request.Request(URL + path, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(req, data, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def synapse_config():
    return f"""server_name: localhost
pid_file: {DATA}/synapse/homeserver.pid
report_stats: false
signing_key_path: {DATA}/synapse/localhost.signing.key
media_store_path: {DATA}/synapse/media_store
database: {{name: sqlite3, args: {{database: {DATA}/synapse/homeserver.db}}}}
listeners:
  - {{port: {PORT}, bind_addresses: ['127.0.0.1'], type: http, tls: false, x_forwarded: false, resources: [{{names: [client], compress: false}}]}}
registration_shared_secret: {SHARED_SECRET}
# Only the web chat's sign-up tokens (handed out by the bot) open registration.
enable_registration: true
registration_requires_token: true
trusted_key_servers: []
suppress_key_server_warning: true
url_preview_enabled: false
"""


def register(user, password, admin=False):
    _, nonce = http("GET", "/_synapse/admin/v1/register")
    mac = hmac.new(SHARED_SECRET.encode(), digestmod=hashlib.sha1)
    kind = "admin" if admin else "notadmin"
    mac.update(f"{nonce['nonce']}\0{user}\0{password}\0{kind}".encode())
    status, body = http("POST", "/_synapse/admin/v1/register", {
        "nonce": nonce["nonce"], "username": user, "password": password,
        "admin": admin, "mac": mac.hexdigest(),
    })
    if status != 200 and body.get("errcode") != "M_USER_IN_USE":
        sys.exit(f"registering {user} failed: {body}")


def login(user, password):
    status, body = http("POST", "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
        "password": password, "initial_device_display_name": "dev setup",
    })
    if status != 200:
        sys.exit(f"login as {user} failed: {body}")
    return body["access_token"]


def build_web_page():
    """Builds web/dist (npm packages from the lockfile) unless it is current."""
    web = ROOT / "web"
    dist = web / "dist" / "index.html"
    sources = [p for p in (web / "src").rglob("*") if p.is_file()] + [web / "package-lock.json", web / "build.mjs"]
    if dist.exists() and all(p.stat().st_mtime <= dist.stat().st_mtime for p in sources):
        return
    print("Building the web chat page (npm ci, esbuild)...", flush=True)
    if not (web / "node_modules" / ".package-lock.json").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=web, check=True)
    subprocess.run(["npm", "run", "--silent", "build"], cwd=web, check=True)


def main():
    subprocess.run([str(ROOT / "scripts/install-synapse.sh")], check=True)
    python = ROOT / ".venv-synapse/bin/python"
    (DATA / "synapse").mkdir(parents=True, exist_ok=True)
    os.chmod(DATA, 0o700)
    (DATA / "synapse/homeserver.yaml").write_text(synapse_config())
    subprocess.run([str(python), "-m", "synapse.app.homeserver", "-c", "homeserver.yaml", "--generate-keys"],
                   cwd=DATA / "synapse", check=True, stdout=subprocess.DEVNULL)
    log = open(DATA / "synapse/synapse.log", "ab")
    synapse = subprocess.Popen([str(python), "-m", "synapse.app.homeserver", "-c", "homeserver.yaml"],
                               cwd=DATA / "synapse", stdout=log, stderr=log)
    procs = [synapse]

    def stop(*_):
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for _ in range(150):
        try:
            if http("GET", "/_matrix/client/versions")[0] == 200:
                break
        except OSError:
            pass
        if synapse.poll() is not None:
            sys.exit(f"Synapse exited; see {DATA}/synapse/synapse.log")
        time.sleep(0.2)
    else:
        stop()

    accounts_file = DATA / "accounts.json"
    if accounts_file.exists():
        accounts = json.loads(accounts_file.read_text())
    else:
        accounts = {name: secrets.token_urlsafe(12) for name in ["intake", "counsellor", "visitor", "admin"]}
        accounts["store_passphrase"] = secrets.token_urlsafe(24)
        accounts_file.write_text(json.dumps(accounts, indent=2))
        os.chmod(accounts_file, 0o600)
    for name in ["intake", "counsellor", "visitor"]:
        register(name, accounts[name])
    # The helpline's admin account: the bot's token for sign-ups and purges.
    accounts.setdefault("admin", secrets.token_urlsafe(12))
    register("helpline-admin", accounts["admin"], admin=True)
    if "admin_token" not in accounts:
        accounts["admin_token"] = login("helpline-admin", accounts["admin"])
        accounts_file.write_text(json.dumps(accounts, indent=2))

    if "staff_room" not in accounts:
        token = login("counsellor", accounts["counsellor"])
        status, body = http("POST", "/_matrix/client/v3/createRoom", {
            "preset": "private_chat", "name": "Helpline staff", "invite": ["@intake:localhost"],
            "initial_state": [{"type": "m.room.encryption", "state_key": "",
                               "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
        }, token)
        if status != 200:
            sys.exit(f"creating the staff room failed: {body}")
        accounts["staff_room"] = body["room_id"]
        accounts_file.write_text(json.dumps(accounts, indent=2))

    for name, key in [("password", "intake"), ("store-passphrase", "store_passphrase"), ("admin-token", "admin_token")]:
        f = DATA / name
        f.write_text(accounts[key] + "\n")
        os.chmod(f, 0o600)
    config = (ROOT / "config.example.toml").read_text()
    for old, new in [
        ('homeserver_url = "http://127.0.0.1:8008"', f'homeserver_url = "{URL}"'),
        ('data_dir = "data"', 'data_dir = "bot-data"'),
        ('room = "!staffroom:localhost"', f'room = "{accounts["staff_room"]}"'),
        ('accept_timeout_secs = 120', 'accept_timeout_secs = 300'),
        ('# password_file = "/run/credentials/intake-bot.service/password"', 'password_file = "password"'),
        ('# store_passphrase_file = "/run/credentials/intake-bot.service/store-passphrase"',
         'store_passphrase_file = "store-passphrase"'),
        ('# listen = "127.0.0.1:9100"', f'listen = "127.0.0.1:{PORT + 1}"'),
        ('# admin_token_file = "/run/credentials/intake-bot.service/synapse-admin-token"',
         'admin_token_file = "admin-token"'),
        ('# [web]', '[web]'),
        ('# listen = "127.0.0.1:8090"', f'listen = "127.0.0.1:{PORT + 2}"'),
        ('# public_homeserver_url = "https://matrix.example.org"', f'public_homeserver_url = "{URL}"'),
        ('# quick_exit_url = "https://www.google.com/search?q=weather"',
         'quick_exit_url = "https://www.google.com/search?q=weather"'),
        ('# assets_dir = "web/dist"', f'assets_dir = "{ROOT / "web/dist"}"'),
    ]:
        # Fail loudly when config.example.toml changed under this script.
        if old not in config:
            sys.exit(f"dev.py: config.example.toml no longer contains {old!r}; update scripts/dev.py")
        config = config.replace(old, new)
    (DATA / "bot.toml").write_text(config)

    build_web_page()
    print("Building intake-bot...", flush=True)
    subprocess.run(["cargo", "build", "--quiet"], cwd=ROOT, check=True)
    bot = subprocess.Popen([str(ROOT / "target/debug/intake-bot"), "--config", str(DATA / "bot.toml"), "run"])
    procs.append(bot)
    print(f"""
intake-bot is starting against a local Synapse at {URL}.

Play a visitor without a Matrix account: open  http://127.0.0.1:{PORT + 2}/
in a browser and press "Start a chat" (the counsellor below takes the case).

Or try it with any Matrix client (Element Desktop, Element Web, Fractal, nheko, ...)
pointed at the homeserver {URL}:

  Counsellor:  user  counsellor   password  {accounts['counsellor']}
               Accept the invite to "Helpline staff" and type  !available
  Visitor:     user  visitor      password  {accounts['visitor']}
               Start an encrypted direct chat with  @intake:localhost
               and answer the questions; the counsellor gets an invite.
               The counsellor ends the case with  !close advice

Health:   curl http://127.0.0.1:{PORT + 1}/healthz   Metrics: curl http://127.0.0.1:{PORT + 1}/metrics
Records:  target/debug/intake-bot --config dev-data/bot.toml export   (after Ctrl-C)
Config:   dev-data/bot.toml   Logs: this terminal.   Stop: Ctrl-C
""", flush=True)
    while True:
        if bot.poll() is not None:
            print(f"intake-bot exited with {bot.returncode}", flush=True)
            stop()
        if synapse.poll() is not None:
            print("Synapse exited; see dev-data/synapse/synapse.log", flush=True)
            stop()
        time.sleep(0.5)


if __name__ == "__main__":
    main()
