"use strict";
// The dashboard's Show page: the 9:16 preview, the on-screen elements, the canvas, the run of show, viewer
// questions and the product catalogue. It uses dashboard.js's helpers ($, state, api, attempt, toast) and
// reads the session's production live over /api/show/feed. Anything a viewer wrote is shown as text, never HTML.

const show = { ready: false, feed: null, run: null, chat: new Map(), suggestions: new Map(), products: [],
               selected: 0, editing: null, overlays: null };
const KINDS = ["card", "badge", "lower_third", "ticker"];

function clock(seconds) {
  const whole = Math.max(0, Math.round(seconds));
  const minutes = Math.floor(whole / 60);
  return `${minutes}:${String(whole % 60).padStart(2, "0")}`;
}

function node(tag, className, text) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined) element.textContent = text;
  return element;
}

const withSession = (body) => ({ ...body, session: state.session });

// --- opening the page ---------------------------------------------------------------------------------------

async function openShowPage() {
  if (!show.ready) {
    const response = await fetch("/static/show.html");
    $("show-page").innerHTML = await response.text();
    bindShowPage();
    show.ready = true;
    $("session").addEventListener("change", () => { if (show.ready) refreshSession(); });
  }
  await refreshSession();
}

async function refreshSession() {
  connectFeed();
  await attempt(loadProducts);
  await attempt(loadLibrary);
  await attempt(loadCanvas);
  $("overlay-link").href = "/overlay?" + sessionQuery();
}

// The Show page's preview plays the same stream as the Studio's: no second connection.
setInterval(() => {
  const source = $("video") && $("video").srcObject;
  const mirror = document.getElementById("show-video");
  if (mirror && source && mirror.srcObject !== source) { mirror.srcObject = source; mirror.play().catch(() => {}); }
}, 500);

// --- live feed ----------------------------------------------------------------------------------------------

function connectFeed() {
  if (show.feed) { show.feed.onclose = null; show.feed.close(); }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/api/show/feed?${sessionQuery()}&token=${encodeURIComponent(state.token)}`);
  show.feed = socket;
  socket.onmessage = (message) => {
    const data = JSON.parse(message.data);
    if (data.type === "hello") {
      show.chat.clear();
      data.chat.reverse().forEach((m) => show.chat.set(m.id, m));
      renderRun(data.show); renderOverlays(data.overlays); renderChat();
    } else if (data.type === "show") renderRun(data.show);
    else if (data.type === "overlays") renderOverlays(data.overlays);
    else if (data.type === "chat") { show.chat.set(data.message.id, data.message); renderChat(); }
  };
  socket.onclose = () => { if (state.token && show.feed === socket) setTimeout(connectFeed, 1500); };
}

// --- run of show ------------------------------------------------------------------------------------------------

function renderRun(run) {
  show.run = run;
  const badge = $("run-state");
  badge.textContent = run.show ? `${run.state} · ${run.show.name}` : "no show";
  badge.className = "badge" + ({ running: " ok", holding: " speaking", finished: "" }[run.state] || "");
  $("run-error").textContent = run.error || "";
  $("clock-elapsed").textContent = clock(run.clock.elapsed_s);
  $("clock-planned").textContent = clock(run.clock.planned_s);
  const behind = run.clock.behind_s;
  $("clock-behind").textContent = !run.clock.elapsed_s ? "not started" : Math.abs(behind) < 2 ? "on plan"
    : behind > 0 ? `${clock(behind)} behind plan` : `${clock(-behind)} ahead of plan`;
  $("clock-behind").className = behind > 10 ? "late" : "muted";
  $("clock-segment").textContent = clock(run.clock.segment_elapsed_s);
  $("chat-auto").checked = run.auto_answer;
  $("chat-auto").disabled = !run.show;
  const list = $("segments");
  list.innerHTML = "";
  if (!run.show) return;
  run.show.segments.forEach((segment, index) => {
    const item = node("li", "segment");
    item.dataset.index = index;
    if (index === run.position.segment && ["running", "holding"].includes(run.state)) item.classList.add("current");
    if (index < run.position.segment && run.state !== "ready") item.classList.add("done");
    if (index === show.selected) item.classList.add("selected");
    const timing = run.segments[index];
    const head = node("div", "segment-head");
    head.append(node("strong", "", `${index + 1}. ${segment.title}`),
                node("span", "muted", segment.product ? ` · ${segment.product}` : ""),
                node("span", "plan muted", `plan ${clock(timing.planned_s)}`));
    item.appendChild(head);
    const lines = node("ol", "lines");
    segment.lines.forEach((text, line) => {
      const entry = node("li", "line");
      if (index === run.position.segment && line === run.position.line && run.state === "running") entry.classList.add("now");
      if (timing.spoken[line]) entry.classList.add("spoken");
      const estimate = timing.estimates_s[line];
      entry.append(node("span", "text", text), node("span", "estimate", estimate === null ? "…" : `${estimate.toFixed(1)} s`));
      lines.appendChild(entry);
    });
    item.appendChild(lines);
    item.onclick = () => { show.selected = index; renderRun(show.run); };
    list.appendChild(item);
  });
}

async function control(action, body) {
  const { data } = await api("POST", `/api/show/${action}`, withSession(body || {}));
  renderRun(data);
}

async function loadLibrary(selectId) {
  const { data } = await api("GET", "/api/shows");
  const select = $("show-library");
  const keep = selectId || select.value;
  select.innerHTML = "";
  for (const saved of data.shows) {
    const option = node("option", "", `${saved.name} (${saved.segments} segments)`);
    option.value = saved.id;
    select.appendChild(option);
  }
  if (keep && data.shows.some((s) => s.id === keep)) select.value = keep;
}

async function loadSelectedShow() {
  const id = $("show-library").value;
  if (!id) { toast("Save or import a show first."); return; }
  const { data } = await api("POST", "/api/show/load", withSession({ show_id: id }));
  show.selected = 0;
  renderRun(data);
  editShow(data.show);
}

async function importShow(file) {
  let parsed;
  try { parsed = JSON.parse(await file.text()); } catch (error) { toast(`${file.name} is not JSON: ${error.message}`); return; }
  const { data } = await api("POST", "/api/shows", parsed);
  await loadLibrary(data.id);
  toast(`Imported “${data.name}”.`);
}

async function exportShow() {
  const id = $("show-library").value;
  if (!id) return;
  const { data } = await api("GET", `/api/shows/${encodeURIComponent(id)}`);
  const link = node("a");
  link.href = URL.createObjectURL(new Blob([JSON.stringify(data, null, 1)], { type: "application/json" }));
  link.download = `${id}.json`;
  link.click();
  URL.revokeObjectURL(link.href);
}

// --- the show editor ------------------------------------------------------------------------------------------

function blankShow() {
  return { name: "New show", host: { name: "", title: "" }, gap_s: 0.6, auto_answer: false, read_questions: false,
           agent_url: null, blocked_words: [],
           segments: [{ title: "Welcome", product: null, lines: ["Hello everyone, welcome to the show."],
                        elements: ["lower_third"], offer: null, ticker: null, target_s: null }] };
}

function editShow(data) {
  show.editing = JSON.parse(JSON.stringify(data));
  const edited = show.editing;
  $("edit-name").value = edited.name;
  $("edit-host").value = (edited.host && edited.host.name) || "";
  $("edit-host-title").value = (edited.host && edited.host.title) || "";
  $("edit-gap").value = edited.gap_s ?? 0.6;
  $("edit-auto").checked = !!edited.auto_answer;
  $("edit-read").checked = !!edited.read_questions;
  $("edit-agent").value = edited.agent_url || "";
  $("edit-blocked").value = (edited.blocked_words || []).join(", ");
  renderEditSegments();
}

function productOptions(select, chosen, blank) {
  select.innerHTML = "";
  if (blank) select.appendChild(node("option", "", blank)).value = "";
  for (const product of show.products) {
    const option = node("option", "", `${product.name} (${product.price})`);
    option.value = product.id;
    select.appendChild(option);
  }
  select.value = chosen || "";
  if (!blank && !select.value && select.options.length) select.selectedIndex = 0;
}

function renderEditSegments() {
  const list = $("edit-segments");
  list.innerHTML = "";
  show.editing.segments.forEach((segment, index) => {
    const item = node("li", "edit-segment");
    item.innerHTML = `<div class="row"><input data-f="title" type="text" maxlength="80" placeholder="Segment title">
        <select data-f="product"></select>
        <input data-f="target_s" type="number" min="1" max="7200" placeholder="target s" title="target duration, seconds">
        <button class="small" data-act="up">↑</button><button class="small" data-act="down">↓</button>
        <button class="small ghost" data-act="remove">✕</button></div>
      <textarea data-f="lines" rows="3" placeholder="What the twin says, one line per row"></textarea>
      <div class="row elements">${KINDS.map((k) => `<label><input type="checkbox" data-element="${k}"> ${k.replace("_", " ")}</label>`).join("")}</div>
      <div class="row"><input data-f="offer_text" type="text" maxlength="24" placeholder="Offer (-30%)">
        <input data-f="offer_detail" type="text" maxlength="40" placeholder="detail (today only)">
        <input data-f="offer_minutes" type="number" min="0" max="1440" placeholder="countdown min">
        <input data-f="ticker" type="text" maxlength="200" placeholder="Ticker text"></div>`;
    const field = (name) => item.querySelector(`[data-f=${name}]`);
    field("title").value = segment.title;
    productOptions(field("product"), segment.product, "no product");
    field("target_s").value = segment.target_s ?? "";
    field("lines").value = segment.lines.join("\n");
    for (const box of item.querySelectorAll("[data-element]")) box.checked = segment.elements.includes(box.dataset.element);
    field("offer_text").value = segment.offer ? segment.offer.text : "";
    field("offer_detail").value = segment.offer ? segment.offer.detail || "" : "";
    field("offer_minutes").value = segment.offer && segment.offer.ends_in_s ? segment.offer.ends_in_s / 60 : "";
    field("ticker").value = segment.ticker || "";
    item.oninput = item.onchange = () => { show.editing.segments[index] = readSegment(item); };
    item.querySelector("[data-act=remove]").onclick = () => { show.editing.segments.splice(index, 1); renderEditSegments(); };
    for (const [act, step] of [["up", -1], ["down", 1]]) {
      item.querySelector(`[data-act=${act}]`).onclick = () => {
        const to = index + step;
        if (to < 0 || to >= show.editing.segments.length) return;
        const segments = show.editing.segments;
        [segments[index], segments[to]] = [segments[to], segments[index]];
        renderEditSegments();
      };
    }
    list.appendChild(item);
  });
}

function readSegment(item) {
  const value = (name) => item.querySelector(`[data-f=${name}]`).value.trim();
  const minutes = parseFloat(value("offer_minutes"));
  const target = parseFloat(value("target_s"));
  return {
    title: value("title") || "Untitled", product: value("product") || null,
    lines: value("lines").split("\n").map((l) => l.trim()).filter(Boolean),
    elements: [...item.querySelectorAll("[data-element]")].filter((b) => b.checked).map((b) => b.dataset.element),
    offer: value("offer_text") ? { text: value("offer_text"), detail: value("offer_detail"),
                                  ends_in_s: minutes > 0 ? minutes * 60 : null } : null,
    ticker: value("ticker") || null, target_s: target > 0 ? target : null,
  };
}

async function saveEditedShow() {
  const edited = show.editing;
  const blocked = $("edit-blocked").value.split(",").map((w) => w.trim()).filter(Boolean);
  const body = { ...edited, name: $("edit-name").value.trim() || "Untitled show",
                 host: { name: $("edit-host").value.trim(), title: $("edit-host-title").value.trim() },
                 gap_s: parseFloat($("edit-gap").value) || 0, auto_answer: $("edit-auto").checked,
                 read_questions: $("edit-read").checked, agent_url: $("edit-agent").value.trim() || null,
                 blocked_words: blocked };
  delete body.saved_at;
  const { data } = await api("POST", "/api/shows", body);
  show.editing.id = data.id;
  await loadLibrary(data.id);
  toast(`Saved “${data.name}”; Load it to run it.`);
}

// --- on-screen elements and the canvas ---------------------------------------------------------------------------

function renderOverlays(overlays) {
  show.overlays = overlays;
  for (const kind of KINDS) {
    const row = document.querySelector(`.element-row[data-kind=${kind}]`);
    if (row) row.classList.toggle("on", overlays.elements[kind].visible);
  }
  $("burn-in").checked = overlays.burn_in;
}

function elementBody(kind) {
  if (kind === "card") return { product: $("el-card-product").value };
  if (kind === "badge") {
    const minutes = parseFloat($("el-badge-minutes").value);
    const body = { detail: $("el-badge-detail").value.trim() };
    if ($("el-badge-text").value.trim()) body.text = $("el-badge-text").value.trim();
    else if ($("el-card-product").value) body.product = $("el-card-product").value;
    if (minutes > 0) body.ends_in_s = minutes * 60;
    return body;
  }
  if (kind === "lower_third") return { title: $("el-lower-title").value.trim(), subtitle: $("el-lower-subtitle").value.trim() };
  return { text: $("el-ticker-text").value.trim() };
}

async function loadCanvas() {
  const { data } = await api("GET", "/api/canvas?" + sessionQuery());
  $("canvas-size").textContent = data.frame_size.join("×");
  $("canvas-none").hidden = data.canvas;
  $("canvas-controls").hidden = !data.canvas;
  document.querySelector(".preview.portrait").style.aspectRatio = `${data.frame_size[0]} / ${data.frame_size[1]}`;
  if (!data.canvas) return;
  $("canvas-x").value = data.placement.x;
  $("canvas-y").value = data.placement.y;
  $("canvas-scale").value = data.placement.scale;
  if (data.background && data.background.startsWith("#")) $("canvas-colour").value = data.background;
}

let canvasTimer = null;
function placeTwin() {
  clearTimeout(canvasTimer);  // a dragged slider sends its last position, not every step
  canvasTimer = setTimeout(() => attempt(() => api("PUT", "/api/canvas", withSession({
    x: parseFloat($("canvas-x").value), y: parseFloat($("canvas-y").value), scale: parseFloat($("canvas-scale").value) }))), 120);
}

// --- viewer questions ---------------------------------------------------------------------------------------------

function renderChat() {
  const list = $("chat-list");
  const filter = $("chat-filter").value.trim().toLowerCase();
  const wanted = $("chat-state").value;
  const messages = [...show.chat.values()].sort((a, b) => b.id - a.id)
    .filter((m) => (!wanted || m.state === wanted) && (!filter || m.text.toLowerCase().includes(filter) || m.user.toLowerCase().includes(filter)));
  $("chat-count").textContent = `${[...show.chat.values()].filter((m) => m.state === "new").length} new`;
  const open = list.querySelector("textarea:focus");  // keep what the producer is typing
  if (open) return;
  list.innerHTML = "";
  for (const message of messages.slice(0, 80)) list.appendChild(chatItem(message));
}

function chatItem(message) {
  const item = node("li", "message " + message.state);
  item.dataset.id = message.id;
  const head = node("div", "message-head");
  head.append(node("strong", "", message.user), node("span", "muted", ` · ${message.platform} · ${new Date(message.sent_at * 1000).toLocaleTimeString()}`));
  for (const flag of message.flags) head.appendChild(node("span", "badge bad", flag));
  item.append(head, node("div", "message-text", message.text));
  if (message.state === "answered") { item.appendChild(node("div", "answered muted", `↳ ${message.answered_by}: ${message.answer}`)); return item; }
  if (message.state === "dismissed") return item;
  const suggestions = node("div", "suggestions");
  item.appendChild(suggestions);
  showSuggestions(message.id, suggestions);
  const answer = node("textarea");
  answer.rows = 2;
  answer.placeholder = "Your answer";
  const actions = node("div", "row actions");
  const button = (label, kind, title, act) => { const b = node("button", "small " + kind, label); b.title = title; b.onclick = act; return b; };
  actions.append(
    button("Answer", "primary", "Say your answer after the current line", () => answerWith(message.id, { source: "text", text: answer.value }, "next")),
    button("Now", "danger", "Cut in and say it now (the show's line is said again after)", () => answerWith(message.id, { source: "text", text: answer.value }, "now")),
    button("Agent", "", "Let the show's agent answer", () => answerWith(message.id, { source: "agent" }, "next")),
    button("Dismiss", "ghost", "Done, without an answer", () => attempt(() => api("POST", `/api/chat/${message.id}/dismiss`, withSession({})))));
  item.append(answer, actions);
  return item;
}

async function showSuggestions(id, box) {
  if (!show.suggestions.has(id)) {
    show.suggestions.set(id, api("GET", `/api/chat/${id}/suggestions?` + sessionQuery()).then(({ data }) => data.suggestions).catch(() => []));
  }
  for (const match of await show.suggestions.get(id)) {
    const b = node("button", "small faq", `FAQ: ${match.answer}`);
    b.title = `${match.product_id}: “${match.question}” (match ${Math.round(match.score * 100)}%) — click to say it`;
    b.onclick = () => answerWith(id, { source: "faq", product: match.product_id, faq_index: match.index }, "next");
    box.appendChild(b);
  }
}

function answerWith(id, body, when) {
  if (body.source === "text" && !body.text.trim()) { toast("Type an answer first, or pick a FAQ answer."); return; }
  attempt(() => api("POST", `/api/chat/${id}/answer`, withSession({ ...body, when, read_question: $("chat-read").checked })));
}

// --- products -------------------------------------------------------------------------------------------------------

async function loadProducts() {
  const { data } = await api("GET", "/api/products");
  show.products = data.products;
  $("product-count").textContent = `${data.products.length}`;
  const list = $("product-list");
  list.innerHTML = "";
  for (const product of data.products) {
    const item = node("li", "product");
    if (product.has_picture) {
      const picture = node("img");
      picture.src = `/api/products/${encodeURIComponent(product.id)}/picture?token=${encodeURIComponent(state.token)}&v=${product.picture_version}`;
      picture.alt = "";
      item.appendChild(picture);
    } else item.appendChild(node("span", "no-picture", "—"));
    item.append(node("span", "name", product.name), node("span", "price", product.price));
    const remove = node("button", "small ghost", "✕");
    remove.title = "Delete";
    remove.onclick = (event) => { event.stopPropagation(); attempt(async () => { await api("DELETE", `/api/products/${encodeURIComponent(product.id)}`); await loadProducts(); }); };
    item.appendChild(remove);
    item.onclick = () => fillProduct(product);
    list.appendChild(item);
  }
  productOptions($("el-card-product"), $("el-card-product").value, "");
  if (show.editing) renderEditSegments();
}

function fillProduct(product) {
  $("product-id").value = product ? product.id : "";
  $("product-name").value = product ? product.name : "";
  $("product-price").value = product ? product.price : "";
  $("product-was").value = product ? product.was_price : "";
  $("product-bullets").value = product ? product.bullets.join("\n") : "";
  $("product-code").value = product ? product.code : "";
  $("product-link").value = product ? product.link : "";
  $("product-faq").value = product ? product.faq.map((f) => [f.question, f.answer, f.keywords.join(", ")].join(" | ")).join("\n") : "";
}

async function saveProduct(event) {
  event.preventDefault();
  const faq = $("product-faq").value.split("\n").map((l) => l.trim()).filter(Boolean).map((line) => {
    const [question, answer, keywords] = line.split("|").map((part) => (part || "").trim());
    if (!answer) throw new Error(`FAQ line “${line.slice(0, 40)}” needs “question | answer”`);
    return { question, answer, keywords: (keywords || "").split(",").map((k) => k.trim()).filter(Boolean) };
  });
  const body = { name: $("product-name").value.trim(), price: $("product-price").value.trim(),
                 was_price: $("product-was").value.trim(), code: $("product-code").value.trim(),
                 link: $("product-link").value.trim(), faq,
                 bullets: $("product-bullets").value.split("\n").map((l) => l.trim()).filter(Boolean) };
  const id = $("product-id").value;
  const { data } = id ? await api("PUT", `/api/products/${encodeURIComponent(id)}`, body) : await api("POST", "/api/products", body);
  $("product-id").value = data.id;
  const file = $("product-picture").files[0];
  if (file) {
    await api("PUT", `/api/products/${encodeURIComponent(data.id)}/picture`, file, { headers: { "Content-Type": "application/octet-stream" } });
    $("product-picture").value = "";
  }
  await loadProducts();
  toast(`Saved ${data.name}.`);
}

// --- wiring -----------------------------------------------------------------------------------------------------------

function bindShowPage() {
  for (const button of document.querySelectorAll("[data-show]")) {
    button.onclick = () => attempt(() => api("POST", `/api/overlays/${button.dataset.show}`, withSession(elementBody(button.dataset.show))));
  }
  for (const button of document.querySelectorAll("[data-hide]")) {
    button.onclick = () => attempt(() => api("DELETE", `/api/overlays/${button.dataset.hide}?` + sessionQuery()));
  }
  $("burn-in").onchange = () => attempt(() => api("PUT", "/api/overlays", withSession({ burn_in: $("burn-in").checked })));
  for (const id of ["canvas-x", "canvas-y", "canvas-scale"]) $(id).oninput = placeTwin;
  $("canvas-colour").onchange = () => attempt(() => api("PUT", "/api/canvas", withSession({ background: $("canvas-colour").value })));
  $("canvas-picture").onchange = () => attempt(async () => {
    const file = $("canvas-picture").files[0];
    if (file) await api("PUT", "/api/canvas/background?" + sessionQuery(), file, { headers: { "Content-Type": "application/octet-stream" } });
    $("canvas-picture").value = "";
  });
  $("show-load").onclick = () => attempt(loadSelectedShow);
  $("show-new").onclick = () => { editShow(blankShow()); $("show-editor").open = true; };
  $("show-import").onchange = () => attempt(async () => { const file = $("show-import").files[0]; if (file) await importShow(file); $("show-import").value = ""; });
  $("show-export").onclick = () => attempt(exportShow);
  $("show-delete").onclick = () => attempt(async () => {
    const id = $("show-library").value;
    if (id && confirm(`Delete the saved show ${id}?`)) { await api("DELETE", `/api/shows/${encodeURIComponent(id)}`); await loadLibrary(); }
  });
  $("run-start").onclick = () => attempt(() => control("start", { segment: show.selected }));
  for (const action of ["hold", "resume", "back", "skip", "previous", "next"]) $(`run-${action}`).onclick = () => attempt(() => control(action));
  $("run-stop").onclick = () => attempt(() => control("stop"));
  $("edit-add-segment").onclick = () => {
    show.editing = show.editing || blankShow();
    show.editing.segments.push({ title: "New segment", product: null, lines: [], elements: ["card"], offer: null, ticker: null, target_s: null });
    renderEditSegments();
  };
  $("edit-save").onclick = () => attempt(saveEditedShow);
  $("chat-filter").oninput = renderChat;
  $("chat-state").onchange = renderChat;
  $("chat-auto").onchange = () => attempt(() => api("PUT", "/api/show/auto_answer", withSession({ enabled: $("chat-auto").checked })));
  $("product-form").onsubmit = (event) => attempt(() => saveProduct(event));
  $("product-clear").onclick = () => fillProduct(null);
  editShow(blankShow());
}

document.addEventListener("tab", (event) => { if (event.detail === "show") attempt(openShowPage); });
