//! The commit the binary was built from, for `smsgate --version` and `smsgate_build_info`:
//! `SMSGATE_COMMIT` when set (a container build without the repository), else git's HEAD, else
//! "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SMSGATE_COMMIT");
    let commit = std::env::var("SMSGATE_COMMIT")
        .ok()
        .filter(|commit| !commit.trim().is_empty())
        .or_else(git_head)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SMSGATE_COMMIT={}", commit.trim());
}

/// HEAD's short hash, and a note to build again when HEAD or the branch it names moves.
fn git_head() -> Option<String> {
    let git = |args: &[&str]| {
        let output = Command::new("git").args(args).output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    let dir = git(&["rev-parse", "--git-dir"])?;
    println!("cargo:rerun-if-changed={dir}/HEAD");
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        println!("cargo:rerun-if-changed={dir}/{branch}");
    }
    println!("cargo:rerun-if-changed={dir}/packed-refs");
    git(&["rev-parse", "--short=12", "HEAD"])
}
