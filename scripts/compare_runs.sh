#!/usr/bin/env bash
# Runs the same small `srlm run` (crates/srlm/tests/fixtures/tiny_run.toml, the run_cli
# tests' config: the tiny random model in crates/srlm-engine/tests/goldens/tiny-llama, two
# iterations, the bootstrap and both evaluations) with two srlm binaries and compares what they wrote: every file of the run
# directories byte for byte; JSON that differs only in wall-clock fields (seconds,
# tokens/s) counts as the same; of the manifest, the stage names, input hashes, outputs and
# stats are compared and the command lines and seconds are not (a refactor may spell a
# command differently; `srlm run`'s round-trip test proves each line runs its stage); the
# report and the resolved config, which restate the manifest and config, are skipped; of
# input_hashes.json, each input's full SHA-256 is compared (its fingerprint holds file times).
#
#   scripts/compare_runs.sh OLD_SRLM NEW_SRLM [WORKDIR]
#
# For example, before and after a refactor:
#   git worktree add /tmp/old <rev> && cargo build --release --manifest-path /tmp/old/Cargo.toml
#   scripts/compare_runs.sh /tmp/old/target/release/srlm target/release/srlm
set -euo pipefail
old=$(realpath "$1")
new=$(realpath "$2")
work=${3:-$(mktemp -d)}
root=$(cd "$(dirname "$0")/.." && pwd)
fixtures=$root/crates/srlm/tests/fixtures
mkdir -p "$work/tiny"
src=$root/crates/srlm-engine/tests/goldens/tiny-llama
for f in model.safetensors tokenizer.json tokenizer_config.json generation_config.json; do
  cp "$src/$f" "$work/tiny/"
done
python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); c["max_position_embeddings"]=4096; json.dump(c,open(sys.argv[2],"w"))' \
  "$src/config.json" "$work/tiny/config.json"
sed -e "s|@MODEL@|$work/tiny|" -e "s|@IFT@|$fixtures/tiny_seed_ift.jsonl|" \
  -e "s|@EFT@|$fixtures/tiny_seed_eft.jsonl|" "$fixtures/tiny_run.toml" > "$work/run.toml"
for side in old new; do
  rm -rf "$work/$side"
  bin=$old; [ "$side" = new ] && bin=$new
  echo "== $side: $bin" >&2
  # The same relative run directory on both sides: summaries name the paths they read.
  mkdir -p "$work/$side"
  ( cd "$work/$side" && "$bin" run --config ../run.toml --out run > out.txt 2> err.txt ) \
    || { echo "$side run failed: see $work/$side/err.txt" >&2; exit 1; }
done
cd "$work"
python3 - "$work" <<'EOF'
import json, os, sys
w = sys.argv[1]
TIMING = ("seconds", "elapsed", "per_s", "time")

def untimed(v):
    # Wall-clock fields (throughput, durations) differ between any two runs.
    if isinstance(v, dict):
        return {k: untimed(x) for k, x in v.items() if not any(t in k for t in TIMING)}
    if isinstance(v, list):
        return [untimed(x) for x in v]
    return v

def files(side):
    out = set()
    for d, _, fs in os.walk(f"{w}/{side}/run"):
        for f in fs:
            out.add(os.path.relpath(os.path.join(d, f), f"{w}/{side}/run"))
    return out

old, new = files("old"), files("new")
bad = sorted(old ^ new)
for f in bad:
    print(f"only in {'old' if f in old else 'new'}: {f}", file=sys.stderr)
same = timed = 0
for f in sorted(old & new):
    a, b = (open(f"{w}/{s}/run/{f}", "rb").read() for s in ("old", "new"))
    if a == b:
        same += 1
        continue
    if f in ("manifest.json", "config.toml", "report/report.md"):
        continue  # the manifest is compared below; the others restate it and the config
    if f == "input_hashes.json":
        # Keyed by absolute path, with a fingerprint of file times: the full hashes of the
        # same files (relative to the run) must agree.
        def hashes(side, raw):
            root = f"{w}/{side}/"
            return {k.replace(root, "", 1): v["sha256"] for k, v in json.loads(raw).items()}
        if hashes("old", a) == hashes("new", b):
            timed += 1
            continue
    if f.endswith(".jsonl") or f.endswith(".json"):
        la, lb = (
            [untimed(json.loads(l)) for l in x.decode().splitlines() if l.strip()]
            if f.endswith(".jsonl") else [untimed(json.loads(x))]
            for x in (a, b)
        )
        if la == lb:
            timed += 1
            continue
    bad.append(f)
    print(f"differs: {f}", file=sys.stderr)

# The manifest: the same stages, inputs (by hash), outputs and stats; command lines and
# seconds may differ.
def strip(side):
    m = json.load(open(f"{w}/{side}/run/manifest.json"))
    return {k: {f: v for f, v in e.items() if f not in ("command", "seconds")}
            for k, e in m["stages"].items()}
ma, mb = strip("old"), strip("new")
for k in sorted(set(ma) | set(mb)):
    if ma.get(k) != mb.get(k):
        bad.append(f"manifest:{k}")
        print(f"manifest stage `{k}` differs:\n  old {ma.get(k)}\n  new {mb.get(k)}", file=sys.stderr)
print(
    f"{same} files byte-identical, {timed} identical but for wall-clock fields; "
    f"manifest: {len(ma)} stages with the same inputs, outputs and stats; "
    f"{'IDENTICAL' if not bad else f'{len(bad)} DIFFERENCES'}",
    file=sys.stderr,
)
sys.exit(1 if bad else 0)
EOF
