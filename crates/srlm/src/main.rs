//! `srlm`: Self-Rewarding Language Models on your own machine.

mod backend;
mod bench;
mod builtin;
mod commands;
mod faults;
mod memory;
mod model_args;
mod pipeline;
mod report;
mod serve;
mod train_settings;
mod view;

use commands::{chat, contrast, eft, eval, export, generate, prompts, run, stages, train};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "srlm",
    version,
    about = "Self-Rewarding Language Models: generate, judge, train, repeat"
)]
pub(crate) struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, global = true, default_value = "warn", env = "SRLM_LOG")]
    log: String,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// The whole self-rewarding loop, M0 -> M1 (SFT) -> M2 -> M3 (DPO), in a run directory
    /// (resumable: rerun the same command).
    Run(run::RunArgs),
    /// report.md with PNG plots for a run directory: diagnostics, judge metrics, win rates.
    Report(report::ReportArgs),
    /// The run browser: a local web page with every prompt's candidates, judgements and pair,
    /// the run's charts and its progress while it goes (`srlm report` writes it as files too).
    View(view::ViewArgs),
    /// Chat with a model in the terminal; tokens stream as they come.
    Chat(chat::ChatArgs),
    /// Generate completions for a JSONL file of prompts (resumable).
    Generate(generate::GenerateArgs),
    /// New prompts by self-instruction: few-shot from the seed, filtered (resumable).
    Prompts(prompts::PromptsArgs),
    /// Sample N candidate responses per prompt (resumable).
    Sample(stages::SampleArgs),
    /// Judge candidates k times each with the additive 5-point prompt (resumable).
    Judge(stages::JudgeArgs),
    /// Preference pairs: best against worst judged candidate per prompt, ties dropped.
    Pairs(stages::PairsArgs),
    /// Supervised fine-tuning on {"messages"} or {"prompt", "response"} JSONL (resumable).
    Sft(train::SftArgs),
    /// Direct Preference Optimization on {"prompt", "chosen", "rejected"} JSONL (resumable).
    Dpo(train::DpoArgs),
    /// Contrasting answers for judge training without labels: each prompt and a modified
    /// instruction, both answered (Self-Taught Evaluators; resumable).
    Contrast(contrast::ContrastArgs),
    /// Judge-training (EFT) examples: judgements of human-ranked replies (`eval judge`) or of
    /// contrasting answers (`contrast` + `judge`) that order them as their ranks do.
    Eft(eft::EftArgs),
    /// Evaluation: the judge against human rankings.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Export for other tools: pairs in the format TRL's DPOTrainer reads.
    #[command(subcommand)]
    Export(export::ExportCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// An OpenAI-compatible HTTP server over a model: chat completions (SSE streaming),
    /// completions, models list; concurrent requests are batched together.
    Serve(serve::ServeArgs),
    /// Fetch the default model (SmolLM2-135M-Instruct) into SRLM_HOME and print its path.
    Fetch,
}

fn main() {
    srlm_train::tune_allocator();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = dispatch(cli.command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Runs one command (also how `srlm run` runs its stages).
pub(crate) fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run(a) => run::run(a),
        Command::Report(a) => report::run(a),
        Command::View(a) => view::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Prompts(a) => prompts::run(a),
        Command::Sample(a) => stages::sample(a),
        Command::Judge(a) => stages::judge(a),
        Command::Pairs(a) => stages::pairs(a),
        Command::Sft(a) => train::run_sft(a),
        Command::Dpo(a) => train::run_dpo(a),
        Command::Contrast(a) => contrast::run(a),
        Command::Eft(a) => eft::run(a),
        Command::Eval(e) => eval::run(e),
        Command::Export(e) => export::run(e),
        Command::Bench(b) => bench::run(b),
        Command::Serve(a) => serve::run(a),
        Command::Fetch => {
            println!("{}", srlm_engine::fetch::default_model()?.display());
            Ok(())
        }
    }
}
