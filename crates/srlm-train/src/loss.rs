//! Losses and their metrics, as pure functions of tensors: the SFT cross-entropy and the DPO
//! family (sigmoid, IPO, label smoothing, an NLL term on the chosen reply), written as TRL's
//! `DPOTrainer.dpo_loss` writes them. The per-token log-probabilities they start from are the
//! fused kernels of `token_logps.rs`.
//!
//! Every op here has a backward pass in candle. Losses come out as sums divided by a normaliser
//! the caller passes (the token or pair count of the whole optimizer batch), so gradient
//! accumulation over micro-batches adds up to exactly the loss of the full batch.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// Sums `values` (n,) within each sequence: `owner[i]` is the sequence row i belongs to.
/// -> (sequences,)
pub fn per_sequence_sum(values: &Tensor, owner: &[u32], sequences: usize) -> Result<Tensor> {
    let n = owner.len();
    let mut onehot = vec![0f32; sequences * n];
    for (i, &s) in owner.iter().enumerate() {
        onehot[s as usize * n + i] = 1.0;
    }
    let onehot = Tensor::from_vec(onehot, (sequences, n), values.device())?; // (S, n)
    onehot.matmul(&values.unsqueeze(1)?)?.squeeze(1) // (S,)
}

/// The SFT loss: negative log-likelihood of the response tokens, summed and divided by
/// `normalizer` (the number of response tokens in the whole optimizer batch).
pub fn sft_loss(token_logps: &Tensor, normalizer: f64) -> Result<Tensor> {
    token_logps.sum_all()?.neg()? / normalizer
}

/// log σ(x), written stably: `min(x, 0) - log(1 + exp(-|x|))` with `min(x, 0) = (x - |x|) / 2`.
///
/// Both kinks sit at 0 and go through the same `|x|`, so whatever subgradient candle gives `|x|`
/// at 0 the two cancel into the true derivative σ(0) = 1/2. That matters: at the first DPO step
/// the policy is the reference and every pair's logit is exactly 0.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let abs = x.abs()?;
    let min0 = ((x - &abs)? * 0.5)?;
    min0 - (abs.neg()?.exp()? + 1.0)?.log()?
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DpoLossType {
    /// `-log σ(β·h)`, DPO (Rafailov et al., 2023), with optional label smoothing (cDPO).
    #[default]
    Sigmoid,
    /// `(h - 1/(2β))²` on per-token average log-probabilities (Azar et al., 2023).
    Ipo,
}

impl std::str::FromStr for DpoLossType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sigmoid" => Ok(Self::Sigmoid),
            "ipo" => Ok(Self::Ipo),
            _ => Err(format!("unknown DPO loss `{s}`: expected sigmoid or ipo")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpoConfig {
    pub beta: f64,
    pub loss_type: DpoLossType,
    pub label_smoothing: f64,
    /// Weight of the NLL of the chosen reply (TRL's `rpo_alpha`; Iterative RPO); None: off.
    pub rpo_alpha: Option<f64>,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss_type: DpoLossType::Sigmoid,
            label_smoothing: 0.0,
            rpo_alpha: None,
        }
    }
}

impl DpoConfig {
    /// Every setting that cannot train, listed at once: beta must be positive (a negative one
    /// optimises the inverse preference), label smoothing in [0, 0.5), the RPO weight positive.
    pub fn validate(&self) -> std::result::Result<(), crate::TrainError> {
        let problems: Vec<String> = self
            .problems()
            .iter()
            .map(|(name, problem)| format!("{name} {problem}"))
            .collect();
        match problems.is_empty() {
            true => Ok(()),
            false => Err(crate::TrainError::Config(problems.join("\n"))),
        }
    }

    /// Each setting that cannot train, as (its name, what is wrong), for callers that name it
    /// their own way (the run config's `dpo.beta`).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !(self.beta.is_finite() && self.beta > 0.0) {
            out.push((
                "beta",
                format!(
                    "is {}; it must be a positive number (the paper uses 0.1)",
                    self.beta
                ),
            ));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            out.push((
                "label_smoothing",
                format!("is {}; it must be in [0, 0.5)", self.label_smoothing),
            ));
        }
        if let Some(a) = self.rpo_alpha.filter(|a| !(a.is_finite() && *a > 0.0)) {
            out.push((
                "rpo_alpha",
                format!("is {a}; it must be a positive number, or off"),
            ));
        }
        out
    }
}

/// Per-pair log-probabilities of the chosen and rejected replies: (pairs,) each. For IPO they
/// are per-token averages (policy and reference alike), for the sigmoid loss sums.
pub struct PairLogps<'a> {
    pub chosen: &'a Tensor,
    pub rejected: &'a Tensor,
    pub ref_chosen: &'a Tensor,
    pub ref_rejected: &'a Tensor,
}

/// The DPO loss of some pairs, summed and divided by `pairs_normalizer` (pairs in the optimizer
/// batch). `chosen_nll`: the summed NLL of the chosen tokens divided by the chosen token count of
/// the batch, needed when `rpo_alpha` is set. -> scalar
pub fn dpo_loss(
    lp: &PairLogps,
    cfg: &DpoConfig,
    pairs_normalizer: f64,
    chosen_nll: Option<&Tensor>,
) -> Result<Tensor> {
    // h = (log π(c) - log π(r)) - (log π_ref(c) - log π_ref(r))
    let logits = ((lp.chosen - lp.rejected)? - (lp.ref_chosen - lp.ref_rejected)?)?; // (pairs,)
    let losses = match cfg.loss_type {
        DpoLossType::Sigmoid => {
            let ls = cfg.label_smoothing;
            let scaled = (&logits * cfg.beta)?;
            let pos = (log_sigmoid(&scaled)? * -(1.0 - ls))?;
            if ls > 0.0 {
                (pos + (log_sigmoid(&scaled.neg()?)? * -ls)?)?
            } else {
                pos
            }
        }
        DpoLossType::Ipo => (logits - 1.0 / (2.0 * cfg.beta))?.sqr()?,
    };
    let loss = (losses.sum_all()? / pairs_normalizer)?;
    match (cfg.rpo_alpha, chosen_nll) {
        (Some(alpha), Some(nll)) => loss + (nll * alpha)?,
        (Some(_), None) => candle_core::bail!("rpo_alpha needs the chosen replies' NLL"),
        _ => Ok(loss),
    }
}

/// TRL's logged DPO metrics for a set of pairs (means over pairs).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct DpoMetrics {
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f64,
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f64,
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: f64,
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: f64,
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f64,
}

/// Rewards are `β (log π - log π_ref)`; accuracy is the share of pairs whose chosen reward is
/// strictly higher. Inputs are per-pair values in the same units `dpo_loss` used.
pub fn dpo_metrics(
    beta: f64,
    chosen: &[f64],
    rejected: &[f64],
    ref_chosen: &[f64],
    ref_rejected: &[f64],
) -> DpoMetrics {
    let n = chosen.len().max(1) as f64;
    let mut m = DpoMetrics::default();
    for i in 0..chosen.len() {
        let rc = beta * (chosen[i] - ref_chosen[i]);
        let rr = beta * (rejected[i] - ref_rejected[i]);
        m.rewards_chosen += rc / n;
        m.rewards_rejected += rr / n;
        m.rewards_accuracies += if rc > rr { 1.0 } else { 0.0 } / n;
        m.rewards_margins += (rc - rr) / n;
        m.logps_chosen += chosen[i] / n;
        m.logps_rejected += rejected[i] / n;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn log_sigmoid_is_stable_and_differentiable() {
        let x = Var::new(&[-50f32, -1.0, 0.0, 2.0, 50.0], &Device::Cpu).unwrap();
        let y = log_sigmoid(x.as_tensor()).unwrap();
        let want = [
            -50f64,
            -1.3132617,
            -std::f64::consts::LN_2,
            -0.12692801,
            -1.9287e-22,
        ];
        for (g, w) in y.to_vec1::<f32>().unwrap().iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
        }
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        // d/dx log σ(x) = σ(-x)
        for (g, x) in g.iter().zip([-50f64, -1.0, 0.0, 2.0, 50.0]) {
            assert!((*g as f64 - 1.0 / (1.0 + x.exp())).abs() < 1e-5);
        }
    }

    #[test]
    fn per_sequence_sum_groups_rows() {
        let v = Tensor::new(&[1f32, 2.0, 3.0, 4.0], &Device::Cpu).unwrap();
        let s = per_sequence_sum(&v, &[0, 0, 2, 2], 3).unwrap();
        assert_eq!(s.to_vec1::<f32>().unwrap(), vec![3.0, 0.0, 7.0]);
    }
}
