//! `fdgrab profile`: prints a seccomp profile whose `bind` goes to the agent.

use crate::cli::ProfileArgs;
use crate::exit::UsageError;
use anyhow::Context;
use fdgrab::seccomp::profile::{runtime_default, to_agent_profile, Listener};
use std::io::Write;
use std::process::ExitCode;

pub fn run(a: ProfileArgs) -> anyhow::Result<ExitCode> {
    let text = match &a.from {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the profile {}", path.display()))?,
        None => runtime_default().to_owned(),
    };
    let listener = Listener {
        path: a.socket.to_string_lossy().into_owned(),
        metadata: a.metadata,
    };
    let source = a.from.as_ref().map_or_else(
        || "the built-in default".to_owned(),
        |p| p.display().to_string(),
    );
    let out = to_agent_profile(&text, &listener)
        .map_err(|e| UsageError(format!("--from {source}: {e}")))?;
    for note in &out.notes {
        eprintln!("fdgrab: note: {note}");
    }
    let mut json = serde_json::to_string_pretty(&out.profile).context("serialising the profile")?;
    json.push('\n');
    std::io::stdout()
        .lock()
        .write_all(json.as_bytes())
        .context("writing the profile to stdout")?;
    Ok(ExitCode::SUCCESS)
}
