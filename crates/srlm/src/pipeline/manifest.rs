//! The run's record of finished stages (`RUN/manifest.json`), and the executor that runs a
//! planned stage unless the record says it is done with the same inputs.

use super::input_hash::InputHashes;
use super::layout::Layout;
use super::plan::{Planned, Work};
use super::servers::Servers;
use anyhow::{bail, Context, Result};
use srlm_core::jsonl::write_atomic;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

pub use srlm_core::summaries::{Manifest, StageEntry};

/// A run directory being worked through, one planned stage at a time.
pub struct Run {
    layout: Layout,
    manifest: Manifest,
    /// The inputs' hashes: each taken once per process, a model's kept across runs.
    hashes: InputHashes,
    /// The server a stage runs on, when the run starts it (`[backends.NAME] launch`).
    servers: Servers,
}

impl Run {
    /// The run in `layout`, its manifest read if a run there already finished stages.
    pub fn open(layout: Layout) -> Result<Self> {
        let path = layout.manifest();
        let manifest: Manifest = match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t)
                .with_context(|| format!("{}: unreadable", path.display()))?,
            Err(_) => Manifest {
                schema_version: srlm_core::stages::SCHEMA_VERSION,
                ..Manifest::default()
            },
        };
        // Whatever an earlier, killed run of this directory left running (a server, a trainer).
        super::children::stop_leftovers(&super::children::run_dir_key(&layout.dir));
        Ok(Self {
            servers: Servers::new(&layout.dir),
            hashes: InputHashes::open(&layout.input_hashes()),
            layout,
            manifest,
        })
    }

    fn rel(&self, p: &Path) -> String {
        p.strip_prefix(&self.layout.dir)
            .unwrap_or(p)
            .display()
            .to_string()
    }

    fn save_manifest(&self) -> Result<()> {
        write_atomic(
            &self.layout.manifest(),
            serde_json::to_string_pretty(&self.manifest)?.as_bytes(),
        )?;
        Ok(())
    }

    /// Every stage of `plan` in order.
    pub fn execute(&mut self, plan: Vec<Planned>) -> Result<()> {
        let total = plan.len();
        for (i, stage) in plan.into_iter().enumerate() {
            self.stage(stage, i + 1, total)?;
        }
        self.servers.stop();
        Ok(())
    }

    /// Runs `stage` (number `no` of `total`) unless the manifest holds it finished with the
    /// same inputs; the manifest then records its command line, inputs' hashes, outputs,
    /// seconds, peak memory and stats.
    fn stage(&mut self, stage: Planned, no: usize, total: usize) -> Result<()> {
        let Planned {
            name,
            work,
            inputs,
            outputs,
        } = stage;
        let mut hashes = BTreeMap::new();
        for p in &inputs {
            let h = self.hashes.hash(p)?;
            hashes.insert(self.rel(p), h);
        }
        if let Some(done) = self.manifest.stages.get(&name) {
            if done.inputs == hashes && outputs.iter().all(|o| o.exists()) {
                eprintln!("[{no}/{total}] {name}: done ({:.0} s)", done.seconds);
                return Ok(());
            }
            bail!(
                "stage `{name}` of {} finished earlier with other inputs or lost its outputs\n  hint: start a new run directory, or delete the stage's outputs and its entry in manifest.json to redo it",
                self.layout.dir.display()
            );
        }
        // A launched server for this stage (kept from the last stage if it is the same one);
        // any other server is stopped first, so a trainer gets the machine to itself (unless
        // it is kept up for the adapters of later models).
        let mut work = work;
        let mut server = None;
        match &mut work {
            Work::Call {
                call,
                server: Some(launch),
                ..
            } => {
                let endpoint = self
                    .servers
                    .ensure(launch)
                    .with_context(|| format!("stage `{name}`"))?;
                call.set_api_base(&endpoint.url, endpoint.model.as_deref());
                server = Some(endpoint.command);
            }
            _ => self.servers.idle(),
        }
        let command = match &work {
            Work::Seed(_) => vec!["(seed: resolve and merge the seed files)".to_string()],
            Work::Call { call, .. } => call.argv(),
            Work::External(e) => vec!["(external trainer)".to_string(), e.command()],
        };
        eprintln!("[{no}/{total}] {name}: srlm {}", command.join(" "));
        let t = Instant::now();
        // Every stage runs in this process: what the stages before it freed is given back,
        // and its peak is measured from the memory resident at its start.
        crate::memory::release_freed_memory();
        let measured = crate::memory::reset_peak_rss();
        let stats = self.work(work).with_context(|| format!("stage `{name}`"))?;
        let entry = StageEntry {
            command,
            inputs: hashes,
            outputs: outputs.iter().map(|o| self.rel(o)).collect(),
            seconds: t.elapsed().as_secs_f64(),
            peak_rss_mib: measured.then(crate::memory::peak_rss_mib).flatten(),
            stats,
            server,
        };
        self.manifest.stages.insert(name, entry);
        self.save_manifest()
    }

    fn work(&self, work: Work) -> Result<Option<serde_json::Value>> {
        match work {
            Work::Seed(files) => super::seed::write_seed(&self.layout, &files),
            Work::External(e) => e.run(),
            Work::Call { call, then, .. } => {
                call.run()?;
                then.run()
            }
        }
    }
}
