"use strict";
// The dashboard's Twins page: a video uploaded here becomes a twin (POST /api/twins queues a training job), the page
// follows the job (stage, progress over all stages, loss, ETA, messages, the holdout preview), shows the eval and
// the enrollment report once it is done, and puts the twin live in the dashboard's session with its viewers staying
// connected. It uses dashboard.js's helpers ($, state, api, attempt, showLogin) and polls the Twins API while
// the page is open (the event socket carries the jobs' log lines, not their progress). Names, messages and errors
// are shown as text, never HTML.

(() => {
  const twins = { ready: false, list: [], jobs: [], sessions: [], selected: null, details: new Map(), timer: null,
                  turn: 0, going: null, uploading: null, shownPreview: null, shownMedia: null, liveNote: null };
  const ACTIVE = ["queued", "running"];
  const FAST_POLL_MS = 1500;  // while a job runs or is queued
  const SLOW_POLL_MS = 5000;  // otherwise, while the page is open
  const STAGE_TEXT = {
    enroll: "Enrolling the video: finding the face, the mouth and the speech",
    autoencoder: "Training the image autoencoder",
    teacher: "Training the twin",
    student: "Distilling a faster one-step student",
    baseline: "Training the regression baseline",
    eval: "Evaluating on held-out footage",
    export: "Exporting the live model",
  };
  const STATE_KIND = { running: "speaking", queued: "", done: "ok", ready: "ok", loaded: "ok", failed: "bad",
                       cancelled: "" };

  function node(tag, className, text) {
    const element = document.createElement(tag);
    if (className) element.className = className;
    if (text !== undefined && text !== null) element.textContent = text;
    return element;
  }

  /** Seconds as a person reads them: "40 s", "3 min 05 s", "1 h 20 min". */
  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    const whole = Math.max(0, Math.round(seconds));
    if (whole < 90) return `${whole} s`;
    if (whole < 3600) return `${Math.floor(whole / 60)} min ${String(whole % 60).padStart(2, "0")} s`;
    return `${Math.floor(whole / 3600)} h ${String(Math.floor((whole % 3600) / 60)).padStart(2, "0")} min`;
  }

  const decibels = (value) => (value === null || value === undefined ? "n/a" : `${value.toFixed(2)} dB`);
  const number = (value, digits) => (value === null || value === undefined ? "n/a" : value.toFixed(digits));
  const megabytes = (bytes) => `${(bytes / 1048576).toFixed(1)} MB`;
  const stateText = (value) => (value === "ready" ? "ready to go live" : value || "unknown");
  /** A twin's state as the page shows it: a finished twin the server has loaded is "loaded", not "ready". */
  const twinState = (twin) => (twin.state === "ready" && twin.loaded ? "loaded" : twin.state);
  const mediaUrl = (path, version) => `${path}?token=${encodeURIComponent(state.token)}&v=${encodeURIComponent(version)}`;
  const pageOpen = () => $("twins-page") && !$("twins-page").hidden;

  // --- opening the page and polling --------------------------------------------------------------------------

  async function openTwinsPage() {
    if (!twins.ready) {
      const response = await fetch("/static/twins.html");
      $("twins-page").innerHTML = await response.text();
      bindTwinsPage();
      twins.ready = true;
      $("session").addEventListener("change", () => { if (twins.ready) renderAll(); });
    }
    await poll();
  }

  /** Fetch the twins, jobs and sessions, show them, and come back soon (sooner while a job is active). */
  async function poll() {
    clearTimeout(twins.timer);
    const turn = ++twins.turn;
    if (!pageOpen() || !state.token) return;
    await attempt(refresh);
    if (turn !== twins.turn) return;  // a newer poll began meanwhile (the tab opened again, an upload ended)
    const busy = twins.jobs.some((job) => ACTIVE.includes(job.state)) || twins.uploading;
    twins.timer = setTimeout(poll, busy ? FAST_POLL_MS : SLOW_POLL_MS);
  }

  async function refresh() {
    const [listing, jobs, sessions] = await Promise.all([api("GET", "/api/twins"), api("GET", "/api/jobs"),
                                                         api("GET", "/api/sessions")]);
    twins.list = listing.data.twins;
    twins.jobs = jobs.data.jobs;
    twins.sessions = sessions.data.sessions;
    await loadDetailIfDue();
    renderAll();
  }

  /** The selected twin's detail (report, eval) once it is ready or loaded, fetched again when its state changes. */
  async function loadDetailIfDue() {
    const twin = selectedTwin();
    if (!twin || !["ready", "loaded"].includes(twin.state)) return;
    const key = `${twin.state}:${(twin.job && twin.job.id) || ""}`;
    const cached = twins.details.get(twin.name);
    if (cached && cached.key === key) return;
    const { data } = await api("GET", `/api/twins/${encodeURIComponent(twin.name)}`);
    twins.details.set(twin.name, { key, data });
  }

  // --- what is selected --------------------------------------------------------------------------------------

  function selectedTwin() {
    const chosen = twins.selected;
    if (!chosen) return null;
    const job = chosen.job ? twins.jobs.find((j) => j.id === chosen.job) : null;
    const twin = twins.list.find((t) => t.name === chosen.name);
    if (job && twin && twin.job && twin.job.id !== job.id) return null;  // an older job of a name used again
    return twin || null;
  }

  function selectedJob() {
    const chosen = twins.selected;
    if (!chosen) return null;
    const twin = selectedTwin();
    if (twin && twin.job) return twin.job;
    return chosen.job ? twins.jobs.find((j) => j.id === chosen.job) || null : null;
  }

  function select(name, jobId) {
    twins.selected = { name, job: jobId || null };
    twins.liveNote = null;
    renderAll();
    attempt(async () => { await loadDetailIfDue(); renderAll(); });
  }

  // --- rendering ---------------------------------------------------------------------------------------------

  function renderAll() {
    if (!twins.ready) return;
    renderTwinList();
    renderJobList();
    renderSessions();
    renderSelected();
    relabelSessionMenu();
  }

  function sessionsShowing(name) {
    return twins.sessions.filter((session) => session.twin === name).map((session) => session.id);
  }

  function badge(text, kind) {
    return node("span", "badge" + (kind ? " " + kind : ""), text);
  }

  function renderTwinList() {
    const list = $("twins-list");
    list.replaceChildren();
    $("twins-none").hidden = twins.list.length > 0;
    for (const twin of twins.list) {
      const item = node("li", "pick");
      item.dataset.name = twin.name;
      if (twins.selected && twins.selected.name === twin.name) item.classList.add("selected");
      const head = node("div", "pick-head");
      head.append(node("strong", "", twin.name), badge(stateText(twinState(twin)), STATE_KIND[twinState(twin)]));
      const showing = sessionsShowing(twin.name);
      if (showing.length) head.append(badge(`live in ${showing.join(", ")}`, "ok live"));
      const facts = [];
      if (twin.size) facts.push(twin.size);
      if (twin.budget_s) facts.push(`budget ${duration(twin.budget_s)}`);
      if (twin.job && ACTIVE.includes(twin.job.state)) facts.push(`${Math.round(twin.job.progress * 100)}%`);
      if (twin.source === "serve") facts.push("started with the server");
      else if (twin.loaded) facts.push("loaded");
      item.append(head, node("div", "pick-meta muted", facts.join(" · ")));
      if (twin.loaded && !showing.includes(state.session)) {
        const button = node("button", "small switch", `Switch ${state.session} to it`);
        button.title = `Show ${twin.name} in session ${state.session}; its viewers stay connected`;
        button.onclick = (event) => { event.stopPropagation(); goLive(twin.name); };
        item.append(button);
      }
      item.onclick = () => select(twin.name, twin.job && twin.job.id);
      list.append(item);
    }
  }

  function renderJobList() {
    const list = $("jobs-list");
    list.replaceChildren();
    $("jobs-none").hidden = twins.jobs.length > 0;
    for (const job of twins.jobs) {
      const item = node("li", "pick");
      item.dataset.job = job.id;
      if (twins.selected && twins.selected.job === job.id) item.classList.add("selected");
      const head = node("div", "pick-head");
      head.append(node("strong", "", job.name), badge(job.state, STATE_KIND[job.state]));
      const facts = [job.size, `budget ${duration(job.budget_s)}`];
      if (job.state === "running") facts.push(`${job.stage || "starting"} · ${Math.round(job.progress * 100)}%`);
      if (job.elapsed_s !== null) facts.push(`${job.state === "running" ? "running for" : "took"} ${duration(job.elapsed_s)}`);
      item.append(head, node("div", "pick-meta muted", facts.join(" · ")));
      item.onclick = () => select(job.name, job.id);
      list.append(item);
    }
  }

  function renderSessions() {
    const list = $("twin-sessions");
    list.replaceChildren();
    for (const session of twins.sessions) {
      const item = node("li", session.id === state.session ? "current" : "");
      item.append(node("span", "session-id", session.id), node("span", "muted", " shows "),
                  node("strong", "", session.twin));
      if (session.id === state.session) item.append(node("span", "muted", " (this dashboard's session)"));
      list.append(item);
    }
  }

  /** The header's session menu names each session's twin: keep those names right after a switch. */
  function relabelSessionMenu() {
    for (const session of twins.sessions) {
      const option = [...$("session").options].find((o) => o.value === session.id);
      if (!option) continue;
      const label = session.id === session.twin ? session.id : `${session.id} (${session.twin})`;
      if (option.textContent !== label) option.textContent = label;
    }
  }

  function renderSelected() {
    const twin = selectedTwin();
    const job = selectedJob();
    const name = twins.selected && twins.selected.name;
    $("twin-empty").hidden = Boolean(twin || job);
    $("twin-card").hidden = !(twin || job);
    if (!twin && !job) { $("twin-results").hidden = true; return; }
    const current = twin ? twinState(twin) : job.state;
    $("twin-title").textContent = name;
    const stateBadge = $("twin-state");
    stateBadge.textContent = stateText(current);
    stateBadge.className = "badge" + (STATE_KIND[current] ? " " + STATE_KIND[current] : "");
    renderLive(twin, name);
    renderMeta(twin, job);
    $("twin-failure").textContent = job && job.state === "failed" ? `Training failed: ${job.error || "no reason given"}` : "";
    $("twin-cancel").hidden = !(job && ACTIVE.includes(job.state));
    renderProgress(job);
    renderPreview(twin, job);
    renderMessages(job);
    renderResults(twin);
  }

  function renderLive(twin, name) {
    const showing = sessionsShowing(name);
    const live = $("twin-live");
    const here = showing.includes(state.session);
    live.hidden = !showing.length;
    live.textContent = here ? `live in session ${state.session}` : `live in ${showing.join(", ")}`;
    live.className = "badge ok";
    const button = $("twin-go-live");
    const canGo = twin && (twin.state === "ready" || twin.loaded);
    button.hidden = !canGo || here;
    button.disabled = twins.going === name;
    button.textContent = twins.going === name ? "Putting it live…"
      : twin && twin.loaded ? `Switch ${state.session} to ${name}` : `Go live in ${state.session}`;
    button.title = `Show ${name} in session ${state.session}: its viewers stay connected and see the new twin`;
  }

  function renderMeta(twin, job) {
    const facts = [];
    const size = (twin && twin.size) || (job && job.size);
    const budget = (twin && twin.budget_s) || (job && job.budget_s);
    if (size) facts.push(`size ${size}`);
    if (budget) facts.push(`budget ${duration(budget)}`);
    if (job && job.started_at) facts.push(`started ${new Date(job.started_at * 1000).toLocaleTimeString()}`);
    if (job && job.state === "done" && job.elapsed_s !== null) facts.push(`trained in ${duration(job.elapsed_s)}`);
    if (job && job.state === "queued") facts.push("waiting for the job before it to finish");
    if (twin && twin.live && twin.live.variant) facts.push(`live variant ${twin.live.variant}`);
    if (twin && twin.source === "serve") facts.push("started with the server (twincast serve --twin)");
    if (twins.liveNote && twins.liveNote.name === twins.selected.name) facts.push(twins.liveNote.text);
    $("twin-meta").textContent = facts.join(" · ");
  }

  function renderProgress(job) {
    const box = $("twin-progress");
    box.hidden = !job || job.state === "cancelled";
    if (box.hidden) return;
    const stage = job.stage;
    const order = job.stages.map((s) => s.name);
    let title;
    if (job.state === "queued") title = "Queued: training starts when the job before it ends";
    else if (job.state === "done") title = "Done: the twin is ready";
    else if (job.state === "failed") title = `Stopped${stage ? " during " + stage : ""}`;
    else if (stage && order.includes(stage)) {
      title = `Stage ${order.indexOf(stage) + 1} of ${order.length}: ${STAGE_TEXT[stage] || stage}`;
    } else if (stage) title = STAGE_TEXT[stage] || stage;
    else title = "Starting: looking at the footage and measuring this machine's speed";
    $("twin-stage").textContent = title;
    $("twin-step").textContent = job.state === "running" && job.steps ? ` · step ${job.step} of ${job.steps}` : "";
    renderStageBar(job);
    $("twin-percent").textContent = `${Math.round(job.progress * 100)}%`;
    $("twin-eta").textContent = job.state === "running" ? duration(job.eta_s) : job.state === "done" ? "none" : "–";
    $("twin-loss").textContent = job.loss === null || job.loss === undefined ? "–" : number(job.loss, 4);
    $("twin-elapsed").textContent = duration(job.elapsed_s);
    $("twin-plan-box").hidden = !job.plan;
    if ($("twin-plan").textContent !== (job.plan || "")) $("twin-plan").textContent = job.plan || "";
  }

  /** One bar over all the stages, each as wide as its planned time, filled as far as the whole run has come. */
  function renderStageBar(job) {
    const bar = $("twin-bar");
    const stages = job.stages.length ? job.stages : [{ name: job.state === "queued" ? "queued" : "planning", estimate_s: 1 }];
    const weights = stages.map((s) => Math.max(s.estimate_s || 0, 1e-3));
    const total = weights.reduce((a, b) => a + b, 0);
    const reached = (job.state === "done" ? 1 : job.progress) * total;
    let start = 0;
    const segments = stages.map((s, index) => {
      const fill = job.state === "done" ? 1 : Math.min(1, Math.max(0, (reached - start) / weights[index]));
      start += weights[index];
      const segment = node("div", "part" + (s.name === job.stage ? " current" : "") + (fill >= 1 ? " full" : ""));
      segment.style.flex = `${weights[index] / total} 1 0px`;  // as wide as its share of the planned time
      segment.title = `${s.name}: planned ${duration(s.estimate_s)}${s.note ? " · " + s.note : ""}`;
      const fillBar = node("div", "part-fill");
      fillBar.style.width = `${(fill * 100).toFixed(1)}%`;
      segment.append(fillBar, node("span", "part-label", s.name));
      return segment;
    });
    bar.replaceChildren(...segments);
    bar.setAttribute("aria-valuenow", String(Math.round((job.state === "done" ? 1 : job.progress) * 100)));
    bar.setAttribute("aria-valuetext", $("twin-stage").textContent);
  }

  function renderPreview(twin, job) {
    const url = twin && twin.files && twin.files["preview.png"];
    const preview = job && job.preview;
    $("twin-preview-box").hidden = !url;
    if (!url) return;
    const version = preview ? preview.at : "latest";
    const source = mediaUrl(url, version);
    if (twins.shownPreview !== source) {
      twins.shownPreview = source;
      $("twin-preview").src = source;
    }
    const when = preview ? `${preview.stage} step ${preview.step}, ${new Date(preview.at * 1000).toLocaleTimeString()}` : "";
    $("twin-preview-caption").textContent =
      `Holdout preview${when ? " at " + when : ""}: the real frames above, the twin's renders of them below (footage it does not train on).`;
  }

  function renderMessages(job) {
    const messages = job ? job.messages.slice(-8).reverse() : [];
    $("twin-messages-box").hidden = !messages.length;
    const list = $("twin-messages");
    const signature = JSON.stringify(messages.map((m) => m.at));
    if (list.dataset.signature === signature) return;
    list.dataset.signature = signature;
    list.replaceChildren(...messages.map((message) => {
      const item = node("li");
      item.append(node("span", "when", new Date(message.at * 1000).toLocaleTimeString()), node("span", "", message.text));
      return item;
    }));
  }

  // --- results: eval, side by side, enrollment report ------------------------------------------------------------

  function renderResults(twin) {
    const detail = twin && twins.details.get(twin.name);
    const data = detail && detail.data;
    const hasResults = Boolean(data && (data.eval || data.report));
    $("twin-results").hidden = !hasResults;
    if (!hasResults) return;
    renderEval(data.eval);
    renderReport(data.report);
    const files = data.files || {};
    const key = `${twin.name}:${detail.key}`;
    if (twins.shownMedia !== key) {
      twins.shownMedia = key;
      const video = $("twin-eval-video");
      video.hidden = !files["eval.mp4"];
      if (files["eval.mp4"]) video.src = mediaUrl(files["eval.mp4"], detail.key); else video.removeAttribute("src");
      const sheet = $("twin-sheet");
      sheet.closest("figure").hidden = !files["contact_sheet.png"];
      if (files["contact_sheet.png"]) sheet.src = mediaUrl(files["contact_sheet.png"], detail.key);
    }
  }

  function renderEval(report) {
    const body = $("twin-eval").querySelector("tbody");
    body.replaceChildren();
    $("twin-eval").hidden = !report;
    if (!report) return;
    for (const [variant, figures] of Object.entries(report.variants || {})) {
      const row = node("tr", variant === report.live_variant ? "live" : "");
      const name = node("td", "", variant);
      if (variant === report.live_variant) name.append(" ", badge("live", "ok"));
      const sync = `${number(figures.sync_corr_pixels, 2)} · ${number(figures.sync_corr, 2)}`;
      row.append(name, node("td", "psnr-mouth", decibels(figures.psnr_mouth)), node("td", "", number(figures.ssim_mouth, 3)),
                 node("td", "psnr-face", decibels(figures.psnr_face)), node("td", "sync", sync),
                 node("td", "", number(figures.ms_per_frame, 1)));
      body.append(row);
    }
  }

  function renderReport(report) {
    const list = $("twin-report");
    list.replaceChildren();
    if (!report) { list.append(node("dd", "muted", "No enrollment report.")); return; }
    const rejected = Object.entries(report.rejected_frames || {}).filter(([, count]) => count > 0)
      .map(([reason, count]) => `${reason.replaceAll("_", " ")} ${count}`);
    const source = report.source || {};
    const audio = report.audio || {};
    const rows = [
      ["footage", `${duration(report.duration_s)} · ${report.frames} frames` +
                  (source.size ? ` · ${source.size[0]}×${source.size[1]} at ${source.fps} fps` : "")],
      ["usable", `${duration(report.usable_s)} (${report.usable_frames} frames)`],
      ["learnt from", duration(report.trainable_s)],
      ["held out for the eval", report.holdout ? `${report.holdout.seconds[0]}-${report.holdout.seconds[1]} s` : "–"],
      ["left out", rejected.length ? rejected.join(", ") : "no frames"],
      ["speech", audio.speech_fraction === undefined ? "–"
        : `${Math.round(audio.speech_fraction * 100)}% of the time` +
          (audio.speech_rms_dbfs !== null && audio.speech_rms_dbfs !== undefined ? ` at ${audio.speech_rms_dbfs} dBFS` : "")],
      ["idle segments", String((report.idle_segments || []).length)],
    ];
    for (const [term, value] of rows) {
      const row = node("div");
      row.append(node("dt", "", term), node("dd", "", value));
      list.append(row);
    }
  }

  // --- actions -----------------------------------------------------------------------------------------------

  async function goLive(name) {
    const session = state.session;
    twins.going = name;
    renderAll();
    await attempt(async () => {
      const { data } = await api("POST", `/api/twins/${encodeURIComponent(name)}/live`, { session });
      const at = new Date().toLocaleTimeString();
      const parts = [data.created ? `started session ${data.session} at ${at}` : `went live in session ${data.session} at ${at}`];
      if (data.previous && data.previous !== name) parts.push(`in place of twin ${data.previous}`);
      if (data.loaded) parts.push("loaded just now");
      twins.liveNote = { name, text: parts.join(", ") };
    });
    twins.going = null;
    await attempt(refresh);
  }

  async function cancelJob() {
    const job = selectedJob();
    if (!job) return;
    if (!window.confirm(`Cancel training ${job.name}? What it has made so far is deleted.`)) return;
    await attempt(async () => { await api("DELETE", `/api/jobs/${encodeURIComponent(job.id)}`); await refresh(); });
  }

  function showUploadError(text) {
    $("twin-error").textContent = text;
  }

  /** Send the form with XMLHttpRequest (fetch cannot report upload progress) and follow the job it queues. */
  function upload(event) {
    event.preventDefault();
    showUploadError("");
    const file = $("twin-video").files[0];
    const name = $("twin-name").value.trim();
    if (!file) { showUploadError("Choose the video file first."); return; }
    if (!name) { showUploadError("Give the twin a name first (letters, digits, - or _)."); return; }
    const form = new FormData();
    form.append("name", name);
    form.append("size", $("twin-size").value);
    form.append("budget", $("twin-budget").value.trim() || "15m");
    form.append("video", file, file.name);
    const request = new XMLHttpRequest();
    twins.uploading = request;
    $("twin-upload").disabled = true;
    $("twin-upload-progress").hidden = false;
    $("twin-upload-bar").value = 0;
    $("twin-upload-text").textContent = `Uploading ${megabytes(0)} of ${megabytes(file.size)}`;
    request.upload.onprogress = (progress) => {
      if (!progress.lengthComputable) return;
      $("twin-upload-bar").value = progress.loaded / progress.total;
      $("twin-upload-text").textContent =
        `Uploading ${megabytes(progress.loaded)} of ${megabytes(progress.total)} (${Math.round((progress.loaded / progress.total) * 100)}%)`;
    };
    request.upload.onload = () => { $("twin-upload-text").textContent = "Uploaded; the server is checking the video…"; };
    request.onload = () => uploaded(request, name);
    request.onerror = () => uploadEnded("The upload stopped: the connection to the server was lost (a file over the " +
                                        "server's upload limit is also refused this way). Nothing was queued.");
    request.open("POST", "/api/twins");
    request.setRequestHeader("Authorization", "Bearer " + state.token);
    request.send(form);
  }

  function uploaded(request, name) {
    let data = null;
    try { data = JSON.parse(request.responseText); } catch (error) { data = null; }
    if (request.status === 401) { uploadEnded(""); showLogin("Your token was not accepted; log in again."); return; }
    if (request.status !== 202) {
      uploadEnded(`The server refused the upload: ${(data && data.error) || request.statusText || "status " + request.status}`);
      return;
    }
    uploadEnded("");
    $("twin-upload-progress").hidden = false;
    $("twin-upload-bar").value = 1;
    $("twin-upload-text").textContent = `Uploaded: ${name} is queued for training.`;
    $("twin-video").value = "";  // the size and budget stay as chosen, for the next one
    $("twin-name").value = "";
    select(name, data.job.id);
    poll();
  }

  function uploadEnded(error) {
    twins.uploading = null;
    $("twin-upload").disabled = false;
    if (error) { $("twin-upload-progress").hidden = true; showUploadError(error); }
  }

  function bindTwinsPage() {
    $("twin-form").onsubmit = upload;
    $("twin-go-live").onclick = () => { if (twins.selected) goLive(twins.selected.name); };
    $("twin-cancel").onclick = cancelJob;
  }

  document.addEventListener("tab", (event) => {
    if (event.detail === "twins") attempt(openTwinsPage);
    else clearTimeout(twins.timer);
  });
})();
