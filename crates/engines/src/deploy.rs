//! Files that keep a promising checkpoint up as a demo on a cluster: a SkyPilot task, a Slurm batch script (a Ray
//! head and workers when it spans nodes) or values for vLLM's production-stack Helm chart. Each runs the engine
//! command `launch.rs` builds, and carries the cost estimate in a comment.

use crate::launch::{CommandLine, EngineKind, LaunchSpec};
use crate::EngineError;

/// The key's place on the engine's command line, written out as `"$VIBECHECK_DEMO_KEY"` (expanded when it runs).
const KEY_PLACEHOLDER: &str = "$VIBECHECK_DEMO_KEY";

/// Where the demo runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Skypilot,
    Slurm,
    K8s,
}

impl Target {
    pub fn parse(name: &str) -> Result<Self, EngineError> {
        match name.to_ascii_lowercase().as_str() {
            "skypilot" | "sky" => Ok(Self::Skypilot),
            "slurm" | "sbatch" => Ok(Self::Slurm),
            "k8s" | "kubernetes" | "helm" => Ok(Self::K8s),
            other => Err(EngineError::Config(format!(
                "unknown deploy target {other:?}; the targets are skypilot, slurm and k8s"
            ))),
        }
    }

    /// The file name written when `--out` names a folder.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Skypilot => "vibecheck-demo.sky.yaml",
            Self::Slurm => "vibecheck-demo.sbatch",
            Self::K8s => "vibecheck-demo.values.yaml",
        }
    }
}

/// What the files need beyond the engine's spec.
#[derive(Debug, Clone)]
pub struct DeployPlan {
    pub spec: LaunchSpec,
    /// Nodes (Slurm; SkyPilot's `num_nodes`).
    pub nodes: usize,
    /// The GPU type (`H100`, `A100-80GB`, as the cluster names it) and how many per node.
    pub accelerator: String,
    pub gpus_per_node: usize,
    /// The port the demo listens on.
    pub port: u16,
    /// Lines of the cost estimate, each written as a comment.
    pub cost_lines: Vec<String>,
}

impl DeployPlan {
    /// The file for `target`.
    pub fn render(&self, target: Target) -> Result<String, EngineError> {
        if self.spec.kind == EngineKind::LlamaServer && self.nodes > 1 {
            return Err(EngineError::Config(
                "llama-server runs on one node; use --engine vllm or sglang for more".into(),
            ));
        }
        if target == Target::K8s && self.spec.kind != EngineKind::Vllm {
            return Err(EngineError::Config(format!(
                "the k8s target writes values for vLLM's production-stack Helm chart, which runs vLLM; use \
                 --engine vllm (not {})",
                self.spec.kind.name()
            )));
        }
        // The demo's engine listens on all interfaces of its node, with the key from the environment.
        let mut spec = self.spec.clone();
        spec.host = "0.0.0.0".into();
        spec.port = self.port;
        spec.api_key = KEY_PLACEHOLDER.into();
        spec.gpus = None;
        spec.multi_node = None;
        spec.check_files = false;
        let command = spec.command()?;
        let comment = |prefix: &str| -> String {
            let mut s = format!(
                "{prefix} Written by `vibecheck deploy` for {}.\n{prefix} Engine: {}\n",
                self.spec.model,
                self.spec.kind.name()
            );
            for l in &self.cost_lines {
                s.push_str(&format!("{prefix} {l}\n"));
            }
            s
        };
        Ok(match target {
            Target::Skypilot => self.skypilot(&command, &comment("#")),
            Target::Slurm => self.slurm(&command, &comment("#")),
            Target::K8s => self.helm(&comment("#")),
        })
    }

    /// The engine's line, its key expanded from `$VIBECHECK_DEMO_KEY` by the shell that runs it.
    fn shell(command: &CommandLine) -> String {
        command.shell_with_key_from(KEY_PLACEHOLDER, "VIBECHECK_DEMO_KEY")
    }

    fn skypilot(&self, command: &CommandLine, comment: &str) -> String {
        let setup = match self.spec.kind {
            EngineKind::Vllm => "pip install vllm",
            EngineKind::Sglang => "pip install \"sglang[all]\"",
            EngineKind::LlamaServer => "echo 'install llama.cpp (llama-server) on the image'",
        };
        let mut run = String::new();
        if self.nodes > 1 && self.spec.kind == EngineKind::Vllm {
            run.push_str(
                "  # A Ray cluster over the task's nodes; the head runs the engine.\n  \
                 head=$(echo \"$SKYPILOT_NODE_IPS\" | head -n1)\n  \
                 if [ \"$SKYPILOT_NODE_RANK\" = 0 ]; then\n    ray start --head --port=6379\n  \
                 else\n    ray start --address=\"$head:6379\" --block; exit 0\n  fi\n  \
                 export RAY_ADDRESS=\"$head:6379\"\n",
            );
        }
        let mut line = Self::shell(command);
        if self.nodes > 1 && self.spec.kind == EngineKind::Vllm {
            line.push_str(" --distributed-executor-backend ray");
        }
        if self.nodes > 1 && self.spec.kind == EngineKind::Sglang {
            line.push_str(&format!(
                " --nnodes {} --node-rank \"$SKYPILOT_NODE_RANK\" --dist-init-addr \"$(echo \"$SKYPILOT_NODE_IPS\" | head -n1):5000\"",
                self.nodes
            ));
        }
        format!(
            "{comment}# Run: VIBECHECK_DEMO_KEY=... sky launch -c vibecheck-demo --env VIBECHECK_DEMO_KEY {}\n\
             name: vibecheck-demo\n\
             num_nodes: {}\n\
             resources:\n  accelerators: {}:{}\n  ports: {}\n\
             envs:\n  VIBECHECK_DEMO_KEY: \"\"\n\
             setup: |\n  {setup}\n\
             run: |\n{run}  {line}\n",
            Target::Skypilot.file_name(),
            self.nodes,
            self.accelerator,
            self.gpus_per_node,
            self.port,
        )
    }

    fn slurm(&self, command: &CommandLine, comment: &str) -> String {
        let mut s = format!(
            "#!/bin/bash\n{comment}# Run: VIBECHECK_DEMO_KEY=... sbatch {}\n\
             #SBATCH --job-name=vibecheck-demo\n#SBATCH --nodes={}\n#SBATCH --ntasks-per-node=1\n\
             #SBATCH --gpus-per-node={}\n#SBATCH --time=7-00:00:00\n\
             set -euo pipefail\n: \"${{VIBECHECK_DEMO_KEY:?set VIBECHECK_DEMO_KEY to the key clients will use}}\"\n",
            Target::Slurm.file_name(),
            self.nodes,
            self.gpus_per_node,
        );
        let line = Self::shell(command);
        match (self.nodes > 1, self.spec.kind) {
            (true, EngineKind::Vllm) => s.push_str(&format!(
                "# A Ray head on the first node, a worker on each other one; vLLM runs on the head.\n\
                 nodes=($(scontrol show hostnames \"$SLURM_JOB_NODELIST\"))\nhead=${{nodes[0]}}\n\
                 head_ip=$(srun --nodes=1 --ntasks=1 -w \"$head\" hostname --ip-address | awk '{{print $1}}')\n\
                 srun --nodes=1 --ntasks=1 -w \"$head\" ray start --head --node-ip-address=\"$head_ip\" --port=6379 --block &\n\
                 sleep 10\n\
                 for node in \"${{nodes[@]:1}}\"; do\n  \
                 srun --nodes=1 --ntasks=1 -w \"$node\" ray start --address=\"$head_ip:6379\" --block &\nsleep 5\ndone\n\
                 export RAY_ADDRESS=\"$head_ip:6379\"\n\
                 srun --nodes=1 --ntasks=1 -w \"$head\" {line} --distributed-executor-backend ray\n"
            )),
            (true, EngineKind::Sglang) => s.push_str(&format!(
                "# One SGLang launch per node; rank 0's address is the rendezvous.\n\
                 head=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1)\n\
                 srun bash -c '{} --nnodes {} --node-rank \"$SLURM_NODEID\" --dist-init-addr '\"$head\"':5000'\n",
                line.replace('\'', r"'\''"),
                self.nodes
            )),
            _ => s.push_str(&format!("srun {line}\n")),
        }
        s
    }

    fn helm(&self, comment: &str) -> String {
        let mut extra: Vec<String> = vec![
            format!("\"--tensor-parallel-size\""),
            format!("\"{}\"", self.spec.tensor_parallel),
            format!("\"--pipeline-parallel-size\""),
            format!("\"{}\"", self.spec.pipeline_parallel),
        ];
        if let Some(n) = self.spec.max_model_len {
            extra.push("\"--max-model-len\"".into());
            extra.push(format!("\"{n}\""));
        }
        for a in &self.spec.engine_args {
            extra.push(serde_json::Value::String(a.clone()).to_string());
        }
        format!(
            "{comment}# Run: helm repo add vllm https://vllm-project.github.io/production-stack && \\\n\
             #      helm install vibecheck-demo vllm/vllm-stack -f {}\n\
             # The model must be reachable from the cluster (a hub id, or a path on a volume the pods mount).\n\
             servingEngineSpec:\n  runtimeClassName: \"\"\n  modelSpec:\n  - name: \"vibecheck-demo\"\n    \
             repository: \"vllm/vllm-openai\"\n    tag: \"latest\"\n    modelURL: {}\n    replicaCount: 1\n    \
             requestCPU: 8\n    requestMemory: \"64Gi\"\n    requestGPU: {}\n    vllmConfig:\n      \
             extraArgs: [{}]\n",
            Target::K8s.file_name(),
            serde_json::Value::String(self.spec.model.clone()),
            self.gpus_per_node,
            extra.join(", "),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(kind: EngineKind, nodes: usize) -> DeployPlan {
        let mut spec = LaunchSpec::new(kind, "org/model", "model");
        spec.check_files = false;
        spec.tensor_parallel = 8;
        DeployPlan {
            spec,
            nodes,
            accelerator: "H100".into(),
            gpus_per_node: 8,
            port: 8000,
            cost_lines: vec!["Cost: $23.92/hour".into()],
        }
    }

    #[test]
    fn each_target_carries_the_engine_command_and_the_cost() {
        let sky = plan(EngineKind::Vllm, 1).render(Target::Skypilot).unwrap();
        assert!(
            sky.contains("accelerators: H100:8") && sky.contains("# Cost: $23.92/hour"),
            "{sky}"
        );
        assert!(sky.contains("vllm serve org/model --served-model-name model --host 0.0.0.0 --port 8000 --api-key \"$VIBECHECK_DEMO_KEY\""), "{sky}");
        let slurm = plan(EngineKind::Sglang, 2).render(Target::Slurm).unwrap();
        assert!(
            slurm.contains("#SBATCH --nodes=2") && slurm.contains("--node-rank \"$SLURM_NODEID\""),
            "{slurm}"
        );
        let helm = plan(EngineKind::Vllm, 1).render(Target::K8s).unwrap();
        assert!(
            helm.contains("modelURL: \"org/model\"")
                && helm.contains("extraArgs: [\"--tensor-parallel-size\", \"8\""),
            "{helm}"
        );
        let e = plan(EngineKind::Sglang, 1)
            .render(Target::K8s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("production-stack"), "{e}");
        assert!(plan(EngineKind::LlamaServer, 2)
            .render(Target::Slurm)
            .is_err());
    }
}
