//! `srlm view RUN [RUN_B]`: the run browser. A local web page that follows every prompt through
//! its candidates, judgements and pair, with the run's charts, the judge against human ranks and
//! the head-to-heads; it reads the run directory as it is (a run may be going) and refreshes by
//! itself. Nothing in a run directory is written by it. `srlm report` writes the same page as
//! static files (`report/index.html`), which work opened as `file://`.

pub mod site;
pub mod snapshot;

use anyhow::{bail, Context, Result};
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use clap::Args;
use site::Site;
use snapshot::Snapshot;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

#[derive(Args, Debug)]
pub struct ViewArgs {
    /// The run directory of `srlm run`; a second one is shown beside it.
    #[arg(required = true, num_args = 1..=2)]
    pub runs: Vec<PathBuf>,
    /// Address to listen on (the page is for this machine: keep it on loopback unless you mean
    /// to share it).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port; 0 picks a free one.
    #[arg(long, default_value_t = 8470)]
    pub port: u16,
}

/// What the files under the runs look like now: their count, newest time and total size.
/// The page is rebuilt when it changes.
fn fingerprint(dirs: &[PathBuf]) -> Fingerprint {
    let (mut n, mut newest, mut size) = (0, None, 0);
    for dir in dirs {
        snapshot::for_each_file(dir, |m| {
            n += 1;
            size += m.len();
            if let Ok(t) = m.modified() {
                newest = Some(newest.map_or(t, |x: SystemTime| x.max(t)));
            }
        });
    }
    (n, newest, size)
}

type Fingerprint = (usize, Option<SystemTime>, u64);

/// The page as last built: from which state of the files, when, and how long building took.
struct Built {
    fingerprint: Fingerprint,
    site: Arc<Site>,
    checked: Instant,
    build_s: f64,
}

struct Served {
    dirs: Vec<PathBuf>,
    built: Mutex<Built>,
}

/// While a run writes, its files change at every record: the page is rebuilt no sooner than this
/// many times its last build's duration after it, so that reading a large run takes at most a
/// tenth of a core from the run itself.
const REBUILD_EVERY_BUILDS: f64 = 10.0;

impl Served {
    fn build(dirs: &[PathBuf]) -> Built {
        let t = Instant::now();
        let fingerprint = fingerprint(dirs);
        let snaps: Vec<Snapshot> = dirs.iter().map(|d| Snapshot::read(d)).collect();
        let site = Arc::new(site::build(&snaps, "server"));
        Built {
            fingerprint,
            site,
            checked: Instant::now(),
            build_s: t.elapsed().as_secs_f64(),
        }
    }

    /// The page's files, rebuilt when the runs changed (looked at most once a second, and no
    /// sooner than [`REBUILD_EVERY_BUILDS`] builds' time after the last).
    fn site(&self, fresh: bool) -> Arc<Site> {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        let wait = (REBUILD_EVERY_BUILDS * built.build_s).max(1.0);
        if fresh && built.checked.elapsed().as_secs_f64() >= wait {
            if fingerprint(&self.dirs) != built.fingerprint {
                *built = Self::build(&self.dirs);
            } else {
                built.checked = Instant::now();
            }
        }
        built.site.clone()
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn file(site: &Site, path: &str) -> Response {
    match site.get(path) {
        Some(bytes) => (
            [
                (header::CONTENT_TYPE, content_type(path)),
                (header::CACHE_CONTROL, "no-store"),
            ],
            bytes.clone(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, format!("no {path} in this view\n")).into_response(),
    }
}

async fn index(State(s): State<Arc<Served>>) -> Response {
    file(&s.site(true), "index.html")
}

async fn asset(State(s): State<Arc<Served>>, UrlPath(path): UrlPath<String>) -> Response {
    // The data is what changes while a run goes; details are read from the same build.
    let fresh = path == "data.js";
    file(&s.site(fresh), &path)
}

pub fn run(a: ViewArgs) -> Result<()> {
    for d in &a.runs {
        if !d.is_dir() {
            bail!(
                "{}: no such directory\n  hint: `srlm view RUN_DIR` takes the --out directory of `srlm run`",
                d.display()
            );
        }
    }
    let dirs = a.runs.clone();
    let served = Arc::new(Served {
        built: Mutex::new(Served::build(&dirs)),
        dirs,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}:{}\n  hint: --port 0 picks a free port",
                    a.host, a.port
                )
            })?;
        let addr = listener.local_addr()?;
        let names: Vec<String> = a.runs.iter().map(|d| d.display().to_string()).collect();
        let mut out = std::io::stdout();
        writeln!(
            out,
            "srlm view: {} at http://{addr}/ (Ctrl-C to stop)",
            names.join(" and ")
        )?;
        out.flush()?;
        let app = Router::new()
            .route("/", get(index))
            .route("/{*path}", get(asset))
            .with_state(served);
        // Ctrl-C ends the process: the page holds nothing that needs saving.
        axum::serve(listener, app).await?;
        Ok(())
    })
}

/// Writes the page for `run` into `out` (the report directory) as static files, replacing the
/// detail files of an earlier report there.
pub fn write_static(run: &Path, out: &Path) -> Result<PathBuf> {
    let site = site::build(&[Snapshot::read(run)], "static");
    let detail = out.join("detail");
    std::fs::create_dir_all(&detail)?;
    // Detail files of an earlier report that this one does not have (fewer prompts): only
    // files named as this module names them are removed.
    if let Ok(rd) = std::fs::read_dir(&detail) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name.starts_with('r')
                && name.ends_with(".js")
                && name[1..name.len() - 3]
                    .split_once('-')
                    .is_some_and(|(a, b)| {
                        a.chars().all(|c| c.is_ascii_digit())
                            && b.chars().all(|c| c.is_ascii_digit())
                    });
            if ours && !site.contains_key(&format!("detail/{name}")) {
                std::fs::remove_file(e.path())?;
            }
        }
    }
    for (path, bytes) in &site {
        srlm_core::jsonl::write_atomic(&out.join(path), bytes)?;
    }
    Ok(out.join("index.html"))
}
