// kerbside fleet page: renders /api/fleet (table, map, heatmap) and /api/fleet/node (detail).
// Plain browser JavaScript, no build step, nothing loaded from elsewhere. Every value from the
// registry or a node goes into the page as text (textContent, attributes), never as markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 60000;
const state = { doc: null, selected: null, timer: null };

function el(tag, attrs, ...children) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.setAttribute("class", v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function ago(t, now) {
  if (t === null || t === undefined) return "—";
  const s = Math.max(0, Math.round(now - t));
  if (s < 120) return s + " s ago";
  if (s < 7200) return Math.floor(s / 60) + " min ago";
  if (s < 172800) return Math.floor(s / 3600) + " h ago";
  return Math.floor(s / 86400) + " d ago";
}

function when(t) {
  return t === null || t === undefined ? "" : new Date(t * 1000).toLocaleString();
}

function pct(x) {
  return x === null || x === undefined ? "—" : Math.round(x * 100) + " %";
}

// capture 0..1 -> red..amber..green; null -> grey
function captureColour(c) {
  if (c === null || c === undefined) return "#eeeeee";
  const hue = Math.round(Math.max(0, Math.min(1, c)) * 120);
  return "hsl(" + hue + ", 62%, " + (c >= 0.999 ? 38 : 48) + "%)";
}

function dotClass(n) {
  if (n.state !== "online") return n.state;
  return n.problems.length ? "problem" : "online";
}

function params() {
  const q = new URLSearchParams(location.search);
  const out = new URLSearchParams();
  for (const k of ["offline", "problems", "zone", "sort", "desc"]) if (q.get(k)) out.set(k, q.get(k));
  return out;
}

async function getJSON(url) {
  const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (!r.ok) throw new Error(url + ": HTTP " + r.status);
  return r.json();
}

async function load() {
  const t0 = performance.now();
  let doc;
  try {
    doc = await getJSON("/api/fleet?" + params().toString());
  } catch (e) {
    document.getElementById("summary").textContent = "cannot load the fleet: " + e.message;
    return;
  }
  const t1 = performance.now();
  state.doc = doc;
  render(doc);
  const hash = new URLSearchParams(location.hash.slice(1));
  const wanted = hash.get("node") || state.selected;
  if (wanted && doc.nodes.some((n) => n.id === wanted)) await showNode(wanted);
  const t2 = performance.now();
  window.kerbsideFleet = { fetch_ms: t1 - t0, render_ms: t2 - t1, ready_ms: t2, nodes: doc.nodes.length,
                           window: [doc.window.start, doc.window.end] };  // for tests and benchmarks
  document.body.dataset.ready = String((Number(document.body.dataset.ready) || 0) + 1);
  clearTimeout(state.timer);
  state.timer = setTimeout(load, REFRESH_MS);
}

function render(doc) {
  const s = doc.summary;
  document.getElementById("summary").textContent =
    s.nodes + " nodes: " + s.online + " online, " + s.offline + " offline, " + s.unseen + " never seen; " +
    s.problems + " with problems" + (doc.current.fw ? " · newest firmware " + doc.current.fw : "");
  const warn = document.getElementById("warning");
  warn.hidden = doc.influx.ok;
  warn.textContent = doc.influx.ok ? "" : "InfluxDB did not answer: no readings, capture or gaps shown (" + doc.influx.error + ")";
  document.getElementById("updated").textContent = "updated " + new Date(doc.generated * 1000).toLocaleTimeString();
  renderFilters(doc);
  renderTable(doc);
  renderMap(doc);
  renderHeatmap(doc);
}

function renderFilters(doc) {
  const form = document.getElementById("filters");
  const q = params();
  form.offline.checked = q.get("offline") === "1";
  form.problems.checked = q.get("problems") === "1";
  const sel = form.zone;
  const zones = new Set([...sel.options].map((o) => o.value));
  for (const n of doc.nodes) if (n.zone && !zones.has(n.zone)) { zones.add(n.zone); sel.append(el("option", { value: n.zone }, n.zone)); }
  sel.value = q.get("zone") || "";
}

function setQuery(mutate) {
  const q = params();
  mutate(q);
  history.replaceState(null, "", "?" + q.toString() + location.hash);
  load();
}

function renderTable(doc) {
  const q = params();
  const sort = q.get("sort") || "problems";
  for (const th of document.querySelectorAll("#nodes th")) {
    th.classList.toggle("sorted", th.dataset.sort === sort);
    th.classList.toggle("desc", th.dataset.sort === sort && q.get("desc") === "1");
  }
  const body = el("tbody");
  for (const n of doc.nodes) {
    const since = n.since ? " since " + ago(n.since, doc.generated).replace(" ago", "") : "";
    const problems = n.problems.length ? el("ul", {}, ...n.problems.map((p) => el("li", { "data-code": p.code }, p.text))) : "";
    const tr = el("tr", { "data-id": n.id, "data-state": n.state, class: n.id === state.selected ? "selected" : null,
                          onclick: () => showNode(n.id) },
      el("td", {}, n.id), el("td", {}, n.kit), el("td", {}, n.site), el("td", {}, n.zone),
      el("td", { title: when(n.since) }, el("span", { class: "state " + n.state }, n.state), since),
      el("td", { title: when(n.last_reading) }, ago(n.last_reading, doc.generated)),
      el("td", { class: n.fw_current ? null : "flag" }, n.fw ?? "—"),
      el("td", { class: n.config_current ? "num" : "num flag" }, n.config ?? "—"),
      el("td", { class: "num" }, n.rssi === null ? "—" : n.rssi + " dBm"),
      el("td", { class: n.buffered >= 10 ? "num flag" : "num" }, n.buffered ?? "—"),
      el("td", { class: n.dropped > 0 ? "num flag" : "num" }, n.dropped ?? "—"),
      el("td", { class: n.capture !== undefined && n.capture < 0.75 ? "num flag" : "num" }, pct(n.capture)),
      el("td", { class: n.gaps_open ? "num flag" : "num", title: n.missing ? n.missing + " readings missing" : null },
         n.gaps_open ?? "—"),
      el("td", { class: "problems" }, problems));
    body.append(tr);
  }
  document.querySelector("#nodes tbody").replaceWith(body);
}

function renderMap(doc) {
  const svg = document.getElementById("map");
  svg.replaceChildren();
  const placed = doc.nodes.filter((n) => typeof n.lat === "number" && typeof n.lon === "number");
  document.getElementById("unplaced").textContent =
    placed.length < doc.nodes.length ? (doc.nodes.length - placed.length) + " nodes have no position in the registry" : "";
  if (!placed.length) return;
  let [lat0, lat1, lon0, lon1] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const n of placed) { lat0 = Math.min(lat0, n.lat); lat1 = Math.max(lat1, n.lat); lon0 = Math.min(lon0, n.lon); lon1 = Math.max(lon1, n.lon); }
  const k = Math.cos(((lat0 + lat1) / 2) * Math.PI / 180);  // equirectangular: a degree of longitude is shorter
  const w = Math.max((lon1 - lon0) * k, 1e-4), h = Math.max(lat1 - lat0, 1e-4);
  const W = 1000, H = Math.max(200, Math.min(1000, Math.round(W * h / w))), pad = 20;
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  const r = placed.length > 300 ? 4 : placed.length > 50 ? 7 : 11;
  // problems drawn last, on top
  const order = [...placed].sort((a, b) => (a.state === "online" && !a.problems.length ? 0 : 1) - (b.state === "online" && !b.problems.length ? 0 : 1));
  for (const n of order) {
    const x = pad + ((n.lon - lon0) * k / w) * (W - 2 * pad);
    const y = pad + ((lat1 - n.lat) / h) * (H - 2 * pad);
    const c = el("svg:circle", { cx: x.toFixed(1), cy: y.toFixed(1), r, class: dotClass(n) + (n.id === state.selected ? " selected" : ""),
                                 "data-id": n.id, "data-state": n.state, onclick: () => showNode(n.id) },
                 el("svg:title", {}, n.id + " · " + n.site + " · " + n.state + (n.problems.length ? " · " + n.problems.map((p) => p.text).join("; ") : "")));
    svg.append(c);
  }
}

function renderHeatmap(doc) {
  const svg = document.getElementById("heatmap");
  svg.replaceChildren();
  const hours = doc.window.hours, label = 150, cw = 22, ch = 12, top = 16;
  const rows = doc.nodes.filter((n) => n.hourly);
  svg.setAttribute("width", label + hours.length * cw);
  svg.setAttribute("height", top + rows.length * ch);
  hours.forEach((t, j) => {
    const d = new Date(t * 1000);
    if (j % 3 === 0) svg.append(el("svg:text", { x: label + j * cw + 2, y: 11 }, String(d.getHours()).padStart(2, "0") + "h"));
  });
  const frag = document.createDocumentFragment();
  rows.forEach((n, i) => {
    const y = top + i * ch;
    frag.append(el("svg:text", { x: 0, y: y + 10 }, (n.site || n.id).slice(0, 24)));
    hours.forEach((t, j) => {
      const count = n.hourly.n[j], cap = n.hourly.capture[j];
      frag.append(el("svg:rect", { class: "cell", x: label + j * cw, y, width: cw, height: ch,
                                   fill: count ? captureColour(cap) : captureColour(null),
                                   "data-id": n.id, "data-hour": t, "data-n": count, "data-capture": cap }));
    });
  });
  svg.append(frag);
  svg.onmousemove = (ev) => {
    const c = ev.target.dataset;
    if (c && c.hour) {
      document.getElementById("heat-tip").textContent = c.id + ", " + new Date(c.hour * 1000).toLocaleString() + ": " +
        c.n + " readings, capture " + pct(Number(c.capture));
    }
  };
  for (const s of document.querySelectorAll(".swatch[data-c]")) s.style.background = captureColour(Number(s.dataset.c));
}

function sparkline(name, unit, values, times, bars) {
  const W = 260, H = 28, n = values.length;
  const nums = values.filter((v) => v !== null && v !== undefined);
  const svg = el("svg:svg", { viewBox: "0 0 " + W + " " + H, "data-channel": name });
  if (nums.length) {
    const lo = bars ? 0 : Math.min(...nums), hi = bars ? Math.max(1, ...nums) : Math.max(...nums);
    const span = hi - lo || 1;
    if (bars) {
      values.forEach((v, i) => {
        if (v === null) return;
        const h = Math.max(1, (v - lo) / span * (H - 2));
        svg.append(el("svg:rect", { x: (i * W / n).toFixed(1), y: (H - h).toFixed(1), width: Math.max(1, W / n - 1).toFixed(1), height: h.toFixed(1) }));
      });
    } else {
      let pts = [];
      const flush = () => { if (pts.length) svg.append(el("svg:polyline", { points: pts.join(" ") })); pts = []; };
      values.forEach((v, i) => {
        if (v === null) { flush(); return; }
        pts.push((i * W / (n - 1 || 1)).toFixed(1) + "," + (H - 2 - (v - lo) / span * (H - 4)).toFixed(1));
      });
      flush();
    }
  }
  const last = nums.length ? nums[nums.length - 1] : null;
  return el("div", { class: "spark" }, el("span", { class: "name" }, name), svg,
            el("span", { class: "last" }, last === null ? "no data" : (bars ? pct(last) : last + " " + unit)));
}

const UNITS = { pm25: "µg/m³", no2: "µg/m³", temp: "°C", vehicles: "/15 min", speed: "km/h" };

async function showNode(id) {
  state.selected = id;
  history.replaceState(null, "", location.search + "#node=" + encodeURIComponent(id));
  for (const e of document.querySelectorAll("[data-id].selected")) e.classList.remove("selected");
  for (const e of document.querySelectorAll('tr[data-id], circle[data-id]')) if (e.dataset.id === id) e.classList.add("selected");
  let d;
  try {
    d = await getJSON("/api/fleet/node?id=" + encodeURIComponent(id));
  } catch (e) {
    return;
  }
  const n = d.node, now = d.generated;
  const box = document.getElementById("detail");
  box.hidden = false;
  box.dataset.id = n.id;
  document.getElementById("detail-title").textContent = n.id + " — " + n.site;
  const facts = [["kit", n.kit], ["zone", n.zone || "—"], ["state", n.state + (n.since ? " since " + when(n.since) : "")],
    ["last reading", n.last_reading ? ago(n.last_reading, now) + " (" + when(n.last_reading) + ")" : "—"],
    ["firmware", (n.fw ?? "—") + (n.fw_current ? "" : " (behind)")], ["config", n.config ?? "—"],
    ["RSSI", n.rssi === null ? "—" : n.rssi + " dBm"], ["free heap", n.heap ?? "—"],
    ["buffered / dropped", (n.buffered ?? "—") + " / " + (n.dropped ?? "—")], ["boot", n.boot ?? "—"],
    ["clock", n.synced === null ? "—" : n.synced ? "synced" : "not synced"],
    ["health", Object.entries(n.health).map(([k, v]) => k + " " + v).join(", ") || "—"],
    ["capture 24 h", pct(n.capture)], ["open gaps", (n.gaps_open ?? "—") + (n.missing ? " (" + n.missing + " readings missing)" : "")]];
  document.getElementById("detail-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  document.getElementById("detail-problems").replaceChildren(...n.problems.map((p) => el("li", { "data-code": p.code }, p.text)));
  const sparks = document.getElementById("sparks");
  sparks.replaceChildren();
  if (d.series) {
    for (const ch of d.channels) sparks.append(sparkline(ch, UNITS[ch] || "", d.series[ch], d.series.t, false));
    const per = 900 / (state.doc ? state.doc.period : 60);
    sparks.append(sparkline("capture", "", d.series.cap.map((c) => (c === null ? null : Math.min(1, c / per))), d.series.t, true));
  } else {
    sparks.append(el("p", { class: "warning" }, "InfluxDB did not answer: " + d.influx.error));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("filters");
  form.addEventListener("change", () => setQuery((q) => {
    for (const k of ["offline", "problems"]) form[k].checked ? q.set(k, "1") : q.delete(k);
    form.zone.value ? q.set("zone", form.zone.value) : q.delete("zone");
  }));
  for (const th of document.querySelectorAll("#nodes th")) {
    th.addEventListener("click", () => setQuery((q) => {
      const same = (q.get("sort") || "problems") === th.dataset.sort;
      q.set("sort", th.dataset.sort);
      same && q.get("desc") !== "1" ? q.set("desc", "1") : q.delete("desc");
    }));
  }
  load();
});
