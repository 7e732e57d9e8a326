// The web UI in headless Chromium against `vibecheck serve` of the real model: a streamed chat reply, a
// side-by-side comparison, and model output carrying <img onerror> and <script> that must stay inert text.
// Prints "browser: N passed, M failed" and saves a screenshot to .cache/artifacts/ui.png.
"use strict";
const { spawn } = require("child_process");
const path = require("path");
const fs = require("fs");
const readline = require("readline");
const { chromium } = require("playwright-core");

const root = path.resolve(__dirname, "../..");
const bin = process.env.VIBECHECK_BIN || path.join(root, "target/debug/vibecheck");
const cache = process.env.VIBECHECK_MODEL_CACHE || path.join(root, ".cache/models");
const gguf = path.join(cache, "SmolLM2-135M-Instruct.Q4_1.gguf");
let passed = 0, failed = 0;

function check(name, ok, detail) {
  if (ok) passed++; else { failed++; console.error(`FAILED: ${name}: ${detail || ""}`); }
}

(async () => {
  // Two sources, so side by side has two columns: the GGUF and the same file under another name.
  const copy = path.join(cache, "browser-copy.gguf");
  if (!fs.existsSync(copy)) fs.copyFileSync(gguf, copy);
  const server = spawn(bin, ["serve", gguf, copy, "--port", "0"], { stdio: ["ignore", "pipe", "inherit"] });
  const url = await new Promise((resolve) => readline.createInterface({ input: server.stdout }).once("line", resolve));
  const base = url.replace(/\/v1$/, "").replace("127.0.0.1", "localhost");
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    let dialogs = 0;
    page.on("dialog", (d) => { dialogs++; d.dismiss(); });
    const resp = await page.goto(base + "/");
    check("CSP header", (resp.headers()["content-security-policy"] || "").includes("script-src 'self'"));
    await page.waitForSelector("#model option", { state: "attached" });

    await page.fill("#input", "What is the capital of France?");
    await page.click("#send");
    await page.waitForFunction(() => [...document.querySelectorAll(".msg.assistant")].some((n) => n.textContent.includes("Paris")),
                               null, { timeout: 60000 });
    check("streamed reply", true);

    await page.check("#sbs");
    for (const box of await page.$$("#sbs-models input")) await box.check();
    await page.click("#clear");
    await page.fill("#input", "Repeat exactly: <img src=x onerror=alert(1)> <script>alert(2)</script>");
    await page.click("#send");
    await page.waitForFunction(() => document.querySelectorAll(".column").length === 2 &&
                               document.querySelectorAll(".msg.assistant .meta").length === 2, null, { timeout: 120000 });
    check("side by side: two columns answered", true);
    // Whatever the model wrote, nothing it wrote became markup.
    const live = await page.$$eval(".msg img, .msg script, .msg iframe, .msg [onerror]", (n) => n.length);
    check("no element from model output", live === 0, `${live} elements`);
    check("no script ran", dialogs === 0, `${dialogs} dialogs`);
    const shown = await page.$$eval(".msg.assistant", (n) => n.map((x) => x.textContent).join(" "));
    check("markup shown as text", shown.includes("<script>"), shown.slice(0, 200));
    fs.mkdirSync(path.join(root, ".cache/artifacts"), { recursive: true });
    await page.screenshot({ path: path.join(root, ".cache/artifacts/ui.png") });
  } catch (e) {
    check("browser flow", false, e.message);
  } finally {
    await browser.close();
    server.kill("SIGTERM");
  }
  console.log(`browser: ${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
})();
