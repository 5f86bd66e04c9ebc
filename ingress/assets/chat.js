// chatq web chat: the page's script (served at /assets/chat.js, loaded with `defer`).
//
// A client of the public API like any other. The key is asked once and kept in localStorage
// (never in a URL). A reply is followed on GET /v1/jobs/{id}/events, read with fetch() because
// EventSource cannot send an Authorization header; a dropped stream resumes with Last-Event-ID.
// Every text from the server is set with textContent, never parsed as HTML. A streamed token is
// appended to one text node: the message list is never rebuilt while a reply grows.
"use strict";
(() => {
  const KEY_STORAGE = "chatq.apiKey";
  const CONVERSATION_PAGE = 20;
  const HISTORY_PAGE = 50;
  const $ = (id) => document.getElementById(id);
  const state = {
    key: localStorage.getItem(KEY_STORAGE) || "",
    conversation: null, // the open conversation, as the API returned it
    nextConversations: null, // `after` for the next page of the list
    earliestSeq: null, // `before` for the next older page of history
    loadingOlder: false,
    running: null, // { job, controller, view } while a reply is followed
    generation: 0, // bumped when another conversation opens, so late answers are dropped
  };

  // --- errors and the status line -----------------------------------------------------------

  /** An API error in the OpenAI shape, with the HTTP status and Retry-After (seconds). */
  class ApiError extends Error {
    constructor(status, body, retryAfter) {
      const e = (body && body.error) || {};
      super(e.message || `HTTP ${status}`);
      this.status = status;
      this.type = e.type || "";
      this.code = e.code || "";
      this.retryAfter = Number(retryAfter) > 0 ? Number(retryAfter) : null;
    }
  }

  const isAbort = (err) => err && err.name === "AbortError";

  /** A failure worth a toast (not an aborted request). */
  function toast(err) {
    if (isAbort(err)) return;
    const text = err instanceof ApiError ? `${err.message} (${err.status}${err.code ? " " + err.code : ""})`
      : `Cannot reach chatq: ${err && err.message ? err.message : err}`;
    $("toast-text").textContent = text;
    $("toast").hidden = false;
  }
  $("toast-close").onclick = () => { $("toast").hidden = true; };

  let statusTimer = null;
  /** Says what is happening, in the line above the composer. `action` adds a button. */
  function status(text, kind, action) {
    clearInterval(statusTimer);
    statusTimer = null;
    const line = $("status");
    line.replaceChildren();
    line.dataset.kind = kind || "";
    if (!text) return;
    const span = document.createElement("span");
    span.textContent = text;
    line.appendChild(span);
    if (action) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "plain";
      button.textContent = action.label;
      button.onclick = action.run;
      line.appendChild(button);
    }
    return span;
  }

  /** A status that counts down to when a retry may succeed, then offers it. */
  function statusRetryIn(prefix, seconds, retry) {
    let left = Math.max(1, Math.ceil(seconds || 1));
    const span = status(`${prefix} Retry in ${left} s.`, "warning", { label: "Retry now", run: retry });
    statusTimer = setInterval(() => {
      left -= 1;
      if (left > 0) span.textContent = `${prefix} Retry in ${left} s.`;
      else { clearInterval(statusTimer); span.textContent = `${prefix} You can retry now.`; }
    }, 1000);
  }

  /** What a refused send means for the person who sent it. */
  function explainRefusal(err, retry) {
    if (err instanceof ApiError && err.status === 429) {
      statusRetryIn("Rate limited: too many requests with this key.", err.retryAfter, retry);
    } else if (err instanceof ApiError && err.status === 503) {
      statusRetryIn("The queue is full: chatq is busy.", err.retryAfter, retry);
    } else if (err instanceof ApiError && err.code === "conversation_busy") {
      status("A reply is still being generated in this conversation.", "warning");
    } else if (err instanceof ApiError) {
      status(`Not sent: ${err.message}`, "error", { label: "Retry", run: retry });
    } else if (!isAbort(err)) {
      status("Offline: chatq cannot be reached.", "error", { label: "Retry", run: retry });
    }
  }

  window.addEventListener("offline", () => {
    if (state.running) state.running.view.connection("offline");
    else status("Offline: waiting for the network…", "warning");
  });
  window.addEventListener("online", () => {
    if (state.running) state.running.view.connection("back");
    else status("");
  });

  // --- the API -----------------------------------------------------------------------------

  async function failure(res) {
    let body = null;
    try { body = await res.json(); } catch (_) { /* not JSON */ }
    return new ApiError(res.status, body, res.headers.get("Retry-After"));
  }

  /** A JSON API call; throws ApiError for any answer that is not 2xx. */
  async function api(method, path, body, extraHeaders, signal) {
    const headers = Object.assign({ "Authorization": "Bearer " + state.key }, extraHeaders || {});
    const init = { method, headers, signal };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      headers["Content-Type"] = "application/json";
    }
    const res = await fetch(path, init);
    if (res.status === 401) { askForKey("chatq refused this key. Paste a valid one."); }
    if (!res.ok) throw await failure(res);
    return res.status === 204 ? null : res.json();
  }

  const enc = encodeURIComponent;
  const sleep = (ms, signal) => new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    if (signal) signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
  const newIdempotencyKey = () => (crypto.randomUUID ? crypto.randomUUID()
    : "web-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2));

  // --- server-sent events over fetch ---------------------------------------------------------

  /** An SSE parser (data/event/id fields, comments; a blank line ends an event): feed it text,
   *  it calls onEvent({id, event, data}) for each complete event. */
  function sseParser(onEvent) {
    let buffer = "", data = [], event = "", id = null;
    return (chunk) => {
      buffer += chunk;
      for (;;) {
        const m = /\r\n|\r|\n/.exec(buffer);
        if (!m) return;
        if (m[0] === "\r" && m.index === buffer.length - 1) return; // maybe half of \r\n
        const line = buffer.slice(0, m.index);
        buffer = buffer.slice(m.index + m[0].length);
        if (line === "") {
          if (data.length) onEvent({ id, event: event || "message", data: data.join("\n") });
          data = []; event = "";
          continue;
        }
        if (line[0] === ":") continue; // keep-alive
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value[0] === " ") value = value.slice(1);
        if (field === "data") data.push(value);
        else if (field === "event") event = value;
        else if (field === "id") id = value;
      }
    };
  }

  const TERMINAL = new Set(["job.succeeded", "job.failed", "job.cancelled"]);

  /** Follows a job's events until its terminal event. A dropped stream is resumed with
   *  Last-Event-ID, without gaps or repeats, for as long as the job runs. */
  async function followJob(jobId, view, signal) {
    let lastId = null, ended = false, failures = 0;
    while (!ended && !signal.aborted) {
      if (!navigator.onLine) {
        view.connection("offline");
        await new Promise((resolve) => window.addEventListener("online", resolve, { once: true }));
      }
      const headers = { "Authorization": "Bearer " + state.key, "Accept": "text/event-stream" };
      if (lastId !== null) headers["Last-Event-ID"] = lastId;
      try {
        const res = await fetch(`/v1/jobs/${enc(jobId)}/events`, { headers, signal });
        if (!res.ok) {
          const err = await failure(res);
          if (err.status < 500 && err.status !== 429) throw err;
          throw Object.assign(err, { transient: true });
        }
        if (failures) view.connection("back");
        const feed = sseParser((ev) => {
          lastId = ev.id;
          failures = 0;
          let data = {};
          try { data = JSON.parse(ev.data); } catch (_) { /* keep {} */ }
          if (ev.event === "job.queued") view.queued(data);
          else if (ev.event === "job.started") view.started(data.attempt || 1);
          else if (ev.event === "message.delta") view.delta(data.delta || "");
          else if (TERMINAL.has(ev.event)) { ended = true; view.end(ev.event, data); }
        });
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          feed(decoder.decode(value, { stream: true }));
          if (ended) { reader.cancel().catch(() => {}); break; }
        }
      } catch (err) {
        if (signal.aborted) return;
        if (err instanceof ApiError && !err.transient) throw err;
        failures += 1;
        view.connection("lost", failures);
        await sleep(Math.min(5000, 250 * 2 ** failures), signal);
        continue;
      }
      // The stream ended before the job did (an ingress restarting): resume where it stopped.
      if (!ended) { failures += 1; view.connection("lost", failures); await sleep(Math.min(5000, 250 * 2 ** failures), signal); }
    }
  }

  // --- rendering messages ----------------------------------------------------------------------

  const when = (unix) => (unix ? new Date(unix * 1000).toLocaleString() : "");

  function showHint(text) {
    const p = document.createElement("p");
    p.className = "hint";
    p.textContent = text;
    $("messages").replaceChildren(p);
  }

  /** One message: an article with its text (one text node, so tokens append cheaply), a meta
   *  line, and for replies the feedback buttons. */
  function messageElement(role, text, meta, messageId) {
    const article = document.createElement("article");
    article.className = "message " + role;
    const body = document.createElement("p");
    body.className = "body";
    body.appendChild(document.createTextNode(text));
    const small = document.createElement("small");
    small.className = "meta";
    small.textContent = meta || "";
    article.append(body, small);
    if (role === "assistant" && messageId) addFeedback(article, messageId);
    return article;
  }

  /** Whether the list is scrolled to (near) its end, so new text should keep it there. */
  const atBottom = () => {
    const box = $("messages");
    return box.scrollHeight - box.scrollTop - box.clientHeight < 48;
  };
  let scrollQueued = false;
  /** Scrolls to the end once per frame at most, however many tokens arrive. */
  function keepAtBottom() {
    if (scrollQueued) return;
    scrollQueued = true;
    requestAnimationFrame(() => {
      scrollQueued = false;
      const box = $("messages");
      box.scrollTop = box.scrollHeight;
    });
  }

  function append(article) {
    const box = $("messages");
    const hint = box.querySelector(".hint");
    if (hint) hint.remove();
    const follow = atBottom();
    box.appendChild(article);
    if (follow || article.classList.contains("user")) keepAtBottom();
    return article;
  }

  // --- feedback --------------------------------------------------------------------------------

  /** Thumbs up and down on a reply, with an optional comment. The UI answers at once; the
   *  request goes in the background and a failure is said on the reply. */
  function addFeedback(article, messageId) {
    article.dataset.messageId = messageId;
    const actions = document.createElement("div");
    actions.className = "actions";
    const up = feedbackButton("Good reply", "Good");
    const down = feedbackButton("Bad reply", "Bad");
    const note = document.createElement("small");
    note.className = "meta";
    actions.append(up, down, note);
    article.appendChild(actions);
    let rating = 0, comment = null, form = null;

    const save = () => {
      note.textContent = "Thanks!";
      api("POST", `/v1/messages/${enc(messageId)}/feedback`, comment ? { rating, comment } : { rating })
        .catch((err) => { note.textContent = `Feedback not saved: ${err.message}`; });
    };
    const rate = (value) => {
      rating = value;
      up.setAttribute("aria-pressed", String(value === 1));
      down.setAttribute("aria-pressed", String(value === -1));
      save();
      if (!form) { form = commentForm(); article.appendChild(form); }
    };
    const commentForm = () => {
      const f = document.createElement("form");
      f.className = "feedback-comment";
      const input = document.createElement("input");
      input.placeholder = "Add a comment (optional)";
      input.maxLength = 2000;
      input.setAttribute("aria-label", "Feedback comment");
      const send = document.createElement("button");
      send.type = "submit";
      send.className = "plain";
      send.textContent = "Send comment";
      f.append(input, send);
      f.onsubmit = (event) => {
        event.preventDefault();
        comment = input.value.trim() || null;
        save();
        note.textContent = comment ? "Comment saved." : "Thanks!";
        f.remove();
        form = null;
      };
      return f;
    };
    up.onclick = () => rate(1);
    down.onclick = () => rate(-1);
  }

  function feedbackButton(label, text) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "plain";
    b.setAttribute("aria-label", label);
    b.setAttribute("aria-pressed", "false");
    b.title = label;
    b.textContent = text;
    return b;
  }

  // --- following a reply -----------------------------------------------------------------------

  /** A reply being generated: tokens as they come, the stored reply at the end, and the state
   *  (queued, generating, reconnecting, failed) in the status line and on the reply. */
  function replyView(article, retry) {
    const text = article.querySelector(".body").firstChild;
    const meta = article.querySelector(".meta");
    let attempt = 0, queuedSince = Date.now(), queueTimer = null;
    article.classList.add("streaming");
    article.setAttribute("aria-busy", "true");
    meta.textContent = "queued";
    const showQueued = () => {
      const waited = Math.round((Date.now() - queuedSince) / 1000);
      status(waited >= 1 ? `Queued for ${waited} s: waiting for a free worker…` : "Queued: waiting for a free worker…");
    };
    showQueued();
    queueTimer = setInterval(showQueued, 1000);
    const stopQueueTimer = () => { clearInterval(queueTimer); queueTimer = null; };
    return {
      queued(data) {
        if (data && data.created_at) queuedSince = Math.min(Date.now(), data.created_at * 1000);
      },
      started(n) {
        stopQueueTimer();
        // A job.started with a higher attempt means the reply restarted: drop what was shown.
        if (n > attempt && attempt > 0) { text.data = ""; meta.textContent = `restarted (attempt ${n})`; }
        else meta.textContent = "generating";
        attempt = Math.max(attempt, n);
        status("Generating…");
      },
      delta(piece) {
        if (queueTimer) this.started(1);
        const follow = atBottom();
        text.appendData(piece);
        if (follow) keepAtBottom();
      },
      connection(what, failures) {
        if (what === "offline") status("Offline: waiting for the network to resume the reply…", "warning");
        else if (what === "lost") status(`Connection lost: reconnecting${failures > 1 ? ` (try ${failures})` : ""}…`, "warning");
        else status(queueTimer ? "Queued: waiting for a free worker…" : "Generating…");
      },
      end(kind, job) {
        stopQueueTimer();
        article.classList.remove("streaming");
        article.removeAttribute("aria-busy");
        if (kind === "job.succeeded" && job.reply) {
          text.data = job.reply.content;
          const parts = [job.reply.model || job.model];
          if (job.reply.cached) parts.push(job.reply.cache === "semantic" ? "cached (similar question)" : "cached");
          if (job.ttft_ms != null) parts.push(`first token ${job.ttft_ms} ms`);
          if (job.reply.usage) parts.push(`${job.reply.usage.total_tokens} tokens`);
          meta.textContent = parts.filter(Boolean).join(" · ");
          if (job.reply.message_id) addFeedback(article, job.reply.message_id);
          status("");
        } else if (kind === "job.cancelled") {
          article.classList.add("failed");
          if (!text.data) text.data = "(stopped before any reply)";
          meta.textContent = "Stopped: the reply was cancelled.";
          status("Stopped.");
        } else {
          const e = job.error || {};
          article.classList.add("failed");
          if (!text.data) text.data = "(no reply)";
          const reason = e.message || job.status || "the reply failed";
          meta.textContent = `Failed: ${reason}`;
          status(`The reply failed: ${reason}`, "error", { label: "Retry", run: retry });
        }
      },
      abandon() { stopQueueTimer(); article.classList.remove("streaming"); article.removeAttribute("aria-busy"); },
    };
  }

  function setRunning(running) {
    state.running = running;
    $("stop").hidden = !running;
    $("send").disabled = !!running || !state.conversation;
  }

  async function follow(jobId, article, retry) {
    const controller = new AbortController();
    const view = replyView(article, retry);
    setRunning({ job: jobId, controller, view });
    try {
      await followJob(jobId, view, controller.signal);
    } catch (err) {
      view.abandon();
      status(`Lost track of the reply: ${err.message}`, "error");
    } finally {
      if (state.running && state.running.job === jobId) setRunning(null);
      if (!controller.signal.aborted) refreshListEntry(state.conversation);
    }
  }

  $("stop").onclick = async () => {
    const running = state.running;
    if (!running) return;
    status("Stopping…");
    try {
      await api("POST", `/v1/jobs/${enc(running.job)}/cancel`);
    } catch (err) {
      // 409: it had already ended; its terminal event says how.
      if (!(err instanceof ApiError && err.status === 409)) toast(err);
    }
  };

  // --- conversations ---------------------------------------------------------------------------

  function listEntry(c) {
    const li = document.createElement("li");
    li.dataset.id = c.id;
    const button = document.createElement("button");
    button.type = "button";
    const name = document.createElement("span");
    name.className = "name";
    const small = document.createElement("small");
    button.append(name, small);
    button.onclick = () => { openConversation(c.id); closeMenu(); };
    li.appendChild(button);
    fillListEntry(li, c);
    return li;
  }

  function fillListEntry(li, c) {
    const button = li.firstChild;
    button.querySelector(".name").textContent = c.title || "Untitled";
    button.querySelector("small").textContent = `${c.message_count} message${c.message_count === 1 ? "" : "s"} · ${when(c.last_activity_at)}`;
    button.setAttribute("aria-current", String(!!state.conversation && state.conversation.id === c.id));
  }

  const entryFor = (id) => [...$("conversations").children].find((li) => li.dataset.id === id);

  /** The first page of the list (newest first), or the next one. Returns false if the key was refused. */
  async function loadConversations(more) {
    const after = more ? state.nextConversations : null;
    let page;
    try {
      page = await api("GET", `/v1/conversations?limit=${CONVERSATION_PAGE}` + (after ? "&after=" + enc(after) : ""));
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) toast(err);
      return false;
    }
    const fragment = document.createDocumentFragment();
    for (const c of page.data) fragment.appendChild(listEntry(c));
    if (more) $("conversations").appendChild(fragment);
    else $("conversations").replaceChildren(fragment);
    state.nextConversations = page.has_more ? page.last_id : null;
    $("more-conversations").hidden = !page.has_more;
    return true;
  }
  $("more-conversations").onclick = () => loadConversations(true);

  /** Updates one conversation's entry from the API (after a reply, its count and activity). */
  async function refreshListEntry(conversation) {
    if (!conversation) return;
    try {
      const c = await api("GET", `/v1/conversations/${enc(conversation.id)}`);
      const li = entryFor(c.id);
      if (li) fillListEntry(li, c);
    } catch (_) { /* the list catches up on the next load */ }
  }

  function showConversationHeader() {
    const c = state.conversation;
    $("conversation-title").textContent = c ? (c.title || "Untitled") : "No conversation open";
    document.title = c ? `${c.title || "Untitled"} · chatq` : "chatq";
    for (const id of ["rename", "clear-history", "delete-conversation"]) $(id).hidden = !c;
    $("rename-form").hidden = true;
    $("conversation-title").hidden = false;
    $("content").disabled = !c;
    $("send").disabled = !c || !!state.running;
    for (const li of $("conversations").children) {
      li.firstChild.setAttribute("aria-current", String(!!c && li.dataset.id === c.id));
    }
  }

  async function openConversation(id) {
    if (state.running) { state.running.view.abandon(); state.running.controller.abort(); setRunning(null); }
    const generation = ++state.generation;
    status("");
    // The conversation and its newest messages are asked for side by side.
    const newest = api("GET", `/v1/conversations/${enc(id)}/messages?limit=${HISTORY_PAGE}`);
    newest.catch(() => {}); // answered below, or not needed
    let conversation;
    try {
      conversation = await api("GET", `/v1/conversations/${enc(id)}`);
    } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 400)) history.replaceState(null, "", location.pathname);
      if (!(err instanceof ApiError && err.status === 401)) toast(err);
      return;
    }
    if (generation !== state.generation) return;
    state.conversation = conversation;
    history.replaceState(null, "", "#" + conversation.id);
    showConversationHeader();
    $("messages").replaceChildren();
    if (conversation.system_prompt) append(messageElement("system", conversation.system_prompt, "system prompt"));
    await showHistory(generation, newest);
    if (generation === state.generation && matchMedia("(min-width: 701px)").matches) $("content").focus();
  }

  /** The newest page of history, then older pages as the list is scrolled up. Follows a reply
   *  still being generated. */
  async function showHistory(generation, newest) {
    let page;
    try {
      page = await newest;
    } catch (err) { toast(err); return; }
    if (generation !== state.generation) return;
    const fragment = document.createDocumentFragment();
    for (const m of page.data) fragment.appendChild(messageElement(m.role, m.content, when(m.created_at), m.id));
    $("messages").appendChild(fragment);
    state.earliestSeq = page.data.length ? page.data[0].seq : null;
    setEarlier(page.has_more);
    if (!page.data.length && !state.conversation.system_prompt) showHint("No messages yet. Say something below.");
    $("messages").scrollTop = $("messages").scrollHeight;
    // The last message is a question without its reply: follow its job as it runs or ended.
    const last = page.data[page.data.length - 1];
    if (last && last.role === "user" && last.job_id) {
      const job = await api("GET", `/v1/jobs/${enc(last.job_id)}`).catch(() => null);
      if (job && generation === state.generation && job.status !== "succeeded") {
        follow(job.id, append(messageElement("assistant", "")), () => resend(last.content));
      }
    }
  }

  /** The button at the top of the history that loads older messages; scrolling up to it loads
   *  them by itself, and it stays a button for keyboards. */
  const olderObserver = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) loadOlder();
  }, { root: $("messages"), rootMargin: "200px 0px 0px 0px" });

  function setEarlier(hasMore) {
    let button = $("earlier");
    if (!hasMore) { if (button) { olderObserver.unobserve(button); button.remove(); } return; }
    if (!button) {
      button = document.createElement("button");
      button.type = "button";
      button.id = "earlier";
      button.className = "plain";
      button.textContent = "Load earlier messages";
      button.onclick = loadOlder;
    }
    $("messages").prepend(button);
    olderObserver.observe(button);
  }

  async function loadOlder() {
    if (state.loadingOlder || state.earliestSeq == null || !state.conversation) return;
    state.loadingOlder = true;
    const generation = state.generation;
    const id = state.conversation.id;
    try {
      const page = await api("GET", `/v1/conversations/${enc(id)}/messages?limit=${HISTORY_PAGE}&before=${state.earliestSeq}`);
      if (generation !== state.generation) return;
      const box = $("messages");
      // Keep what is on screen where it is: grow the list above it by as much as was added.
      const fromBottom = box.scrollHeight - box.scrollTop;
      const fragment = document.createDocumentFragment();
      for (const m of page.data) fragment.appendChild(messageElement(m.role, m.content, when(m.created_at), m.id));
      const first = box.querySelector(".message.user, .message.assistant");
      box.insertBefore(fragment, first);
      state.earliestSeq = page.data.length ? page.data[0].seq : state.earliestSeq;
      setEarlier(page.has_more);
      box.scrollTop = box.scrollHeight - fromBottom;
    } catch (err) {
      toast(err);
    } finally {
      state.loadingOlder = false;
    }
  }

  $("new-conversation").onsubmit = async (event) => {
    event.preventDefault();
    const body = {};
    const title = $("new-title").value.trim();
    const system = $("new-system").value.trim();
    if (title) body.title = title;
    if (system) body.system_prompt = system;
    try {
      const conversation = await api("POST", "/v1/conversations", body);
      $("new-title").value = "";
      $("new-system").value = "";
      $("conversations").prepend(listEntry(conversation));
      closeMenu();
      await openConversation(conversation.id);
    } catch (err) { toast(err); }
  };

  // Rename: the title becomes a small form in the header.
  $("rename").onclick = () => {
    $("rename-title").value = state.conversation.title || "";
    $("conversation-title").hidden = true;
    $("rename-form").hidden = false;
    for (const id of ["rename", "clear-history", "delete-conversation"]) $(id).hidden = true;
    $("rename-title").focus();
    $("rename-title").select();
  };
  const endRename = () => { showConversationHeader(); $("rename").focus(); };
  $("rename-cancel").onclick = endRename;
  $("rename-form").addEventListener("keydown", (event) => { if (event.key === "Escape") endRename(); });
  $("rename-form").onsubmit = async (event) => {
    event.preventDefault();
    const c = state.conversation;
    try {
      const renamed = await api("PATCH", `/v1/conversations/${enc(c.id)}`, { title: $("rename-title").value });
      if (state.conversation && state.conversation.id === renamed.id) state.conversation = renamed;
      const li = entryFor(renamed.id);
      if (li) fillListEntry(li, renamed);
      endRename();
    } catch (err) { toast(err); }
  };

  /** Asks before something that cannot be undone; resolves true if confirmed. */
  function confirmAction(heading, text, action) {
    const dialog = $("confirm");
    $("confirm-heading").textContent = heading;
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = action;
    return new Promise((resolve) => {
      const done = (ok) => { dialog.close(); resolve(ok); };
      $("confirm-ok").onclick = () => done(true);
      $("confirm-cancel").onclick = () => done(false);
      dialog.oncancel = () => resolve(false);
      dialog.showModal();
      $("confirm-cancel").focus();
    });
  }

  $("clear-history").onclick = async () => {
    const c = state.conversation;
    if (!await confirmAction("Clear history?", `Every message of "${c.title || "Untitled"}" will be deleted. The conversation stays.`, "Clear history")) return;
    try {
      await api("DELETE", `/v1/conversations/${enc(c.id)}/messages`);
      state.earliestSeq = null;
      setEarlier(false);
      $("messages").replaceChildren();
      if (c.system_prompt) append(messageElement("system", c.system_prompt, "system prompt"));
      else showHint("History cleared. Say something below.");
      status("History cleared.");
      refreshListEntry(c);
    } catch (err) {
      if (err instanceof ApiError && err.code === "conversation_busy") status("Wait for the reply (or stop it) before clearing the history.", "warning");
      else toast(err);
    }
    $("clear-history").focus();
  };

  $("delete-conversation").onclick = async () => {
    const c = state.conversation;
    if (!await confirmAction("Delete conversation?", `"${c.title || "Untitled"}" and all its messages will be deleted.`, "Delete")) return;
    try {
      await api("DELETE", `/v1/conversations/${enc(c.id)}`);
      if (state.running) { state.running.view.abandon(); state.running.controller.abort(); setRunning(null); }
      state.conversation = null;
      state.generation++;
      history.replaceState(null, "", location.pathname);
      const li = entryFor(c.id);
      if (li) li.remove();
      showConversationHeader();
      showHint("Conversation deleted. Create or pick another.");
      status("");
      $("new-title").focus();
    } catch (err) { toast(err); }
  };

  // --- sending ---------------------------------------------------------------------------------

  /** Sends a message: shows it at once, then follows its reply. A refused send (rate limited,
   *  queue full, offline) keeps the text in the composer and says when to retry. */
  async function send(content, fromComposer) {
    const c = state.conversation;
    if (!content.trim() || !c || state.running) return;
    status("Sending…");
    $("send").disabled = true;
    let accepted;
    try {
      accepted = await api("POST", `/v1/conversations/${enc(c.id)}/messages`, { content },
        { "Idempotency-Key": newIdempotencyKey() });
    } catch (err) {
      $("send").disabled = !state.conversation || !!state.running;
      explainRefusal(err, () => send(content, fromComposer));
      return;
    }
    if (state.conversation !== c) return;
    if (fromComposer) $("content").value = "";
    const m = accepted.message;
    append(messageElement("user", m.content, when(m.created_at)));
    follow(accepted.job.id, append(messageElement("assistant", "")), () => resend(content));
  }
  const resend = (content) => send(content, false);

  $("composer").onsubmit = (event) => {
    event.preventDefault();
    send($("content").value, true);
  };
  $("content").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });

  // --- the phone drawer ------------------------------------------------------------------------

  function closeMenu() {
    if (!document.body.classList.contains("nav-open")) return;
    document.body.classList.remove("nav-open");
    $("menu").setAttribute("aria-expanded", "false");
  }
  $("menu").onclick = () => {
    const open = document.body.classList.toggle("nav-open");
    $("menu").setAttribute("aria-expanded", String(open));
    if (open) $("new-title").focus();
  };
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && document.body.classList.contains("nav-open")) { closeMenu(); $("menu").focus(); }
  });

  // --- the key ---------------------------------------------------------------------------------

  /** The key dialog over the page; what is behind it cannot be reached until a key is given. */
  function showKeyPanel(shown) {
    $("key-panel").hidden = !shown;
    document.querySelector("header").inert = shown;
    document.querySelector("main").inert = shown;
  }

  function askForKey(problem) {
    $("key-error").textContent = problem || "";
    showKeyPanel(true);
    $("key").value = "";
    $("key").focus();
  }

  async function useKey(key) {
    state.key = key;
    // The list and the conversation named in the URL load side by side (a refused key refuses
    // both, and asks again).
    const wanted = location.hash.slice(1);
    const opening = wanted ? openConversation(wanted) : null;
    if (!await loadConversations(false)) return;
    localStorage.setItem(KEY_STORAGE, key);
    showKeyPanel(false);
    $("who").textContent = key.slice(0, 7) + "…";
    if (opening) await opening;
  }

  $("key-form").onsubmit = (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (!key) { $("key-error").textContent = "Paste a key first."; return; }
    $("key-error").textContent = "";
    useKey(key);
  };
  $("change-key").onclick = () => {
    localStorage.removeItem(KEY_STORAGE);
    if (state.running) { state.running.view.abandon(); state.running.controller.abort(); setRunning(null); }
    state.key = "";
    state.conversation = null;
    state.generation++;
    $("conversations").replaceChildren();
    $("more-conversations").hidden = true;
    $("who").textContent = "";
    showConversationHeader();
    showHint("Create or pick a conversation.");
    askForKey();
  };

  // A phone has no room for the keyboard hint.
  if (matchMedia("(max-width: 700px)").matches) $("content").placeholder = "Message";

  if (state.key) useKey(state.key);
  else askForKey();
})();
