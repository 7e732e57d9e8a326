// What the browser tests share: the binary, the reference checkpoints, a run folder of tiny checkpoints, a
// `vibecheck watch --serve` child, Chromium, and the pass/fail tally printed as "browser: N passed, M failed".
"use strict";
const { spawn } = require("child_process");
const path = require("path");
const fs = require("fs");
const os = require("os");
const readline = require("readline");
const { chromium } = require("playwright-core");

const root = path.resolve(__dirname, "../..");
const bin = process.env.VIBECHECK_BIN || path.join(root, "target/debug/vibecheck");
const tally = { passed: 0, failed: 0 };

function check(name, ok, detail) {
  if (ok) tally.passed++; else { tally.failed++; console.error(`FAILED: ${name}: ${detail || ""}`); }
}

function referenceDir() {
  if (process.env.VIBECHECK_REFERENCE_DIR) return process.env.VIBECHECK_REFERENCE_DIR;
  for (let dir = root; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const candidate = path.join(dir, "shared/reference");
    if (fs.existsSync(candidate)) return candidate;
  }
  throw new Error("shared/reference not found; set VIBECHECK_REFERENCE_DIR");
}

/// A temporary folder with `tiny-run/checkpoint-<step>` for each step and `suite.toml`; returns [tmp, run, suite].
function tinyRun(steps, suiteToml) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "vibecheck-browser-"));
  const run = path.join(tmp, "tiny-run");
  for (const step of steps) {
    const dest = path.join(run, `checkpoint-${step}`);
    fs.mkdirSync(dest, { recursive: true });
    for (const f of fs.readdirSync(path.join(referenceDir(), "tiny/llama"))) {
      fs.copyFileSync(path.join(referenceDir(), "tiny/llama", f), path.join(dest, f));
    }
  }
  const suite = path.join(tmp, "suite.toml");
  fs.writeFileSync(suite, suiteToml);
  return [tmp, run, suite];
}

/// Starts a process that prints its URL as the first line of stdout; resolves to [child, url].
async function startPrinting(args) {
  const child = spawn(bin, args, { stdio: ["ignore", "pipe", "inherit"] });
  const url = await new Promise((resolve) => readline.createInterface({ input: child.stdout }).once("line", resolve));
  return [child, url];
}

/// `vibecheck watch RUN --serve` on a store in `tmp`; resolves to [child, base URL (localhost, no slash)].
async function watchAndServe(tmp, run, suite) {
  const [child, url] = await startPrinting(["watch", run, "--prompts", suite, "--db", path.join(tmp, "v.db"), "--once",
                                            "--serve", "--port", "0", "--poll", "0.2"]);
  return [child, url.replace(/\/$/, "").replace("127.0.0.1", "localhost")];
}

function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
}

function finish() {
  console.log(`browser: ${tally.passed} passed, ${tally.failed} failed`);
  process.exit(tally.failed ? 1 : 0);
}

module.exports = { root, check, tinyRun, startPrinting, watchAndServe, launch, finish };
