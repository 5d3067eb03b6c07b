//! A crash on purpose, for the tests of resumption: with `SRLM_CRASH_AFTER=<where>:<n>`, the
//! process aborts (as a kill would stop it: no cleanup, no flush beyond what was already
//! written) once a stage whose output path contains `<where>` has written `n` records or
//! finished `n` training steps. Unset, it costs one environment lookup per call.

use std::path::Path;

pub fn crash_point(out: &Path, count: u64) {
    let Ok(spec) = std::env::var("SRLM_CRASH_AFTER") else {
        return;
    };
    let Some((place, n)) = spec.rsplit_once(':') else {
        return;
    };
    let Ok(n) = n.parse::<u64>() else {
        return;
    };
    if count >= n && out.display().to_string().contains(place) {
        eprintln!("srlm: SRLM_CRASH_AFTER={spec}: aborting");
        std::process::abort();
    }
}
