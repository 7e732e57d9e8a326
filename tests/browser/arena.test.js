// The blind arena in headless Chromium: `vibecheck watch RUN --serve` on a run of two tiny checkpoints; draw a
// prompt from the suite, both anonymous answers stream, no checkpoint name is on the page before the vote, the
// vote reveals them, and the leaderboard lists both. Prints "browser: N passed, M failed"; saves
// .cache/artifacts/arena.png.
"use strict";
const { spawn } = require("child_process");
const path = require("path");
const fs = require("fs");
const os = require("os");
const readline = require("readline");
const { chromium } = require("playwright-core");

const root = path.resolve(__dirname, "../..");
const bin = process.env.VIBECHECK_BIN || path.join(root, "target/debug/vibecheck");
let passed = 0, failed = 0;

function check(name, ok, detail) {
  if (ok) passed++; else { failed++; console.error(`FAILED: ${name}: ${detail || ""}`); }
}

function referenceDir() {
  if (process.env.VIBECHECK_REFERENCE_DIR) return process.env.VIBECHECK_REFERENCE_DIR;
  for (let dir = root; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const candidate = path.join(dir, "shared/reference");
    if (fs.existsSync(candidate)) return candidate;
  }
  throw new Error("shared/reference not found; set VIBECHECK_REFERENCE_DIR");
}

(async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "vibecheck-arena-"));
  const run = path.join(tmp, "tiny-run");
  for (const step of [10, 20]) {
    const dest = path.join(run, `checkpoint-${step}`);
    fs.mkdirSync(dest, { recursive: true });
    for (const f of fs.readdirSync(path.join(referenceDir(), "tiny/llama"))) {
      fs.copyFileSync(path.join(referenceDir(), "tiny/llama", f), path.join(dest, f));
    }
  }
  const suite = path.join(tmp, "suite.toml");
  fs.writeFileSync(suite, '[defaults]\nmax_tokens = 4\n[[prompts]]\nid = "hello"\nprompt = "Say hello"\n');
  const server = spawn(bin, ["watch", run, "--prompts", suite, "--db", path.join(tmp, "v.db"), "--once", "--serve",
                             "--port", "0", "--poll", "0.2"], { stdio: ["ignore", "pipe", "inherit"] });
  const url = await new Promise((resolve) => readline.createInterface({ input: server.stdout }).once("line", resolve));
  const base = url.replace(/\/$/, "").replace("127.0.0.1", "localhost");
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    let dialogs = 0;
    page.on("dialog", (d) => { dialogs++; d.dismiss(); });
    // Wait until the watcher has stored the suite's answers (the prompt draw needs them).
    for (let i = 0; i < 100; i++) {
      const r = await page.request.get(base + "/api/arena/prompt?run=tiny-run");
      if (r.ok()) break;
      await page.waitForTimeout(200);
    }
    await page.goto(base + "/arena");
    await page.waitForSelector("#arena-run option[value='tiny-run']", { state: "attached" });
    await page.selectOption("#arena-run", "tiny-run");
    await page.click("#arena-draw");
    await page.waitForFunction(() => document.querySelector("#arena-prompt").value === "Say hello");
    check("prompt drawn from the suite", true);
    await page.click("#arena-go");
    await page.waitForSelector("#arena-votes:not([hidden])", { timeout: 60000 });
    const a = await page.textContent("#arena-a");
    const b = await page.textContent("#arena-b");
    check("both answers streamed", a.length > 0 && b.length > 0 && !a.includes("context holds") && !b.includes("context holds"),
          JSON.stringify([a, b]));
    const before = await page.textContent("body");
    check("no model name before the vote", !before.includes("checkpoint-"), before.slice(0, 300));
    await page.click("#arena-votes button[data-vote='a']");
    await page.waitForSelector("#arena-reveal:not([hidden])");
    const reveal = await page.textContent("#arena-reveal");
    check("the vote reveals both names", reveal.includes("tiny-run/checkpoint-10") && reveal.includes("tiny-run/checkpoint-20"), reveal);
    await page.screenshot({ path: path.join(root, ".cache/artifacts/arena.png"), fullPage: true });
    await page.goto(base + "/arena/leaderboard");
    const rows = await page.$$eval("#leaderboard tr", (n) => n.map((r) => r.textContent));
    check("leaderboard lists both models", rows.length === 3 && rows.some((r) => r.includes("checkpoint-10")) &&
          rows.some((r) => r.includes("checkpoint-20")), JSON.stringify(rows));
    check("no script ran", dialogs === 0, `${dialogs}`);
  } catch (e) {
    check("arena flow", false, e.message);
  } finally {
    await browser.close();
    server.kill("SIGTERM");
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  console.log(`browser: ${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
})();
