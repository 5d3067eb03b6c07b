//! A stage of `srlm run` as a typed call of one of srlm's commands: the run builds each
//! stage's arguments as values, records [`StageCall::argv`] (the command line that does the
//! same by hand) in its manifest, and calls the command's function directly.

use super::argv::to_argv;
use crate::commands::{eft, eval, eval_vs, prompts, stages, train};
#[cfg(test)]
use crate::Command;
use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub enum StageCall {
    Prompts(prompts::PromptsArgs),
    Sample(stages::SampleArgs),
    Judge(stages::JudgeArgs),
    Pairs(stages::PairsArgs),
    Sft(train::SftArgs),
    Dpo(train::DpoArgs),
    Eft(eft::EftArgs),
    EvalJudge(eval::EvalJudgeArgs),
    EvalVs(eval_vs::EvalVsArgs),
}

impl StageCall {
    /// The srlm command line (without the program name) that runs this stage.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Self::Prompts(a) => to_argv(&["prompts"], a),
            Self::Sample(a) => to_argv(&["sample"], a),
            Self::Judge(a) => to_argv(&["judge"], a),
            Self::Pairs(a) => to_argv(&["pairs"], a),
            Self::Sft(a) => to_argv(&["sft"], a),
            Self::Dpo(a) => to_argv(&["dpo"], a),
            Self::Eft(a) => to_argv(&["eft"], a),
            Self::EvalJudge(a) => to_argv(&["eval", "judge"], a),
            Self::EvalVs(a) => to_argv(&["eval", "vs"], a),
        }
    }

    /// Points the stage's server role at `url` (a launched server's, once its port is known),
    /// asking for `model` there when given (an adapter loaded into it).
    pub fn set_api_base(&mut self, url: &str, model: Option<&str>) {
        let remote = match self {
            Self::Prompts(a) => &mut a.backend.remote,
            Self::Sample(a) => &mut a.backend.remote,
            Self::Judge(a) => &mut a.backend.remote,
            Self::EvalVs(a) => &mut a.backend.remote,
            Self::EvalJudge(a) => &mut a.backend.remote,
            Self::Pairs(_) | Self::Sft(_) | Self::Dpo(_) | Self::Eft(_) => return,
        };
        remote.api_base = Some(url.to_string());
        if let Some(m) = model {
            remote.api_model = Some(m.to_string());
        }
    }

    pub fn run(self) -> Result<()> {
        match self {
            Self::Prompts(a) => prompts::run(a),
            Self::Sample(a) => stages::sample(a),
            Self::Judge(a) => stages::judge(a),
            Self::Pairs(a) => stages::pairs(a),
            Self::Sft(a) => train::run_sft(a),
            Self::Dpo(a) => train::run_dpo(a),
            Self::Eft(a) => eft::run(a),
            Self::EvalJudge(a) => eval::run(eval::EvalCommand::Judge(a)),
            Self::EvalVs(a) => eval::run(eval::EvalCommand::Vs(a)),
        }
    }

    /// The stage a parsed command line is, if it is one a run uses.
    #[cfg(test)]
    pub fn from_command(command: Command) -> Option<Self> {
        Some(match command {
            Command::Prompts(a) => Self::Prompts(a),
            Command::Sample(a) => Self::Sample(a),
            Command::Judge(a) => Self::Judge(a),
            Command::Pairs(a) => Self::Pairs(a),
            Command::Sft(a) => Self::Sft(a),
            Command::Dpo(a) => Self::Dpo(a),
            Command::Eft(a) => Self::Eft(a),
            Command::Eval(eval::EvalCommand::Judge(a)) => Self::EvalJudge(a),
            Command::Eval(eval::EvalCommand::Vs(a)) => Self::EvalVs(a),
            _ => return None,
        })
    }
}
