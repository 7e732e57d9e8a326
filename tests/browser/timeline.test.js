// The watch timeline in headless Chromium: `vibecheck watch RUN --serve` on a run of two tiny checkpoints; the run
// page's heat map, a prompt page with its answers, a note added through the form, and the links into the chat
// (one checkpoint, and side by side with the previous one). Prints "browser: N passed, M failed" and saves
// .cache/artifacts/timeline.png.
"use strict";
const fs = require("fs");
const path = require("path");
const { root, check, tinyRun, watchAndServe, launch, finish } = require("./support");

(async () => {
  const [tmp, run, suite] = tinyRun([10, 20], '[defaults]\nmax_tokens = 8\n[[prompts]]\nid = "games"\nprompt = "Suggest games"\n' +
                          '[[prompts]]\nid = "poem"\nprompt = "A short poem"\n');
  const [server, base] = await watchAndServe(tmp, run, suite);
  const browser = await launch();
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    await page.goto(base + "/runs");
    // The watcher fills the store while the page is open: reload until both checkpoints have answers.
    let columns = 0;
    for (let i = 0; i < 100 && columns < 2; i++) {
      await page.goto(base + "/runs/tiny-run").catch(() => {});
      columns = await page.$$eval("table.heat thead th[title]", (n) => n.length).catch(() => 0);
      if (columns < 2) await page.waitForTimeout(200);
    }
    check("run page shows both checkpoints", columns === 2, `${columns} columns`);
    const cells = await page.$$eval("table.heat tbody td a", (n) => n.map((a) => a.textContent));
    check("heat map cells: first answer, then a change score", cells.length === 4 && cells.includes("○") &&
          cells.includes("0.00"), JSON.stringify(cells));
    check("length lines drawn", (await page.$$("svg.spark polyline")).length === 2);
    await page.screenshot({ path: path.join(root, ".cache/artifacts/timeline.png"), fullPage: true });

    await page.click("th.prompt a >> text=games");
    await page.waitForSelector("section.answer");
    check("prompt page: one section per checkpoint", (await page.$$("section.answer")).length === 2);
    await page.fill("section.answer >> nth=1 >> input[name=text]", "first time it answers in English");
    await page.fill("section.answer >> nth=1 >> input[name=tag]", "milestone");
    await Promise.all([page.waitForNavigation(), page.click("section.answer >> nth=1 >> button")]);
    const notes = await page.$$eval(".note", (n) => n.map((x) => x.textContent));
    check("note saved and shown", notes.some((t) => t.includes("milestone") && t.includes("first time it answers")),
          JSON.stringify(notes));

    await page.click("section.answer >> nth=1 >> text=side by side with the previous");
    await page.waitForSelector("#sbs-models input", { state: "attached" });
    await page.waitForFunction(() => document.querySelectorAll("#sbs-models input:checked").length === 2);
    const picked = await page.$$eval("#sbs-models input:checked", (n) => n.map((x) => x.value));
    check("side by side opened with both checkpoints", picked.join(",") === "tiny-run/checkpoint-10,tiny-run/checkpoint-20",
          picked.join(","));
    await page.goto(base + "/runs/tiny-run/prompts/poem");
    await page.click("section.answer >> nth=0 >> text=chat with this checkpoint");
    await page.waitForFunction(() => document.querySelector("#model").value === "tiny-run/checkpoint-10");
    check("chat opened on the checkpoint", true);
  } catch (e) {
    check("timeline flow", false, e.message);
  } finally {
    await browser.close();
    server.kill("SIGTERM");
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  finish();
})();
