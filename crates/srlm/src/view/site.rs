//! The run browser's files: a page, its script and style (shipped in the binary, no network), the
//! runs' data as a script (`data.js`), and each prompt's details in chunks loaded on demand
//! (`detail/r{run}-{chunk}.js`). Scripts, not JSON, so that the same files work from a server
//! and opened as `file://`, where a page may not fetch.

use super::snapshot::{PromptDetail, Snapshot};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;

/// Prompts per detail file: a prompt page loads one file of about this many prompts.
pub const CHUNK: usize = 100;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// The page's files by path relative to its root.
pub type Site = BTreeMap<String, Vec<u8>>;

#[derive(Serialize)]
struct Data<'a> {
    /// Where the page came from: "server" (`srlm view`, refreshes itself) or "static".
    mode: &'a str,
    chunk: usize,
    runs: &'a [Snapshot],
}

/// `{opening}{value as JSON});`: a call of one of the page's functions with the data.
fn script(opening: &str, value: &impl Serialize) -> Vec<u8> {
    let json = serde_json::to_string(value).expect("the view's data serialises");
    format!("{opening}{json});\n").into_bytes()
}

/// Every file of the page for `runs` (one, or two side by side).
pub fn build(runs: &[Snapshot], mode: &str) -> Site {
    let mut site = Site::new();
    site.insert("index.html".into(), INDEX_HTML.as_bytes().to_vec());
    site.insert("app.js".into(), APP_JS.as_bytes().to_vec());
    site.insert("style.css".into(), STYLE_CSS.as_bytes().to_vec());
    site.insert(
        "data.js".into(),
        script(
            "srlmData(",
            &Data {
                mode,
                chunk: CHUNK,
                runs,
            },
        ),
    );
    // Most of the bytes are here (every candidate's and judgement's text): one chunk per task.
    let chunks: Vec<(usize, usize, &[PromptDetail])> = runs
        .iter()
        .enumerate()
        .flat_map(|(r, run)| {
            run.details
                .chunks(CHUNK)
                .enumerate()
                .map(move |(c, chunk)| (r, c, chunk))
        })
        .collect();
    let files: Vec<(String, Vec<u8>)> = chunks
        .into_par_iter()
        .map(|(r, c, chunk)| {
            let by_id: BTreeMap<&str, &PromptDetail> =
                chunk.iter().map(|d| (d.id.as_str(), d)).collect();
            (
                format!("detail/r{r}-{c}.js"),
                script(&format!("srlmDetail({r}, {c}, "), &by_id),
            )
        })
        .collect();
    site.extend(files);
    site
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prompt_lands_in_the_chunk_its_row_names() {
        let dir = tempfile::tempdir().unwrap();
        let it = dir.path().join("iter1");
        std::fs::create_dir_all(&it).unwrap();
        let mut prompts = String::new();
        for i in 0..(CHUNK + 5) {
            prompts.push_str(&format!("{{\"id\":\"it1-{i}\",\"prompt\":\"p{i}\"}}\n"));
        }
        std::fs::write(it.join("prompts.jsonl"), prompts).unwrap();
        let snap = Snapshot::read(dir.path());
        assert_eq!(snap.prompts.len(), CHUNK + 5);
        let site = build(&[snap], "static");
        let second = String::from_utf8(site["detail/r0-1.js"].clone()).unwrap();
        // Rows are in id order (it1-2 before it1-10), and chunk c holds rows c*CHUNK.. .
        assert!(second.starts_with("srlmDetail(0, 1, {"), "{second:.40}");
        assert!(second.contains(&format!("\"it1-{}\"", CHUNK + 4)));
        assert!(!second.contains("\"it1-0\""));
        assert!(site.contains_key("index.html") && site.contains_key("data.js"));
    }
}
