// Unit tests of the page's pure helpers (node --test; no browser).
import assert from "node:assert/strict";
import { test } from "node:test";
import { TEXTS, browserLanguage, choicesOf, placeInLine } from "../src/texts.js";

test("the browser's first known language wins, else English", () => {
  assert.equal(browserLanguage(["nl-NL", "en"]), "nl");
  assert.equal(browserLanguage(["de-DE", "nl-BE"]), "nl");
  assert.equal(browserLanguage(["en-GB", "nl"]), "en");
  assert.equal(browserLanguage(["fr"]), "en");
  assert.equal(browserLanguage(undefined), "en");
});

test("numbered choices become buttons; other numbers do not", () => {
  const q = "(2/6) How old are you?\n1. Under 15\n2. 15-17\n3. 18 or older\nType the number of your answer, or skip.";
  assert.deepEqual(
    choicesOf(q).map((c) => c.number + ":" + c.label),
    ["1:Under 15", "2:15-17", "3:18 or older"],
  );
  assert.deepEqual(choicesOf("Call 112. It is free."), []);
  assert.deepEqual(choicesOf("3. three\n4. four"), [], "a list that does not start at 1 is not a menu");
});

test("the place in line is read from the bot's default texts", () => {
  assert.equal(placeInLine("All counsellors are busy right now. You are number 4 in line. Please stay."), 4);
  assert.equal(placeInLine("Alle hulpverleners zijn nu bezet. Je bent nummer 12 in de rij."), 12);
  assert.equal(placeInLine("A counsellor is here now."), null);
});

test("both languages have every text", () => {
  assert.deepEqual(Object.keys(TEXTS.nl).sort(), Object.keys(TEXTS.en).sort());
  for (const [lang, t] of Object.entries(TEXTS)) {
    for (const [k, v] of Object.entries(t)) assert.ok(v.length > 0, `${lang}.${k} is empty`);
  }
});
