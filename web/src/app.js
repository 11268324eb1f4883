// The visitor page of intake-bot (DESIGN.md, "Web chat").
//
// One tap makes a throwaway account on the helpline's homeserver (with a
// single-use token from the bot), turns on end-to-end encryption in the
// browser (matrix-js-sdk with its Rust crypto, kept in memory only), and
// opens an encrypted DM with the bot the way Element does. Nothing is ever
// written to the browser's storage: the password, keys and messages live in
// this tab and are gone with it.
//
// However the chat ends, the account is deleted with erase: by this page
// where it can, and by the bot in any case. A reload or a closed tab ends
// the chat (see README, "Web chat": nothing is kept to continue it with).

import { ClientEvent, createClient, MemoryStore, Preset, RoomEvent, RoomMemberEvent } from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";
import { TEXTS, browserLanguage, choicesOf, placeInLine } from "./texts.js";

// The SDK's chatter names rooms and accounts: errors only, even in a
// console; not persisted (loglevel would keep the level in localStorage).
logger.setLevel("error", false);

let lang = browserLanguage(navigator.languages || [navigator.language]);
const $ = (id) => document.getElementById(id);

/** What the page knows about the chat in hand; memory only. */
const chat = {
  settings: null, // { homeserver, bot, quickExit, prefix }
  client: null,
  userId: null,
  password: null,
  accessToken: null,
  roomId: null,
  phase: "start", // start, connecting, intake, waiting, counsellor, ended
  place: null,
  counsellors: new Set(),
  ended: false,
  deleted: false,
};

function t(key, vars = {}) {
  let s = TEXTS[lang][key] ?? TEXTS.en[key] ?? key;
  for (const [k, v] of Object.entries(vars)) s = s.replace(`{${k}}`, String(v));
  return s;
}

function applyLanguage() {
  document.documentElement.lang = lang;
  for (const el of document.querySelectorAll("[data-t]")) el.textContent = t(el.dataset.t);
  for (const el of document.querySelectorAll("[data-t-label]")) el.setAttribute("aria-label", t(el.dataset.tLabel));
  const other = lang === "nl" ? "en" : "nl";
  $("lang").textContent = t("other");
  $("lang").lang = other;
  for (const li of $("log").querySelectorAll("[data-who]")) li.querySelector(".who").textContent = t(li.dataset.who);
  showPhase();
}

function showPhase() {
  const s = $("status");
  const key = {
    connecting: "connecting",
    intake: "intake",
    waiting: chat.place ? "waitingAt" : "waiting",
    counsellor: "counsellorHere",
    counsellorLeft: "counsellorLeft",
    ended: "ended",
  }[chat.phase];
  s.textContent = key ? t(key, { n: chat.place }) : "";
  if (chat.offline && chat.phase !== "ended") s.textContent = t("offline");
  s.dataset.phase = chat.phase;
}

function setPhase(p) {
  chat.phase = p;
  showPhase();
}

/** Adds a line to the conversation: who is "you", "assistant" or "counsellor". */
function addLine(who, text) {
  const li = document.createElement("li");
  li.className = who === "you" ? "me" : "them";
  li.dataset.who = who;
  const name = document.createElement("span");
  name.className = "who";
  name.textContent = t(who);
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = text;
  li.append(name, body);
  $("log").append(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

function showChoices(text) {
  const box = $("choices");
  box.replaceChildren();
  for (const c of choicesOf(text)) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = `${c.number}. ${c.label}`;
    b.addEventListener("click", () => {
      box.replaceChildren();
      send(c.number);
    });
    box.append(b);
  }
}

function randomString(n, alphabet = "abcdefghijklmnopqrstuvwxyz0123456789") {
  const bytes = crypto.getRandomValues(new Uint8Array(n));
  return Array.from(bytes, (b) => alphabet[b % alphabet.length]).join("");
}

async function fetchJson(url, init) {
  const r = await fetch(url, { cache: "no-store", credentials: "omit", ...init });
  const body = await r.json().catch(() => ({}));
  return { status: r.status, body };
}

/** Registers a throwaway account with a sign-up token from the bot. */
async function register(settings) {
  const signup = await fetchJson("/signup", { method: "POST" });
  if (signup.status === 429) throw new Error("busy");
  if (signup.status !== 200 || !signup.body.token) throw new Error("signup");
  const username = settings.prefix + randomString(20);
  const password = randomString(40, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789");
  const tmp = createClient({ baseUrl: settings.homeserver, store: new MemoryStore() });
  const request = { username, password, initial_device_display_name: "Web", inhibit_login: false };
  // User-interactive auth: Synapse asks for the token, then a dummy stage.
  let auth;
  for (let round = 0; round < 4; round++) {
    try {
      const done = await tmp.registerRequest(auth ? { ...request, auth } : request);
      return { ...done, password };
    } catch (e) {
      const ui = e?.data;
      if (!ui?.session || !Array.isArray(ui.flows)) throw e;
      const completed = ui.completed || [];
      const flow = ui.flows.find((f) => f.stages.includes("m.login.registration_token")) || ui.flows[0];
      const next = flow?.stages.find((s) => !completed.includes(s));
      if (next === "m.login.registration_token") {
        auth = { type: next, token: signup.body.token, session: ui.session };
      } else if (next === "m.login.dummy") {
        auth = { type: next, session: ui.session };
      } else {
        throw e;
      }
    }
  }
  throw new Error("registration");
}

function passwordAuth() {
  return { type: "m.login.password", identifier: { type: "m.id.user", user: chat.userId }, password: chat.password };
}

async function startChat() {
  $("start-error").hidden = true;
  $("start-button").disabled = true;
  $("start").hidden = true;
  $("chat").hidden = false;
  setPhase("connecting");
  try {
    const settings = (await fetchJson("/config.json")).body;
    chat.settings = settings;
    const account = await register(settings);
    chat.userId = account.user_id;
    chat.password = account.password;
    chat.accessToken = account.access_token;
    const client = createClient({
      baseUrl: settings.homeserver,
      userId: account.user_id,
      accessToken: account.access_token,
      deviceId: account.device_id,
      pendingEventOrdering: "detached",
      // Without a localStorage: the SDK would keep its sync filter there,
      // under the account's user id.
      store: new MemoryStore(),
    });
    chat.client = client;
    // Keys in memory only: nothing of the chat outlives the tab.
    await client.initRustCrypto({ useIndexedDB: false });
    listen(client);
    await client.startClient({ initialSyncLimit: 20, lazyLoadMembers: true });
    await new Promise((resolve) => {
      if (client.isInitialSyncComplete()) return resolve();
      const onSync = (state) => {
        if (state === "PREPARED" || state === "SYNCING") {
          client.off(ClientEvent.Sync, onSync);
          resolve();
        }
      };
      client.on(ClientEvent.Sync, onSync);
    });
    // Cross-signed, so counsellors whose Element only reads verified
    // devices still read this one.
    await client.getCrypto().bootstrapCrossSigning({
      authUploadDeviceSigningKeys: async (makeRequest) => {
        await makeRequest(passwordAuth());
      },
    });
    const { room_id: roomId } = await client.createRoom({
      preset: Preset.TrustedPrivateChat,
      is_direct: true,
      invite: [settings.bot],
      initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
    });
    chat.roomId = roomId;
    await client.setAccountData("m.direct", { [settings.bot]: [roomId] });
    $("text").focus();
  } catch (e) {
    console.warn("start failed", String(e?.message || e).slice(0, 200));
    const busy = e?.message === "busy";
    await forget();
    $("chat").hidden = true;
    $("log").replaceChildren();
    $("start").hidden = false;
    $("start-button").disabled = false;
    const err = $("start-error");
    err.textContent = t(busy ? "busy" : "failed");
    err.hidden = false;
    chat.phase = "start";
  }
}

/** Wires the client's events to the page. */
function listen(client) {
  // Lines are shown in order, each once decrypted.
  let queue = Promise.resolve();
  client.on(RoomEvent.Timeline, (ev, room, toStart) => {
    if (toStart || !room || room.roomId !== chat.roomId) return;
    queue = queue.then(() => showEvent(client, ev)).catch(() => {});
  });
  client.on(RoomMemberEvent.Membership, (_ev, member) => {
    if (member.roomId !== chat.roomId || chat.ended) return;
    const bot = chat.settings.bot;
    if (member.userId === bot && (member.membership === "leave" || member.membership === "ban")) return end();
    if (member.userId === chat.userId && member.membership !== "join") return end();
    if (member.userId !== bot && member.userId !== chat.userId) {
      if (member.membership === "join") {
        chat.counsellors.add(member.userId);
        setPhase("counsellor");
      } else if (chat.counsellors.delete(member.userId) && chat.counsellors.size === 0) {
        setPhase("counsellorLeft");
      }
    }
  });
  client.on(ClientEvent.Sync, (state) => {
    const offline = state === "ERROR" || state === "RECONNECTING";
    if (offline !== !!chat.offline) {
      chat.offline = offline;
      showPhase();
      if (!offline) resendFailed();
    }
  });
}

async function showEvent(client, ev) {
  await client.decryptEventIfNeeded(ev);
  if (ev.getType() !== "m.room.message" || ev.getSender() === chat.userId) return;
  const content = ev.getContent() || {};
  const body = content.body;
  if (typeof body !== "string") return;
  const fromBot = ev.getSender() === chat.settings.bot;
  // The bot's only formatted message in a chat is the counsellor's intake
  // summary (in the staff language, with staff commands): not for the
  // visitor's screen.
  if (fromBot && content.format === "org.matrix.custom.html") return;
  addLine(fromBot ? "assistant" : "counsellor", body);
  if (fromBot) {
    showChoices(body);
    const place = placeInLine(body);
    if (place) {
      chat.place = place;
      setPhase("waiting");
    } else if (chat.phase === "connecting") {
      setPhase("intake");
    }
  }
}

/** Messages the visitor wrote that did not go out yet, by transaction id. */
const unsent = new Map();

async function send(text) {
  if (!chat.client || !chat.roomId || chat.ended) return;
  const li = addLine("you", text);
  const txnId = chat.client.makeTxnId();
  try {
    await chat.client.sendMessage(chat.roomId, { msgtype: "m.text", body: text }, txnId);
  } catch {
    li.classList.add("pending");
    const note = document.createElement("span");
    note.className = "state";
    note.textContent = t("notSent");
    li.append(note);
    unsent.set(txnId, li);
    if (!chat.offline) setTimeout(resendFailed, 3000);
  }
}

/** Sends again what failed, in order, once the connection is back. */
async function resendFailed() {
  const room = chat.client?.getRoom(chat.roomId);
  if (!room || chat.ended) return;
  for (const ev of room.getPendingEvents()) {
    const li = unsent.get(ev.getTxnId());
    if (!li || ev.status !== "not_sent") continue;
    try {
      await chat.client.resendEvent(ev, room);
      li.classList.remove("pending");
      li.querySelector(".state")?.remove();
      unsent.delete(ev.getTxnId());
    } catch {
      setTimeout(resendFailed, 5000);
      return;
    }
  }
}

/** The chat is over: the goodbye stays on screen, the account goes. */
async function end() {
  if (chat.ended) return;
  chat.ended = true;
  setPhase("ended");
  $("choices").replaceChildren();
  $("text").disabled = true;
  for (const b of $("composer").querySelectorAll("button")) b.disabled = true;
  // Let the last lines arrive, then delete the account with erase.
  setTimeout(() => forget(), 2000);
  const again = document.createElement("button");
  again.type = "button";
  again.className = "primary";
  again.dataset.t = "newChat";
  again.textContent = t("newChat");
  again.addEventListener("click", () => location.replace(location.pathname));
  $("composer").after(again);
}

/** Deletes the account (with erase) and drops every secret of this tab. */
async function forget() {
  const client = chat.client;
  if (client && !chat.deleted) {
    chat.deleted = true;
    try {
      await client.deactivateAccount(passwordAuth(), true);
    } catch {
      // The bot deletes it anyway.
    }
    client.stopClient();
  }
  chat.client = null;
  chat.password = null;
  chat.accessToken = null;
}

/**
 * Ends the chat as the page goes away, without waiting: leaving the room
 * ends the case, and deleting the account erases it. Plain requests
 * (`text/plain`, token in the query) need no CORS preflight, so the
 * browser sends them even while it unloads the page.
 */
function endAsThePageGoes() {
  if (!chat.accessToken || chat.deleted || !chat.settings) return;
  chat.deleted = true;
  const base = chat.settings.homeserver;
  const q = `access_token=${encodeURIComponent(chat.accessToken)}`;
  const post = (path, body) =>
    fetch(`${base}/_matrix/client/v3/${path}?${q}`, {
      method: "POST",
      keepalive: true,
      mode: "cors",
      credentials: "omit",
      headers: { "Content-Type": "text/plain" },
      body: JSON.stringify(body),
    }).catch(() => {});
  if (chat.roomId) post(`rooms/${encodeURIComponent(chat.roomId)}/leave`, {});
  post("account/deactivate", { auth: passwordAuth(), erase: true });
  chat.accessToken = null;
  chat.password = null;
}

function wipe() {
  try {
    sessionStorage.clear();
    localStorage.clear();
  } catch {
    // Storage may be blocked; the page never wrote to it anyway.
  }
  document.title = "";
  document.body.replaceChildren();
}

function quickExit() {
  const to = chat.settings?.quickExit || quickExitUrl;
  endAsThePageGoes();
  wipe();
  // Replaces this page in the history: Back does not come here.
  location.replace(to);
}

let quickExitUrl = "about:blank";
let lastEscape = 0;

function init() {
  applyLanguage();
  $("lang").addEventListener("click", () => {
    lang = lang === "nl" ? "en" : "nl";
    applyLanguage();
  });
  $("exit").addEventListener("click", quickExit);
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Escape") return;
    const now = Date.now();
    if (now - lastEscape < 1500) quickExit();
    lastEscape = now;
  });
  $("start-button").addEventListener("click", startChat);
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("text");
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    $("choices").replaceChildren();
    send(text);
  });
  // A reload or a closed tab ends the chat: nothing is kept to resume it.
  window.addEventListener("pagehide", endAsThePageGoes);
  // A page brought back from the back-forward cache shows nothing old.
  window.addEventListener("pageshow", (e) => {
    if (e.persisted) location.replace(location.pathname);
  });
  // Knowing where to go before any chat starts makes the exit instant.
  fetchJson("/config.json")
    .then(({ body }) => {
      if (body.quickExit) quickExitUrl = body.quickExit;
      chat.settings ??= body;
    })
    .catch(() => {});
}

init();

// For the browser tests and the load generator: the phase, read-only.
window.intakeChat = { phase: () => chat.phase };
