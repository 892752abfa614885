//! The OCI runtime's seccomp-agent protocol (runtime-spec `config-linux.md`,
//! `linux.seccomp.listenerPath`).
//!
//! When a container's seccomp profile names a `listenerPath`, the runtime (runc,
//! crun, youki) installs the filter with `SECCOMP_FILTER_FLAG_NEW_LISTENER`,
//! connects to that unix stream socket and sends one `ContainerProcessState` JSON
//! document with the listener fd attached in `SCM_RIGHTS`. The document's `fds`
//! array names the attached descriptors in order; the listener is the one named
//! `seccompFd`. The runtime then closes the connection and does not wait for an
//! answer, so nothing the agent does here delays the container's start beyond the
//! `connect`/`sendmsg` pair.
//!
//! Runtimes differ in details this module tolerates: runc 1.1.5 and crun 1.8.1
//! both report `status: "creating"`, and other versions may report `created` or
//! `running`; the `ociVersion` values differ (`1.0.2-dev`, `0.2.0`, ...) and are not
//! a compatibility signal here; crun pretty-prints the document, runc does not. A
//! document may arrive in several reads, and the descriptors come with its first
//! byte.
//!
//! A container can *narrow* the agent's policy, never widen it: through the
//! profile's `listenerMetadata` (`allow-bind=tcp:80,tcp:443`) and through the
//! annotation [`ALLOW_BIND_ANNOTATION`]. See [`container_policy`].

use crate::passfd::recv_fds;
use crate::supervise::policy::Policy;
use rustix::io::Errno;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

/// The descriptor name runtimes give the seccomp listener in `fds`.
pub const SECCOMP_FD_NAME: &str = "seccompFd";

/// The container annotation through which a container asks for fewer ports than
/// the agent allows: a comma-separated list of `fdgrab run` bind specs.
pub const ALLOW_BIND_ANNOTATION: &str = "org.fdgrab.allow-bind";

/// The `listenerMetadata` key with the same meaning as [`ALLOW_BIND_ANNOTATION`].
pub const METADATA_ALLOW_BIND: &str = "allow-bind";

/// Largest document accepted. Real ones are a few hundred bytes plus the
/// annotations; anything this large is a broken or hostile client.
pub const MAX_DOCUMENT: usize = 1 << 20;

/// More descriptors than any runtime sends today (one); a few more are read so
/// that an extra one is reported as such rather than as a truncated control message.
const MAX_FDS: usize = 8;

/// What the runtime sends (runtime-spec `ContainerProcessState`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerProcessState {
    /// The runtime's spec version; informational only.
    pub oci_version: String,
    /// Names of the attached descriptors, in `SCM_RIGHTS` order.
    pub fds: Vec<String>,
    /// The container process, in the runtime's (and so, normally, our) pid namespace.
    pub pid: i32,
    /// The profile's `listenerMetadata`, verbatim.
    #[serde(default)]
    pub metadata: Option<String>,
    /// The container's state at the time the filter was installed.
    pub state: ContainerState,
}

/// The runtime-spec `state` of the container.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    /// The runtime-spec version the runtime speaks.
    pub oci_version: String,
    /// The container id (64 hex digits under most runtimes).
    pub id: String,
    /// Where the container is in its life cycle.
    pub status: ContainerStatus,
    /// The container's init process, in the runtime's pid namespace.
    #[serde(default)]
    pub pid: Option<i32>,
    /// The bundle directory (where `config.json` is).
    pub bundle: String,
    /// The container's annotations (pod name and namespace come from here).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// The runtime-spec container status. Runtimes send the filter while the
/// container is `creating` (runc 1.1.5, crun 1.8.1); other versions may say
/// `created` or `running`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    /// Being created (the filter is installed now under runc and crun).
    Creating,
    /// Created, its process not yet started.
    Created,
    /// Its process runs.
    Running,
    /// Its process exited.
    Stopped,
}

/// A document with its listener, checked and ready to supervise.
#[derive(Debug)]
pub struct ContainerListener {
    /// The document the runtime sent.
    pub state: ContainerProcessState,
    /// The seccomp user-notification listener of the container's filter.
    pub notify_fd: OwnedFd,
}

/// Why a connection was turned away. Each one is logged with its reason; none is
/// fatal to the agent.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// The runtime connected and closed without sending anything.
    #[error("connection closed before any data")]
    Empty,
    #[error("connection closed after {len} bytes, in the middle of the document")]
    /// The connection closed in the middle of the document.
    Truncated {
        /// Bytes received before it closed.
        len: usize,
    },
    /// The document exceeds the size limit.
    #[error("document larger than {MAX_DOCUMENT} bytes")]
    TooLarge,
    #[error("not a ContainerProcessState document: {0}")]
    /// Not valid JSON of the expected shape; the parser's message.
    Malformed(String),
    /// The container is already stopped.
    #[error("container status is `stopped`: there is no process left to supervise")]
    Stopped,
    #[error("the document names no `{SECCOMP_FD_NAME}` in `fds` ({names:?})")]
    /// `fds` does not name the seccomp listener.
    NoSeccompFd {
        /// The names `fds` did list.
        names: Vec<String>,
    },
    #[error("`{SECCOMP_FD_NAME}` appears {count} times in `fds`")]
    /// `fds` names the seccomp listener more than once.
    DuplicateSeccompFd {
        /// How many times.
        count: usize,
    },
    #[error("`fds` names {names} descriptors but {received} came with the message")]
    /// `fds` and the descriptors attached to the message disagree in number.
    FdCountMismatch {
        /// Entries in `fds`.
        names: usize,
        /// Descriptors received (`SCM_RIGHTS`).
        received: usize,
    },
    /// More descriptors arrived than any runtime sends.
    #[error("more than {MAX_FDS} descriptors attached")]
    TooManyFds,
    #[error("the `{SECCOMP_FD_NAME}` descriptor is not a seccomp listener but {kind:?}")]
    /// The descriptor named as the listener is something else.
    NotSeccompListener {
        /// What it is (its `/proc/self/fd` link).
        kind: String,
    },
    #[error("reading the connection: {0}")]
    /// Reading the connection failed.
    Io(#[from] io::Error),
}

/// Progress of one connection.
#[derive(Debug)]
pub enum ReadProgress {
    /// More bytes are needed; wait until the socket is readable again.
    Pending,
    /// The whole document and its listener.
    Complete(Box<ContainerListener>),
}

/// Accumulates one connection's document and descriptors across reads.
///
/// The socket must be non-blocking: [`StateReader::read_from`] reads until the
/// socket would block, so a runtime that stalls mid-document costs nothing but
/// the buffer and never holds up another connection.
#[derive(Debug, Default)]
pub struct StateReader {
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
    end: ObjectEnd,
}

/// Finds the end of the top-level JSON object, resuming where the last call
/// stopped: every byte is looked at once, so a document that trickles in costs
/// linear time, and it is parsed once, when complete.
#[derive(Debug, Default)]
struct ObjectEnd {
    scanned: usize,
    depth: u32,
    started: bool,
    in_string: bool,
    escaped: bool,
}

impl ObjectEnd {
    /// The length of the document once `buf` holds all of it.
    fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, Rejection> {
        for (i, &b) in buf.iter().enumerate().skip(self.scanned) {
            if !self.started {
                match b {
                    b' ' | b'\t' | b'\n' | b'\r' => continue,
                    b'{' => {
                        self.started = true;
                        self.depth = 1;
                        continue;
                    }
                    _ => {
                        return Err(Rejection::Malformed(format!(
                            "expected a JSON object, found {:?} at byte {i}",
                            char::from(b)
                        )))
                    }
                }
            }
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        self.scanned = i + 1;
                        return Ok(Some(i + 1));
                    }
                }
                _ => {}
            }
        }
        self.scanned = buf.len();
        Ok(None)
    }
}

impl StateReader {
    /// A reader that has received nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes received so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing has been received yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Reads what `sock` has, and returns the document once it is complete.
    pub fn read_from(&mut self, sock: BorrowedFd<'_>) -> Result<ReadProgress, Rejection> {
        self.read_at_most(sock, usize::MAX)
    }

    /// Like [`StateReader::read_from`], reading at most `budget` bytes (at
    /// least one read) and then reporting `Pending`.
    pub fn read_at_most(
        &mut self,
        sock: BorrowedFd<'_>,
        mut budget: usize,
    ) -> Result<ReadProgress, Rejection> {
        // Large: a trickled document is read in batches of many pieces.
        let mut chunk = [0u8; 65536];
        loop {
            if budget == 0 {
                return Ok(ReadProgress::Pending);
            }
            let want = chunk.len().min(budget);
            let got = match recv_fds(sock, &mut chunk[..want], MAX_FDS) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(ReadProgress::Pending)
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    return Err(Rejection::TooManyFds)
                }
                Err(e) if e.raw_os_error() == Some(Errno::CONNRESET.raw_os_error()) => {
                    return Err(self.ended());
                }
                Err(e) => return Err(Rejection::Io(e)),
            };
            self.fds.extend(got.fds);
            if self.fds.len() > MAX_FDS {
                return Err(Rejection::TooManyFds);
            }
            if got.len == 0 {
                return Err(self.ended());
            }
            if self.buf.len() + got.len > MAX_DOCUMENT {
                return Err(Rejection::TooLarge);
            }
            self.buf.extend_from_slice(&chunk[..got.len]);
            budget -= got.len;
            let Some(end) = self.end.scan(&self.buf)? else {
                continue;
            };
            let state = match parse_document(&self.buf[..end])? {
                Some(state) => state,
                None => return Err(Rejection::Malformed("unbalanced JSON object".into())),
            };
            let fds = std::mem::take(&mut self.fds);
            return take_listener(state, fds).map(|l| ReadProgress::Complete(Box::new(l)));
        }
    }

    fn ended(&self) -> Rejection {
        if self.buf.is_empty() {
            Rejection::Empty
        } else {
            Rejection::Truncated {
                len: self.buf.len(),
            }
        }
    }
}

/// Parses one complete document at the start of `buf`; `Ok(None)` while it is
/// still incomplete. Trailing bytes after the document are ignored: the runtime
/// closes the connection after it, and nothing there could change the answer.
pub fn parse_document(buf: &[u8]) -> Result<Option<ContainerProcessState>, Rejection> {
    let mut docs = serde_json::Deserializer::from_slice(buf).into_iter::<ContainerProcessState>();
    match docs.next() {
        None => Ok(None),
        Some(Ok(state)) => Ok(Some(state)),
        Some(Err(e)) if e.is_eof() => Ok(None),
        Some(Err(e)) => Err(Rejection::Malformed(e.to_string())),
    }
}

/// Matches the named descriptors against the received ones and checks that the
/// `seccompFd` one really is a seccomp listener. Descriptors other than the
/// listener are closed here.
pub fn take_listener(
    state: ContainerProcessState,
    fds: Vec<OwnedFd>,
) -> Result<ContainerListener, Rejection> {
    if state.state.status == ContainerStatus::Stopped {
        return Err(Rejection::Stopped);
    }
    if state.fds.len() != fds.len() {
        return Err(Rejection::FdCountMismatch {
            names: state.fds.len(),
            received: fds.len(),
        });
    }
    let positions: Vec<usize> = state
        .fds
        .iter()
        .enumerate()
        .filter(|(_, n)| *n == SECCOMP_FD_NAME)
        .map(|(i, _)| i)
        .collect();
    let index = match positions.as_slice() {
        [] => {
            return Err(Rejection::NoSeccompFd {
                names: state.fds.clone(),
            })
        }
        [i] => *i,
        many => return Err(Rejection::DuplicateSeccompFd { count: many.len() }),
    };
    let Some(notify_fd) = fds.into_iter().nth(index) else {
        return Err(Rejection::FdCountMismatch {
            names: state.fds.len(),
            received: index,
        });
    };
    check_seccomp_listener(notify_fd.as_fd())?;
    Ok(ContainerListener { state, notify_fd })
}

/// A seccomp listener is an anonymous inode the kernel names `seccomp notify`
/// (`kernel/seccomp.c`, `init_listener`); nothing else carries that name.
fn check_seccomp_listener(fd: BorrowedFd<'_>) -> Result<(), Rejection> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    if link.as_os_str() == "anon_inode:seccomp notify" {
        Ok(())
    } else {
        Err(Rejection::NotSeccompListener {
            kind: link.to_string_lossy().into_owned(),
        })
    }
}

/// Where a narrowing request came from, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NarrowSource {
    /// The seccomp profile's `listenerMetadata`.
    Metadata,
    /// The container annotation `org.fdgrab.allow-bind`.
    Annotation,
}

impl fmt::Display for NarrowSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NarrowSource::Metadata => f.write_str("listenerMetadata"),
            NarrowSource::Annotation => write!(f, "annotation {ALLOW_BIND_ANNOTATION}"),
        }
    }
}

/// A container's request for a narrower policy that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{source_kind}: {reason}")]
pub struct NarrowError {
    /// Where the request came from.
    pub source_kind: NarrowSource,
    /// What is wrong with it.
    pub reason: String,
}

/// The policy one container gets: the agent's `upper` bound, intersected with
/// what the container asks for in `listenerMetadata` and in the
/// [`ALLOW_BIND_ANNOTATION`] annotation (both, when both are present).
///
/// `listenerMetadata` is a list of `KEY=VALUE` items separated by whitespace or
/// `;`; the only key is `allow-bind`, whose value (like the annotation's) is a
/// comma-separated list of bind specs. An empty value asks for nothing at all.
/// Because the result is an intersection, a container can only ever lose ports.
pub fn container_policy(
    upper: &Arc<Policy>,
    state: &ContainerProcessState,
) -> Result<Arc<Policy>, NarrowError> {
    let mut requests = Vec::new();
    if let Some(meta) = state.metadata.as_deref() {
        for value in metadata_allow_binds(meta)? {
            requests.push((NarrowSource::Metadata, value));
        }
    }
    if let Some(value) = state.state.annotations.get(ALLOW_BIND_ANNOTATION) {
        requests.push((NarrowSource::Annotation, value.as_str()));
    }
    let mut narrowed: Option<Policy> = None;
    for (source_kind, value) in requests {
        // A list of ports narrows the ports only; where sockets may live stays
        // as the agent's policy says.
        let asked = asked_policy(source_kind, value)?.with_any_netns(true);
        let current = narrowed.as_ref().unwrap_or(upper.as_ref());
        let too_many = |what: String| NarrowError {
            source_kind,
            reason: format!("too many rules: {what}; ask for port ranges instead of single ports"),
        };
        let pairs = current.rules().len().saturating_mul(asked.rules().len());
        if pairs > MAX_NARROW_PAIRS {
            return Err(too_many(format!(
                "{} requested against {} in the agent's policy (at most {MAX_NARROW_PAIRS} pairs)",
                asked.rules().len(),
                current.rules().len()
            )));
        }
        narrowed = Some(
            current
                .intersect_within(&asked, MAX_NARROWED_RULES)
                .ok_or_else(|| {
                    too_many(format!(
                        "the narrowed policy would exceed {MAX_NARROWED_RULES} rules"
                    ))
                })?,
        );
    }
    Ok(narrowed.map_or_else(|| Arc::clone(upper), Arc::new))
}

/// Rule pairs a container's request may cost: the agent computes the policy on
/// its own thread, at start and at every reload (some tens of milliseconds).
const MAX_NARROW_PAIRS: usize = 1 << 22;
/// Rules a container's policy may have (each bind decision scans them).
const MAX_NARROWED_RULES: usize = 1 << 16;

/// The `allow-bind` values of a `listenerMetadata` text (see [`container_policy`]).
fn metadata_allow_binds(meta: &str) -> Result<Vec<&str>, NarrowError> {
    let mut values = Vec::new();
    for item in meta
        .split(|c: char| c == ';' || c.is_whitespace())
        .filter(|s| !s.is_empty())
    {
        let err = |reason: String| NarrowError {
            source_kind: NarrowSource::Metadata,
            reason,
        };
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| err(format!("`{item}` is not KEY=VALUE")))?;
        if key != METADATA_ALLOW_BIND {
            return Err(err(format!(
                "unknown key `{key}` (the only key is `{METADATA_ALLOW_BIND}`)"
            )));
        }
        values.push(value);
    }
    Ok(values)
}

/// The policy one comma-separated list of bind specs asks for.
fn asked_policy(source_kind: NarrowSource, value: &str) -> Result<Policy, NarrowError> {
    let specs: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    Policy::from_specs(&specs).map_err(|e| NarrowError {
        source_kind,
        reason: e.to_string(),
    })
}

/// Reads `meta` as the agent reads a container's `listenerMetadata`, so that a
/// profile can be refused before every container using it loses its ports to a
/// typo.
pub fn check_listener_metadata(meta: &str) -> Result<(), NarrowError> {
    for value in metadata_allow_binds(meta)? {
        asked_policy(NarrowSource::Metadata, value)?;
    }
    Ok(())
}

/// The policy for a container whose narrowing request was unreadable: nothing is
/// granted, so its privileged binds get the kernel's own EACCES, while every
/// other bind still works.
pub fn deny_all() -> Arc<Policy> {
    Arc::new(Policy::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNC: &str = r#"{"ociVersion":"1.0.2-dev","fds":["seccompFd"],"pid":8793,"metadata":"allow-bind=tcp:80","state":{"ociVersion":"1.0.2-dev","id":"r5test","status":"creating","pid":8793,"bundle":"/tmp/b5"}}"#;
    const CRUN: &str = "{\n    \"ociVersion\": \"0.2.0\",\n    \"fds\": [\n        \"seccompFd\"\n    ],\n    \"pid\": 9671,\n    \"metadata\": \"allow-bind=tcp:80\",\n    \"state\": {\n        \"ociVersion\": \"0.2.0\",\n        \"id\": \"c5test\",\n        \"status\": \"creating\",\n        \"pid\": 9671,\n        \"bundle\": \"/tmp/b5\"\n    }\n}\n";

    #[test]
    fn parses_what_runc_and_crun_send() {
        let r = parse_document(RUNC.as_bytes())
            .expect("runc")
            .expect("complete");
        assert_eq!(r.state.id, "r5test");
        assert_eq!(r.fds, vec![SECCOMP_FD_NAME]);
        assert_eq!(r.metadata.as_deref(), Some("allow-bind=tcp:80"));
        let c = parse_document(CRUN.as_bytes())
            .expect("crun")
            .expect("complete");
        assert_eq!(c.oci_version, "0.2.0");
        assert_eq!(c.state.status, ContainerStatus::Creating);
        let running = RUNC.replace("creating", "running");
        let r = parse_document(running.as_bytes())
            .expect("running")
            .expect("complete");
        assert_eq!(r.state.status, ContainerStatus::Running);
    }

    #[test]
    fn every_prefix_is_incomplete_not_an_error() {
        for cut in 0..CRUN.len() - 2 {
            assert!(
                matches!(parse_document(&CRUN.as_bytes()[..cut]), Ok(None)),
                "prefix of {cut} bytes"
            );
        }
    }

    #[test]
    fn malformed_documents_are_rejected_with_a_reason() {
        for bad in [
            "garbage",
            "[1,2]",
            r#"{"ociVersion":"1","fds":[],"pid":1}"#,
            &RUNC.replace("creating", "paused"),
            &RUNC.replace("8793,\"metadata", "\"x\",\"metadata"),
        ] {
            match parse_document(bad.as_bytes()) {
                Err(Rejection::Malformed(reason)) => assert!(!reason.is_empty()),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn fd_names_must_match_the_descriptors() {
        let state = parse_document(RUNC.as_bytes())
            .expect("parse")
            .expect("complete");
        assert!(matches!(
            take_listener(state.clone(), Vec::new()),
            Err(Rejection::FdCountMismatch {
                names: 1,
                received: 0
            })
        ));
        let (a, b) = rustix::pipe::pipe().expect("pipe");
        assert!(matches!(
            take_listener(state.clone(), vec![a, b]),
            Err(Rejection::FdCountMismatch {
                names: 1,
                received: 2
            })
        ));
        let (a, _b) = rustix::pipe::pipe().expect("pipe");
        match take_listener(state.clone(), vec![a]) {
            Err(Rejection::NotSeccompListener { kind }) => {
                assert!(kind.starts_with("pipe:"), "{kind}")
            }
            other => panic!("{other:?}"),
        }
        let mut other = state.clone();
        other.fds = vec!["somethingElse".into()];
        let (a, _b) = rustix::pipe::pipe().expect("pipe");
        assert!(matches!(
            take_listener(other, vec![a]),
            Err(Rejection::NoSeccompFd { .. })
        ));
        let mut stopped = state;
        stopped.state.status = ContainerStatus::Stopped;
        assert!(matches!(
            take_listener(stopped, Vec::new()),
            Err(Rejection::Stopped)
        ));
    }

    /// A non-blocking socket pair: the reader's end and the client's.
    fn pair() -> (OwnedFd, OwnedFd) {
        use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
        socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .expect("socketpair")
    }

    fn send(sock: &OwnedFd, data: &[u8], fds: &[BorrowedFd<'_>]) {
        crate::passfd::send_fds(sock, data, fds).expect("sendmsg");
    }

    #[test]
    fn reader_rejects_empty_truncated_and_oversized() {
        let (ours, theirs) = pair();
        let mut r = StateReader::new();
        assert!(matches!(
            r.read_from(ours.as_fd()),
            Ok(ReadProgress::Pending)
        ));
        drop(theirs);
        assert!(matches!(r.read_from(ours.as_fd()), Err(Rejection::Empty)));

        let (ours, theirs) = pair();
        let mut r = StateReader::new();
        send(&theirs, &RUNC.as_bytes()[..50], &[]);
        drop(theirs);
        assert!(matches!(
            r.read_from(ours.as_fd()),
            Err(Rejection::Truncated { len: 50 })
        ));

        // A string that never ends: the cap stops it, not memory.
        let (ours, theirs) = pair();
        let mut r = StateReader::new();
        let writer = std::thread::spawn(move || {
            let _ = rustix::io::ioctl_fionbio(&theirs, false);
            let mut doc = b"{\"ociVersion\":\"".to_vec();
            doc.resize(MAX_DOCUMENT + 4096, b'a');
            let _ = rustix::io::write(&theirs, &doc[..]).map(|_| ());
            let mut off = 0;
            while off < doc.len() {
                match rustix::io::write(&theirs, &doc[off..]) {
                    Ok(n) => off += n,
                    Err(_) => break,
                }
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let outcome = loop {
            match r.read_from(ours.as_fd()) {
                Ok(ReadProgress::Pending) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                other => break other,
            }
        };
        assert!(matches!(outcome, Err(Rejection::TooLarge)), "{outcome:?}");
        drop(ours);
        writer.join().expect("writer");
    }

    #[test]
    fn reader_reports_a_reset_connection() {
        use rustix::net::{AddressFamily, SocketFlags, SocketType};
        // ECONNRESET: a peer that closes with unread data in its own queue.
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .expect("socketpair");
        send(&theirs, &RUNC.as_bytes()[..10], &[]);
        send(&ours, b"unread", &[]);
        drop(theirs);
        let mut r = StateReader::new();
        let got = r.read_from(ours.as_fd());
        assert!(
            matches!(
                got,
                Err(Rejection::Truncated { len: 10 }) | Err(Rejection::Empty)
            ),
            "{got:?}"
        );
    }

    #[test]
    fn descriptors_accumulate_across_reads() {
        let (ours, theirs) = pair();
        let (a, b) = rustix::pipe::pipe().expect("pipe");
        let mut r = StateReader::new();
        let (first, second) = RUNC.as_bytes().split_at(40);
        send(&theirs, first, &[a.as_fd()]);
        assert!(matches!(
            r.read_from(ours.as_fd()),
            Ok(ReadProgress::Pending)
        ));
        send(&theirs, second, &[b.as_fd()]);
        // Both reads' descriptors are counted against the one name.
        assert!(matches!(
            r.read_from(ours.as_fd()),
            Err(Rejection::FdCountMismatch {
                names: 1,
                received: 2
            })
        ));

        // One descriptor with the first byte, the rest of the document later: the
        // descriptor is matched (and found not to be a listener).
        let (ours, theirs) = pair();
        let mut r = StateReader::new();
        send(&theirs, &RUNC.as_bytes()[..1], &[a.as_fd()]);
        assert!(matches!(
            r.read_from(ours.as_fd()),
            Ok(ReadProgress::Pending)
        ));
        for piece in RUNC.as_bytes()[1..].chunks(7) {
            send(&theirs, piece, &[]);
        }
        assert!(matches!(
            r.read_from(ours.as_fd()),
            Err(Rejection::NotSeccompListener { .. })
        ));
    }

    #[test]
    fn duplicate_listener_names_are_refused() {
        let mut state = parse_document(RUNC.as_bytes())
            .expect("parse")
            .expect("complete");
        state.fds = vec![SECCOMP_FD_NAME.into(), SECCOMP_FD_NAME.into()];
        let (a, b) = rustix::pipe::pipe().expect("pipe");
        assert!(matches!(
            take_listener(state, vec![a, b]),
            Err(Rejection::DuplicateSeccompFd { count: 2 })
        ));
    }

    #[test]
    fn object_end_is_found_incrementally() {
        // Braces inside strings and escaped quotes do not count.
        let doc = br#"{"a":"}{\"]","b":[{"c":1}]}trailing"#;
        let want = doc.len() - "trailing".len();
        for cut in 0..doc.len() {
            let mut end = ObjectEnd::default();
            let first = end.scan(&doc[..cut]).expect("scan");
            let found = first.or_else(|| end.scan(doc).expect("scan"));
            assert_eq!(found, Some(want), "cut at {cut}");
        }
        let mut end = ObjectEnd::default();
        assert!(matches!(end.scan(b"  [1]"), Err(Rejection::Malformed(_))));
    }

    fn state_with(metadata: Option<&str>, annotation: Option<&str>) -> ContainerProcessState {
        let mut s = parse_document(RUNC.as_bytes())
            .expect("parse")
            .expect("complete");
        s.metadata = metadata.map(str::to_owned);
        if let Some(a) = annotation {
            s.state
                .annotations
                .insert(ALLOW_BIND_ANNOTATION.into(), a.into());
        }
        s
    }

    /// Audit lines share a full queue per owner. Two container ids that agree
    /// in their first 4 KiB are cut to the same label, but are two owners:
    /// the owner comes from the whole id.
    #[test]
    fn ids_cut_alike_are_distinct_audit_owners() {
        let long = "c".repeat(crate::supervise::audit::MAX_LABEL_BYTES + 10);
        let (mut a, mut b) = (state_with(None, None), state_with(None, None));
        a.state.id = format!("{long}a");
        b.state.id = format!("{long}b");
        use crate::supervise::AuditLabels;
        let (la, lb) = (AuditLabels::from_state(&a), AuditLabels::from_state(&b));
        assert_eq!(la.container_id, lb.container_id, "the same cut label");
        assert_ne!(la.owner, lb.owner);
        assert_eq!(la.owner, AuditLabels::from_state(&a).owner, "stable");
    }

    #[test]
    fn a_container_narrows_but_never_widens() {
        use crate::supervise::policy::Proto;
        use std::net::{IpAddr, Ipv4Addr};
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let upper = Arc::new(Policy::from_specs(&["tcp:80", "tcp:443"]).expect("upper"));

        let p = container_policy(&upper, &state_with(None, None)).expect("no request");
        assert!(p.allows(Proto::Tcp, lo, 80) && p.allows(Proto::Tcp, lo, 443));

        let p =
            container_policy(&upper, &state_with(Some("allow-bind=tcp:443"), None)).expect("meta");
        assert!(!p.allows(Proto::Tcp, lo, 80) && p.allows(Proto::Tcp, lo, 443));

        let p = container_policy(&upper, &state_with(None, Some("tcp:80, tcp:22")))
            .expect("annotation");
        assert!(
            p.allows(Proto::Tcp, lo, 80)
                && !p.allows(Proto::Tcp, lo, 22)
                && !p.allows(Proto::Tcp, lo, 443)
        );

        let p = container_policy(
            &upper,
            &state_with(Some("allow-bind=tcp:80,tcp:443"), Some("tcp:443")),
        )
        .expect("both");
        assert!(!p.allows(Proto::Tcp, lo, 80) && p.allows(Proto::Tcp, lo, 443));

        let p = container_policy(&upper, &state_with(Some("allow-bind=tcp:1-1023"), None))
            .expect("wide");
        assert!(
            p.allows(Proto::Tcp, lo, 80)
                && !p.allows(Proto::Tcp, lo, 22)
                && !p.allows(Proto::Udp, lo, 80)
        );

        let p = container_policy(&upper, &state_with(Some("allow-bind="), None)).expect("nothing");
        assert!(!p.allows(Proto::Tcp, lo, 80));

        for bad in ["allow-bind=tcp:http", "allow=tcp:80", "tcp:80"] {
            let e = container_policy(&upper, &state_with(Some(bad), None)).expect_err(bad);
            assert_eq!(e.source_kind, NarrowSource::Metadata, "{bad}: {e}");
        }
        let e =
            container_policy(&upper, &state_with(None, Some("tcp:99999"))).expect_err("annotation");
        assert_eq!(e.source_kind, NarrowSource::Annotation);

        let none = deny_all();
        assert!(!none.allows(Proto::Tcp, lo, 80));
    }

    /// The agent computes a container's policy on its own thread, at start and at
    /// every reload: a request must not cost time or memory out of all proportion.
    #[test]
    fn an_outsized_narrowing_request_is_refused() {
        // Time: every rule of the request meets every rule of the bound.
        let upper: Vec<String> = (1..=2100).map(|p| format!("tcp:{p}")).collect();
        let upper = Arc::new(Policy::from_specs(&upper).expect("upper"));
        let asked: Vec<String> = (1..=2100).map(|p| format!("udp:{p}")).collect();
        let e = container_policy(&upper, &state_with(None, Some(&asked.join(","))))
            .expect_err("4.4 million rule pairs");
        assert_eq!(e.source_kind, NarrowSource::Annotation);
        assert!(e.reason.contains("too many"), "{e}");

        // Memory: a bound with many addresses times a request with many ports.
        let upper: Vec<String> = (0..300)
            .map(|i| format!("tcp:1-1023@10.0.{}.{}", i / 256, i % 256))
            .collect();
        let upper = Arc::new(Policy::from_specs(&upper).expect("upper"));
        let asked: Vec<String> = (1..=1000).map(|p| p.to_string()).collect();
        let e = container_policy(
            &upper,
            &state_with(Some(&format!("allow-bind={}", asked.join(","))), None),
        )
        .expect_err("300,000 rules");
        assert_eq!(e.source_kind, NarrowSource::Metadata);
        assert!(e.reason.contains("too many"), "{e}");

        // A generous but sane request still narrows.
        let upper = Arc::new(Policy::from_specs(&["tcp:1-1023", "udp:53"]).expect("upper"));
        let p = container_policy(&upper, &state_with(None, Some(&asked.join(","))))
            .expect("1000 ports");
        assert!(p.allows(
            crate::supervise::policy::Proto::Tcp,
            "127.0.0.1".parse().expect("ip"),
            999
        ));
    }
}
