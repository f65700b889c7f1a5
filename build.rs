//! Build-time facts for `tiergate_build_info`: the git commit, from `GIT_COMMIT` when
//! set (a Docker build has no `.git`), else `git rev-parse`, else "unknown". Not a
//! `TIERGATE_` name: cargo also sets it in the environment of what `cargo test` runs, and the
//! binary reads every `TIERGATE_<SECTION>_<KEY>` as config.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=GIT_COMMIT");
    let commit = std::env::var("GIT_COMMIT").ok().or_else(|| {
        let git = |args: &[&str]| {
            let out = Command::new("git").args(args).output().ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        // Rebuilt when HEAD moves: the file HEAD names, and HEAD itself.
        // (A worktree's HEAD is its own; the branch it names lives in the common directory.)
        if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
            println!("cargo:rerun-if-changed={dir}/HEAD");
        }
        if let (Some(common), Some(head)) = (
            git(&["rev-parse", "--git-common-dir"]),
            git(&["symbolic-ref", "-q", "HEAD"]),
        ) {
            println!("cargo:rerun-if-changed={common}/{head}");
            println!("cargo:rerun-if-changed={common}/packed-refs");
        }
        git(&["rev-parse", "--short=12", "HEAD"])
    });
    let commit = commit
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=GIT_COMMIT={commit}");
}
