//! The feed-forward blocks: gated (`down(act(gate x) · up x)`, most models), plain (`fc2(act(fc1 x))`, Phi-2
//! and GPT-NeoX), and mixtures of gated experts (Mixtral, Qwen2-MoE, Qwen3-MoE) with their router.

use candle_core::{DType, Tensor, D};

use crate::config::{Activation, MoeConfig};
use crate::linear::Linear;
use crate::weights::Weights;
use crate::EngineError;

fn activate(act: Activation, x: &Tensor) -> candle_core::Result<Tensor> {
    match act {
        Activation::Silu => candle_nn::ops::silu(x),
        Activation::GeluTanh => x.gelu(),
        Activation::Gelu => x.gelu_erf(),
    }
}

#[derive(Clone)]
enum GateUp {
    Separate {
        gate: Linear,
        up: Linear,
    },
    /// Gate rows then up rows in one matrix (stacked on load, or Phi-3's `gate_up_proj`).
    Fused(Linear),
}

/// `down(act(gate x) · up x)`.
#[derive(Clone)]
pub(crate) struct Gated {
    proj: GateUp,
    down: Linear,
    act: Activation,
    inter: usize,
}

/// Where a gated MLP's three matrices are.
pub(crate) struct GatedNames<'a> {
    pub gate: &'a str,
    pub up: &'a str,
    pub down: &'a str,
}

impl Gated {
    /// Loads `{prefix}.{gate,up,down}` (or Phi-3's fused `{prefix}.gate_up_proj` when `fused` names it).
    pub fn load(
        w: &Weights,
        prefix: &str,
        names: &GatedNames,
        fused: Option<&str>,
        (h, inter): (usize, usize),
        bias: bool,
        act: Activation,
    ) -> Result<Self, EngineError> {
        let proj = match fused {
            Some(f) => GateUp::Fused(w.linear(&format!("{prefix}.{f}"), 2 * inter, h, false)?),
            None => {
                let (gate, up) = (
                    format!("{prefix}.{}", names.gate),
                    format!("{prefix}.{}", names.up),
                );
                match w.stacked_linear(&[(&gate, inter), (&up, inter)], h, bias)? {
                    Some(gu) => GateUp::Fused(gu),
                    None => GateUp::Separate {
                        gate: w.linear(&gate, inter, h, bias)?,
                        up: w.linear(&up, inter, h, bias)?,
                    },
                }
            }
        };
        Ok(Self {
            proj,
            down: w.linear(&format!("{prefix}.{}", names.down), h, inter, bias)?,
            act,
            inter,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (gate, up) = match &self.proj {
            GateUp::Separate { gate, up } => (gate.forward(x)?, up.forward(x)?),
            GateUp::Fused(p) => {
                let gu = p.forward(x)?;
                let n = self.inter;
                (gu.narrow(D::Minus1, 0, n)?, gu.narrow(D::Minus1, n, n)?)
            }
        };
        self.down.forward(&(activate(self.act, &gate)? * up)?)
    }
}

/// `fc2(act(fc1 x))`.
#[derive(Clone)]
pub(crate) struct Plain {
    pub up: Linear,
    pub down: Linear,
    pub act: Activation,
}

/// A sparse MLP: a router picks `top_k` experts per token; their outputs are summed with the router's weights
/// (renormalized over the chosen ones where the model says so), plus Qwen2-MoE's gated shared expert.
#[derive(Clone)]
pub(crate) struct Moe {
    pub router: Linear,
    pub experts: Vec<Gated>,
    pub top_k: usize,
    pub norm_topk_prob: bool,
    /// The shared expert and its one-output gate.
    pub shared: Option<(Gated, Linear)>,
}

impl Moe {
    /// The chosen experts and their weights for each token, from the router's logits (softmax in float32, the
    /// `top_k` largest, ties to the lower index).
    fn route(&self, logits: &[Vec<f32>]) -> Vec<Vec<(usize, f32)>> {
        logits
            .iter()
            .map(|row| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
                let sum: f32 = exps.iter().sum();
                let mut order: Vec<usize> = (0..row.len()).collect();
                order.sort_by(|&a, &b| exps[b].total_cmp(&exps[a]).then(a.cmp(&b)));
                let mut chosen: Vec<(usize, f32)> = order
                    .into_iter()
                    .take(self.top_k)
                    .map(|e| (e, exps[e] / sum))
                    .collect();
                if self.norm_topk_prob {
                    let total: f32 = chosen.iter().map(|(_, w)| w).sum();
                    chosen.iter_mut().for_each(|(_, w)| *w /= total);
                }
                chosen
            })
            .collect()
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let h = dims[dims.len() - 1];
        let n = x.elem_count() / h.max(1);
        let (dtype, device) = (x.dtype(), x.device());
        let flat = x.reshape((n, h))?;
        let logits = self.router.forward(&flat)?.to_dtype(DType::F32)?;
        let routes = self.route(&logits.to_vec2::<f32>()?);
        // Each expert runs once over the tokens routed to it; a token's outputs are added in expert order, so
        // its sum does not depend on which other tokens share the batch.
        let mut out = vec![0f32; n * h];
        for (e, expert) in self.experts.iter().enumerate() {
            let (rows, weights): (Vec<u32>, Vec<f32>) = routes
                .iter()
                .enumerate()
                .filter_map(|(r, chosen)| {
                    chosen
                        .iter()
                        .find(|(c, _)| *c == e)
                        .map(|(_, w)| (r as u32, *w))
                })
                .unzip();
            if rows.is_empty() {
                continue;
            }
            let m = rows.len();
            let picked = flat.index_select(&Tensor::from_vec(rows.clone(), m, device)?, 0)?;
            let w = Tensor::from_vec(weights, (m, 1), device)?.to_dtype(dtype)?;
            let y = expert
                .forward(&picked)?
                .broadcast_mul(&w)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for (r, ys) in rows.iter().zip(y.chunks(h)) {
                let o = &mut out[*r as usize * h..(*r as usize + 1) * h];
                o.iter_mut().zip(ys).for_each(|(o, y)| *o += y);
            }
        }
        let mut out = Tensor::from_vec(out, (n, h), device)?.to_dtype(dtype)?;
        if let Some((shared, gate)) = &self.shared {
            let g = candle_nn::ops::sigmoid(&gate.forward(&flat)?)?;
            out = (out + shared.forward(&flat)?.broadcast_mul(&g)?)?;
        }
        out.reshape(dims)
    }
}

/// A layer's feed-forward block.
#[derive(Clone)]
pub(crate) enum Ffn {
    Gated(Gated),
    Plain(Plain),
    Moe(Moe),
}

impl Gated {
    /// The projection `name` (`gate_proj`, `up_proj`, `down_proj`, Phi-3's `gate_up_proj`): its [`Linear`],
    /// first output row there and row count.
    fn projection_mut(&mut self, name: &str) -> Option<(&mut Linear, usize, usize)> {
        let inter = self.inter;
        match (&mut self.proj, name) {
            (GateUp::Separate { gate, .. }, "gate_proj" | "w1") => Some((gate, 0, inter)),
            (GateUp::Separate { up, .. }, "up_proj" | "w3") => Some((up, 0, inter)),
            (GateUp::Fused(l), "gate_proj" | "w1") => Some((l, 0, inter)),
            (GateUp::Fused(l), "up_proj" | "w3") => Some((l, inter, inter)),
            (GateUp::Fused(l), "gate_up_proj") if l.out_dim() == 2 * inter => {
                Some((l, 0, 2 * inter))
            }
            _ if matches!(name, "down_proj" | "w2") => {
                let rows = self.down.out_dim();
                Some((&mut self.down, 0, rows))
            }
            _ => None,
        }
    }
}

impl Ffn {
    /// The projection at `module` inside a layer (`mlp.up_proj`, `mlp.experts.3.gate_proj`,
    /// `block_sparse_moe.experts.0.w1`, `mlp.fc1`).
    pub fn projection_mut(&mut self, module: &str) -> Option<(&mut Linear, usize, usize)> {
        let (block, name) = module.split_once('.')?;
        match self {
            Ffn::Gated(g) if block == "mlp" => g.projection_mut(name),
            Ffn::Plain(p) if block == "mlp" => match name {
                "fc1" | "dense_h_to_4h" => {
                    let rows = p.up.out_dim();
                    Some((&mut p.up, 0, rows))
                }
                "fc2" | "dense_4h_to_h" => {
                    let rows = p.down.out_dim();
                    Some((&mut p.down, 0, rows))
                }
                _ => None,
            },
            Ffn::Moe(m) if block == "mlp" || block == "block_sparse_moe" => {
                let (e, proj) = name.strip_prefix("experts.")?.split_once('.')?;
                m.experts
                    .get_mut(e.parse::<usize>().ok()?)?
                    .projection_mut(proj)
            }
            _ => None,
        }
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Ffn::Gated(g) => g.forward(x),
            Ffn::Plain(p) => p.down.forward(&activate(p.act, &p.up.forward(x)?)?),
            Ffn::Moe(m) => m.forward(x),
        }
    }
}

/// The experts of a sparse layer at `prefix` (`block_sparse_moe` with `w1`/`w3`/`w2` for Mixtral, `mlp` with
/// `gate_proj`/`up_proj`/`down_proj` for Qwen).
pub(crate) fn load_moe(
    w: &Weights,
    prefix: &str,
    moe: &MoeConfig,
    h: usize,
    act: Activation,
    mixtral: bool,
) -> Result<Moe, EngineError> {
    let names = if mixtral {
        GatedNames {
            gate: "w1",
            up: "w3",
            down: "w2",
        }
    } else {
        GatedNames {
            gate: "gate_proj",
            up: "up_proj",
            down: "down_proj",
        }
    };
    let experts = (0..moe.experts)
        .map(|e| {
            Gated::load(
                w,
                &format!("{prefix}.experts.{e}"),
                &names,
                None,
                (h, moe.intermediate_size),
                false,
                act,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let shared = match moe.shared_expert_intermediate_size {
        Some(inter) => Some((
            Gated::load(
                w,
                &format!("{prefix}.shared_expert"),
                &names,
                None,
                (h, inter),
                false,
                act,
            )?,
            w.linear(&format!("{prefix}.shared_expert_gate"), 1, h, false)?,
        )),
        None => None,
    };
    Ok(Moe {
        router: w.linear(&format!("{prefix}.gate"), moe.experts, h, false)?,
        experts,
        top_k: moe.top_k,
        norm_topk_prob: moe.norm_topk_prob,
        shared,
    })
}
