//! The bind policy and audit options that `run` and `agent` share
//! (`--allow-bind`, `--policy`, `--audit`), read the same way for both.

use crate::cli::BindPolicyArgs;
use crate::exit::UsageError;
use anyhow::{Context, Result};
use fdgrab::supervise::{AuditSink, Policy};
use std::path::Path;

/// The audit sink named by `--audit`: none, stdout for `-`, or an appended file.
pub fn open_audit(a: &BindPolicyArgs) -> Result<AuditSink> {
    Ok(match a.audit.as_deref() {
        None => AuditSink::none(),
        Some(p) if p == Path::new("-") => AuditSink::stdout(),
        Some(p) => AuditSink::from_path(p)
            .with_context(|| format!("cannot open audit file {}", p.display()))?,
    })
}

/// Every `--allow-bind` spec plus the `--policy` file.
pub fn load_policy(specs: &[String], file: Option<&Path>) -> Result<Policy> {
    let mut policy = Policy::from_specs(specs).map_err(|e| UsageError(e.to_string()))?;
    if let Some(path) = file {
        let from_file =
            Policy::from_file(path).map_err(|e| UsageError(format!("policy file {e}")))?;
        policy = policy.merge(from_file);
    }
    Ok(policy)
}
