//! `fdgrab profile`: prints a seccomp profile whose `bind` goes to the agent.

use crate::cli::ProfileArgs;
use crate::exit::UsageError;
use anyhow::Context;
use fdgrab::seccomp::profile::{runtime_default, to_agent_profile, ProfileListener};
use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

pub fn run(a: ProfileArgs) -> anyhow::Result<ExitCode> {
    let text = match &a.from {
        Some(path) => read_profile(path)?,
        None => runtime_default().to_owned(),
    };
    // JSON strings are UTF-8: any other name would come out as a different path.
    let socket = a.socket.to_str().ok_or_else(|| {
        UsageError(format!(
            "--socket {}: not UTF-8, so it cannot be written as listenerPath",
            a.socket.display()
        ))
    })?;
    let metadata_given = a.metadata.is_some();
    let listener = ProfileListener {
        path: socket.to_owned(),
        metadata: a.metadata,
    };
    let source = a.from.as_ref().map_or_else(
        || "the built-in default".to_owned(),
        |p| p.display().to_string(),
    );
    let out = to_agent_profile(&text, &listener)
        .map_err(|e| UsageError(format!("--from {source}: {e}")))?;
    // Given or kept from the input: either way every container using the profile
    // would get no privileged port if the agent could not read it.
    if let Some(meta) = out.profile.get("listenerMetadata") {
        let whose = if metadata_given {
            "--metadata".to_owned()
        } else {
            format!("--from {source}: listenerMetadata")
        };
        let checked = match meta.as_str() {
            Some(m) => {
                fdgrab::supervise::oci::check_listener_metadata(m).map_err(|e| e.to_string())
            }
            None => Err("not a string".to_owned()),
        };
        checked.map_err(|e| {
            UsageError(format!(
                "{whose} {meta}: the agent could not read it ({e}), and would grant no \
                 privileged port to any container using the profile"
            ))
        })?;
    }
    for note in &out.notes {
        crate::exit::eprint_line(format_args!("fdgrab: note: {note}"));
    }
    let mut json = serde_json::to_string_pretty(&out.profile).context("serialising the profile")?;
    json.push('\n');
    match &a.output {
        None => std::io::stdout()
            .lock()
            .write_all(json.as_bytes())
            .map_err(crate::exit::stdout_error("writing the profile to stdout"))?,
        Some(path) => write_atomically(path, json.as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Far more than any real profile (podman's default is some 30 KB): a larger
/// input is not one, and an endless one (/dev/zero) must not fill memory.
const MAX_PROFILE_BYTES: u64 = 16 << 20;

fn read_profile(path: &Path) -> anyhow::Result<String> {
    let context = || format!("reading the profile {}", path.display());
    let file = std::fs::File::open(path).with_context(context)?;
    let mut text = String::new();
    file.take(MAX_PROFILE_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(context)?;
    if text.len() as u64 > MAX_PROFILE_BYTES {
        return Err(UsageError(format!(
            "--from {}: larger than {} MiB, not a seccomp profile",
            path.display(),
            MAX_PROFILE_BYTES >> 20
        ))
        .into());
    }
    Ok(text)
}

/// Writes `data` to a temporary file next to `path`, then renames it over `path`:
/// a kubelet or runtime reading the profile sees the old one or the new one. The
/// temporary name is predictable, so it is created exclusively: a symlink or file
/// someone put there first is never written through, and never removed.
fn write_atomically(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| UsageError(format!("--output {}: not a file name", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| {
            // Not ours to remove: it may be a leftover of a run that was killed,
            // or something put there on purpose.
            let hint = if e.kind() == std::io::ErrorKind::AlreadyExists {
                " (it exists already: remove it if it is a leftover)"
            } else {
                ""
            };
            anyhow::Error::new(e).context(format!(
                "writing the profile to {}: creating {}{hint}",
                path.display(),
                tmp.display()
            ))
        })?;
    let result = file
        .write_all(data)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing the profile to {}", path.display()));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
