// The web chat page in a real browser: Debian's chromium, driven by playwright-core, against the
// chatqs that tests/api/web_browser.rs started (with the LLM mocked over HTTP). Controls are found
// by their accessible role and name, as a person (or a screen reader) finds them. Each test saves
// a screenshot in WEBTEST_SCREENSHOTS; the performance test also writes metrics.json there.
//
// Run by `cargo test --test api web_browser` (through scripts/test), which sets:
//   WEBTEST_URL, WEBTEST_KEY     the chatq most tests use, and a key of its tenant
//   WEBTEST_MOCK                 its mock LLM (POST /control changes how it answers)
//   WEBTEST_BIG                  a conversation of its tenant with 500 messages
//   WEBTEST_BUSY_URL/_KEY        a chatq whose queue is full after one job
//   WEBTEST_LIMITED_URL/_KEY     a chatq that lets a key make one request a second
//   WEBTEST_CHROMIUM             the browser; NODE_PATH finds playwright-core
"use strict";
const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const { chromium } = require("playwright-core");

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this through tests/api/web_browser.rs`);
  return value;
};
const URL_ = env("WEBTEST_URL");
const KEY = env("WEBTEST_KEY");
const MOCK = env("WEBTEST_MOCK");
const SHOTS = env("WEBTEST_SCREENSHOTS");
const DESKTOP = { width: 1200, height: 800 };
const PHONE = { width: 390, height: 844 };

let browser;
const shared = {}; // what one test leaves for a later one (a conversation with a reply)

before(async () => {
  browser = await chromium.launch({
    executablePath: env("WEBTEST_CHROMIUM"),
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
});
after(async () => { if (browser) await browser.close(); });

// --- helpers ---------------------------------------------------------------------------------

/** A call to a chatq's API from the test itself (to set up, and to check what the page did). */
async function api(method, pathname, body, { base = URL_, key = KEY, headers = {} } = {}) {
  const res = await fetch(base + pathname, {
    method,
    headers: Object.assign({ Authorization: `Bearer ${key}`, "Content-Type": "application/json" }, headers),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null, headers: res.headers };
}

async function ok(method, pathname, body, options) {
  const res = await api(method, pathname, body, options);
  assert.ok(res.status >= 200 && res.status < 300, `${method} ${pathname}: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body;
}

/** How the mock LLM answers from now on (every field not given is back to its default). */
async function mock(config) {
  const res = await fetch(`${MOCK}/control`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(config),
  });
  assert.equal(res.status, 204);
}

/** A page in a fresh browser context (its own localStorage), with the key already given unless
 *  `key` is null. */
async function open({ key = KEY, base = URL_, hash = "", viewport = DESKTOP, colorScheme = "light", init } = {}) {
  const context = await browser.newContext({ viewport, colorScheme });
  if (key) await context.addInitScript((k) => { if (!sessionStorage.getItem("seeded")) { localStorage.setItem("chatq.apiKey", k); sessionStorage.setItem("seeded", "1"); } }, key);
  if (init) await context.addInitScript(init);
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (err) => errors.push(err.message));
  // An answer the page expects (401 for a wrong key, 404, 429, 503) is logged by the browser as
  // a failed resource; anything else is the page's own error.
  page.on("console", (msg) => {
    if (msg.type() === "error" && !msg.text().startsWith("Failed to load resource")) errors.push(msg.text());
  });
  page.errors = errors;
  await page.goto(base + "/" + (hash ? "#" + hash : ""));
  return page;
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
}

/** Waits until fn() (run in the test) returns something truthy; returns it. */
async function until(fn, what, timeout = 15000) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try { last = await fn(); if (last) return last; } catch (err) { last = err; }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const composer = (page) => page.getByRole("textbox", { name: "Message", exact: true });
const log = (page) => page.getByRole("log", { name: "Messages" });
const statusLine = (page) => page.getByRole("status");
const button = (page, name) => page.getByRole("button", { name, exact: true });
const sidebar = (page) => page.getByRole("navigation", { name: "Conversations" });

/** Texts of the messages shown, oldest first. */
const shownMessages = (page) => page.$$eval("#messages article .body", (bodies) => bodies.map((b) => b.textContent));

/** Records, from now on, how the reply that comes next grows: its lengths while it streams, the
 *  text streamed just before the stored reply replaced it, and any change elsewhere in the
 *  message list (there must be none: no re-render per token). */
async function watchNextReply(page) {
  await page.evaluate(() => {
    const box = document.getElementById("messages");
    const seen = { lengths: [], streamed: null, foreign: 0, removed: 0, reply: null, ended: false, done: false };
    window.__reply = seen;
    // Records come in order; each says what the text was before it changed (oldValue), and the
    // class change that drops "streaming" marks the end of the stream.
    new MutationObserver((records) => {
      for (const r of records) {
        if (r.target === box && r.type === "childList") {
          for (const n of r.removedNodes) if (n.tagName === "ARTICLE") seen.removed += 1;
          for (const n of r.addedNodes) if (n.classList && n.classList.contains("assistant")) seen.reply = n;
          continue;
        }
        if (seen.reply && seen.reply.contains(r.target)) {
          if (r.type === "attributes" && r.target === seen.reply && (r.oldValue || "").includes("streaming")) seen.ended = true;
          else if (r.type === "characterData" && !seen.ended) seen.lengths.push(r.oldValue.length);
          else if (r.type === "characterData" && !seen.done) { seen.streamed = r.oldValue; seen.done = true; }
          continue;
        }
        seen.foreign += 1;
      }
    }).observe(box, { subtree: true, childList: true, characterData: true, characterDataOldValue: true,
      attributes: true, attributeFilter: ["class"], attributeOldValue: true });
  });
}

const replyRecord = (page) => page.evaluate(() => {
  const r = window.__reply;
  return { lengths: r.lengths, streamed: r.streamed, foreign: r.foreign, removed: r.removed, done: r.done,
    text: r.reply && r.reply.querySelector(".body").textContent, streaming: !!(r.reply && r.reply.classList.contains("streaming")) };
});

async function lastAssistant(conversation, options) {
  const page = await ok("GET", `/v1/conversations/${conversation}/messages?limit=1000`, undefined, options);
  return page.data.filter((m) => m.role === "assistant").pop();
}

const conversationIdOf = (page) => page.evaluate(() => location.hash.slice(1));

// --- the tests ---------------------------------------------------------------------------------

test("the key is asked once, refused when wrong, kept in localStorage and never in the URL", async () => {
  const page = await open({ key: null });
  const dialog = page.getByRole("dialog", { name: "Your API key" });
  await dialog.waitFor();
  const field = dialog.getByRole("textbox", { name: "API key" });
  await field.fill("cq_not_a_real_key");
  await dialog.getByRole("button", { name: "Use key" }).click();
  await until(async () => (await page.getByRole("alert").filter({ hasText: "refused" }).count()) > 0, "the refusal");
  await shot(page, "01-key-refused");
  await field.fill(KEY);
  await field.press("Enter");
  await dialog.waitFor({ state: "hidden" });
  assert.equal(await page.evaluate(() => localStorage.getItem("chatq.apiKey")), KEY);
  assert.ok(!page.url().includes(KEY), "the key is not in the URL");
  await page.reload();
  await button(page, "New conversation").waitFor();
  await until(async () => (await dialog.count()) === 0 || !(await dialog.isVisible()), "no key dialog after a reload");
  assert.ok(!page.url().includes(KEY));
  await shot(page, "02-key-kept");
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("create, rename and delete a conversation", async () => {
  const page = await open();
  await page.getByRole("textbox", { name: "Title", exact: true }).fill("Holiday plans");
  await page.locator("summary").click();
  await page.getByRole("textbox", { name: "System prompt" }).fill("Answer like a travel agent.");
  await button(page, "New conversation").click();
  const heading = page.getByRole("heading", { name: "Holiday plans", level: 2 });
  await heading.waitFor();
  const id = await conversationIdOf(page);
  assert.match(id, /^conv_/);
  const created = await ok("GET", `/v1/conversations/${id}`);
  assert.equal(created.title, "Holiday plans");
  assert.equal(created.system_prompt, "Answer like a travel agent.");
  await sidebar(page).getByRole("button", { name: /Holiday plans/ }).waitFor();
  await log(page).getByText("Answer like a travel agent.").waitFor();

  await button(page, "Rename").click();
  const title = page.getByRole("textbox", { name: "Conversation title" });
  await title.fill("Lisbon in May");
  await title.press("Enter");
  await page.getByRole("heading", { name: "Lisbon in May", level: 2 }).waitFor();
  await sidebar(page).getByRole("button", { name: /Lisbon in May/ }).waitFor();
  assert.equal((await ok("GET", `/v1/conversations/${id}`)).title, "Lisbon in May");
  assert.equal(await page.title(), "Lisbon in May · chatq");
  await shot(page, "03-renamed");

  await button(page, "Delete").click();
  const confirm = page.getByRole("dialog", { name: "Delete conversation?" });
  await confirm.waitFor();
  await shot(page, "04-delete-confirm");
  await confirm.getByRole("button", { name: "Delete" }).click();
  await page.getByRole("heading", { name: "No conversation open" }).waitFor();
  assert.equal(await sidebar(page).getByRole("button", { name: /Lisbon in May/ }).count(), 0);
  assert.equal((await api("GET", `/v1/conversations/${id}`)).status, 404);
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("a reply streams in token by token, without re-rendering the list, and is there after a reload", async () => {
  await mock({ token_delay_ms: 80, tokens: 16 });
  const page = await open();
  await page.getByRole("textbox", { name: "Title", exact: true }).fill("Streaming");
  await page.getByRole("textbox", { name: "Title", exact: true }).press("Enter");
  await page.getByRole("heading", { name: "Streaming", level: 2 }).waitFor();
  const id = await conversationIdOf(page);

  // Shift+Enter is a new line, not a send.
  await composer(page).fill("First line");
  await composer(page).press("Shift+Enter");
  await composer(page).pressSequentially("second line");
  assert.equal(await composer(page).inputValue(), "First line\nsecond line");
  assert.equal((await ok("GET", `/v1/conversations/${id}/messages`)).data.length, 0);

  await watchNextReply(page);
  await composer(page).press("Enter");
  await until(async () => (await replyRecord(page)).lengths.length > 0, "the first token");
  await statusLine(page).getByText("Generating").waitFor();
  await shot(page, "05-streaming");
  const record = await until(async () => { const r = await replyRecord(page); return r.done && r; }, "the end of the reply");
  const stored = await lastAssistant(id);
  const steps = new Set(record.lengths.filter((n) => n > 0 && n < stored.content.length));
  assert.ok(steps.size >= 3, `the reply grew in ${steps.size} steps before it completed: ${record.lengths}`);
  assert.equal(record.streamed, stored.content, "what streamed is what was stored: no gap, no repeat");
  assert.equal(record.text, stored.content);
  assert.equal(record.removed, 0, "no message was removed or re-rendered while the reply streamed");
  assert.equal(record.foreign, 0, "no other message changed while the reply streamed");
  assert.equal(await composer(page).inputValue(), "");
  const messages = await shownMessages(page);
  assert.deepEqual(messages.slice(-2), ["First line\nsecond line", stored.content]);
  await shot(page, "06-streamed");

  await page.reload();
  await log(page).getByText(stored.content).waitFor();
  assert.deepEqual((await shownMessages(page)).slice(-2), ["First line\nsecond line", stored.content]);
  await page.getByRole("heading", { name: "Streaming", level: 2 }).waitFor();
  await shot(page, "07-history-after-reload");
  shared.conversation = id;
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("a 500-message conversation still streams smoothly", async () => {
  await mock({ token_delay_ms: 40, tokens: 40 });
  const page = await open({
    hash: env("WEBTEST_BIG"),
    init: () => {
      window.__long = [];
      new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__long.push(Math.round(e.duration)); })
        .observe({ type: "longtask" });
    },
  });
  await log(page).getByText("message 500", { exact: true }).waitFor();
  // Scroll up until every message is on the page.
  for (let i = 0; i < 15; i++) {
    const count = (await shownMessages(page)).length;
    if (count >= 500) break;
    await page.locator("#messages").evaluate((box) => { box.scrollTop = 0; });
    await until(async () => (await shownMessages(page)).length > count, "an older page");
  }
  const shown = await shownMessages(page);
  assert.equal(shown.length, 500);
  assert.equal(shown[0], "message 1");
  await page.locator("#messages").evaluate((box) => { box.scrollTop = box.scrollHeight; });
  await page.evaluate(() => { window.__long = []; });
  await watchNextReply(page);
  const started = Date.now();
  await composer(page).fill("And one more");
  await composer(page).press("Enter");
  const record = await until(async () => { const r = await replyRecord(page); return r.done && r; }, "the end of the reply", 30000);
  const elapsed = Date.now() - started;
  const long = await page.evaluate(() => window.__long);
  console.log(`# 500 messages: ${record.lengths.length} text updates in ${elapsed} ms, long tasks (ms): ${JSON.stringify(long)}`);
  assert.ok(new Set(record.lengths).size >= 3, "the reply grew in steps");
  assert.equal(record.removed, 0, "no message was re-rendered");
  assert.equal(record.foreign, 0, "no other message changed");
  assert.ok(long.every((ms) => ms < 200), `no long task while it streamed: ${long}`);
  assert.equal((await shownMessages(page)).length, 502);
  await shot(page, "08a-five-hundred-messages");
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("a long history pages back as it is scrolled up", async () => {
  await mock({});
  const conversation = await ok("POST", "/v1/conversations", { title: "Long" });
  const turns = 40;
  for (let i = 1; i <= turns; i++) {
    const sent = await ok("POST", `/v1/conversations/${conversation.id}/messages`, { content: `question ${i}` }, { headers: { Prefer: "wait=10" } });
    assert.equal(sent.job.status, "succeeded");
  }
  shared.long = conversation.id;
  const page = await open({ hash: conversation.id });
  await log(page).getByText(`question ${turns}`, { exact: true }).waitFor();
  assert.equal((await shownMessages(page)).length, 50, "the newest page first");
  assert.equal(await log(page).getByText("question 1", { exact: true }).count(), 0);
  await shot(page, "08-long-history-newest");
  // Scroll to the top: the older page loads by itself, and what was on screen stays there.
  await page.locator("#messages").evaluate((box) => { box.scrollTop = 0; });
  await log(page).getByText("question 1", { exact: true }).waitFor();
  assert.equal((await shownMessages(page)).length, turns * 2);
  assert.equal(await button(page, "Load earlier messages").count(), 0, "nothing more to load");
  const shown = await shownMessages(page);
  assert.equal(shown[0], "question 1");
  assert.equal(shown[shown.length - 2], `question ${turns}`);
  await page.locator("#messages").evaluate((box) => { box.scrollTop = 0; });
  await shot(page, "09-long-history-oldest");
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("feedback on a reply answers at once and is saved in the background", async () => {
  const page = await open({ hash: shared.conversation });
  const reply = await lastAssistant(shared.conversation);
  const up = button(page, "Good reply").last();
  await up.waitFor();
  // Hold the request back: the button must answer before the server does.
  let release;
  const held = new Promise((r) => { release = r; });
  await page.route("**/feedback", async (route) => { await held; await route.continue(); });
  await up.click();
  assert.equal(await up.getAttribute("aria-pressed"), "true");
  assert.equal((await api("GET", `/v1/messages/${reply.id}/feedback`)).status, 404, "not saved yet");
  release();
  await until(async () => (await api("GET", `/v1/messages/${reply.id}/feedback`)).status === 200, "the rating saved");
  const comment = page.getByRole("textbox", { name: "Feedback comment" });
  await comment.fill("Clear and <short>");
  await button(page, "Send comment").click();
  await log(page).getByText("Comment saved.").waitFor();
  const saved = await until(async () => {
    const res = await api("GET", `/v1/messages/${reply.id}/feedback`);
    return res.body && res.body.comment === "Clear and <short>" && res.body;
  }, "the comment saved");
  assert.equal(saved.rating, 1);
  await shot(page, "10-feedback");
  // Changing one's mind replaces the rating.
  await button(page, "Bad reply").last().click();
  assert.equal(await button(page, "Good reply").last().getAttribute("aria-pressed"), "false");
  await until(async () => (await api("GET", `/v1/messages/${reply.id}/feedback`)).body.rating === -1, "the new rating");
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("clearing the history asks first, then empties the conversation", async () => {
  const page = await open({ hash: shared.conversation });
  await button(page, "Good reply").last().waitFor();
  await button(page, "Clear history").click();
  const confirm = page.getByRole("dialog", { name: "Clear history?" });
  await confirm.waitFor();
  await confirm.getByRole("button", { name: "Cancel" }).click();
  await confirm.waitFor({ state: "hidden" });
  assert.ok((await ok("GET", `/v1/conversations/${shared.conversation}/messages`)).data.length > 0, "cancel keeps it");
  await button(page, "Clear history").click();
  await confirm.getByRole("button", { name: "Clear history" }).click();
  await statusLine(page).getByText("History cleared.").waitFor();
  assert.equal((await shownMessages(page)).length, 0);
  assert.equal((await ok("GET", `/v1/conversations/${shared.conversation}/messages`)).data.length, 0);
  await page.getByRole("heading", { name: "Streaming", level: 2 }).waitFor();
  await shot(page, "11-history-cleared");
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("a slow reply can be stopped", async () => {
  await mock({ token_delay_ms: 300, tokens: 200 });
  const conversation = await ok("POST", "/v1/conversations", { title: "Slow" });
  const page = await open({ hash: conversation.id });
  await page.getByRole("heading", { name: "Slow", level: 2 }).waitFor();
  await watchNextReply(page);
  await composer(page).fill("Tell me everything");
  await button(page, "Send").click();
  await until(async () => (await replyRecord(page)).lengths.length >= 2, "a few tokens");
  await button(page, "Stop").click();
  await log(page).getByText("Stopped: the reply was cancelled.").waitFor();
  await statusLine(page).getByText("Stopped.").waitFor();
  assert.ok(await button(page, "Stop").isHidden());
  const jobs = (await ok("GET", `/v1/conversations/${conversation.id}/messages`)).data;
  const job = await ok("GET", `/v1/jobs/${jobs[0].job_id}`);
  assert.equal(job.status, "cancelled");
  assert.ok(!(await button(page, "Send").isDisabled()), "the composer is free again");
  await shot(page, "12-stopped");
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("a failed reply says why and can be retried", async () => {
  await mock({ fault: { kind: "status", status: 400 } });
  const conversation = await ok("POST", "/v1/conversations", { title: "Failing" });
  const page = await open({ hash: conversation.id });
  await page.getByRole("heading", { name: "Failing", level: 2 }).waitFor();
  await composer(page).fill("Will this work?");
  await composer(page).press("Enter");
  await statusLine(page).getByText("The reply failed").waitFor();
  await log(page).getByText(/^Failed: /).waitFor();
  await shot(page, "13-failed");
  await mock({});
  await statusLine(page).getByRole("button", { name: "Retry" }).click();
  await until(async () => (await lastAssistant(conversation.id)) !== undefined, "the retried reply");
  const reply = await lastAssistant(conversation.id);
  await log(page).getByText(reply.content).waitFor();
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("a dropped stream resumes with Last-Event-ID without a gap, and going offline is said", async () => {
  await mock({ token_delay_ms: 120, tokens: 30 });
  const conversation = await ok("POST", "/v1/conversations", { title: "Flaky network" });
  const page = await open({ hash: conversation.id });
  await page.getByRole("heading", { name: "Flaky network", level: 2 }).waitFor();
  const resumed = [];
  page.on("request", (r) => { if (r.url().endsWith("/events") && r.headers()["last-event-id"]) resumed.push(r.headers()["last-event-id"]); });
  // The first event stream breaks after three tokens: the test reads it from chatq itself and
  // hands the page only what came before the break. Later streams pass through untouched.
  let broken = false;
  await page.route("**/events", async (route) => {
    if (broken) return route.continue();
    broken = true;
    const res = await fetch(route.request().url(), { headers: route.request().headers() });
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let text = "";
    while ((text.match(/event: message\.delta/g) || []).length < 3) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
    await reader.cancel();
    text = text.slice(0, text.lastIndexOf("\n\n") + 2); // whole events only
    await route.fulfill({ status: 200, headers: { "content-type": "text/event-stream" }, body: text });
  });
  await watchNextReply(page);
  await composer(page).fill("Keep going");
  await composer(page).press("Enter");
  await until(() => resumed.length > 0, "a resumed stream");
  await until(async () => (await replyRecord(page)).lengths.length >= 6, "tokens after the break");
  await page.context().setOffline(true);
  await statusLine(page).getByText("Offline: waiting for the network").waitFor();
  await shot(page, "14-offline");
  await page.context().setOffline(false);
  const record = await until(async () => { const r = await replyRecord(page); return r.done && r; }, "the end of the reply", 30000);
  const stored = await lastAssistant(conversation.id);
  assert.equal(record.streamed, stored.content, "no gap and no repeat across the break");
  assert.ok(Number(resumed[0]) > 0, `resumed after event ${resumed[0]}`);
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("a full queue and a rate limit say when to retry, and keep the message", async () => {
  // The queue holds one job and no worker takes it: the next message is refused with 503.
  const busy = { base: env("WEBTEST_BUSY_URL"), key: env("WEBTEST_BUSY_KEY") };
  const first = await ok("POST", "/v1/conversations", {}, busy);
  await ok("POST", `/v1/conversations/${first.id}/messages`, { content: "fills the queue" }, busy);
  const second = await ok("POST", "/v1/conversations", { title: "Queue full" }, busy);
  let page = await open({ ...busy, hash: second.id });
  await page.getByRole("heading", { name: "Queue full", level: 2 }).waitFor();
  await composer(page).fill("Anyone there?");
  await composer(page).press("Enter");
  await statusLine(page).getByText(/The queue is full: chatq is busy\. Retry in \d+ s\./).waitFor();
  assert.equal(await composer(page).inputValue(), "Anyone there?", "the message is kept");
  assert.ok(await statusLine(page).getByRole("button", { name: "Retry now" }).isVisible());
  await shot(page, "15-queue-full");
  await page.context().close();

  // One request a second per key: spend the burst, then send.
  const limited = { base: env("WEBTEST_LIMITED_URL"), key: env("WEBTEST_LIMITED_KEY") };
  const conversation = await until(async () => (await api("POST", "/v1/conversations", { title: "Rate limited" }, limited)).body, "a conversation");
  page = await open({ ...limited, hash: conversation.id });
  await page.getByRole("heading", { name: "Rate limited", level: 2 }).waitFor();
  const userMessages = () => page.locator("#messages article.user").count();
  let outcome = "sent";
  for (let attempt = 0; attempt < 3 && outcome === "sent"; attempt++) {
    await composer(page).fill("Hello?");
    const before = await userMessages();
    const burst = await Promise.all(Array.from({ length: 12 }, () => api("GET", "/v1/models", undefined, limited)));
    assert.ok(burst.some((r) => r.status === 429), "the burst is spent");
    await composer(page).press("Enter");
    outcome = await until(async () => {
      if (/Rate limited: too many requests with this key\. Retry in \d+ s\./.test(await statusLine(page).textContent())) return "limited";
      return (await userMessages()) > before && "sent";
    }, "the send refused or accepted");
    // Accepted after all (the bucket refilled in between): let the reply end, and try again.
    if (outcome === "sent") await until(async () => !(await button(page, "Send").isDisabled()) && (await button(page, "Stop").isHidden()), "the reply");
  }
  assert.equal(outcome, "limited");
  assert.equal(await composer(page).inputValue(), "Hello?", "the message is kept");
  await shot(page, "16-rate-limited");
  await page.context().close();
});

test("markup in a reply is shown as text, never run", async () => {
  const markup = '<script>window.__pwned = 1</script> <img src=x onerror="window.__pwned = 2"> <b>bold?</b> done';
  await mock({ reply: markup, tokens: 100 });
  const conversation = await ok("POST", "/v1/conversations", { title: "<i>Markup</i> title" });
  const page = await open({ hash: conversation.id });
  await page.getByRole("heading", { name: "<i>Markup</i> title", level: 2 }).waitFor();
  await composer(page).fill("<img src=x onerror=alert(1)>");
  await composer(page).press("Enter");
  await log(page).getByText(markup, { exact: true }).waitFor();
  const check = async () => {
    assert.equal(await page.locator("#messages script, #messages img, #messages b, #messages i, nav i, h2 i").count(), 0);
    assert.equal(await page.evaluate(() => window.__pwned), undefined);
    assert.ok((await shownMessages(page)).includes("<img src=x onerror=alert(1)>"));
  };
  await check();
  await shot(page, "17-markup-as-text");
  await page.reload();
  await log(page).getByText(markup, { exact: true }).waitFor();
  await check();
  await mock({});
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("at phone width nothing scrolls sideways and the list is a drawer", async () => {
  const page = await open({ hash: shared.long, viewport: PHONE });
  await page.getByRole("heading", { name: "Long", level: 2 }).waitFor();
  await log(page).getByText("question 40", { exact: true }).waitFor();
  await composer(page).fill("A message typed on a phone, long enough to wrap onto a second line of the composer");
  const layout = await page.evaluate(() => {
    const width = document.documentElement.clientWidth;
    const wide = [...document.querySelectorAll("body *")].filter((el) => {
      if (!el.checkVisibility({ visibilityProperty: true })) return false;
      const r = el.getBoundingClientRect();
      return r.width > 0 && (r.right > width + 0.5 || r.left < -0.5);
    }).map((el) => `${el.tagName.toLowerCase()}#${el.id}.${el.className}`);
    return {
      width,
      scrollWidth: document.documentElement.scrollWidth,
      bodyScrollWidth: document.body.scrollWidth,
      wide,
      composer: document.getElementById("content").getBoundingClientRect().width,
      header: document.querySelector("header").getBoundingClientRect().height,
    };
  });
  assert.equal(layout.width, PHONE.width);
  assert.ok(layout.scrollWidth <= PHONE.width && layout.bodyScrollWidth <= PHONE.width, JSON.stringify(layout));
  assert.deepEqual(layout.wide, [], "nothing sticks out of the screen");
  assert.ok(layout.composer >= 200, `the composer is ${layout.composer}px wide`);
  await shot(page, "18-phone-conversation");
  const menu = button(page, "Conversations");
  assert.equal(await menu.getAttribute("aria-expanded"), "false");
  await menu.click();
  assert.equal(await menu.getAttribute("aria-expanded"), "true");
  const entry = sidebar(page).getByRole("button", { name: /Streaming/ });
  await entry.waitFor();
  await shot(page, "19-phone-drawer");
  await entry.click();
  await page.getByRole("heading", { name: "Streaming", level: 2 }).waitFor();
  assert.equal(await menu.getAttribute("aria-expanded"), "false");
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= 390));
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("keyboard alone: visible focus, labelled controls, and a whole turn", async () => {
  await mock({});
  const page = await open();
  await button(page, "New conversation").waitFor();
  const unlabelled = await page.evaluate(() => [...document.querySelectorAll("button, input, textarea, select")]
    .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label") && !el.textContent.trim())
    .map((el) => el.outerHTML));
  assert.deepEqual(unlabelled, [], "every control has a name");
  const focused = () => page.evaluate(() => {
    const el = document.activeElement;
    const style = getComputedStyle(el);
    return { id: el.id, label: el.getAttribute("aria-label"), outline: style.outlineStyle, width: parseFloat(style.outlineWidth) };
  });
  let current;
  for (let i = 0; i < 10; i++) {
    await page.keyboard.press("Tab");
    current = await focused();
    if (current.id === "new-title") break;
  }
  assert.equal(current.id, "new-title", "Tab reaches the title");
  assert.ok(current.outline !== "none" && current.width >= 2, `focus is visible: ${JSON.stringify(current)}`);
  await page.keyboard.type("Keyboard only");
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Keyboard only", level: 2 }).waitFor();
  await until(async () => (await focused()).id === "content", "focus in the composer");
  await page.keyboard.type("Hello from the keyboard");
  await page.keyboard.press("Enter");
  const id = await conversationIdOf(page);
  await until(async () => (await lastAssistant(id)) !== undefined, "the reply");
  await log(page).getByText((await lastAssistant(id)).content).waitFor();
  // Back from the composer to the reply's feedback, and rate it with the keyboard.
  let rate;
  for (let i = 0; i < 5; i++) {
    await page.keyboard.press("Shift+Tab");
    rate = await focused();
    if (rate.label === "Good reply") break;
  }
  assert.equal(rate.label, "Good reply", "Shift+Tab reaches the reply's rating");
  assert.ok(rate.outline !== "none" && rate.width >= 2, "buttons show focus too");
  await page.keyboard.press("Enter");
  assert.equal(await button(page, "Good reply").last().getAttribute("aria-pressed"), "true");
  await shot(page, "20-keyboard");
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("dark mode follows the system", async () => {
  const page = await open({ hash: shared.long, colorScheme: "dark" });
  await page.getByRole("heading", { name: "Long", level: 2 }).waitFor();
  await log(page).getByText("question 40", { exact: true }).waitFor();
  const [bg, fg] = await page.evaluate(() => [getComputedStyle(document.body).backgroundColor, getComputedStyle(document.body).color]);
  const lum = (rgb) => rgb.match(/\d+/g).slice(0, 3).map(Number).reduce((a, b) => a + b, 0) / 3;
  assert.ok(lum(bg) < 60 && lum(fg) > 180, `dark background ${bg}, light text ${fg}`);
  await shot(page, "21-dark");
  await page.context().close();
});

test("first load is small and fast: bytes, LCP and CLS", async () => {
  const measure = async (options) => {
    const context = await browser.newContext({ viewport: DESKTOP });
    if (options.key) await context.addInitScript((k) => localStorage.setItem("chatq.apiKey", k), options.key);
    await context.addInitScript(() => {
      window.__perf = { lcp: 0, cls: 0 };
      new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__perf.lcp = e.startTime; })
        .observe({ type: "largest-contentful-paint", buffered: true });
      new PerformanceObserver((list) => { for (const e of list.getEntries()) if (!e.hadRecentInput) window.__perf.cls += e.value; })
        .observe({ type: "layout-shift", buffered: true });
    });
    const page = await context.newPage();
    const cdp = await context.newCDPSession(page);
    await cdp.send("Network.enable");
    await cdp.send("Network.setCacheDisabled", { cacheDisabled: true });
    let bytes = 0, requests = 0;
    cdp.on("Network.loadingFinished", (e) => { bytes += e.encodedDataLength; requests += 1; });
    await page.goto(URL_ + "/" + (options.hash ? "#" + options.hash : ""), { waitUntil: "load" });
    await options.ready(page);
    await page.waitForLoadState("networkidle");
    const perf = await page.evaluate(() => window.__perf);
    await shot(page, options.shot);
    await context.close();
    return { bytes, requests, lcp_ms: Math.round(perf.lcp), cls: Number(perf.cls.toFixed(4)) };
  };
  const withKey = await measure({
    key: KEY, hash: shared.long, shot: "22-first-load",
    ready: async (page) => {
      await page.getByRole("heading", { name: "Long", level: 2 }).waitFor();
      await log(page).getByText("question 40", { exact: true }).waitFor();
    },
  });
  const withoutKey = await measure({
    shot: "23-first-load-without-key",
    ready: (page) => page.getByRole("dialog", { name: "Your API key" }).waitFor(),
  });
  const metrics = { with_key_and_conversation: withKey, without_key: withoutKey };
  fs.writeFileSync(path.join(SHOTS, "metrics.json"), JSON.stringify(metrics, null, 2) + "\n");
  console.log(`# first load: ${JSON.stringify(metrics)}`);
  for (const m of [withKey, withoutKey]) {
    assert.ok(m.bytes < 100 * 1024, `first load ${m.bytes} bytes`);
    assert.ok(m.lcp_ms > 0 && m.lcp_ms < 1000, `LCP ${m.lcp_ms} ms`);
    assert.ok(m.cls < 0.1, `CLS ${m.cls}`);
  }
});
