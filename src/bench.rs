//! `chatq bench`: hands over to `chatq-bench`, the benchmark harness. The harness is an
//! executable of its own (the `chatq-bench` crate), so the `chatq` that is deployed carries no
//! load generator; `cargo build --release --workspace` builds both into one directory.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context as _;

/// The harness's executable name, without the platform's suffix.
const BENCH: &str = "chatq-bench";

/// Runs `chatq-bench` with `args` and ends this process with its exit status. On Unix the
/// harness replaces this process, so signals (Ctrl-C) and the exit status are its own.
///
/// # Errors
/// `chatq-bench` is neither beside this executable nor on `PATH`, or it cannot be started.
pub fn run(args: Vec<OsString>) -> anyhow::Result<()> {
    let bench = find()?;
    let mut command = std::process::Command::new(&bench);
    command.args(args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        // The harness names itself after its argv[0]: make its usage lines, and the command its
        // report records, read as typed (`target/release/chatq bench ...`).
        let mut invoked_as = std::env::args_os().next().unwrap_or_else(|| "chatq".into());
        invoked_as.push(" bench");
        command.arg0(invoked_as);
        let err = command.exec();
        Err(err).with_context(|| format!("cannot run {}", bench.display()))
    }
    #[cfg(not(unix))]
    {
        let status = command
            .status()
            .with_context(|| format!("cannot run {}", bench.display()))?;
        std::process::exit(status.code().unwrap_or(1))
    }
}

/// `chatq-bench` beside this executable, else the first on `PATH`.
fn find() -> anyhow::Result<PathBuf> {
    let file = format!("{BENCH}{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(&file));
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(&file))
                .collect()
        })
        .unwrap_or_default();
    let directory = beside.as_ref().and_then(|path| path.parent()).map_or_else(
        || "this executable's directory".into(),
        |dir| dir.display().to_string(),
    );
    beside
        .into_iter()
        .chain(on_path)
        .find(|candidate| candidate.is_file())
        .with_context(|| {
            format!(
                "`chatq bench` runs the benchmark harness, {BENCH}, which is built on its own and \
                 was found neither in {directory} nor on PATH. Build it with `cargo build \
                 --release -p {BENCH}` (or everything with `cargo build --release --workspace`), \
                 then run `chatq bench` again."
            )
        })
}
