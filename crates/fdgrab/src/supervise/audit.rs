//! One JSON line per supervisor decision.
//!
//! Fields: `time` (RFC 3339, UTC), `pid`, `tid`, `exe`, `uid`, `family`
//! (`inet`, `inet6`, `unix`, or the number), `proto`, `address`, `port`,
//! `decision`, `errno` (the number the program saw, 0 for success, null when the
//! kernel decided), `reason`, `netns` (the socket's network namespace inode, or
//! the caller's when the socket was not looked at), and `container_id`,
//! `bundle`, `pod`, `namespace`, `container_name` when known.

use serde::Serialize;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Labels added to every line of one listener (the OCI agent fills these in).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditLabels {
    /// The OCI container id.
    pub container_id: Option<String>,
    /// The container's bundle directory.
    pub bundle: Option<String>,
    /// Kubernetes pod name, namespace and container name, from the runtime's
    /// annotations when it passes them.
    pub pod: Option<String>,
    /// The pod's namespace (see `pod`).
    pub namespace: Option<String>,
    /// The container's name in its pod (see `pod`).
    pub container_name: Option<String>,
}

/// Annotation keys that carry the pod name, its namespace and the container name:
/// the CRI's own (set by the kubelet, passed on by containerd and CRI-O), then
/// containerd's and CRI-O's.
const POD_KEYS: [&str; 3] = [
    "io.kubernetes.pod.name",
    "io.kubernetes.cri.sandbox-name",
    "io.kubernetes.cri-o.Name",
];
const NAMESPACE_KEYS: [&str; 2] = [
    "io.kubernetes.pod.namespace",
    "io.kubernetes.cri.sandbox-namespace",
];
const CONTAINER_NAME_KEYS: [&str; 3] = [
    "io.kubernetes.container.name",
    "io.kubernetes.cri.container-name",
    "io.kubernetes.cri-o.ContainerName",
];

impl AuditLabels {
    /// Labels for a container described by its runtime.
    pub fn from_state(state: &super::oci::ContainerProcessState) -> Self {
        let pick = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| state.state.annotations.get(*k))
                .filter(|v| !v.is_empty())
                .cloned()
        };
        Self {
            container_id: Some(state.state.id.clone()),
            bundle: Some(state.state.bundle.clone()),
            pod: pick(&POD_KEYS),
            namespace: pick(&NAMESPACE_KEYS),
            container_name: pick(&CONTAINER_NAME_KEYS),
        }
    }
}

/// What the supervisor did with one trapped call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The supervisor performed the bind; `errno` is its result (0 on success).
    Bind,
    /// The socket was already bound to the requested address (a call restarted
    /// after a signal); answered 0.
    AlreadyBound,
    /// Handed back to the kernel (`CONTINUE`): it decides with the program's own
    /// credentials.
    Continue,
    /// Answered with an error without running the call.
    Refused,
}

/// One decision, as written.
#[derive(Clone, Debug, Serialize)]
pub struct AuditRecord<'a> {
    /// When, RFC 3339 in UTC with microseconds.
    pub time: String,
    /// The caller's process id in our pid namespace, when known.
    pub pid: Option<i32>,
    /// The caller's thread id in our pid namespace (0: outside it).
    pub tid: i32,
    /// The caller's executable, when it could be read.
    pub exe: Option<String>,
    /// The caller's effective uid, when it could be read.
    pub uid: Option<u32>,
    /// The trapped call, e.g. `bind`.
    pub syscall: &'a str,
    /// The address family asked for (`inet`, `inet6`, `unix`, ...).
    pub family: Option<String>,
    /// `tcp` or `udp`, once the socket was examined.
    pub proto: Option<&'a str>,
    /// The address asked for, when it is an IP one.
    pub address: Option<String>,
    /// The port asked for, when it is an IP address.
    pub port: Option<u16>,
    /// What was done.
    pub decision: Decision,
    /// What the caller got: 0 or an errno.
    pub errno: Option<i32>,
    /// Why, in words.
    pub reason: &'a str,
    /// See [`AuditLabels::container_id`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<&'a str>,
    /// See [`AuditLabels::bundle`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle: Option<&'a str>,
    /// See [`AuditLabels::pod`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<&'a str>,
    /// See [`AuditLabels::namespace`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<&'a str>,
    /// See [`AuditLabels::container_name`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_name: Option<&'a str>,
    /// The network namespace (nsfs inode, as in `/proc/PID/ns/net`) of the
    /// socket, or of the caller when the socket was not looked at.
    pub netns: Option<u64>,
}

enum Sink {
    None,
    Stdout,
    /// The file and the path it was opened at, for [`AuditSink::reopen`].
    File(Mutex<File>, PathBuf),
}

/// Where audit lines go.
pub struct AuditSink {
    sink: Sink,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.sink {
            Sink::None => "none",
            Sink::Stdout => "stdout",
            Sink::File(..) => "file",
        };
        f.debug_struct("AuditSink").field("sink", &kind).finish()
    }
}

impl AuditSink {
    /// Appends to `path`, creating it (mode 0600) if needed.
    pub fn from_path(path: &Path) -> io::Result<Self> {
        Ok(Self {
            sink: Sink::File(Mutex::new(open_append(path)?), path.to_path_buf()),
        })
    }

    /// Opens the path again and writes there from now on (logrotate moved the
    /// old file away). On failure the old file stays in use. A no-op for stdout.
    pub fn reopen(&self) -> io::Result<()> {
        let Sink::File(file, path) = &self.sink else {
            return Ok(());
        };
        let new = open_append(path)?;
        *file.lock().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }

    /// Writes to standard output.
    pub fn stdout() -> Self {
        Self { sink: Sink::Stdout }
    }

    /// Writes nothing (decisions still go to `tracing`).
    pub fn none() -> Self {
        Self { sink: Sink::None }
    }

    /// Whether lines are written at all; gathering `exe` and `uid` costs syscalls.
    pub fn is_enabled(&self) -> bool {
        !matches!(self.sink, Sink::None)
    }

    /// Writes one line. A full disk must not stop the supervisor from answering,
    /// so failures are reported to `tracing` and otherwise ignored.
    pub fn write(&self, record: &AuditRecord<'_>) {
        if !self.is_enabled() {
            return;
        }
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode an audit record");
                return;
            }
        };
        line.push(b'\n');
        let result = match &self.sink {
            Sink::None => Ok(()),
            Sink::Stdout => io::stdout().lock().write_all(&line),
            Sink::File(f, _) => match f.lock() {
                Ok(mut f) => f.write_all(&line),
                Err(_) => Err(io::Error::other("audit file lock poisoned")),
            },
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot write an audit record");
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking open: a FIFO nobody reads (put at the path between reloads)
    // fails with ENXIO instead of hanging the agent's thread in open(2). Writes
    // then block as usual.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let flags = rustix::fs::fcntl_getfl(&file)?;
    rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)?;
    Ok(file)
}

/// `SystemTime::now()` as RFC 3339 with microseconds, UTC.
pub fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_micros())
}

fn rfc3339(secs: i64, micros: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(
            rfc3339(1_798_761_599, 999_999),
            "2026-12-31T23:59:59.999999Z"
        );
    }

    #[test]
    fn lines_are_json() {
        let dir = std::env::temp_dir().join(format!("fdgrab-audit-{}", std::process::id()));
        let sink = AuditSink::from_path(&dir).expect("open");
        let rec = AuditRecord {
            time: rfc3339_now(),
            pid: Some(1),
            tid: 2,
            exe: Some("/bin/x".into()),
            uid: Some(65534),
            syscall: "bind",
            family: Some("inet".into()),
            proto: Some("tcp"),
            address: Some("127.0.0.1".into()),
            port: Some(80),
            decision: Decision::Bind,
            errno: Some(0),
            reason: "policy allows",
            container_id: Some("c1"),
            bundle: None,
            pod: Some("web-0"),
            namespace: None,
            container_name: None,
            netns: Some(4026531840),
        };
        sink.write(&rec);
        let text = std::fs::read_to_string(&dir).expect("read");
        let _ = std::fs::remove_file(&dir);
        let v: serde_json::Value = serde_json::from_str(text.trim()).expect("json");
        assert_eq!(v["decision"], "bind");
        assert_eq!(v["port"], 80);
        assert_eq!(v["container_id"], "c1");
        assert!(v.get("bundle").is_none());
        assert_eq!(v["pod"], "web-0");
    }
}
