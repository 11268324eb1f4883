// Plays a visitor in a real headless Chromium (Debian's, driven by
// playwright-core) on the web chat page. Started by tests/web.rs, which
// plays the counsellor with matrix-sdk and checks the bot's side; this side
// checks what the visitor sees and what the browser keeps.
//
// Environment: PAGE_URL, EXIT_URL, HOMESERVER_URL, SCENARIO (case |
// quick-exit | reload), UI_LANG (en | nl), COUNSELLOR_LINE (what the
// counsellor will write), OFFLINE_LINE (sent while the network is down),
// SHOTS (directory for screenshots, optional), CHROMIUM (default
// /usr/bin/chromium).
// Prints "STEP <name>" lines as it goes; exits non-zero with a reason on the
// first thing that is wrong.

import { chromium } from "playwright-core";

const env = (k, d) => process.env[k] ?? d;
const PAGE_URL = env("PAGE_URL");
const EXIT_URL = env("EXIT_URL");
const HS = env("HOMESERVER_URL");
const SCENARIO = env("SCENARIO", "case");
const LANG = env("UI_LANG", "en");
const SHOTS = env("SHOTS", "");
const COUNSELLOR_LINE = env("COUNSELLOR_LINE", "");
const OFFLINE_LINE = env("OFFLINE_LINE", "");
const T = {
  en: { start: /Start/, exit: "Leave quickly", box: "Your message", language: "English", ended: "The chat has ended", history: "browser's history" },
  nl: { start: /Start/, exit: "Snel weg", box: "Je bericht", language: "Nederlands", ended: "De chat is afgelopen", history: "geschiedenis van je browser" },
}[LANG];

function step(name) {
  console.log(`STEP ${name}`);
}

function fail(why) {
  console.error(`FAIL ${why}`);
  process.exit(1);
}

const origin = (u) => new URL(u).origin;
const allowed = new Set([origin(PAGE_URL), origin(HS)]);
const foreign = [];

const browser = await chromium.launch({
  executablePath: env("CHROMIUM", "/usr/bin/chromium"),
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const timer = setTimeout(() => fail("the scenario took over 8 minutes"), 8 * 60 * 1000);
try {
  const context = await browser.newContext({
    viewport: { width: 360, height: 740 },
    deviceScaleFactor: 1,
    locale: LANG === "nl" ? "nl-NL" : "en-GB",
    serviceWorkers: "block",
  });
  // The quick exit's page is not on the network here: answer it locally.
  await context.route(`${origin(EXIT_URL)}/**`, (route) =>
    route.fulfill({ status: 200, contentType: "text/html", body: "<title>Weather</title><p>Sunny.</p>" }),
  );
  const page = await context.newPage();
  let exited = false;
  page.on("request", (r) => {
    const o = origin(r.url());
    if (!allowed.has(o) && !(exited && o === origin(EXIT_URL))) foreign.push(r.url());
  });
  page.on("console", (m) => {
    if (m.type() !== "debug") console.error(`page ${m.type()}: ${m.text().slice(0, 300)}`);
  });
  page.on("pageerror", (e) => console.error(`page error: ${e.message}`));

  const resp = await page.goto(PAGE_URL);
  const h = resp.headers();
  const csp = h["content-security-policy"] || "";
  if (!csp.includes("default-src 'self'")) fail(`no strict CSP: ${csp}`);
  if (/'unsafe-(eval|inline)'/.test(csp)) fail(`CSP allows unsafe code: ${csp}`);
  if (!csp.includes(`connect-src 'self' ${origin(HS)}`)) fail(`connect-src is not the page and the homeserver: ${csp}`);
  if (h["referrer-policy"] !== "no-referrer") fail("no Referrer-Policy: no-referrer");
  if (h["set-cookie"]) fail("the page sets a cookie");
  step("page-loaded");

  const logHas = (needle, timeout = 90_000) =>
    page.waitForFunction((n) => document.querySelector("[role=log]")?.textContent.includes(n), needle, { timeout });
  const phase = () => page.evaluate(() => window.intakeChat.phase());
  const waitPhase = (p, timeout = 120_000) =>
    page.waitForFunction((want) => window.intakeChat.phase() === want, p, { timeout });

  await page.getByRole("button", { name: T.start }).click();
  step("started");
  // The bot's first message asks for the language (numbered, tappable).
  const choices = page.locator("#choices button");
  await choices.first().waitFor({ timeout: 120_000 });
  await page.locator("#choices button", { hasText: T.language }).click();
  for (let i = 1; i <= 6; i++) {
    await logHas(`(${i}/6)`);
    if (i === 1) {
      if ((await phase()) !== "intake") fail(`phase at the first question: ${await phase()}`);
      if (SHOTS) await page.screenshot({ path: `${SHOTS}/web-${LANG}-question.png` });
      step("first-question");
      if (SCENARIO === "reload") {
        await page.reload();
        await page.getByRole("button", { name: T.start }).waitFor({ timeout: 10_000 });
        if ((await page.locator("#log").textContent()) !== "") fail("the old chat is still on the page after a reload");
        step("reloaded");
        break;
      }
    }
    await choices.first().waitFor({ timeout: 30_000 });
    await choices.first().click();
  }

  if (SCENARIO !== "reload") {
    step("intake-done");
    await waitPhase("counsellor", 180_000);
    await logHas(COUNSELLOR_LINE, 120_000);
    if (SHOTS) await page.screenshot({ path: `${SHOTS}/web-${LANG}-counsellor.png` });
    // The counsellor's summary (staff commands and all) is not shown.
    if ((await page.locator("#log").textContent()).includes("!close")) fail("the staff summary is on the page");
    step("counsellor-read");
  }

  if (SCENARIO === "case") {
    // The network drops; what the visitor writes goes out once it is back.
    await context.setOffline(true);
    const box = page.getByLabel(T.box);
    await box.fill(OFFLINE_LINE);
    await box.press("Enter");
    await page.waitForTimeout(4000);
    await context.setOffline(false);
    step("offline-line-written");
    await waitPhase("ended", 240_000);
    // The goodbye stays on screen.
    await page.waitForFunction(() => document.getElementById("status").textContent.length > 0);
    const status = await page.locator("#status").textContent();
    if (!status.includes(T.ended)) fail(`status at the end: ${status}`);
    // The page tells how to cover the visit's traces in the browser.
    if (!status.includes(T.history)) fail(`no word on the browser's history at the end: ${status}`);
    await page.waitForTimeout(5000);
    step("ended");
  }

  if (SCENARIO === "quick-exit") {
    await page.keyboard.press("Escape");
    // From the second press on, the exit page may be asked for.
    exited = true;
    await page.keyboard.press("Escape");
    await page.waitForURL(`${origin(EXIT_URL)}/**`, { timeout: 10_000 });
    step("exited");
    // Back does not bring the chat back.
    await page.goBack({ timeout: 5000 }).catch(() => null);
    if (page.url().startsWith(PAGE_URL)) {
      const text = await page.locator("body").textContent();
      if (text.includes(COUNSELLOR_LINE)) fail("Back shows the chat again");
    }
    step("back-checked");
  }

  // Nothing readable stays in the browser: storage of the page's origin,
  // cookies, IndexedDB, caches.
  const probe = await context.newPage();
  await probe.goto(PAGE_URL);
  const kept = await probe.evaluate(async () => ({
    local: Object.keys(localStorage),
    session: sessionStorage.length,
    idb: (await indexedDB.databases()).map((d) => d.name),
    caches: await caches.keys(),
  }));
  if (kept.local.length || kept.session || kept.idb.length || kept.caches.length) fail(`the browser kept: ${JSON.stringify(kept)}`);
  if ((await context.cookies()).length) fail("cookies were set");
  step("nothing-kept");

  if (foreign.length) fail(`requests to other origins: ${foreign.join(", ")}`);
  step("done");
  await browser.close();
  clearTimeout(timer);
} catch (e) {
  await browser.close().catch(() => {});
  fail(e?.stack || String(e));
}
