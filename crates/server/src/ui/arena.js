// The blind arena: start a battle, stream both anonymous answers side by side, vote, then see the names.
"use strict";
const $ = (id) => document.getElementById(id);
let battle = null;
let prompt = "";

async function loadRuns() {
  const resp = await fetch("/v1/models");
  const runs = new Set(((await resp.json()).data || []).map((m) => m.run).filter(Boolean));
  for (const run of runs) {
    const o = document.createElement("option");
    o.value = run;
    o.textContent = run;
    $("arena-run").append(o);
  }
  if (runs.size === 1) $("arena-run").value = [...runs][0];
}

async function streamSide(id, side, target) {
  const resp = await fetch(`/api/arena/battles/${id}/${side}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    // No max_tokens: the server's default (256, less when the model's context is short).
    body: JSON.stringify({ messages: [{ role: "user", content: prompt }], temperature: 0.7, top_p: 0.95 }),
  });
  if (!resp.ok) {
    const err = await resp.json().catch(() => ({}));
    target.textContent = (err.error && err.error.message) || `failed (${resp.status})`;
    return;
  }
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    const lines = buffer.split("\n");
    buffer = lines.pop();
    for (const line of lines) {
      if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
      const chunk = JSON.parse(line.slice(6));
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      // Model output is only ever text.
      if (delta && delta.content) target.textContent += delta.content;
    }
  }
}

async function start() {
  prompt = $("arena-prompt").value.trim();
  if (!prompt) { $("arena-status").textContent = "type a prompt or draw one"; return; }
  $("arena-a").textContent = "";
  $("arena-b").textContent = "";
  $("arena-reveal").hidden = true;
  $("arena-votes").hidden = true;
  const run = $("arena-run").value;
  const resp = await fetch("/api/arena/battles", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(run ? { run } : {}),
  });
  const body = await resp.json();
  if (!resp.ok) { $("arena-status").textContent = body.error.message; return; }
  battle = body.id;
  $("arena-status").textContent = "both answering…";
  $("arena-go").disabled = true;
  await Promise.all([streamSide(battle, "a", $("arena-a")), streamSide(battle, "b", $("arena-b"))]);
  $("arena-status").textContent = "which is better?";
  $("arena-votes").hidden = false;
  $("arena-go").disabled = false;
}

async function vote(winner) {
  const resp = await fetch(`/api/arena/battles/${battle}/vote`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ winner, prompt }),
  });
  const body = await resp.json();
  $("arena-votes").hidden = true;
  const reveal = $("arena-reveal");
  reveal.hidden = false;
  reveal.textContent = resp.ok
    ? `Model A was ${body.model_a}; Model B was ${body.model_b}. Your vote: ${winner}.`
    : body.error.message;
  $("arena-status").textContent = "";
}

$("arena-go").addEventListener("click", start);
$("arena-draw").addEventListener("click", async () => {
  const run = $("arena-run").value;
  const resp = await fetch("/api/arena/prompt" + (run ? `?run=${encodeURIComponent(run)}` : ""));
  const body = await resp.json();
  if (resp.ok) $("arena-prompt").value = body.prompt; else $("arena-status").textContent = body.error.message;
});
for (const b of document.querySelectorAll("#arena-votes button")) b.addEventListener("click", () => vote(b.dataset.vote));
loadRuns();
