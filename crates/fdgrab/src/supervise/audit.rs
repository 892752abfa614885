//! One JSON line per supervisor decision.
//!
//! Fields: `time` (RFC 3339, UTC), `pid`, `tid`, `exe`, `uid`, `family`
//! (`inet`, `inet6`, `unix`, or the number), `proto`, `address`, `port`,
//! `decision`, `errno` (the number the program saw, 0 for success, null when the
//! kernel decided), `decided_by` (`kernel` or `fdgrab`), `reason`, `netns` (the socket's network namespace inode, or
//! the caller's when the socket was not looked at), and `container_id`,
//! `bundle`, `pod`, `namespace`, `container_name` when known.

use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    /// Whose share of a full audit queue these lines use (0: nobody's in
    /// particular). Not written. [`AuditLabels::from_state`] derives it from
    /// the whole container id, not the cut one: two ids that share their
    /// first 4 KiB are two owners.
    pub owner: u64,
    /// The pod sandbox's id, as containerd or CRI-O set it (after any
    /// annotation of the pod's own): the one label that says which
    /// containers are one pod's, across their restarts. Each key of
    /// [`SANDBOX_KEYS`] that is set, in order: a runtime sets its own key
    /// but may pass the other's on from the pod, so the one set is not
    /// proof of which runtime made the spec, and taking either alone let a
    /// pod name another sandbox through the other runtime's key. With both,
    /// the runtime's own is always part of it. Not written.
    pub sandbox: Option<[Option<String>; 2]>,
}

/// Annotation keys that carry the pod sandbox's id: containerd's and CRI-O's.
const SANDBOX_KEYS: [&str; 2] = [
    "io.kubernetes.cri.sandbox-id",
    "io.kubernetes.cri-o.SandboxID",
];

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
            container_id: Some(capped(&state.state.id)),
            bundle: Some(capped(&state.state.bundle)),
            pod: pick(&POD_KEYS).map(|v| capped(&v)),
            namespace: pick(&NAMESPACE_KEYS).map(|v| capped(&v)),
            container_name: pick(&CONTAINER_NAME_KEYS).map(|v| capped(&v)),
            sandbox: Some(SANDBOX_KEYS.map(|k| pick(&[k])))
                .filter(|ids| ids.iter().any(Option::is_some)),
            owner: {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(&state.state.id, &mut h);
                std::hash::Hasher::finish(&h)
            },
        }
    }
}

/// The most bytes of a runtime-given label (container id, bundle, pod name)
/// that go into audit lines and logs: a pod name has at most 253, a bundle is a
/// path (4,096), and a document may hold a megabyte, which repeated on every
/// line of that container would fill the audit queue all containers share.
pub const MAX_LABEL_BYTES: usize = 4096;

/// `text`, cut to [`MAX_LABEL_BYTES`] at a character boundary and marked with
/// how much was left out.
pub fn capped(text: &str) -> String {
    if text.len() <= MAX_LABEL_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_LABEL_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} more bytes]", &text[..end], text.len() - end)
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
    /// See [`AuditLabels::owner`].
    #[serde(skip)]
    pub owner: u64,
}

/// Bytes an audit sink that does not keep up may owe before whole lines are
/// dropped: a few hundred lines.
const MAX_PENDING: usize = 256 * 1024;

/// What a pipe writes whole or not at all (`pipe(7)`), Linux's `PIPE_BUF`.
const PIPE_BUF: usize = 4096;

/// How often, at most, dropped lines are logged while a sink stays stalled.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(10);

/// An audit line as written: the record and who gave the caller its answer.
#[derive(Serialize)]
struct Line<'r, 'a> {
    #[serde(flatten)]
    record: &'r AuditRecord<'a>,
    /// `kernel` for `continue` (the kernel ran the call with the caller's own
    /// rights, after the supervisor let go of it: its result is not known
    /// here, so `errno` is null), `fdgrab` otherwise.
    decided_by: &'static str,
}

/// Where the lines go. Every write is non-blocking: a pipe or FIFO nobody reads
/// (or a stuck terminal) must not hold a decision, nor the lock every worker
/// takes to audit. What the sink does not take at once waits in `pending`,
/// bounded; beyond that, new lines are dropped and counted.
struct Writer {
    fd: OwnedFd,
    /// Sockets take `MSG_DONTWAIT` per call; other fds were opened `O_NONBLOCK`.
    socket: bool,
    /// A pipe or FIFO: written in whole lines of at most `PIPE_BUF` bytes per
    /// call, which the kernel writes entirely or not at all.
    pipe: bool,
    /// Bytes written to nobody yet, whole lines except maybe the first.
    pending: Vec<u8>,
    /// Whether `pending` starts in the middle of a line (its head was written).
    pending_partial: bool,
    /// Whose each line in `pending` is and how many of its bytes are there
    /// still, in order (they add up to `pending.len()`).
    lines: VecDeque<(u64, usize)>,
    /// Bytes in `pending` per owner (a container): the queue is shared, and a
    /// container that floods it must not crowd out another's lines.
    held: HashMap<u64, usize>,
    last_drop_report: Option<Instant>,
    dropped_since_report: u64,
}

impl Writer {
    fn new(fd: OwnedFd) -> Self {
        let kind = rustix::fs::fstat(&fd)
            .ok()
            .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode));
        Writer {
            fd,
            socket: kind.is_some_and(|k| k.is_socket()),
            pipe: kind == Some(rustix::fs::FileType::Fifo),
            pending: Vec::new(),
            pending_partial: false,
            lines: VecDeque::new(),
            held: HashMap::new(),
            last_drop_report: None,
            dropped_since_report: 0,
        }
    }

    fn write_some(&self, buf: &[u8]) -> rustix::io::Result<usize> {
        if self.socket {
            rustix::net::send(
                &self.fd,
                buf,
                rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
            )
        } else {
            rustix::io::write(&self.fd, buf)
        }
    }

    /// Where the write starting at `from` ends. A pipe takes whole lines, up to
    /// `PIPE_BUF` bytes at once: a larger write could stop in the middle of a
    /// line, whose head a reader then has (and, after a reopen, whose tail nobody
    /// gets). A single longer line goes alone.
    fn chunk_end(&self, from: usize) -> usize {
        let rest = &self.pending[from..];
        if !self.pipe || rest.len() <= PIPE_BUF {
            return self.pending.len();
        }
        let end = match rest[..PIPE_BUF].iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| i + 1),
        };
        from + end
    }

    /// Writes what is pending, as far as the sink takes it without waiting.
    fn flush(&mut self) {
        let mut done = 0;
        while done < self.pending.len() {
            let end = self.chunk_end(done);
            match self.write_some(&self.pending[done..end]) {
                Ok(0) | Err(_) => break,
                Ok(n) => done += n,
            }
        }
        if done > 0 {
            let line_end = self.pending[..done].iter().rposition(|&b| b == b'\n');
            self.pending.drain(..done);
            self.written(done);
            self.pending_partial = match line_end {
                Some(i) => i + 1 < done,
                None => true,
            };
        }
    }

    /// `n` bytes from the head of `pending` were written (and drained).
    fn written(&mut self, mut n: usize) {
        while n > 0 {
            let Some((owner, len)) = self.lines.front_mut() else {
                break;
            };
            let k = n.min(*len);
            *len -= k;
            n -= k;
            let owner = *owner;
            if *len == 0 {
                self.lines.pop_front();
            }
            self.release(owner, k);
        }
    }

    fn release(&mut self, owner: u64, bytes: usize) {
        if let Some(h) = self.held.get_mut(&owner) {
            *h = h.saturating_sub(bytes);
            if *h == 0 {
                self.held.remove(&owner);
            }
        }
    }

    fn enqueue(&mut self, owner: u64, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        self.lines.push_back((owner, bytes.len()));
        *self.held.entry(owner).or_default() += bytes.len();
    }

    /// Makes room for `len` bytes of `owner` in a full queue, if `owner` holds
    /// less than an equal share of it: whole lines of whoever else holds the
    /// most go, oldest first (never the line whose head was written). Returns
    /// how many lines went, and whether the line now fits.
    fn make_room(&mut self, owner: u64, len: usize) -> (u64, bool) {
        let owners = self.held.len() + usize::from(!self.held.contains_key(&owner));
        let share = MAX_PENDING / owners.max(1);
        let mine = self.held.get(&owner).copied().unwrap_or(0);
        let mut evicted = 0;
        if mine + len > share {
            return (evicted, false);
        }
        while self.pending.len() + len > MAX_PENDING {
            let from = usize::from(self.pending_partial);
            let hog = self
                .held
                .iter()
                .filter(|&(&o, _)| o != owner)
                .max_by_key(|&(_, &h)| h)
                .map(|(&o, _)| o);
            let Some(i) =
                hog.and_then(|hog| self.lines.iter().skip(from).position(|&(o, _)| o == hog))
            else {
                return (evicted, false);
            };
            let i = i + from;
            let start: usize = self.lines.iter().take(i).map(|&(_, l)| l).sum();
            let Some((hog, l)) = self.lines.remove(i) else {
                return (evicted, false);
            };
            self.pending.drain(start..start + l);
            self.release(hog, l);
            evicted += 1;
        }
        (evicted, true)
    }

    /// Takes one line of `owner`'s; `Err` when it was dropped (and why). Both
    /// carry how many queued lines of others were dropped to make room.
    fn push(&mut self, owner: u64, line: &[u8]) -> Result<u64, (u64, String)> {
        self.flush();
        if self.pending.is_empty() {
            match self.write_some(line) {
                Ok(n) if n == line.len() => return Ok(0),
                Ok(n) => {
                    self.enqueue(owner, &line[n..]);
                    self.pending_partial = n > 0;
                    return Ok(0);
                }
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
                Err(e) => return Err((0, e.to_string())),
            }
        }
        let mut evicted = 0;
        if self.pending.len() + line.len() > MAX_PENDING {
            let (went, fits) = self.make_room(owner, line.len());
            evicted = went;
            if !fits {
                return Err((
                    evicted,
                    format!(
                        "the sink takes no more ({} bytes waiting)",
                        self.pending.len()
                    ),
                ));
            }
        }
        if self.pending.is_empty() {
            self.pending_partial = false;
        }
        self.enqueue(owner, line);
        Ok(evicted)
    }

    /// Hands what is still pending over to `next` (after a reopen): the tail of a
    /// line begun in the old file is dropped, whole lines move.
    fn hand_over(&mut self, next: &mut Writer) -> u64 {
        self.flush();
        let mut lost = 0;
        let mut rest = std::mem::take(&mut self.pending);
        if self.pending_partial {
            let cut = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| i + 1);
            rest.drain(..cut);
            lost = 1;
            if let Some((owner, len)) = self.lines.pop_front() {
                self.release(owner, len);
            }
        }
        next.pending = rest;
        next.lines = std::mem::take(&mut self.lines);
        next.held = std::mem::take(&mut self.held);
        next.pending_partial = false;
        next.last_drop_report = self.last_drop_report;
        next.dropped_since_report = self.dropped_since_report;
        lost
    }
}

enum Sink {
    None,
    /// Standard output (`path` None) or the file opened at `path`, which
    /// [`AuditSink::reopen`] opens again.
    Out(Mutex<Writer>, Option<PathBuf>),
}

/// Where audit lines go.
pub struct AuditSink {
    sink: Sink,
    dropped: AtomicU64,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.sink {
            Sink::None => "none",
            Sink::Out(_, None) => "stdout",
            Sink::Out(_, Some(_)) => "file",
        };
        f.debug_struct("AuditSink").field("sink", &kind).finish()
    }
}

impl AuditSink {
    fn with(sink: Sink) -> Self {
        Self {
            sink,
            dropped: AtomicU64::new(0),
        }
    }

    /// Appends to `path`, creating it (mode 0600) if needed.
    pub fn from_path(path: &Path) -> io::Result<Self> {
        Ok(Self::with(Sink::Out(
            Mutex::new(Writer::new(open_append(path)?)),
            Some(path.to_path_buf()),
        )))
    }

    /// Opens the path again and writes there from now on (logrotate moved the
    /// old file away). On failure the old file stays in use. A no-op for stdout.
    pub fn reopen(&self) -> io::Result<()> {
        let Sink::Out(writer, Some(path)) = &self.sink else {
            return Ok(());
        };
        let mut new = Writer::new(open_append(path)?);
        let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
        let lost = w.hand_over(&mut new);
        *w = new;
        self.dropped.fetch_add(lost, Ordering::Relaxed);
        Ok(())
    }

    /// Writes to standard output, through a descriptor of its own that never
    /// blocks: a pipe, FIFO or terminal is opened again through
    /// `/proc/self/fd/1` with `O_NONBLOCK` (changing fd 1's own flags would
    /// change them for every process sharing it); a socket (the journal's
    /// stdout stream) takes `MSG_DONTWAIT` per write.
    pub fn stdout() -> Self {
        let stdout = io::stdout();
        let out = std::os::fd::AsFd::as_fd(&stdout);
        let kind = rustix::fs::fstat(out)
            .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode))
            .ok();
        let reopened = matches!(
            kind,
            Some(rustix::fs::FileType::Fifo | rustix::fs::FileType::CharacterDevice)
        )
        .then(|| {
            rustix::fs::open(
                "/proc/self/fd/1",
                rustix::fs::OFlags::WRONLY
                    | rustix::fs::OFlags::APPEND
                    | rustix::fs::OFlags::NONBLOCK
                    | rustix::fs::OFlags::NOCTTY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok()
        })
        .flatten();
        let fd = match reopened {
            Some(fd) => Some(fd),
            None => rustix::io::fcntl_dupfd_cloexec(out, 3).ok(),
        };
        match fd {
            Some(fd) => Self::with(Sink::Out(Mutex::new(Writer::new(fd)), None)),
            None => {
                tracing::error!("cannot duplicate standard output for audit lines; not auditing");
                Self::none()
            }
        }
    }

    /// Writes nothing (decisions still go to `tracing`).
    pub fn none() -> Self {
        Self::with(Sink::None)
    }

    /// Whether lines are written at all; gathering `exe` and `uid` costs syscalls.
    pub fn is_enabled(&self) -> bool {
        !matches!(self.sink, Sink::None)
    }

    /// Writes what waits in the queue, as far as the sink takes it without
    /// waiting; returns whether some still waits. Lines queued while a FIFO's
    /// reader lagged must reach it once it reads again, even if no decision
    /// follows to push them: whoever owns the sink calls this while it is true.
    pub fn flush(&self) -> bool {
        let Sink::Out(writer, _) = &self.sink else {
            return false;
        };
        let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
        w.flush();
        !w.pending.is_empty()
    }

    /// Lines dropped since start because the sink did not take them.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes one line without waiting for the sink. A full disk or a pipe
    /// nobody reads must not stop the supervisor from answering: a line the
    /// sink cannot take is dropped, counted ([`AuditSink::dropped`]) and
    /// reported to `tracing` (at most every ten seconds while it lasts).
    pub fn write(&self, record: &AuditRecord<'_>) {
        let Sink::Out(writer, path) = &self.sink else {
            return;
        };
        let decided_by = match record.decision {
            Decision::Continue => "kernel",
            _ => "fdgrab",
        };
        let mut line = match serde_json::to_vec(&Line { record, decided_by }) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode an audit record");
                return;
            }
        };
        line.push(b'\n');
        let owner = record.owner;
        let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
        let (dropped, why) = match w.push(owner, &line) {
            Ok(0) => return,
            Ok(evicted) => (
                evicted,
                "a container held more than its share of the queue".to_owned(),
            ),
            Err((evicted, why)) => (evicted + 1, why),
        };
        let total = self.dropped.fetch_add(dropped, Ordering::Relaxed) + dropped;
        w.dropped_since_report += dropped;
        let now = Instant::now();
        if w.last_drop_report
            .is_none_or(|t| now.duration_since(t) >= DROP_REPORT_EVERY)
        {
            let sink = path
                .as_ref()
                .map_or_else(|| "standard output".to_owned(), |p| p.display().to_string());
            tracing::warn!(
                sink = %sink,
                dropped = w.dropped_since_report,
                dropped_total = total,
                reason = %why,
                "audit lines dropped: the audit sink does not take them (a pipe or FIFO nobody reads?)"
            );
            w.last_drop_report = Some(now);
            w.dropped_since_report = 0;
        }
    }
}

impl Drop for AuditSink {
    /// A last try for the queued lines (an agent that ends with its audit
    /// FIFO's reader catching up), still without waiting.
    fn drop(&mut self) {
        self.flush();
    }
}

fn open_append(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking, and left so: a FIFO nobody reads fails the open with ENXIO
    // instead of hanging the agent's thread in open(2), and one whose reader
    // stops reading fills up without blocking a write (regular files ignore
    // the flag).
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    Ok(file.into())
}

/// Whether copying a socket out of a process (`pidfd_getfd`, like receiving it
/// over `SCM_RIGHTS`) could change it: the kernel re-tags a received socket with
/// the receiver's cgroup-v1 `net_cls` class id and `net_prio` index. Those can
/// differ from the owner's only where a v1 `net_cls` or `net_prio` hierarchy
/// holds cgroups besides its root (`/proc/cgroups`); unreadable counts as yes.
pub(crate) fn copying_a_socket_retags_it() -> bool {
    std::fs::read_to_string("/proc/cgroups").map_or(true, |t| retagging_hierarchies(&t))
}

fn retagging_hierarchies(proc_cgroups: &str) -> bool {
    proc_cgroups
        .lines()
        .filter(|l| !l.starts_with('#'))
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            matches!(f.as_slice(), [name, hierarchy, cgroups, enabled, ..]
                if matches!(*name, "net_cls" | "net_prio")
                    && *hierarchy != "0"
                    && *enabled != "0"
                    && cgroups.parse::<u64>().map_or(true, |n| n > 1))
        })
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

    fn consistent(w: &Writer) {
        let queued: usize = w.lines.iter().map(|&(_, l)| l).sum();
        assert_eq!(queued, w.pending.len());
        assert_eq!(w.held.values().sum::<usize>(), w.pending.len());
    }

    /// One container flooding a sink that does not keep up must not crowd
    /// another's lines out of the queue they share.
    #[test]
    fn a_flooding_owner_cannot_crowd_out_another() {
        let (r, wr) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::NONBLOCK | rustix::pipe::PipeFlags::CLOEXEC,
        )
        .expect("pipe");
        let mut w = Writer::new(wr);
        let line = |c: u8| {
            let mut l = vec![c; 499];
            l.push(b'\n');
            l
        };
        let mut dropped = 0;
        for _ in 0..2000 {
            if w.push(1, &line(b'a')).is_err() {
                dropped += 1;
            }
            consistent(&w);
        }
        assert!(dropped > 0, "the flood filled the pipe and the queue");
        // The neighbour's lines still get in, at the flooder's expense, up to
        // half the queue between the two.
        for i in 0..100 {
            let r = w.push(2, &line(b'b'));
            assert!(matches!(r, Ok(n) if n >= 1), "line {i}: {r:?}");
            consistent(&w);
        }
        assert!(w.held[&1] >= MAX_PENDING / 2 - 500, "{:?}", w.held);
        // The flooder is held to its share while the neighbour holds its own.
        assert!(w.push(1, &line(b'a')).is_err());
        // Everything queued reaches a reader, in whole lines.
        let mut text = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            w.flush();
            match rustix::io::read(&r, &mut buf) {
                Ok(0) | Err(_) if w.pending.is_empty() => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        consistent(&w);
        assert!(w.held.is_empty());
        let lines: Vec<&[u8]> = text
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert!(lines.iter().all(|l| l.len() == 499
            && (l[0] == b'a' || l[0] == b'b')
            && l.iter().all(|&c| c == l[0])));
        assert_eq!(lines.iter().filter(|l| l[0] == b'b').count(), 100);
    }

    #[test]
    fn long_labels_are_cut_at_a_character_boundary() {
        assert_eq!(capped("web-0"), "web-0");
        let exact = "a".repeat(MAX_LABEL_BYTES);
        assert_eq!(capped(&exact), exact);
        // A two-byte character straddling the limit is left out whole.
        let long = format!("{}é{}", "a".repeat(MAX_LABEL_BYTES - 1), "b".repeat(10));
        let cut = capped(&long);
        assert_eq!(
            cut,
            format!("{}…[12 more bytes]", "a".repeat(MAX_LABEL_BYTES - 1))
        );
    }

    #[test]
    fn socket_copies_retag_only_under_v1_net_cls_or_net_prio_cgroups() {
        let head = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t6\t1\n";
        // Attached to v1 but only the root cgroup: everyone's class id is the same.
        assert!(!retagging_hierarchies(&format!(
            "{head}net_cls\t13\t1\t1\nnet_prio\t0\t4\t1\n"
        )));
        // cgroup v2 only (hierarchy 0): no class ids at all.
        assert!(!retagging_hierarchies(&format!(
            "{head}net_cls\t0\t9\t1\nnet_prio\t0\t9\t1\n"
        )));
        assert!(retagging_hierarchies(&format!(
            "{head}net_cls\t13\t3\t1\nnet_prio\t0\t4\t1\n"
        )));
        assert!(retagging_hierarchies(&format!(
            "{head}net_cls\t0\t1\t1\nnet_prio\t5\t2\t1\n"
        )));
        assert!(!retagging_hierarchies(&format!(
            "{head}net_cls\t13\t3\t0\n"
        )));
    }

    #[test]
    fn pipes_take_whole_lines_of_at_most_pipe_buf() {
        let (_r, w) = rustix::pipe::pipe().expect("pipe");
        let mut wr = Writer::new(w);
        assert!(wr.pipe);
        let line = |c: u8, n: usize| {
            let mut l = vec![c; n - 1];
            l.push(b'\n');
            l
        };
        wr.pending = [line(b'a', 1000), line(b'b', 3000), line(b'c', 500)].concat();
        assert_eq!(wr.chunk_end(0), 4000);
        assert_eq!(wr.chunk_end(4000), 4500);
        // A line longer than PIPE_BUF goes alone.
        wr.pending = [line(b'd', 5000), line(b'e', 10)].concat();
        assert_eq!(wr.chunk_end(0), 5000);
        assert_eq!(wr.chunk_end(5000), 5010);
    }

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
            owner: 0,
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
