//! The command line of each engine vibecheck launches, and the checks before it runs: what the engine reads (a
//! folder or hub id for vLLM and SGLang, a `.gguf` file for llama.cpp), the parallelism it supports, and the flags
//! vibecheck sets itself (a `--engine-arg` that repeats one is refused, naming the option to use instead).
//!
//! The flags are the engines' documented ones: `vllm serve MODEL --served-model-name --host --port --api-key
//! --tensor-parallel-size --pipeline-parallel-size --max-model-len [--distributed-executor-backend ray]`;
//! `python3 -m sglang.launch_server --model-path --served-model-name --host --port --api-key --tp-size --pp-size
//! --context-length [--nnodes --node-rank --dist-init-addr] [--weight-version]`; `llama-server -m FILE --alias
//! --host --port --api-key -c`.

use std::path::{Path, PathBuf};

use crate::EngineError;

/// An engine vibecheck can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Vllm,
    Sglang,
    LlamaServer,
}

impl EngineKind {
    /// Every kind, in the order `--engine` lists them.
    pub const ALL: [EngineKind; 3] = [
        EngineKind::Vllm,
        EngineKind::Sglang,
        EngineKind::LlamaServer,
    ];

    /// `vllm`, `sglang` or `llama-server` (also `llama.cpp`).
    pub fn parse(name: &str) -> Result<Self, EngineError> {
        match name.trim().to_ascii_lowercase().as_str() {
            "vllm" => Ok(Self::Vllm),
            "sglang" => Ok(Self::Sglang),
            "llama-server" | "llama.cpp" | "llamacpp" => Ok(Self::LlamaServer),
            other => Err(EngineError::Config(format!(
                "unknown engine {other:?}; the engines are vllm, sglang and llama-server (or auto, or local)"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Vllm => "vllm",
            Self::Sglang => "sglang",
            Self::LlamaServer => "llama-server",
        }
    }

    /// The program run when `--engine-bin` is not given, and the arguments that come before the engine's own.
    fn default_program(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Self::Vllm => ("vllm", &["serve"]),
            Self::Sglang => ("python3", &["-m", "sglang.launch_server"]),
            Self::LlamaServer => ("llama-server", &[]),
        }
    }

    /// The arguments given before the engine's own when `--engine-bin` names the program (`vllm`'s `serve`
    /// subcommand, SGLang's module for a Python interpreter).
    fn program_args(self) -> &'static [&'static str] {
        self.default_program().1
    }

    /// The engine's names for what every launch sets.
    fn names(self) -> Names {
        match self {
            Self::Vllm => Names {
                model: None,
                served_name: "--served-model-name",
                parallel: Some(("--tensor-parallel-size", "--pipeline-parallel-size")),
                context: "--max-model-len",
            },
            Self::Sglang => Names {
                model: Some("--model-path"),
                served_name: "--served-model-name",
                parallel: Some(("--tp-size", "--pp-size")),
                context: "--context-length",
            },
            Self::LlamaServer => Names {
                model: Some("-m"),
                served_name: "--alias",
                parallel: None,
                context: "-c",
            },
        }
    }

    /// The route that answers 200 once the engine is up.
    pub fn health_path(self) -> &'static str {
        "/health"
    }

    /// Where the engine's Prometheus counters are (vLLM and llama.cpp always with `--metrics`; SGLang with
    /// `--enable-metrics`).
    pub fn metrics_path(self) -> &'static str {
        "/metrics"
    }

    /// How a new checkpoint gets into a running engine.
    pub fn swap_path(self) -> SwapPath {
        match self {
            Self::Sglang => SwapPath::SglangUpdateFromDisk,
            Self::Vllm => SwapPath::VllmReloadWeights,
            Self::LlamaServer => SwapPath::Restart,
        }
    }
}

/// One engine's flag names: the model (`None`: positional), the served name, tensor and pipeline parallelism
/// (`None`: it has neither), the context length.
struct Names {
    model: Option<&'static str>,
    served_name: &'static str,
    parallel: Option<(&'static str, &'static str)>,
    context: &'static str,
}

/// How a watched checkpoint's weights reach the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapPath {
    /// SGLang's `POST /update_weights_from_disk` with `model_path` and `weight_version`.
    SglangUpdateFromDisk,
    /// vLLM in dev mode (`VLLM_SERVER_DEV_MODE=1`): `POST /collective_rpc` with `reload_weights`, between
    /// `sleep?level=2` / `wake_up?tags=weights` and `wake_up?tags=kv_cache`.
    VllmReloadWeights,
    /// The engine is stopped and started again on the new checkpoint.
    Restart,
    /// The checkpoint the engine was started on (no swap).
    Launch,
}

impl SwapPath {
    /// As stored with each answer.
    pub fn name(self) -> &'static str {
        match self {
            Self::SglangUpdateFromDisk => "update_weights_from_disk",
            Self::VllmReloadWeights => "collective_rpc:reload_weights",
            Self::Restart => "restart",
            Self::Launch => "launch",
        }
    }
}

/// Several machines: vLLM on an existing Ray cluster, or SGLang's own rendezvous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MultiNode {
    /// vLLM's Ray executor, joining the cluster at `HOST:PORT` (`RAY_ADDRESS`).
    Ray { address: String },
    /// SGLang: `--nnodes N --node-rank R --dist-init-addr HOST:PORT`, one launch per node.
    Sglang {
        nnodes: usize,
        node_rank: usize,
        dist_init_addr: String,
    },
}

/// Everything that decides an engine's command line.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub kind: EngineKind,
    /// A checkpoint folder or hub id (vLLM, SGLang), or a `.gguf` file (llama.cpp).
    pub model: String,
    /// The model name the engine answers to (and that vibecheck lists).
    pub served_name: String,
    pub tensor_parallel: usize,
    pub pipeline_parallel: usize,
    /// `CUDA_VISIBLE_DEVICES`; `None` leaves the engine every GPU it sees.
    pub gpus: Option<Vec<u32>>,
    pub max_model_len: Option<usize>,
    pub multi_node: Option<MultiNode>,
    /// Passed on as they are, after vibecheck's own flags.
    pub engine_args: Vec<String>,
    /// The program in place of `vllm`, `python3` (with `-m sglang.launch_server`) or `llama-server`.
    pub program: Option<PathBuf>,
    pub host: String,
    pub port: u16,
    /// The key the engine requires; vibecheck generates one so that nothing else on the machine uses the
    /// engine's port behind its back.
    pub api_key: String,
    /// Start the engine so that its weights can be swapped while it runs (vLLM's dev-mode routes and sleep
    /// mode; SGLang needs nothing extra).
    pub swappable: bool,
    /// SGLang's `--weight-version` for the checkpoint it starts on.
    pub weight_version: Option<String>,
    /// Check the model's files here (off for a deployment file, whose paths are the cluster's).
    pub check_files: bool,
}

impl LaunchSpec {
    /// A spec with vibecheck's defaults: one GPU's worth of parallelism, loopback, port and key to be filled.
    pub fn new(kind: EngineKind, model: &str, served_name: &str) -> Self {
        Self {
            kind,
            model: model.to_string(),
            served_name: served_name.to_string(),
            tensor_parallel: 1,
            pipeline_parallel: 1,
            gpus: None,
            max_model_len: None,
            multi_node: None,
            engine_args: Vec::new(),
            program: None,
            host: "127.0.0.1".into(),
            port: 0,
            api_key: String::new(),
            swappable: false,
            weight_version: None,
            check_files: true,
        }
    }

    /// The checks that do not need the engine: what it reads, the parallelism it has, and no `--engine-arg`
    /// that repeats a flag vibecheck sets.
    pub fn validate(&self) -> Result<(), EngineError> {
        let cfg = |m: String| Err(EngineError::Config(m));
        let engine = self.kind.name();
        if self.tensor_parallel == 0 || self.pipeline_parallel == 0 {
            return cfg("--tensor-parallel and --pipeline-parallel must be at least 1".into());
        }
        let path = Path::new(&self.model);
        let is_gguf = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        match self.kind {
            EngineKind::LlamaServer => {
                if !is_gguf || (self.check_files && !path.is_file()) {
                    return cfg(format!(
                        "llama-server reads one .gguf file, and {} is not one; give it a .gguf file (`vibecheck \
                         convert` writes GGUF files out as folders, not the other way round), or use --engine vllm \
                         or sglang for a checkpoint folder",
                        self.model
                    ));
                }
                if self.tensor_parallel > 1 || self.pipeline_parallel > 1 {
                    return cfg(
                        "llama-server has no --tensor-parallel or --pipeline-parallel: it splits layers across the \
                         GPUs it sees (--gpus, and --engine-arg=--split-mode / --tensor-split)"
                            .into(),
                    );
                }
                if self.multi_node.is_some() {
                    return cfg("llama-server runs on one machine; use --engine vllm or sglang across machines".into());
                }
            }
            EngineKind::Vllm | EngineKind::Sglang => {
                if is_gguf {
                    return cfg(format!(
                        "{engine} is given {}, a GGUF file: vibecheck launches {engine} on checkpoint folders or hub \
                         ids (use --engine llama-server for GGUF)",
                        self.model
                    ));
                }
                if self.check_files && path.exists() && !path.join("config.json").is_file() {
                    return cfg(format!(
                        "{} has no config.json, so {engine} cannot load it; point it at a checkpoint folder",
                        self.model
                    ));
                }
            }
        }
        match (&self.multi_node, self.kind) {
            (Some(MultiNode::Ray { .. }), EngineKind::Sglang) => {
                return cfg("--ray-address is vLLM's; SGLang spans machines with --nnodes, --node-rank and --dist-init-addr".into())
            }
            (Some(MultiNode::Sglang { .. }), EngineKind::Vllm) => {
                return cfg("--nnodes/--node-rank/--dist-init-addr are SGLang's; vLLM spans machines on a Ray cluster (--ray-address HOST:PORT)".into())
            }
            (
                Some(MultiNode::Sglang {
                    nnodes, node_rank, ..
                }),
                _,
            ) if *nnodes == 0 || node_rank >= nnodes => {
                return cfg(format!(
                    "--node-rank {node_rank} is not below --nnodes {nnodes} (ranks count from 0)"
                ))
            }
            _ => {}
        }
        if let (Some(gpus), None) = (&self.gpus, &self.multi_node) {
            let need = self.tensor_parallel * self.pipeline_parallel;
            if gpus.len() < need {
                return cfg(format!(
                    "--tensor-parallel {} × --pipeline-parallel {} needs {need} GPUs on this machine, and --gpus \
                     names {}",
                    self.tensor_parallel,
                    self.pipeline_parallel,
                    gpus.len()
                ));
            }
        }
        for arg in &self.engine_args {
            let flag = arg.split('=').next().unwrap_or(arg);
            if let Some(instead) = owned_flag(self.kind, flag) {
                return cfg(format!(
                    "--engine-arg {arg:?} sets what vibecheck sets itself; use {instead} instead"
                ));
            }
        }
        Ok(())
    }

    /// The command that runs the engine.
    pub fn command(&self) -> Result<CommandLine, EngineError> {
        self.validate()?;
        let (default, _) = self.kind.default_program();
        let program = self
            .program
            .as_ref()
            .map_or_else(|| default.to_string(), |p| p.display().to_string());
        let mut args: Vec<String> = self
            .kind
            .program_args()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut env = Vec::new();
        let port = self.port.to_string();
        let n = self.kind.names();
        let mut push = |a: &[&str]| args.extend(a.iter().map(|s| s.to_string()));
        // What every launch sets, in each engine's own names.
        if let Some(flag) = n.model {
            push(&[flag]);
        }
        push(&[&self.model, n.served_name, &self.served_name]);
        push(&[
            "--host",
            &self.host,
            "--port",
            &port,
            "--api-key",
            &self.api_key,
        ]);
        if let Some((tp, pp)) = n.parallel {
            push(&[
                tp,
                &self.tensor_parallel.to_string(),
                pp,
                &self.pipeline_parallel.to_string(),
            ]);
        }
        if let Some(len) = self.max_model_len {
            push(&[n.context, &len.to_string()]);
        }
        // What only one engine has.
        match (self.kind, &self.multi_node) {
            (EngineKind::Vllm, multi) => {
                if let Some(MultiNode::Ray { address }) = multi {
                    push(&["--distributed-executor-backend", "ray"]);
                    env.push(("RAY_ADDRESS".to_string(), address.clone()));
                }
                if self.swappable {
                    push(&["--enable-sleep-mode"]);
                    env.push(("VLLM_SERVER_DEV_MODE".to_string(), "1".to_string()));
                }
            }
            (EngineKind::Sglang, multi) => {
                if let Some(MultiNode::Sglang {
                    nnodes,
                    node_rank,
                    dist_init_addr,
                }) = multi
                {
                    push(&[
                        "--nnodes",
                        &nnodes.to_string(),
                        "--node-rank",
                        &node_rank.to_string(),
                        "--dist-init-addr",
                        dist_init_addr,
                    ]);
                }
                push(&["--enable-metrics"]);
                if let Some(v) = &self.weight_version {
                    push(&["--weight-version", v]);
                }
            }
            (EngineKind::LlamaServer, _) => push(&["--metrics"]),
        }
        args.extend(self.engine_args.iter().cloned());
        if let Some(gpus) = &self.gpus {
            let list: Vec<String> = gpus.iter().map(u32::to_string).collect();
            env.push(("CUDA_VISIBLE_DEVICES".to_string(), list.join(",")));
        }
        Ok(CommandLine { program, args, env })
    }
}

/// The flags vibecheck sets on `kind`'s command line, and the vibecheck option that sets each.
fn owned_flag(kind: EngineKind, flag: &str) -> Option<&'static str> {
    let common = match flag {
        "--host" => Some("--host on vibecheck (the engine itself stays on loopback)"),
        "--port" => Some("nothing: vibecheck picks a free loopback port"),
        "--api-key" => Some("nothing: vibecheck gives the engine a key of its own"),
        "--served-model-name" | "--alias" => {
            Some("nothing: the engine answers to the name vibecheck lists")
        }
        _ => None,
    };
    common.or(match (kind, flag) {
        (EngineKind::Vllm, "--tensor-parallel-size" | "-tp") => Some("--tensor-parallel"),
        (EngineKind::Vllm, "--pipeline-parallel-size" | "-pp") => Some("--pipeline-parallel"),
        (EngineKind::Vllm, "--max-model-len") => Some("--max-model-len"),
        (EngineKind::Sglang, "--model-path" | "--model") => Some("the checkpoint argument"),
        (EngineKind::Sglang, "--tp-size" | "--tp") => Some("--tensor-parallel"),
        (EngineKind::Sglang, "--pp-size" | "--pp") => Some("--pipeline-parallel"),
        (EngineKind::Sglang, "--context-length") => Some("--max-model-len"),
        (EngineKind::Sglang, "--nnodes" | "--node-rank" | "--dist-init-addr") => {
            Some("--nnodes, --node-rank and --dist-init-addr on vibecheck")
        }
        (EngineKind::LlamaServer, "-m" | "--model") => Some("the checkpoint argument"),
        (EngineKind::LlamaServer, "-c" | "--ctx-size") => Some("--max-model-len"),
        _ => None,
    })
}

/// A program, its arguments and the environment it adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl CommandLine {
    /// As one shell line (each word quoted where needed); the API key shows as `$VIBECHECK_ENGINE_KEY` so that the
    /// line can be printed and pasted without leaking it.
    pub fn shell(&self, key: &str) -> String {
        self.shell_with_key_from(key, "VIBECHECK_ENGINE_KEY")
    }

    /// As one shell line with the argument `key` written as the expansion of the variable `var`.
    pub fn shell_with_key_from(&self, key: &str, var: &str) -> String {
        let mut words: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect();
        words.push(quote(&self.program));
        for a in &self.args {
            if !key.is_empty() && a == key {
                words.push(format!("\"${var}\""));
            } else {
                words.push(quote(a));
            }
        }
        words.join(" ")
    }
}

/// A word as a POSIX shell reads it back.
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A free TCP port on loopback (asked of the kernel, then released for the engine to bind).
pub fn free_port() -> Result<u16, EngineError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| EngineError::Config(format!("no free port on 127.0.0.1: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| EngineError::Config(format!("no free port on 127.0.0.1: {e}")))
}

/// 32 random hex digits from the system's random source, for an engine's API key.
pub fn random_key() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !ok {
        // No /dev/urandom: the hasher's per-process random keys, with the time and pid mixed in.
        use std::hash::{BuildHasher, Hasher};
        for chunk in bytes.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            h.write_u32(std::process::id());
            chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> tempfile_dir::Dir {
        tempfile_dir::Dir::with_config()
    }

    /// A folder with a config.json, removed at the end.
    mod tempfile_dir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn with_config() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "vibecheck-launch-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                std::fs::create_dir_all(&p).unwrap();
                std::fs::write(p.join("config.json"), "{}").unwrap();
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn each_engine_gets_its_documented_flags() {
        let dir = folder();
        let model = dir.0.to_string_lossy().into_owned();
        let mut v = LaunchSpec::new(EngineKind::Vllm, &model, "big");
        v.tensor_parallel = 8;
        v.pipeline_parallel = 2;
        v.port = 9000;
        v.api_key = "k".into();
        v.max_model_len = Some(4096);
        v.multi_node = Some(MultiNode::Ray {
            address: "10.0.0.1:6379".into(),
        });
        v.swappable = true;
        let c = v.command().unwrap();
        assert_eq!(c.program, "vllm");
        assert_eq!(
            c.args.join(" "),
            format!(
                "serve {model} --served-model-name big --host 127.0.0.1 --port 9000 --api-key k \
                 --tensor-parallel-size 8 --pipeline-parallel-size 2 --max-model-len 4096 \
                 --distributed-executor-backend ray --enable-sleep-mode"
            )
        );
        assert!(c
            .env
            .contains(&("RAY_ADDRESS".into(), "10.0.0.1:6379".into())));
        assert!(c.env.contains(&("VLLM_SERVER_DEV_MODE".into(), "1".into())));
        assert!(!c.shell("k").contains(" k "), "the key is not printed");

        let mut s = LaunchSpec::new(EngineKind::Sglang, &model, "big");
        s.tensor_parallel = 16;
        s.port = 30000;
        s.api_key = "k".into();
        s.gpus = Some((0..8).collect());
        s.weight_version = Some("checkpoint-100".into());
        s.multi_node = Some(MultiNode::Sglang {
            nnodes: 2,
            node_rank: 1,
            dist_init_addr: "10.0.0.1:5000".into(),
        });
        let c = s.command().unwrap();
        assert_eq!(
            (c.program.as_str(), &c.args[..2]),
            (
                "python3",
                &["-m".to_string(), "sglang.launch_server".to_string()][..]
            )
        );
        let line = c.args.join(" ");
        for want in [
            "--model-path",
            "--served-model-name big",
            "--tp-size 16 --pp-size 1",
            "--nnodes 2 --node-rank 1 --dist-init-addr 10.0.0.1:5000",
            "--enable-metrics",
            "--weight-version checkpoint-100",
        ] {
            assert!(line.contains(want), "{want}: {line}");
        }
        assert!(c
            .env
            .contains(&("CUDA_VISIBLE_DEVICES".into(), "0,1,2,3,4,5,6,7".into())));
    }

    #[test]
    fn impossible_settings_are_refused_with_what_would_fix_them() {
        let dir = folder();
        let model = dir.0.to_string_lossy().into_owned();
        let gguf = dir.0.join("m.gguf");
        std::fs::write(&gguf, b"GGUF").unwrap();
        let gguf = gguf.to_string_lossy().into_owned();
        let cases: Vec<(LaunchSpec, &str)> = vec![
            (
                {
                    let mut s = LaunchSpec::new(EngineKind::LlamaServer, &model, "m");
                    s.port = 1;
                    s
                },
                "reads one .gguf file",
            ),
            (
                {
                    let mut s = LaunchSpec::new(EngineKind::LlamaServer, &gguf, "m");
                    s.tensor_parallel = 2;
                    s
                },
                "no --tensor-parallel",
            ),
            (
                {
                    let mut s = LaunchSpec::new(EngineKind::Vllm, &gguf, "m");
                    s.port = 1;
                    s
                },
                "a GGUF file",
            ),
            (
                {
                    let mut s = LaunchSpec::new(EngineKind::Vllm, &model, "m");
                    s.tensor_parallel = 4;
                    s.gpus = Some(vec![0, 1]);
                    s
                },
                "needs 4 GPUs",
            ),
            (
                {
                    let mut s = LaunchSpec::new(EngineKind::Vllm, &model, "m");
                    s.engine_args = vec!["--port=8000".into()];
                    s
                },
                "free loopback port",
            ),
            (
                {
                    let mut s = LaunchSpec::new(EngineKind::Sglang, &model, "m");
                    s.engine_args = vec!["--tp".into(), "2".into()];
                    s
                },
                "use --tensor-parallel",
            ),
            (
                {
                    let mut s = LaunchSpec::new(EngineKind::Sglang, &model, "m");
                    s.multi_node = Some(MultiNode::Ray {
                        address: "h:1".into(),
                    });
                    s
                },
                "--ray-address is vLLM's",
            ),
            (
                {
                    let mut s = LaunchSpec::new(EngineKind::Sglang, &model, "m");
                    s.multi_node = Some(MultiNode::Sglang {
                        nnodes: 2,
                        node_rank: 2,
                        dist_init_addr: "h:1".into(),
                    });
                    s
                },
                "not below --nnodes",
            ),
        ];
        for (spec, needle) in cases {
            let e = spec.command().unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let ok = LaunchSpec::new(EngineKind::LlamaServer, &gguf, "m");
        assert_eq!(ok.command().unwrap().args[..2], ["-m".to_string(), gguf]);
        assert!(
            matches!(EngineKind::parse("TGI"), Err(EngineError::Config(m)) if m.contains("vllm, sglang and llama-server"))
        );
    }

    #[test]
    fn shell_words_read_back_as_given() {
        assert_eq!(quote("a-b_c.d/e:1"), "a-b_c.d/e:1");
        assert_eq!(quote("two words"), "'two words'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(random_key().len(), 32);
        assert_ne!(random_key(), random_key());
    }
}
