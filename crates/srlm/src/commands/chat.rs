//! `srlm chat`: an interactive conversation; tokens are printed as they are generated.
//! `/reset` starts over, `/exit` (or end of input) quits.

use crate::model_args::{ModelArgs, SamplingArgs};
use anyhow::Result;
use clap::Args;
use srlm_core::generation::Message;
use srlm_engine::generate::{Event, Generator, Request};
use std::io::{BufRead, Write};

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// A system message (the model's template may add its own default otherwise).
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(args: ChatArgs) -> Result<()> {
    let engine = args.model.load()?;
    let gen = Generator::new(&engine.model, &engine.tokenizer);
    let fresh = || -> Vec<Message> {
        args.system
            .iter()
            .map(|s| Message::new("system", s))
            .collect()
    };
    let mut messages = fresh();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    eprintln!(
        "srlm chat: {} (type /reset to start over, /exit to quit)",
        engine.path.display()
    );
    let mut turn = 0u64;
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages = fresh();
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", line));
        let prompt_ids = engine.tokenizer.encode(&engine.render_chat(&messages)?)?;
        let mut params = args.sampling.params()?;
        params.seed = args.sampling.seed.wrapping_add(turn);
        turn += 1;
        let mut reply = String::new();
        let req = Request {
            id: "chat".into(),
            prompt_ids,
            params,
        };
        let result = gen.run([req], |ev| {
            match ev {
                Event::Text { piece, .. } => {
                    print!("{piece}");
                    let _ = stdout.flush();
                }
                Event::Done(c) => reply = c.text,
            }
            Ok(())
        });
        println!();
        if let Err(e) = result {
            // A conversation that outgrew the context: say so and keep the session.
            eprintln!("error: {e}\n(type /reset to start a new conversation)");
            messages.pop();
            continue;
        }
        messages.push(Message::new("assistant", &reply));
    }
    Ok(())
}
