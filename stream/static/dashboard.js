"use strict";
// The operator dashboard: plain JavaScript, no build step, nothing fetched from elsewhere.

const $ = (id) => document.getElementById(id);
const state = { token: null, session: null, preview: null, previewResource: null, socket: null,
                mic: null, puppet: null, script: [] };

// --- authentication -----------------------------------------------------------------------------------------

function takeTokenFromUrl() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    sessionStorage.setItem("twincast-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);   // keep it out of history and screens
  }
}

async function api(method, path, body, options = {}) {
  const headers = { Authorization: "Bearer " + state.token, ...(options.headers || {}) };
  let payload = body;
  if (body !== undefined && !(body instanceof Blob) && typeof body !== "string") {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const response = await fetch(path, { method, headers, body: payload });
  if (response.status === 401) { showLogin("Your token was not accepted; log in again."); throw new Error("unauthorised"); }
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new Error((data && data.error) || response.statusText);
  return { data, response };
}

function showLogin(message) {
  sessionStorage.removeItem("twincast-token");
  state.token = null;
  if (state.socket) state.socket.close();
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("login-token").focus();
}

async function logIn(token) {
  const response = await fetch("/api/auth", { headers: { Authorization: "Bearer " + token } });
  if (!response.ok) { showLogin("That token is not right."); return; }
  sessionStorage.setItem("twincast-token", token);
  state.token = token;
  $("login").hidden = true;
  $("app").hidden = false;
  await loadSessions();
  connectEvents();
}

$("login-form").onsubmit = (event) => { event.preventDefault(); logIn($("login-token").value.trim()); };
$("logout").onclick = () => showLogin("");

// --- small helpers --------------------------------------------------------------------------------------------

function toast(message) {
  const box = $("toast");
  box.textContent = message;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 5000);
}

async function attempt(action) {
  try { return await action(); } catch (error) { if (error.message !== "unauthorised") toast(error.message); }
}

const sessionQuery = () => "session=" + encodeURIComponent(state.session);

// --- sessions and preview ---------------------------------------------------------------------------------------

async function loadSessions() {
  const { data } = await api("GET", "/api/sessions");
  const select = $("session");
  select.innerHTML = "";
  for (const session of data.sessions) {
    const option = document.createElement("option");
    option.value = session.id;
    option.textContent = session.id === session.twin ? session.id : `${session.id} (${session.twin})`;
    select.appendChild(option);
  }
  state.session = state.session && data.sessions.some((s) => s.id === state.session) ? state.session : data.sessions[0].id;
  select.value = state.session;
  await switchSession();
}

$("session").onchange = async (event) => { state.session = event.target.value; await switchSession(); };

async function switchSession() {
  await stopUpstream("mic");
  await stopUpstream("puppet");
  $("mic").checked = $("puppet").checked = false;
  connectPreview();
  await attempt(loadScript);
}

function waitForIce(peer) {
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    peer.addEventListener("icegatheringstatechange", () => { if (peer.iceGatheringState === "complete") resolve(); });
    setTimeout(resolve, 2000);
  });
}

// The server's STUN and TURN servers (TURN with short-lived credentials); none when it has none configured or
// cannot be asked, and the peer then connects directly.
async function iceServers() {
  try {
    const response = await fetch("/api/ice-servers", { headers: { Authorization: "Bearer " + state.token }, cache: "no-store" });
    return response.ok ? (await response.json()).iceServers || [] : [];
  } catch (error) { return []; }
}

async function connectPreview() {
  const servers = await iceServers();  // first: from here on nothing waits until the new peer is state.preview
  if (state.preview) state.preview.close();
  // The operator token also passes where a viewer token guards the stream.
  const auth = { Authorization: "Bearer " + state.token };
  if (state.previewResource) fetch(state.previewResource, { method: "DELETE", headers: auth }).catch(() => {});
  const peer = new RTCPeerConnection({ iceServers: servers });
  state.preview = peer;
  peer.addTransceiver("video", { direction: "recvonly" });
  peer.addTransceiver("audio", { direction: "recvonly" });
  // One stream per connection, given to the element once: each srcObject assignment reloads the element.
  const stream = new MediaStream();
  const attach = () => {
    if (state.preview !== peer || $("video").srcObject === stream || !stream.getTracks().length) return;
    $("video").srcObject = stream;
    playPreview();
  };
  peer.ontrack = (event) => {
    stream.addTrack(event.track);
    if (stream.getVideoTracks().length && stream.getAudioTracks().length) attach();
  };
  peer.onconnectionstatechange = () => {
    const live = peer.connectionState === "connected";
    setBadge("live", live ? "live" : peer.connectionState, live ? "ok" : peer.connectionState === "failed" ? "bad" : "");
    if (peer.connectionState === "failed" && state.preview === peer) setTimeout(connectPreview, 1000);
  };
  await peer.setLocalDescription(await peer.createOffer());
  await waitForIce(peer);
  const response = await fetch("/whep?" + sessionQuery(), { method: "POST",
                                                          headers: { "Content-Type": "application/sdp", ...auth },
                                                          body: peer.localDescription.sdp });
  if (response.status !== 201) { toast("preview: " + (await response.text())); return; }
  state.previewResource = response.headers.get("Location");
  await peer.setRemoteDescription({ type: "answer", sdp: await response.text() });
  attach();  // an answer without one of the two tracks still shows what it has
}

// A closed or reloaded page hangs up at once (keepalive outlives the page), so its viewer slot is free now, not
// after the server's silence timeout.
window.addEventListener("pagehide", () => {
  if (state.previewResource) {
    fetch(state.previewResource, { method: "DELETE", headers: { Authorization: "Bearer " + state.token }, keepalive: true })
      .catch(() => {});
    state.previewResource = null;
  }
  if (state.preview) { state.preview.close(); state.preview = null; }
});
window.addEventListener("pageshow", (event) => { if (event.persisted && state.token) connectPreview(); });  // back from the cache

// The preview starts muted (an operator hears the show elsewhere); "Sound on" is their choice, made with a click.
async function playPreview() {
  const video = $("video");
  try {
    await video.play();
  } catch (error) {
    if (error.name === "AbortError") return;  // a newer load (session switch, reconnect) replaced this one
    if (error.name === "NotAllowedError" && !video.muted) {  // sound refused: keep the picture, muted
      video.muted = true;
      await video.play().catch((muted) => toast("preview: " + muted.message));
      return;
    }
    toast("preview: " + error.message);
  }
}

function showSound() {
  $("sound").textContent = $("video").muted ? "Sound on" : "Mute";
}
$("video").addEventListener("volumechange", showSound);  // the label follows the element, whoever changed it
$("sound").onclick = () => {
  $("video").muted = !$("video").muted;
  showSound();  // at once: volumechange comes a task later
  if (!$("video").muted) playPreview();
};
showSound();

function setBadge(id, text, kind) {
  const badge = $(id);
  badge.textContent = text;
  badge.className = "badge" + (kind ? " " + kind : "");
}

// --- live feed: stats and events --------------------------------------------------------------------------------

function connectEvents() {
  if (state.socket) state.socket.close();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/api/events?token=${encodeURIComponent(state.token)}`);
  state.socket = socket;
  socket.onmessage = (message) => {
    const data = JSON.parse(message.data);
    if (data.type === "hello") { $("events").innerHTML = ""; data.events.forEach(addEvent); showStats(data.stats); }
    else if (data.type === "stats") showStats(data.stats);
    else if (data.type === "event") addEvent(data);
  };
  socket.onclose = () => { if (state.token && state.socket === socket) setTimeout(connectEvents, 1500); };
}

function showStats(all) {
  const s = all.sessions[state.session];
  if (!s) return;
  $("h-fps").textContent = s.fps.toFixed(1);
  $("h-render").textContent = s.render_ms_p50 === null ? "–" : `${s.render_ms_p50} / ${s.render_ms_p99} ms`;
  $("h-latency").textContent = `${s.audio_to_frame_ms} ms`;
  $("h-late").textContent = `${s.late_frames} / ${s.repeated_frames}`;
  $("h-viewers").textContent = s.viewers;
  $("h-queue").textContent = `${(s.queue.speech_frames / 25).toFixed(1)} s`;
  $("h-engine").textContent = `${all.engine.engine} · ${all.engine.steps} steps`;
  $("h-pose").textContent = `${s.pose.mode} #${s.pose.base_index}`;
  setBadge("speaking", s.speaking ? "speaking" : "idle", s.speaking ? "speaking" : "");
  const warnings = [];
  $("h-degraded").hidden = !s.degraded;
  if (s.degraded) {
    const since = new Date(s.degraded.since * 1000).toLocaleTimeString();
    $("h-degraded").title = `since ${since}: ${s.degraded.reason}`;
    warnings.push(`degraded since ${since}: ${s.degraded.reason} (viewers see the idle footage loop)`);
  }
  if (s.fps > 0 && s.fps < 22) warnings.push(`rendering at ${s.fps.toFixed(1)} fps, below 25`);
  if (all.render_worker.failures) warnings.push(`${all.render_worker.failures} render batches failed`);
  if (all.engine.fallback) warnings.push(`engine fell back to ${all.engine.engine}: ${all.engine.fallback}`);
  for (const output of s.outputs) if (output.state === "reconnecting" || output.state === "failed")
    warnings.push(`${output.kind} ${output.target}: ${output.state}${output.error ? " — " + output.error : ""}`);
  if (s.pose.webcam_fallbacks) warnings.push(`webcam lost ${s.pose.webcam_fallbacks}× (fell back to the loop)`);
  $("warnings").innerHTML = "";
  for (const text of warnings) { const li = document.createElement("li"); li.textContent = text; $("warnings").appendChild(li); }
  renderOutputs(s.outputs);
}

function addEvent(event) {
  const li = document.createElement("li");
  if (event.level === "warning" || event.level === "error") li.className = event.level;
  const when = document.createElement("span");
  when.className = "when";
  when.textContent = new Date(event.at * 1000).toLocaleTimeString();
  li.appendChild(when);
  if (event.session) { const where = document.createElement("span"); where.className = "where"; where.textContent = event.session; li.appendChild(where); }
  li.appendChild(document.createTextNode(event.message));
  $("events").prepend(li);
  while ($("events").children.length > 300) $("events").lastChild.remove();
}

// --- speech -------------------------------------------------------------------------------------------------------

async function interrupt() { await attempt(() => api("POST", "/api/interrupt", { session: state.session })); }
$("interrupt").onclick = interrupt;
document.addEventListener("keydown", (event) => { if (event.key === "Escape") { event.preventDefault(); interrupt(); } });

async function say(text, now) {
  if (!text.trim()) { toast("Type something to say first."); return; }
  if (now) await api("POST", "/api/interrupt", { session: state.session });
  await api("POST", "/api/say", { session: state.session, text });
}
$("say-form").onsubmit = (event) => {
  event.preventDefault();
  attempt(async () => { await say($("say-text").value, false); $("say-text").value = ""; });
};
$("say-now").onclick = () => attempt(async () => { await say($("say-text").value, true); $("say-text").value = ""; });

// --- script -------------------------------------------------------------------------------------------------------

async function loadScript() {
  const { data } = await api("GET", "/api/script?" + sessionQuery());
  renderScript(data.lines);
}

function renderScript(lines) {
  state.script = lines;
  const list = $("script-lines");
  list.innerHTML = "";
  $("script-count").textContent = lines.length ? `${lines.filter((l) => l.times_spoken).length}/${lines.length} spoken` : "";
  for (const line of lines) {
    const li = document.createElement("li");
    li.dataset.id = line.line_id;
    li.draggable = true;
    if (line.times_spoken) li.className = "spoken";
    li.innerHTML = `<span class="handle" title="Drag to reorder">⠿</span>
      <div><div class="text"></div><div class="meta"></div></div>
      <div class="actions">
        <button class="small primary" data-act="next" title="Say after what is being said">Next</button>
        <button class="small danger" data-act="now" title="Interrupt and say this now">Now</button>
        <button class="small" data-act="up" title="Move up">↑</button>
        <button class="small" data-act="down" title="Move down">↓</button>
        <button class="small ghost" data-act="delete" title="Delete">✕</button>
      </div>`;
    li.querySelector(".text").textContent = line.text;
    li.querySelector(".meta").textContent = line.times_spoken
      ? `spoken ${line.times_spoken}× · last at ${new Date(line.spoken_at * 1000).toLocaleTimeString()}` : "";
    list.appendChild(li);
  }
}

$("script-form").onsubmit = (event) => {
  event.preventDefault();
  attempt(async () => {
    const { data } = await api("POST", "/api/script", { session: state.session, text: $("script-text").value });
    $("script-text").value = "";
    renderScript(data.lines);
  });
};

$("script-lines").onclick = (event) => {
  const button = event.target.closest("button");
  if (!button) return;
  const id = Number(button.closest("li").dataset.id);
  const act = button.dataset.act;
  attempt(async () => {
    if (act === "now" || act === "next") {
      await api("POST", `/api/script/${id}/speak`, { session: state.session, when: act });
      await loadScript();
    } else if (act === "delete") {
      renderScript((await api("DELETE", `/api/script/${id}?` + sessionQuery())).data.lines);
    } else {
      const order = state.script.map((l) => l.line_id);
      const at = order.indexOf(id);
      const to = act === "up" ? at - 1 : at + 1;
      if (to < 0 || to >= order.length) return;
      [order[at], order[to]] = [order[to], order[at]];
      renderScript((await api("PUT", "/api/script/order", { session: state.session, order })).data.lines);
    }
  });
};

let dragged = null;
$("script-lines").addEventListener("dragstart", (event) => { dragged = event.target.closest("li"); dragged.classList.add("dragging"); });
$("script-lines").addEventListener("dragend", () => { if (dragged) dragged.classList.remove("dragging"); });
$("script-lines").addEventListener("dragover", (event) => {
  event.preventDefault();
  const over = event.target.closest("li");
  if (!dragged || !over || over === dragged) return;
  const after = event.clientY > over.getBoundingClientRect().top + over.offsetHeight / 2;
  over.parentNode.insertBefore(dragged, after ? over.nextSibling : over);
});
$("script-lines").addEventListener("drop", (event) => {
  event.preventDefault();
  const order = [...$("script-lines").children].map((li) => Number(li.dataset.id));
  attempt(async () => renderScript((await api("PUT", "/api/script/order", { session: state.session, order })).data.lines));
});

// --- inputs: microphone and webcam upstreams ------------------------------------------------------------------

async function startUpstream(kind) {
  const media = await navigator.mediaDevices.getUserMedia(kind === "mic" ? { audio: true } : { video: { width: 640, height: 480 } });
  const peer = new RTCPeerConnection({ iceServers: await iceServers() });
  media.getTracks().forEach((track) => peer.addTrack(track, media));
  await peer.setLocalDescription(await peer.createOffer());
  await waitForIce(peer);
  const path = kind === "mic" ? "/api/mic" : "/api/webcam";
  const { data, response } = await api("POST", `${path}?` + sessionQuery(), peer.localDescription.sdp,
                                       { headers: { "Content-Type": "application/sdp" } });
  await peer.setRemoteDescription({ type: "answer", sdp: data });
  state[kind] = { peer, media, location: response.headers.get("Location") };
}

async function stopUpstream(kind) {
  const upstream = state[kind];
  if (!upstream) return;
  state[kind] = null;
  upstream.media.getTracks().forEach((track) => track.stop());
  upstream.peer.close();
  await api("DELETE", upstream.location).catch(() => {});
}

for (const [box, kind] of [["mic", "mic"], ["puppet", "puppet"]]) {
  $(box).onchange = (event) => attempt(async () => {
    try {
      if (event.target.checked) await startUpstream(kind); else await stopUpstream(kind);
    } catch (error) { event.target.checked = false; throw error; }
  });
}

for (const radio of document.querySelectorAll("input[name=idle]")) {
  radio.onchange = () => attempt(() => api("POST", "/api/pose", { session: state.session, mode: radio.value }));
}

// --- outputs ------------------------------------------------------------------------------------------------------

$("rtmp-form").onsubmit = (event) => {
  event.preventDefault();
  attempt(async () => {
    await api("POST", "/api/outputs", { session: state.session, kind: "rtmp", url: $("rtmp-url").value.trim(),
                                         key: $("rtmp-key").value.trim() || undefined });
    $("rtmp-key").value = "";
  });
};
$("whip-form").onsubmit = (event) => {
  event.preventDefault();
  attempt(async () => {
    await api("POST", "/api/outputs", { session: state.session, kind: "whip", url: $("whip-url").value.trim(),
                                         token: $("whip-token").value.trim() || undefined });
    $("whip-token").value = "";
  });
};
$("record-form").onsubmit = (event) => {
  event.preventDefault();
  attempt(() => api("POST", "/api/outputs", { session: state.session, kind: "record", path: $("record-path").value.trim() }));
};

function renderOutputs(outputs) {
  const list = $("outputs");
  const signature = JSON.stringify(outputs.map((o) => [o.id, o.state, o.reconnects, Math.floor(o.video_frames / 250)]));
  if (list.dataset.signature === signature) return;
  list.dataset.signature = signature;
  list.innerHTML = "";
  for (const output of outputs) {
    const li = document.createElement("li");
    const kind = output.state === "live" || output.state === "recording" ? "ok" : output.state === "reconnecting" || output.state === "failed" ? "bad" : "";
    li.innerHTML = `<span class="target"></span><button class="small danger">Stop</button>
      <span class="detail"><span class="badge ${kind}"></span> <span class="numbers"></span></span>`;
    li.querySelector(".target").textContent = output.target;
    li.querySelector(".badge").textContent = output.state;
    li.querySelector(".numbers").textContent = `${output.video_frames} frames · ${output.reconnects} reconnects`;
    li.querySelector("button").onclick = () => attempt(() => api("DELETE", `/api/outputs/${output.id}`));
    list.appendChild(li);
  }
}

// --- pages: each [data-tab] button shows the [data-tab-panel] of its name (a "tab" event tells the page's script) ---

function openTab(name) {
  for (const button of document.querySelectorAll("#tabs [data-tab]")) button.classList.toggle("active", button.dataset.tab === name);
  for (const panel of document.querySelectorAll("[data-tab-panel]")) panel.hidden = panel.dataset.tabPanel !== name;
  document.dispatchEvent(new CustomEvent("tab", { detail: name }));
}
for (const button of document.querySelectorAll("#tabs [data-tab]")) button.onclick = () => openTab(button.dataset.tab);

// --- start ----------------------------------------------------------------------------------------------------------

takeTokenFromUrl();
const saved = sessionStorage.getItem("twincast-token");
if (saved) logIn(saved); else showLogin("");
