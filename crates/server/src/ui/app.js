// The vibecheck chat: model picker, streaming answers, stop, regenerate, edit-and-resend, side by side.
// Model output is rendered by building DOM nodes from a small markdown subset; it is never parsed as HTML, so
// tags, event handlers and scripts in an answer stay text. Links are kept only for http(s) URLs.
"use strict";

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") n.textContent = v; else n.setAttribute(k, v);
  }
  for (const c of children) n.append(c);
  return n;
};

// ---- markdown (a safe subset) ----
function inline(text) {
  const out = document.createDocumentFragment();
  const re = /(`[^`]+`)|(\*\*[^*]+\*\*)|(\*[^*\s][^*]*\*)|(\[[^\]]+\]\((https?:\/\/[^)\s]+)\))/g;
  let last = 0, m;
  while ((m = re.exec(text))) {
    if (m.index > last) out.append(text.slice(last, m.index));
    const s = m[0];
    if (m[1]) out.append(el("code", { text: s.slice(1, -1) }));
    else if (m[2]) out.append(el("strong", { text: s.slice(2, -2) }));
    else if (m[3]) out.append(el("em", { text: s.slice(1, -1) }));
    else {
      const label = s.slice(1, s.indexOf("]"));
      out.append(el("a", { href: m[5], rel: "noopener noreferrer nofollow", target: "_blank", text: label }));
    }
    last = m.index + s.length;
  }
  if (last < text.length) out.append(text.slice(last));
  return out;
}

function markdown(src) {
  const root = document.createDocumentFragment();
  const lines = src.split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (line.startsWith("```")) {
      const body = [];
      i++;
      while (i < lines.length && !lines[i].startsWith("```")) body.push(lines[i++]);
      i++;
      root.append(el("pre", {}, el("code", { text: body.join("\n") })));
      continue;
    }
    const h = /^(#{1,4})\s+(.*)$/.exec(line);
    if (h) { root.append(el("h" + (h[1].length + 2), {}, inline(h[2]))); i++; continue; }
    if (/^\s*([-*]|\d+\.)\s+/.test(line)) {
      const ordered = /^\s*\d+\./.test(line);
      const list = el(ordered ? "ol" : "ul");
      while (i < lines.length && /^\s*([-*]|\d+\.)\s+/.test(lines[i])) {
        list.append(el("li", {}, inline(lines[i].replace(/^\s*([-*]|\d+\.)\s+/, ""))));
        i++;
      }
      root.append(list);
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && /^\s*\|?\s*:?-+/.test(lines[i + 1])) {
      const cells = (l) => l.trim().replace(/^\||\|$/g, "").split("|").map((c) => c.trim());
      const table = el("table");
      table.append(el("tr", {}, ...cells(line).map((c) => el("th", {}, inline(c)))));
      i += 2;
      while (i < lines.length && lines[i].includes("|")) {
        table.append(el("tr", {}, ...cells(lines[i]).map((c) => el("td", {}, inline(c)))));
        i++;
      }
      root.append(table);
      continue;
    }
    if (line.trim() === "") { i++; continue; }
    const para = [];
    while (i < lines.length && lines[i].trim() !== "" && !lines[i].startsWith("```")) para.push(lines[i++]);
    const p = el("p");
    para.forEach((t, k) => { if (k) p.append(el("br")); p.append(inline(t)); });
    root.append(p);
  }
  return root;
}

// ---- state ----
const saved = JSON.parse(localStorage.getItem("vibecheck.chat") || "null");
let state = saved || { history: [], answers: {} };
let models = [];
let controllers = [];

function save() { localStorage.setItem("vibecheck.chat", JSON.stringify(state)); }

function selectedModels() {
  if (!$("sbs").checked) return [$("model").value].filter(Boolean);
  return [...document.querySelectorAll("#sbs-models input:checked")].map((c) => c.value);
}

async function loadModels() {
  const resp = await fetch("/v1/models");
  models = (await resp.json()).data;
  const groups = new Map();
  for (const m of models) {
    const key = m.run || "models";
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(m);
  }
  const select = $("model");
  select.replaceChildren();
  const picks = $("sbs-models");
  picks.replaceChildren();
  for (const [run, list] of groups) {
    list.sort((a, b) => (a.step ?? 0) - (b.step ?? 0));
    const group = el("optgroup", { label: run });
    for (const m of list) {
      // A checkpoint that cannot answer (incomplete, a layout to convert, failed to load) is listed greyed out,
      // with its reason on hover, never left out.
      const down = m.status && m.status !== "available";
      const label = (m.step != null ? `${m.id} (step ${m.step})` : m.id) + (down ? ` · ${m.status}` : "");
      const option = el("option", { value: m.id, text: label });
      const box = el("input", { type: "checkbox", value: m.id });
      const pick = el("label", {}, box, label);
      if (down) {
        option.disabled = true;
        box.disabled = true;
        option.title = m.reason || m.status;
        pick.title = m.reason || m.status;
        pick.classList.add("unavailable");
      }
      group.append(option);
      picks.append(pick);
    }
    select.append(group);
  }
  const usable = (id) => models.some((m) => m.id === id && (!m.status || m.status === "available"));
  if (state.model && usable(state.model)) select.value = state.model;
  else {
    const first = models.find((m) => !m.status || m.status === "available");
    if (first) select.value = first.id;
  }
}

// ---- rendering ----
function render() {
  const cols = $("columns");
  cols.replaceChildren();
  const ids = Object.keys(state.answers).length ? Object.keys(state.answers) : selectedModels();
  for (const id of ids) {
    const col = el("section", { class: "column", "data-model": id });
    col.append(el("h2", { text: id }));
    state.history.forEach((turn, t) => {
      const user = el("div", { class: "msg user", text: turn });
      const edit = el("button", { type: "button", text: "edit" });
      edit.addEventListener("click", () => editTurn(t));
      const meta = el("div", { class: "meta" }, edit);
      col.append(user, meta);
      const answer = (state.answers[id] || [])[t];
      if (answer !== undefined) {
        const a = el("div", { class: "msg assistant" + (answer.error ? " error" : "") });
        a.append(answer.error ? answer.error : markdown(answer.text));
        if (answer.stats) a.append(el("div", { class: "meta", text: answer.stats }));
        col.append(a);
      }
    });
    cols.append(col);
  }
}

function editTurn(t) {
  $("input").value = state.history[t];
  state.history = state.history.slice(0, t);
  for (const id of Object.keys(state.answers)) state.answers[id] = state.answers[id].slice(0, t);
  save();
  render();
  $("input").focus();
}

// ---- talking to the API ----
function messagesFor(id) {
  const msgs = [];
  const system = $("system").value.trim();
  if (system) msgs.push({ role: "system", content: system });
  state.history.forEach((turn, t) => {
    msgs.push({ role: "user", content: turn });
    const a = (state.answers[id] || [])[t];
    if (a && t < state.history.length - 1) msgs.push({ role: "assistant", content: a.text });
  });
  return msgs;
}

async function stream(id, turn) {
  const controller = new AbortController();
  controllers.push(controller);
  const answers = (state.answers[id] = state.answers[id] || []);
  answers[turn] = { text: "" };
  const body = {
    model: id, messages: messagesFor(id), stream: true, stream_options: { include_usage: true },
    temperature: Number($("temperature").value), top_p: Number($("top_p").value),
    max_tokens: Number($("max_tokens").value),
  };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  const started = performance.now();
  let first = null;
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({}));
      answers[turn] = { text: "", error: (err.error && err.error.message) || `HTTP ${resp.status}` };
      render();
      return;
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", usage = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("");
        if (!data || data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.usage) usage = chunk.usage;
        const piece = chunk.choices && chunk.choices[0] && chunk.choices[0].delta && chunk.choices[0].delta.content;
        if (piece) {
          first = first || performance.now();
          answers[turn].text += piece;
          render();
        }
      }
    }
    const secs = (performance.now() - started) / 1000;
    if (usage) {
      const ttft = first ? ((first - started) / 1000).toFixed(2) : "-";
      answers[turn].stats = `${usage.completion_tokens} tokens · first token ${ttft}s · ${(usage.completion_tokens / secs).toFixed(1)} tok/s`;
    }
  } catch (e) {
    if (e.name !== "AbortError") answers[turn].error = String(e);
    else answers[turn].stats = "stopped";
  }
  save();
  render();
}

async function send(text) {
  const ids = selectedModels();
  if (!ids.length) return;
  state.model = $("model").value;
  if (!state.history.length) state.answers = Object.fromEntries(ids.map((id) => [id, []]));
  state.history.push(text);
  const turn = state.history.length - 1;
  render();
  $("send").disabled = true;
  $("stop").disabled = false;
  await Promise.all(Object.keys(state.answers).map((id) => stream(id, turn)));
  controllers = [];
  $("send").disabled = false;
  $("stop").disabled = true;
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value.trim();
  if (!text) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});
$("stop").addEventListener("click", () => controllers.forEach((c) => c.abort()));
$("regen").addEventListener("click", () => {
  if (!state.history.length) return;
  const last = state.history.pop();
  for (const id of Object.keys(state.answers)) state.answers[id] = state.answers[id].slice(0, state.history.length);
  send(last);
});
$("clear").addEventListener("click", () => { state = { history: [], answers: {}, model: $("model").value }; save(); render(); });
$("sbs").addEventListener("change", () => { $("sbs-models").hidden = !$("sbs").checked; if (!state.history.length) render(); });
$("model").addEventListener("change", () => { if (!state.history.length) render(); });

// Links from the timeline: ?model=ID opens a checkpoint; ?compare=A,B starts side by side with those.
function applyLink() {
  const params = new URLSearchParams(location.search);
  const one = params.get("model");
  const many = (params.get("compare") || "").split(",").filter(Boolean);
  if (!one && !many.length) return;
  state = { history: [], answers: {} };
  if (one && models.some((m) => m.id === one)) { $("model").value = one; state.model = one; }
  if (many.length) {
    $("sbs").checked = true;
    $("sbs-models").hidden = false;
    for (const box of document.querySelectorAll("#sbs-models input")) box.checked = many.includes(box.value);
  }
  save();
}

loadModels().then(applyLink).then(render);
