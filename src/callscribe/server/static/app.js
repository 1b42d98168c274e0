// callscribe live page: the call list, and one call's transcript as people speak.
// Plain ES2020, no build step. Text is always set through textContent (never innerHTML): transcripts
// are untrusted input.
"use strict";

(() => {
  const LIVE_POLL_MS = 2000;
  const RECENT_POLL_MS = 10000;
  const MAX_BACKOFF_MS = 5000;

  // For latency measurement: utterance_id -> Date.now() when its final was first shown live.
  window.callscribeShown = window.callscribeShown || {};

  const $ = (id) => document.getElementById(id);
  const els = {
    connection: $("connection"),
    liveList: $("live-calls"),
    liveEmpty: $("live-empty"),
    liveCount: $("live-count"),
    recentList: $("recent-calls"),
    recentEmpty: $("recent-empty"),
    title: $("call-title"),
    meta: $("call-meta"),
    transcript: $("transcript"),
    transcriptEmpty: $("transcript-empty"),
  };

  const state = {
    callSid: null,
    ws: null,
    lastEventId: null, // the newest event id seen for the open call: the resume point
    turns: new Map(), // utterance_id -> {li, final}
    ended: false,
    backoff: 500,
    reconnectTimer: null,
    generation: 0, // bumps when another call is opened, so stale fetches and sockets are ignored
    liveSids: new Set(),
    triggers: new Set(), // "utterance:rule" already shown
  };
  window.callscribe = state; // handy in the console and for tests

  // API token (when the server has auth on): opened once as /?token=…, then kept for this tab only,
  // and taken out of the address bar so it is not bookmarked or shared by accident.
  const TOKEN_KEY = "callscribe.token";
  (() => {
    const url = new URL(location.href);
    const t = url.searchParams.get("token");
    if (t) {
      sessionStorage.setItem(TOKEN_KEY, t);
      url.searchParams.delete("token");
      history.replaceState(null, "", url.pathname + url.search + url.hash);
    }
  })();
  const token = () => sessionStorage.getItem(TOKEN_KEY);
  let asked = false;
  async function api(path) {
    const t = token();
    const r = await fetch(path, t ? { headers: { Authorization: `Bearer ${t}` } } : {});
    if (r.status === 401 && !asked) {
      asked = true; // ask once per page load; a wrong token shows as an empty list, not a prompt loop
      const entered = window.prompt("This callscribe server needs an API token (read scope):");
      if (entered) {
        sessionStorage.setItem(TOKEN_KEY, entered.trim());
        return api(path);
      }
    }
    return r;
  }

  // ------------------------------------------------------------------ helpers

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  }

  function clock(seconds) {
    const s = Math.max(0, Math.floor(Number(seconds) || 0));
    const mm = String(Math.floor(s / 60)).padStart(2, "0");
    return `${mm}:${String(s % 60).padStart(2, "0")}`;
  }

  function when(value) {
    if (value == null || value === "") return "";
    const d = typeof value === "number" ? new Date(value * 1000) : new Date(value);
    return Number.isNaN(d.getTime()) ? String(value) : d.toLocaleString();
  }

  function maxId(a, b) {
    if (!a) return b || null;
    if (!b) return a;
    return a.padStart(20, "0") >= b.padStart(20, "0") ? a : b;
  }

  function setConnection(text, stateName) {
    els.connection.textContent = text;
    els.connection.dataset.state = stateName;
  }

  // Redactions: text already masked by the gateway (e.g. "[card ending 1111]"), and spans listed in
  // a `redactions` field (objects with start/end character offsets, or literal strings) are masked.
  const BRACKETED = /\[[^\[\]\n]{1,80}\]/g;

  function maskRanges(text, redactions) {
    const ranges = [];
    for (const m of text.matchAll(BRACKETED)) ranges.push([m.index, m.index + m[0].length, true]);
    for (const r of Array.isArray(redactions) ? redactions : []) {
      if (typeof r === "string" && r) {
        let i = text.indexOf(r);
        while (i >= 0) {
          ranges.push([i, i + r.length, false]);
          i = text.indexOf(r, i + r.length);
        }
      } else if (r && Number.isInteger(r.start) && Number.isInteger(r.end) && r.end > r.start) {
        ranges.push([Math.max(0, r.start), Math.min(text.length, r.end), false, r.label || r.kind]);
      }
    }
    ranges.sort((a, b) => a[0] - b[0]);
    return ranges;
  }

  // Appends `text` to `parent`, masked spans as <mark class="redacted">.
  function appendText(parent, text, redactions) {
    let pos = 0;
    for (const [start, end, shown, label] of maskRanges(text, redactions)) {
      if (start < pos) continue; // overlapping span: the first one wins
      if (start > pos) parent.append(text.slice(pos, start));
      const original = text.slice(start, end);
      // A span listed in `redactions` is hidden; a bracketed one is already a safe label.
      const visible = shown ? original.slice(1, -1) : label ? String(label) : "redacted";
      parent.append(el("mark", { class: "redacted", title: "redacted", "aria-label": `redacted: ${visible}`, text: visible }));
      pos = end;
    }
    if (pos < text.length) parent.append(text.slice(pos));
  }

  function nearBottom() {
    const t = els.transcript;
    return t.scrollHeight - t.scrollTop - t.clientHeight < 80;
  }

  function keepScrolled(wasNearBottom) {
    // Follow the conversation, unless the agent scrolled up to read something.
    if (wasNearBottom) els.transcript.scrollTop = els.transcript.scrollHeight;
  }

  // ------------------------------------------------------------------ transcript rendering

  function side(ev) {
    if (ev.track === "outbound") return "agent";
    if (ev.track === "inbound") return "caller";
    return ev.speaker === "agent" ? "agent" : "caller";
  }

  function insertInOrder(li, start) {
    // Keep speaking order: walk back from the end (new turns are almost always last).
    li.dataset.start = String(start);
    let after = els.transcript.lastElementChild;
    while (after && Number(after.dataset.start) > start) after = after.previousElementSibling;
    if (after) after.after(li);
    else els.transcript.prepend(li);
    els.transcriptEmpty.hidden = true;
  }

  function renderTranscript(ev, { live }) {
    const id = ev.utterance_id;
    const existing = state.turns.get(id);
    if (existing && existing.final && !ev.is_final) return; // a late partial never undoes a final
    const wasNearBottom = nearBottom();
    let li = existing && existing.li;
    if (!li) {
      const who = side(ev);
      const label = ev.speaker ? ev.speaker.charAt(0).toUpperCase() + ev.speaker.slice(1) : who;
      li = el(
        "li",
        { class: `turn ${who}`, "data-utterance-id": id, "data-speaker": ev.speaker || who },
        el("p", { class: "who" }, label, el("time", { text: clock(ev.start) })),
        el("p", { class: "bubble" }),
      );
      insertInOrder(li, Number(ev.start) || 0);
    }
    const bubble = li.querySelector(".bubble");
    bubble.textContent = "";
    const text = String(ev.text || "");
    if (ev.is_final) {
      appendText(bubble, text, ev.redactions);
      li.classList.remove("partial");
      li.classList.add("final");
      li.removeAttribute("aria-busy");
      if (live && !(id in window.callscribeShown)) window.callscribeShown[id] = Date.now();
    } else {
      // The stable prefix will not change before the final; the tail is still a guess.
      const stable = ev.stable_text && text.startsWith(ev.stable_text) ? ev.stable_text : "";
      appendText(bubble, stable, ev.redactions);
      const tail = el("span", { class: "tentative" });
      appendText(tail, text.slice(stable.length), ev.redactions);
      bubble.append(tail);
      li.classList.add("partial");
      li.setAttribute("aria-busy", "true"); // screen readers announce it once, when final
    }
    state.turns.set(id, { li, final: !!ev.is_final });
    keepScrolled(wasNearBottom);
  }

  function renderNote(kind, children, ev, start) {
    const wasNearBottom = nearBottom();
    const li = el("li", { class: `note ${kind}`, role: "note" }, ...children);
    if (ev && ev.event_id) li.dataset.eventId = ev.event_id;
    // A note sits where it happened: at its own time, else after what is shown now.
    const last = els.transcript.lastElementChild;
    insertInOrder(li, start ?? (last ? Number(last.dataset.start) : 0));
    keepScrolled(wasNearBottom);
  }

  // A link from a rule's payload is shown only when it is plain http(s): payloads are operator data,
  // but never a reason to run javascript: URLs.
  function safeLink(url) {
    try {
      const u = new URL(String(url), location.href);
      return u.protocol === "https:" || u.protocol === "http:" ? u.href : null;
    } catch {
      return null;
    }
  }

  function renderTrigger(ev) {
    const text = el("span");
    appendText(text, String(ev.matched || ev.text || ev.message || ""), ev.redactions);
    const children = [el("strong", { text: `⚑ ${ev.rule_id || ev.rule || "trigger"}` }), ": ", text];
    const payload = ev.payload || {};
    if (payload.script) children.push(el("span", { class: "script", text: ` — ${payload.script}` }));
    const href = payload.kb || payload.url ? safeLink(payload.kb || payload.url) : null;
    if (href) children.push(" ", el("a", { href, target: "_blank", rel: "noopener noreferrer", text: "open article" }));
    const turn = ev.utterance_id && state.turns.get(ev.utterance_id);
    const start = turn ? Number(turn.li.dataset.start) : Number.isFinite(ev.start) ? ev.start : undefined;
    // one note per rule and utterance, however often the event is replayed (resume)
    const key = `${ev.utterance_id || ""}:${ev.rule_id || ev.rule || ""}`;
    if (state.triggers.has(key)) return;
    state.triggers.add(key);
    renderNote(`trigger ${ev.severity || "info"}`, children, ev, start);
  }

  function handleEvent(ev, { live }) {
    if (!ev || (ev.call_sid && ev.call_sid !== state.callSid)) return;
    if (ev.event_id) state.lastEventId = maxId(state.lastEventId, ev.event_id);
    switch (ev.type) {
      case "transcript":
        renderTranscript(ev, { live });
        break;
      case "trigger.fired":
      case "trigger":
        renderTrigger(ev);
        break;
      case "call.started":
        els.meta.textContent = `Live · started ${when(ev.at)} · engine ${ev.engine || "?"}`;
        break;
      case "call.ended":
        state.ended = true;
        els.meta.textContent = `Ended (${ev.reason || "stop"}) · ${clock(ev.duration)} of audio`;
        renderNote("ended", [`Call ended · ${clock(ev.duration)}`], ev, Number.MAX_SAFE_INTEGER);
        if (live) {
          // Refresh the lists soon (the store commits the end a moment later), not at the next poll.
          setTimeout(pollLive, 300);
          setTimeout(pollRecent, 1500);
        }
        break;
      case "call.error":
        renderNote("error", [`${ev.code || "error"}: ${ev.message || ""}`], ev);
        break;
      default:
        break;
    }
  }

  // ------------------------------------------------------------------ one call: history + live

  async function openCall(sid) {
    if (!sid) return;
    closeSocket();
    const gen = ++state.generation;
    Object.assign(state, { callSid: sid, lastEventId: null, ended: false, backoff: 500 });
    state.turns.clear();
    state.triggers.clear();
    els.transcript.textContent = "";
    els.transcriptEmpty.hidden = false;
    els.transcriptEmpty.textContent = "Waiting for someone to speak…";
    els.title.textContent = `Call ${sid}`;
    els.meta.textContent = state.liveSids.has(sid) ? "Live" : "";
    markCurrent();
    if (location.hash.slice(1) !== sid) history.replaceState(null, "", `#${sid}`);

    // The past transcript first; the socket then resumes after its newest final. With nothing
    // stored yet, "0" asks the feed for every stored final of this call, so none can fall between.
    let resumeFrom = "0";
    try {
      const r = await api(`/api/calls/${encodeURIComponent(sid)}/transcript?format=json`);
      if (gen !== state.generation) return;
      if (r.ok) {
        const body = await r.json();
        if (gen !== state.generation) return;
        const call = body.call || {};
        if (call.status && !state.liveSids.has(sid)) els.meta.textContent = `${call.status} · ${when(call.started_at)}`;
        for (const u of body.utterances || []) {
          handleEvent({ type: "transcript", is_final: true, call_sid: sid, ...u }, { live: false });
        }
        if (state.lastEventId) resumeFrom = state.lastEventId;
      }
    } catch (err) {
      console.warn("transcript fetch failed", err);
    }
    if (gen === state.generation) connect(gen, state.lastEventId || resumeFrom);
  }

  function connect(gen, lastEventId) {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const q = lastEventId ? `?last_event_id=${encodeURIComponent(lastEventId)}` : "";
    const t = token();
    // Browsers cannot set headers on a WebSocket: the token rides as the subprotocol pair "bearer, <token>".
    const ws = new WebSocket(
      `${proto}//${location.host}/live/${encodeURIComponent(state.callSid)}${q}`,
      t ? ["bearer", t] : undefined,
    );
    state.ws = ws;
    setConnection(state.backoff > 500 ? "Reconnecting…" : "Connecting…", "connecting");
    ws.onopen = () => {
      if (gen !== state.generation) return;
      state.backoff = 500;
      setConnection("Live feed connected", "live");
    };
    ws.onmessage = (msg) => {
      if (gen !== state.generation) return;
      try {
        handleEvent(JSON.parse(msg.data), { live: true });
      } catch (err) {
        console.warn("bad feed message", err);
      }
    };
    ws.onclose = () => {
      if (gen !== state.generation || state.ws !== ws) return;
      state.ws = null;
      // Reconnect with backoff and resume after the last event seen (finals missed come first).
      const delay = state.backoff;
      state.backoff = Math.min(MAX_BACKOFF_MS, state.backoff * 2);
      setConnection(`Feed lost; reconnecting in ${Math.round(delay / 100) / 10} s…`, "retrying");
      state.reconnectTimer = setTimeout(() => {
        if (gen === state.generation) connect(gen, state.lastEventId || lastEventId);
      }, delay);
    };
  }

  function closeSocket() {
    clearTimeout(state.reconnectTimer);
    if (state.ws) {
      const ws = state.ws;
      state.ws = null;
      ws.close();
    }
  }

  // ------------------------------------------------------------------ call lists

  function callButton(call, live) {
    const sid = call.call_sid;
    const info = live
      ? el("span", { class: "call-info" }, el("span", { class: "live-dot", text: "● live" }), ` · ${clock(call.audio_seconds)}`)
      : el("span", { class: "call-info", text: [call.status, when(call.started_at)].filter(Boolean).join(" · ") });
    const button = el("button", { type: "button", "data-call-sid": sid }, el("span", { class: "call-sid", text: sid }), info);
    button.addEventListener("click", () => openCall(sid));
    return el("li", {}, button);
  }

  function fillList(list, empty, calls, live) {
    // Rebuilding would steal keyboard focus: keep it on the same call if it had it.
    const focused = document.activeElement && document.activeElement.dataset.callSid;
    list.replaceChildren(...calls.map((c) => callButton(c, live)));
    empty.hidden = calls.length > 0;
    markCurrent();
    if (focused) {
      const again = list.querySelector(`button[data-call-sid="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
  }

  function markCurrent() {
    for (const b of document.querySelectorAll(".call-list button")) {
      if (b.dataset.callSid === state.callSid) b.setAttribute("aria-current", "true");
      else b.removeAttribute("aria-current");
    }
  }

  let lastLive = "";
  async function pollLive() {
    try {
      const r = await api("/api/live");
      if (r.ok) {
        const calls = await r.json();
        state.liveSids = new Set(calls.map((c) => c.call_sid));
        const key = JSON.stringify(calls.map((c) => [c.call_sid, Math.floor(c.audio_seconds)]));
        if (key !== lastLive) {
          lastLive = key;
          fillList(els.liveList, els.liveEmpty, calls, true);
          els.liveCount.textContent = String(calls.length);
          els.liveCount.classList.toggle("zero", calls.length === 0);
        }
      }
    } catch (err) {
      console.warn("live calls poll failed", err);
    }
  }

  let lastRecent = "";
  async function pollRecent() {
    try {
      const r = await api("/api/calls?limit=20");
      if (r.status === 503) {
        els.recentEmpty.textContent = "Storage is off: only live calls are shown.";
        els.recentEmpty.hidden = false;
        return;
      }
      if (r.ok) {
        const body = await r.json();
        const key = JSON.stringify(body.items.map((c) => [c.call_sid, c.status]));
        if (key !== lastRecent) {
          lastRecent = key;
          fillList(els.recentList, els.recentEmpty, body.items, false);
        }
      }
    } catch (err) {
      console.warn("recent calls poll failed", err);
    }
  }

  // ------------------------------------------------------------------ start

  window.addEventListener("hashchange", () => {
    const sid = decodeURIComponent(location.hash.slice(1));
    if (sid && sid !== state.callSid) openCall(sid);
  });

  pollLive();
  pollRecent();
  setInterval(pollLive, LIVE_POLL_MS);
  setInterval(pollRecent, RECENT_POLL_MS);
  if (location.hash.length > 1) openCall(decodeURIComponent(location.hash.slice(1)));
})();
