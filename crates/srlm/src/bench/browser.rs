//! A headless Chromium driven through ChromeDriver (W3C WebDriver, plain HTTP and JSON over
//! ureq): what `srlm bench view` times the run browser with, and what the browser test drives.
//! Chromium and its driver are Debian's packages `chromium` and `chromium-driver`; `.ci/run`
//! installs them where they are missing.

use base64::Engine;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The key WebDriver names an element by in its answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    url: String,
    session: String,
    agent: ureq::Agent,
    /// Chromium's profile, made fresh for this browser and removed with it.
    profile: PathBuf,
}

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .find(|p| p.is_file())
    })
}

/// Chromium and ChromeDriver, or why they cannot be used here.
pub fn tools() -> Result<(PathBuf, PathBuf), String> {
    let chromium = find(&["chromium", "chromium-browser", "google-chrome"]).ok_or(
        "no chromium on PATH (Debian: apt-get install chromium chromium-driver; .ci/run installs them)",
    )?;
    let driver = find(&["chromedriver"]).ok_or(
        "no chromedriver on PATH (Debian: apt-get install chromium-driver; .ci/run installs it)",
    )?;
    Ok((chromium, driver))
}

impl Browser {
    /// A fresh headless browser with a window of `width` x `height` pixels.
    pub fn start(width: u32, height: u32) -> Result<Browser, String> {
        let (chromium, driver) = tools()?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", driver.display()))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut b = Browser {
            driver: child,
            url: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            agent,
            profile: std::env::temp_dir()
                .join(format!("srlm-chromium-{}-{port}", std::process::id())),
        };
        let start = Instant::now();
        while b.call("GET", "/status", None).is_err() {
            if start.elapsed() > Duration::from_secs(20) {
                return Err("chromedriver did not answer within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The flags a closed network needs: no background connections, no first-run pages.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--allow-file-access-from-files",
            &format!("--window-size={width},{height}"),
            &format!("--user-data-dir={}", b.profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium.display().to_string(), "args": args}
        }}});
        let v = b.call("POST", "/session", Some(caps))?;
        b.session = v["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no session from chromedriver: {v}"))?
            .to_string();
        Ok(b)
    }

    /// One WebDriver command; its `value`, or the driver's error message.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.url);
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, b) => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(b.unwrap_or(json!({})).to_string()),
        };
        let mut resp = resp.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("{method} {path}: {e}: {text}"))?;
        if status >= 400 {
            return Err(format!(
                "{method} {path}: HTTP {status}: {}",
                v["value"]["message"]
            ));
        }
        Ok(v["value"].clone())
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    pub fn goto(&self, url: &str) -> Result<(), String> {
        self.session_call("POST", "/url", Some(json!({ "url": url })))
            .map(|_| ())
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page and returns its value.
    pub fn eval(&self, script: &str, args: Value) -> Result<Value, String> {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Waits until `script` returns something truthy, and returns it.
    pub fn wait_for(&self, script: &str, timeout: Duration) -> Result<Value, String> {
        let start = Instant::now();
        loop {
            let v = self.eval(script, json!([]))?;
            let truthy = !(v.is_null()
                || v == json!(false)
                || v == json!(0)
                || v == json!("")
                || v == json!([]));
            if truthy {
                return Ok(v);
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "not within {:.0} s: {script}",
                    timeout.as_secs_f64()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn element(&self, css: &str) -> Result<String, String> {
        let v = self.session_call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        v[ELEMENT]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no element {css}"))
    }

    #[allow(dead_code)] // the browser test (tests/view_browser.rs) clicks; the bench only reads
    pub fn click(&self, css: &str) -> Result<(), String> {
        let e = self.element(css)?;
        self.session_call("POST", &format!("/element/{e}/click"), None)
            .map(|_| ())
    }

    /// Types `text` into the element `css`, as a person would (key events included).
    pub fn type_into(&self, css: &str, text: &str) -> Result<(), String> {
        let e = self.element(css)?;
        self.session_call(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        )
        .map(|_| ())
    }

    /// The page as it shows now, as a PNG file.
    #[allow(dead_code)] // the browser test (tests/view_browser.rs) takes the screenshots
    pub fn screenshot(&self, path: &Path) -> Result<(), String> {
        let v = self.session_call("GET", "/screenshot", None)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().ok_or("no screenshot")?)
            .map_err(|e| format!("screenshot: {e}"))?;
        std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.session_call("DELETE", "", None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
