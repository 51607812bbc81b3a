// dns-jax service page: plain JavaScript, no build step. Talks to /api (see docs/service.md).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { queryFile: null, queryUrl: null, lastQuery: null };

function token() { return sessionStorage.getItem("dns-jax-token") || ""; }
function authHeaders() { const t = token(); return t ? { Authorization: "Bearer " + t } : {}; }

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(errorText(res.status, body));
  return body;
}

function errorText(status, body) {
  const detail = body && body.detail;
  const msg = typeof detail === "string" ? detail : JSON.stringify(detail || body);
  if (status === 401) { $("token-box").open = true; return "access token needed or wrong (" + msg + ")"; }
  return msg + " (HTTP " + status + ")";
}

// POST a FormData with upload progress (fetch has none).
function postForm(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.upload.onload = () => onProgress(1);
    xhr.onload = () => {
      const body = xhr.response || {};
      if (xhr.status >= 200 && xhr.status < 300) resolve(body); else reject(new Error(errorText(xhr.status, body)));
    };
    xhr.onerror = () => reject(new Error("network error"));
    xhr.send(form);
  });
}

function setStatus(el, text, isError = false) { el.textContent = text; el.classList.toggle("error", isError); }

async function loadCollection() {
  try {
    const health = await api("/api/health");
    setStatus($("collection-info"), health.videos + " videos indexed");
    const list = await api("/api/videos?limit=500");
    const sel = $("indexed");
    sel.length = 1;
    for (const v of list.videos) sel.add(new Option(v.video_id, v.video_id));
  } catch (e) {
    setStatus($("collection-info"), "Cannot load the collection: " + e.message, true);
  }
}

// -- choosing the query -------------------------------------------------------------------------
function chooseFile(file) {
  state.queryFile = file || null;
  $("drop-text").textContent = file ? "Query: " + file.name + " (" + (file.size / 1048576).toFixed(1) + " MB)"
                                    : "Drop a video here, or choose a file";
  if (file) $("indexed").value = "";
}

function setupDrop() {
  const zone = $("drop-zone");
  $("query-file").addEventListener("change", (e) => chooseFile(e.target.files[0]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) chooseFile(e.dataTransfer.files[0]);
  });
  $("indexed").addEventListener("change", (e) => { if (e.target.value) { chooseFile(null); $("query-file").value = ""; } });
}

// -- search -------------------------------------------------------------------------------------
async function search(ev) {
  ev.preventDefault();
  const status = $("search-status"), bar = $("upload-progress"), button = $("search-button");
  const params = new URLSearchParams({ stage: $("stage").value, budget: $("budget").value, topk: $("topk").value });
  const indexed = $("indexed").value;
  if (!state.queryFile && !indexed) { setStatus(status, "Choose a video file or an indexed video first.", true); return; }
  button.disabled = true;
  const t0 = performance.now();
  try {
    let out;
    if (state.queryFile) {
      const form = new FormData();
      form.append("video", state.queryFile, state.queryFile.name);
      bar.hidden = false; bar.value = 0;
      setStatus(status, "Uploading…");
      out = await postForm("/api/search?" + params, form, (f) => {
        bar.value = Math.round(f * 100);
        setStatus(status, f < 1 ? "Uploading " + Math.round(f * 100) + " %" : "Uploaded; searching…");
      });
      if (state.queryUrl) URL.revokeObjectURL(state.queryUrl);
      state.queryUrl = URL.createObjectURL(state.queryFile);
    } else {
      setStatus(status, "Searching…");
      out = await api("/api/search?" + params, { method: "POST", headers: { "Content-Type": "application/json" },
                                                 body: JSON.stringify({ video_id: indexed }) });
      state.queryUrl = null;
    }
    const total = performance.now() - t0;
    state.lastQuery = { name: out.query, url: state.queryUrl, indexed: indexed || null, frames: out.query_frames };
    renderResults(out);
    setStatus(status, out.results.length + " results for " + out.query + " (" + out.stage +
      (out.stage === "dns" ? ", budget " + out.budget : "") + "): search " + out.took_ms.toFixed(1) +
      " ms, " + Math.round(total) + " ms with the upload");
  } catch (e) {
    setStatus(status, "Search failed: " + e.message, true);
  } finally {
    button.disabled = false;
  }
}

function fmtSeconds(s) { return s + " s"; }

function renderResults(out) {
  const list = $("results");
  list.replaceChildren();
  out.results.forEach((r, i) => {
    const li = document.createElement("li");
    li.className = "card";
    li.setAttribute("aria-label", "Result " + (i + 1) + ": " + r.video_id);
    li.dataset.videoId = r.video_id;

    const img = document.createElement("img");
    img.src = r.thumbnail_url; img.alt = "Thumbnail of " + r.video_id; img.loading = "lazy";

    const body = document.createElement("div");
    body.className = "body";
    const title = document.createElement("div");
    title.className = "title";
    const name = document.createElement("span");
    name.innerHTML = '<span class="rank"></span> ';
    name.querySelector(".rank").textContent = (i + 1) + ".";
    name.append(r.video_id);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = r.score.toFixed(3);
    score.setAttribute("aria-label", "score " + r.score.toFixed(3));
    title.append(name, score);

    const timeline = document.createElement("div");
    timeline.className = "timeline";
    timeline.setAttribute("role", "img");
    const frames = Math.max(r.frames, 1);
    const spans = r.segments.map((s) => fmtSeconds(s.target_start) + "–" + fmtSeconds(s.target_end));
    timeline.setAttribute("aria-label", "Matched segments of " + r.video_id + ": " + (spans.join(", ") || "none"));
    for (const s of r.segments) {
      const seg = document.createElement("span");
      seg.className = "segment";
      seg.style.left = (100 * s.target_start / frames) + "%";
      seg.style.width = (100 * (s.target_end - s.target_start) / frames) + "%";
      seg.title = "query " + s.query_start + "–" + s.query_end + " s matches " + s.target_start + "–" + s.target_end + " s";
      timeline.append(seg);
    }
    const segs = document.createElement("p");
    segs.className = "segs";
    segs.textContent = r.segments.length
      ? r.segments.map((s) => "query " + s.query_start + "–" + s.query_end + " s ↔ " + s.target_start + "–" + s.target_end + " s").join("; ")
      : "no matched segment";
    const compare = document.createElement("button");
    compare.type = "button";
    compare.className = "secondary";
    compare.textContent = "Compare side by side";
    compare.setAttribute("aria-label", "Compare " + r.video_id + " side by side");
    compare.disabled = !r.segments.length;
    compare.addEventListener("click", () => openCompare(r, 0));
    body.append(title, timeline, segs, compare);
    li.append(img, body);
    list.append(li);
  });
}

// -- side by side -------------------------------------------------------------------------------
async function queryVideoUrl() {
  const q = state.lastQuery;
  if (q.url) return q.url;
  const info = await api("/api/videos/" + encodeURIComponent(q.indexed));
  return info.stream_url;
}

function playFrom(video, url, start) {
  return new Promise((resolve) => {
    const seek = () => { video.currentTime = start; video.play().catch(() => {}); resolve(); };
    if (video.dataset.src === url && video.readyState >= 1) { seek(); return; }
    video.dataset.src = url;
    video.addEventListener("loadedmetadata", seek, { once: true });
    video.addEventListener("error", () => resolve(), { once: true });
    video.src = url;
  });
}

async function openCompare(result, k) {
  const section = $("compare");
  section.hidden = false;
  const seg = result.segments[k];
  $("compare-query-caption").textContent = "query " + state.lastQuery.name + " from " + seg.query_start + " s";
  $("compare-result-caption").textContent = result.video_id + " from " + seg.target_start + " s (score " + result.score.toFixed(3) + ")";
  const buttons = $("compare-segments");
  buttons.replaceChildren();
  result.segments.forEach((s, j) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = j === k ? "" : "secondary";
    b.textContent = "Segment " + (j + 1) + ": query " + s.query_start + "–" + s.query_end + " s ↔ " + s.target_start + "–" + s.target_end + " s";
    b.setAttribute("aria-pressed", String(j === k));
    b.addEventListener("click", () => openCompare(result, j));
    buttons.append(b);
  });
  section.scrollIntoView({ behavior: "smooth", block: "start" });
  await Promise.all([playFrom($("compare-query"), await queryVideoUrl(), seg.query_start),
                     playFrom($("compare-result"), result.stream_url, seg.target_start)]);
  section.dataset.ready = "true";
}

function closeCompare() {
  for (const id of ["compare-query", "compare-result"]) $(id).pause();
  $("compare").hidden = true;
  delete $("compare").dataset.ready;
}

// -- additions ----------------------------------------------------------------------------------
async function addVideo(ev) {
  ev.preventDefault();
  const file = $("add-file").files[0], status = $("add-status"), bar = $("add-progress");
  if (!file) { setStatus(status, "Choose a video file to add.", true); return; }
  const form = new FormData();
  form.append("video", file, file.name);
  if ($("add-id").value.trim()) form.append("video_id", $("add-id").value.trim());
  $("add-button").disabled = true;
  bar.hidden = false; bar.value = 0;
  try {
    const job = await postForm("/api/videos", form, (f) => { bar.value = Math.round(f * 50); setStatus(status, "Uploading " + Math.round(f * 100) + " %"); });
    for (let i = 0; i < 3600; i++) {
      const s = await api("/api/jobs/" + job.job);
      bar.value = 50 + Math.round(50 * s.progress);
      setStatus(status, s.video_id + ": " + s.state + (s.stage && s.stage !== s.state ? " (" + s.stage + ")" : "") + (s.error ? ": " + s.error : ""), s.state === "failed");
      if (s.state === "done") { await loadCollection(); break; }
      if (s.state === "failed") break;
      await new Promise((r) => setTimeout(r, 500));
    }
  } catch (e) {
    setStatus(status, "Addition failed: " + e.message, true);
  } finally {
    $("add-button").disabled = false;
  }
}

// -- start --------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  const tokenInput = $("token");
  tokenInput.value = token();
  tokenInput.addEventListener("change", () => { sessionStorage.setItem("dns-jax-token", tokenInput.value.trim()); loadCollection(); });
  $("token-form").addEventListener("submit", (e) => e.preventDefault());
  setupDrop();
  $("search-form").addEventListener("submit", search);
  $("compare-close").addEventListener("click", closeCompare);
  $("add-form").addEventListener("submit", addVideo);
  loadCollection();
});
