//! A launched engine: the child process in a process group of its own, its log relayed line by line with the
//! engine's name in front (and the last lines kept for error messages), readiness in three steps (the health
//! route, `/v1/models` naming the served model, then a one-token generation), and a stop that reaches every
//! process of the group: SIGTERM, then SIGKILL after the grace period. On Linux the engine also gets SIGTERM if
//! vibecheck itself dies without stopping it, so it is never left running alone.

use std::collections::VecDeque;
use std::io::BufRead;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::json;
use vibecheck_client::{Client, Timeouts};

use crate::launch::{CommandLine, EngineKind, LaunchSpec};
use crate::EngineError;

/// Lines of the engine's log kept for error messages.
const KEPT_LINES: usize = 200;

/// Where the engine's log lines go besides the ones kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    /// To our stderr, each line as `[engine] line`.
    Stderr,
    /// Only kept (for errors and [`Engine::last_lines`]).
    Quiet,
}

/// What the engine is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineState {
    Running,
    /// It exited (on its own, or killed): how, and its last log lines.
    Exited {
        status: String,
        last_lines: String,
    },
    /// vibecheck stopped it.
    Stopped,
}

/// A running engine, stopped when dropped.
pub struct Engine {
    pub kind: EngineKind,
    pub served_name: String,
    /// `http://127.0.0.1:PORT` (the OpenAI routes are under `/v1`).
    pub root_url: String,
    pub command: CommandLine,
    api_key: String,
    pid: u32,
    child: Mutex<Option<Child>>,
    exit: Mutex<Option<String>>,
    stopped: std::sync::atomic::AtomicBool,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("kind", &self.kind)
            .field("served_name", &self.served_name)
            .field("root_url", &self.root_url)
            .field("pid", &self.pid)
            .finish()
    }
}

impl Engine {
    /// Starts the engine of `spec` (whose port and key must be set) and waits until it answers, at most `ready`.
    pub fn start(spec: &LaunchSpec, relay: Relay, ready: Duration) -> Result<Self, EngineError> {
        let command = spec.command()?;
        let engine = Self::spawn(spec, command, relay)?;
        engine.wait_ready(ready)?;
        Ok(engine)
    }

    fn spawn(spec: &LaunchSpec, command: CommandLine, relay: Relay) -> Result<Self, EngineError> {
        let name = spec.kind.name();
        let mut cmd = std::process::Command::new(&command.program);
        cmd.args(&command.args)
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        {
            use std::os::unix::process::CommandExt;
            // A group of its own, so that a stop reaches the workers it starts (vLLM's and SGLang's schedulers
            // and GPU workers) and a Ctrl-C at our terminal is ours to handle.
            cmd.process_group(0);
            #[cfg(target_os = "linux")]
            // SAFETY: prctl is async-signal-safe; the closure touches nothing else between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
        }
        let mut child = spawn_kept(cmd).map_err(|e| {
            EngineError::Config(format!(
                "could not start {name} ({}): {e}; install it, or give its path with --engine-bin",
                command.program
            ))
        })?;
        let pid = child.id();
        tracing::info!(
            engine = name,
            pid,
            "started: {}",
            command.shell(&spec.api_key)
        );
        let log: Arc<Mutex<VecDeque<String>>> = Default::default();
        let out = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        let err = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        for stream in [out, err].into_iter().flatten() {
            let log = log.clone();
            let prefix = name.to_string();
            std::thread::Builder::new()
                .name(format!("{name}-log"))
                .spawn(move || {
                    let reader = std::io::BufReader::new(stream);
                    for line in reader.split(b'\n') {
                        let Ok(line) = line else { break };
                        let line = String::from_utf8_lossy(&line).trim_end().to_string();
                        if relay == Relay::Stderr {
                            eprintln!("[{prefix}] {line}");
                        }
                        let mut kept = log.lock();
                        if kept.len() == KEPT_LINES {
                            kept.pop_front();
                        }
                        kept.push_back(line);
                    }
                })
                .map_err(|e| EngineError::Config(format!("could not start a log thread: {e}")))?;
        }
        Ok(Self {
            kind: spec.kind,
            served_name: spec.served_name.clone(),
            root_url: format!("http://{}:{}", spec.host, spec.port),
            command,
            api_key: spec.api_key.clone(),
            pid,
            child: Mutex::new(Some(child)),
            exit: Mutex::new(None),
            stopped: Default::default(),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// The OpenAI base URL (`…/v1`).
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.root_url)
    }

    /// A client for the engine's OpenAI routes (with its key).
    pub fn client(&self) -> Client {
        Client::new(&self.base_url(), Some(self.api_key.clone()))
    }

    /// A client for the engine's own routes (health, metrics, weight swaps), at the root.
    pub fn root_client(&self) -> Client {
        Client::new(&self.root_url, Some(self.api_key.clone()))
    }

    /// The last `n` lines the engine wrote, one per line.
    pub fn last_lines(&self, n: usize) -> String {
        let log = self.log.lock();
        let skip = log.len().saturating_sub(n);
        log.iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Whether it still runs (reaping it when it has exited).
    pub fn state(&self) -> EngineState {
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return EngineState::Stopped;
        }
        if let Some(status) = self.exit.lock().clone() {
            return EngineState::Exited {
                status,
                last_lines: self.last_lines(5),
            };
        }
        let mut child = self.child.lock();
        let Some(c) = child.as_mut() else {
            return EngineState::Stopped;
        };
        match c.try_wait() {
            Ok(None) => EngineState::Running,
            Ok(Some(status)) => {
                let status = describe_exit(status);
                tracing::error!(
                    engine = self.kind.name(),
                    pid = self.pid,
                    "the engine exited ({status})"
                );
                *self.exit.lock() = Some(status.clone());
                // Whatever it started goes with it.
                kill_group(self.pid, libc::SIGKILL);
                EngineState::Exited {
                    status,
                    last_lines: self.last_lines(5),
                }
            }
            Err(e) => EngineState::Exited {
                status: format!("cannot be waited for: {e}"),
                last_lines: self.last_lines(5),
            },
        }
    }

    /// Waits until the engine answers: its health route, then `/v1/models` naming the served model, then a
    /// one-token generation. Fails at once when the engine exits, and after `limit` otherwise, with the engine's
    /// last lines.
    pub fn wait_ready(&self, limit: Duration) -> Result<(), EngineError> {
        const STEPS: [&str; 3] = ["the health route", "/v1/models", "a one-token generation"];
        let started = Instant::now();
        let name = self.kind.name();
        let short = Timeouts::Phases {
            connect: Duration::from_secs(2),
            read: Duration::from_secs(10),
        };
        let mut step = 0;
        // Why the current step has not passed yet, for the error.
        let mut last = String::new();
        loop {
            if let EngineState::Exited { status, .. } = self.state() {
                return Err(EngineError::Exited {
                    engine: name.into(),
                    status,
                    log: self.last_lines(20),
                });
            }
            if started.elapsed() > limit {
                let why = if last.is_empty() {
                    String::new()
                } else {
                    format!(": {last}")
                };
                return Err(EngineError::NotReady {
                    engine: name.into(),
                    secs: limit.as_secs(),
                    step: format!("{}{why}", STEPS[step]),
                    log: self.last_lines(20),
                });
            }
            let outcome = match step {
                0 => self
                    .root_client()
                    .get(self.kind.health_path(), short)
                    .map(|r| r.status == 200),
                1 => self.lists_served_model(short, &mut last),
                _ => self.one_token(&mut last),
            };
            match outcome {
                Ok(true) if step + 1 == STEPS.len() => {
                    tracing::info!(
                        engine = name,
                        secs = started.elapsed().as_secs_f64(),
                        "ready"
                    );
                    return Ok(());
                }
                Ok(true) => {
                    step += 1;
                    last.clear();
                    continue;
                }
                Ok(false) => {}
                Err(e) => last = e.detail(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether `/v1/models` answers and names the served model (else `last` says what it answered).
    fn lists_served_model(
        &self,
        t: Timeouts,
        last: &mut String,
    ) -> Result<bool, vibecheck_client::ClientError> {
        let r = self.client().get("/models", t)?;
        if r.status != 200 {
            *last = format!("HTTP {}", r.status);
            return Ok(false);
        }
        let text = r.text(1 << 20).unwrap_or_default();
        let named = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                v["data"].as_array().map(|d| {
                    d.iter()
                        .any(|m| m["id"].as_str() == Some(&self.served_name))
                })
            })
            .unwrap_or(false);
        if !named {
            *last = format!("it lists no model {:?}: {}", self.served_name, clip(&text));
        }
        Ok(named)
    }

    /// One token from the chat route (or the text route, for a model without a chat template).
    fn one_token(&self, last: &mut String) -> Result<bool, vibecheck_client::ClientError> {
        let t = Timeouts::Phases {
            connect: Duration::from_secs(2),
            read: Duration::from_secs(120),
        };
        let client = self.client();
        let chat = json!({"model": self.served_name, "max_tokens": 1, "temperature": 0,
                          "messages": [{"role": "user", "content": "Hi"}]});
        let r = client.post_json("/chat/completions", &chat, t)?;
        if r.status == 200 {
            return Ok(true);
        }
        let text =
            json!({"model": self.served_name, "max_tokens": 1, "temperature": 0, "prompt": "Hi"});
        let r2 = client.post_json("/completions", &text, t)?;
        if r2.status == 200 {
            return Ok(true);
        }
        let (chat_status, text_status) = (r.status, r2.status);
        *last = format!(
            "the chat route answered {chat_status} and the text route {text_status}: {}",
            clip(&r2.text(1 << 16).unwrap_or_default())
        );
        Ok(false)
    }

    /// The engine's own version, from whichever route it has (vLLM's `/version`, SGLang's `/server_info` or
    /// `/get_server_info`, llama.cpp's `/props`); `unknown` when none says.
    pub fn version(&self) -> String {
        let t = Timeouts::Phases {
            connect: Duration::from_secs(2),
            read: Duration::from_secs(10),
        };
        let root = self.root_client();
        for (route, key) in [
            ("/version", "version"),
            ("/server_info", "version"),
            ("/get_server_info", "version"),
            ("/props", "build_info"),
        ] {
            let Ok(r) = root.get(route, t) else { continue };
            if r.status != 200 {
                continue;
            }
            let text = r.text(4 << 20).unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(found) = v[key].as_str().filter(|s| !s.is_empty()) {
                return found.to_string();
            }
        }
        "unknown".into()
    }

    /// Stops the engine and every process it started: SIGTERM to the group, SIGKILL after `grace`.
    pub fn stop(&self, grace: Duration) {
        let mut child = self.child.lock();
        let Some(mut c) = child.take() else { return };
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let name = self.kind.name();
        if matches!(c.try_wait(), Ok(None)) {
            kill_group(self.pid, libc::SIGTERM);
            let until = Instant::now() + grace;
            while Instant::now() < until && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(c.try_wait(), Ok(None)) {
                tracing::warn!(
                    engine = name,
                    pid = self.pid,
                    "still running {} s after SIGTERM: killed",
                    grace.as_secs()
                );
            }
        }
        // The leader gone, its workers may not be: the whole group goes.
        kill_group(self.pid, libc::SIGKILL);
        let _ = c.wait();
        tracing::info!(engine = name, pid = self.pid, "stopped");
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(15));
    }
}

/// Sends `signal` to every process of the group `pgid` (a group that is gone already is fine).
fn kill_group(pgid: u32, signal: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid > 1 {
        // SAFETY: kill has no memory effects; a negative pid names the process group.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// A reply quoted on one line of an error.
fn clip(text: &str) -> String {
    vibecheck_client::clip_chars(text.trim(), 300).replace('\n', " ")
}

/// Spawns `cmd` from one thread that lives as long as the process. (The parent-death signal fires when the
/// *thread* that forked the child ends, so a child forked from a short-lived worker thread would be stopped
/// with it.)
fn spawn_kept(cmd: std::process::Command) -> std::io::Result<Child> {
    type Job = (std::process::Command, mpsc::Sender<std::io::Result<Child>>);
    static KEEPER: std::sync::OnceLock<Mutex<mpsc::Sender<Job>>> = std::sync::OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("engine-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("a thread to start engines from");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    keeper
        .lock()
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("the engine spawner is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the engine spawner is gone"))?
}
