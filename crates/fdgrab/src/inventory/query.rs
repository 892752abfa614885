//! The questions lsof, ss and fuser answer, asked of many processes at once: who
//! holds this port, this file, a deleted file, a listening socket.
//!
//! Each question is answered from the cheapest source first. A port or listening
//! question goes to the kernel once per network namespace (inet_diag with a port
//! filter in bytecode, states filtered in the kernel), which gives the socket
//! inodes; then each process's fd links are read and only the descriptors whose link
//! names one of those inodes get their fdinfo read. A file question compares
//! device and inode from a stat of each non-pseudo link; a deleted-file question
//! looks for the kernel's " (deleted)" suffix first. Processes are spread over the
//! cores, and processes of one network namespace share one socket table.

use super::sockets::{SocketInfo, SocketTable};
use super::{inet_diag, sock_diag, unix_diag, FdEntry, FdKind, Select, SocketSource};
use crate::error::{Error, Result};
use crate::pidfd::{PidFd, ProcessInfo};
use crate::{Pid, TargetFd};
use rustix::fs::{openat, statat, AtFlags, Mode, OFlags};
use serde::Serialize;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// What to look for. Every narrowing given must hold (they combine with "and").
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Only these descriptor numbers.
    pub fds: Vec<TargetFd>,
    /// TCP and UDP sockets whose local or peer port is this.
    pub port: Option<u16>,
    /// Descriptors open on this (device, inode), as `stat(2)` gives them.
    pub file: Option<(u64, u64)>,
    /// `file` is a unix socket's name: then the descriptors wanted are the unix
    /// sockets bound to it and the connections accepted on them (what lsof and
    /// fuser list), whose own inodes are sockfs ones.
    pub file_is_socket: bool,
    /// Descriptors on files with no name left (link count 0): deleted files and
    /// memfds, as `lsof +L1` lists them.
    pub unlinked: bool,
    /// Only these kinds.
    pub kinds: Vec<FdKind>,
    /// Listening sockets: TCP and unix in `LISTEN`, and UDP sockets bound to a port
    /// and not connected (what `ss -l` shows).
    pub listening: bool,
    /// Only processes whose effective uid is this.
    pub uid: Option<u32>,
}

impl Query {
    /// Whether only some descriptors are wanted: then a process with none of them
    /// is left out of the result.
    pub fn narrows_fds(&self) -> bool {
        !self.fds.is_empty()
            || self.port.is_some()
            || self.file.is_some()
            || self.unlinked
            || !self.kinds.is_empty()
            || self.listening
    }
}

/// The matching descriptors of one process.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessFds {
    /// The process.
    pub pid: Pid,
    /// The command name (`/proc/PID/comm`, lossy UTF-8; see `command_bytes`).
    pub command: String,
    /// The exact bytes of `command` when they are not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_bytes: Option<Vec<u8>>,
    /// Identity and credentials; `None` if the process could not be asked.
    pub process: Option<ProcessInfo>,
    /// Its descriptors that match the query, in ascending order.
    pub fds: Vec<FdEntry>,
}

/// A process that could not be listed, and why (it exited, or we may not read it).
#[derive(Debug)]
pub struct Skipped {
    /// The process.
    pub pid: Pid,
    /// Why it could not be listed (e.g. [`Error::NoSuchProcess`],
    /// [`Error::PermissionDenied`]).
    pub error: Error,
}

/// What a query found: the processes listed and those that could not be.
#[derive(Debug, Default)]
pub struct QueryResult {
    /// By pid. Without a narrowing query, every readable process appears, even with
    /// no fds (a kernel thread); with one, only processes with a match.
    pub processes: Vec<ProcessFds>,
    /// Processes that could not be read, by pid.
    pub skipped: Vec<Skipped>,
}

/// Answers `q` over `pids`, or over every process when `pids` is `None` (except the
/// caller itself, whose descriptors would be the query's own). A process that
/// cannot be read is reported in [`QueryResult::skipped`] and the others are still
/// listed.
pub fn query(pids: Option<&[Pid]>, q: &Query) -> QueryResult {
    let named = pids.is_some();
    let pids: Vec<Pid> = match pids {
        Some(p) => {
            // A pid named twice is one process: listed (or skipped) once. The
            // order is kept, since the first skipped pid decides the exit status.
            let mut seen = std::collections::HashSet::new();
            p.iter().copied().filter(|&pid| seen.insert(pid)).collect()
        }
        None => all_pids(),
    };
    let mut found = (q.port.is_some() || q.listening).then(|| matching_sockets(&pids, q));
    let socket_file = q.file.filter(|_| q.file_is_socket);
    if let Some((dev, ino)) = socket_file {
        let bound = bound_sockets(&pids, dev, ino);
        found = Some(match found {
            Some(f) => f
                .into_iter()
                .filter(|(i, _)| bound.contains_key(i))
                .collect(),
            None => bound,
        });
    }
    let select = Select {
        fds: &q.fds,
        sockets: found.as_ref(),
        file: q.file.filter(|_| !q.file_is_socket),
        unlinked: q.unlinked,
        kinds: &q.kinds,
    };
    let tables = NetnsTables::default();
    let source = if pids.len() > 1 {
        SocketSource::Shared(&tables)
    } else {
        SocketSource::PerProcess
    };
    let mut slots: Vec<Option<Result<Option<ProcessFds>>>> = if pids.len() <= 1 {
        // One process: no thread to wait for.
        pids.iter()
            .map(|&pid| Some(one(pid, q, &select, &source, named)))
            .collect()
    } else {
        let next = AtomicUsize::new(0);
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8)
            .min(pids.len());
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&pid) = pids.get(i) else { break };
                            done.push((i, one(pid, q, &select, &source, named)));
                        }
                        done
                    })
                })
                .collect();
            let mut slots: Vec<_> = (0..pids.len()).map(|_| None).collect();
            for h in handles {
                // A panicking worker leaves its processes as None: reported below.
                for (i, r) in h.join().unwrap_or_default() {
                    slots[i] = Some(r);
                }
            }
            slots
        })
    };
    let mut out = QueryResult::default();
    for (pid, slot) in pids.iter().zip(slots.iter_mut()) {
        match slot.take() {
            Some(Ok(Some(p))) => out.processes.push(p),
            Some(Ok(None)) => {}
            Some(Err(error)) => out.skipped.push(Skipped { pid: *pid, error }),
            None => out.skipped.push(Skipped {
                pid: *pid,
                error: Error::io("inventory worker", *pid, None, rustix::io::Errno::IO),
            }),
        }
    }
    out.processes.sort_by_key(|p| p.pid);
    out
}

/// `named`: the user asked for `pid`, so a process that cannot be listed (a
/// zombie, one we may not read) is an error even when a filter would have left all
/// its fds out; the cheap pass that only saves work over many processes is skipped.
fn one(
    pid: Pid,
    q: &Query,
    select: &Select,
    source: &SocketSource,
    named: bool,
) -> Result<Option<ProcessFds>> {
    if let Some(uid) = q.uid {
        let st = crate::procfs::status(pid).map_err(|e| io_to_proc(pid, e))?;
        if st.uids.map(|u| u[1]) != Some(uid) {
            return Ok(None);
        }
    }
    if !named && !select.may_match_in(pid)? {
        return Ok(None);
    }
    let target = PidFd::open(pid)?;
    let inv = super::list(&target, select, source)?;
    if q.narrows_fds() && inv.fds.is_empty() {
        return Ok(None);
    }
    let comm =
        crate::procfs::comm(pid).map_err(|e| super::proc_error(pid, "read /proc/PID/comm", e))?;
    let (command, command_bytes) = super::names::split_utf8(comm);
    Ok(Some(ProcessFds {
        pid,
        command,
        command_bytes,
        process: target.info().ok(),
        fds: inv.fds,
    }))
}

fn io_to_proc(pid: Pid, e: std::io::Error) -> Error {
    let errno = rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO);
    super::proc_error(pid, "read /proc/PID", errno)
}

/// Every process id in `/proc`, but ours.
fn all_pids() -> Vec<Pid> {
    let me = std::process::id() as Pid;
    let mut pids = crate::procfs::pids().unwrap_or_default();
    pids.retain(|&p| p != me);
    pids
}

/// One key per network namespace: the device and inode of `/proc/PID/ns/net`.
fn netns_of(proc_dir: &OwnedFd) -> Option<(u64, u64)> {
    statat(proc_dir, "ns/net", AtFlags::empty())
        .ok()
        .map(|st| (st.st_dev, st.st_ino))
}

fn open_proc(dir: &str) -> Option<OwnedFd> {
    openat(
        rustix::fs::CWD,
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

/// `/proc/PID`, or for a process whose leader exited (a zombie leader has no
/// namespaces left) `/proc/PID/task/TID` of a live thread, with the stat of its
/// `ns/net`.
fn netns_dir(pid: Pid) -> Option<(rustix::fs::Stat, String)> {
    let base = format!("/proc/{pid}");
    match rustix::fs::stat(format!("{base}/ns/net")) {
        Ok(st) => return Some((st, base)),
        // Only a leader that exited is worth a look at the threads; a process we
        // may not read (EACCES) is skipped later anyway.
        Err(rustix::io::Errno::NOENT) => {}
        Err(_) => return None,
    }
    crate::procfs::tasks(pid)
        .ok()?
        .into_iter()
        .filter(|&tid| tid != pid)
        .find_map(|tid| {
            let base = format!("/proc/{pid}/task/{tid}");
            let st = rustix::fs::stat(format!("{base}/ns/net")).ok()?;
            Some((st, base))
        })
}

/// Calls `each` with one process of every network namespace among `pids` and its
/// `/proc/PID` directory.
fn for_each_netns(pids: &[Pid], mut each: impl FnMut(Pid, &OwnedFd)) {
    let mut seen = std::collections::HashSet::new();
    for &pid in pids {
        // One stat per process; the /proc directory is opened once per namespace.
        let Some((st, base)) = netns_dir(pid) else {
            continue; // not ours to read; the process is skipped later anyway
        };
        if !seen.insert((st.st_dev, st.st_ino)) {
            continue;
        }
        if let Some(proc_dir) = open_proc(&base) {
            each(pid, &proc_dir);
        }
    }
}

/// The unix sockets bound to the socket file `(dev, ino)`, and those accepted on
/// them, across the network namespaces of `pids`, by inode.
fn bound_sockets(pids: &[Pid], dev: u64, ino: u64) -> HashMap<u64, SocketInfo> {
    let mut found = HashMap::new();
    for_each_netns(pids, |pid, proc_dir| {
        match sock_diag::socket_in(proc_dir).and_then(|s| unix_diag::bound_to(&s, dev, ino)) {
            Ok(socks) => found.extend(socks.into_iter().map(|s| (s.inode, s.info))),
            Err(e) => {
                tracing::debug!(pid, error = %e, "unix_diag refused; no socket bound to the path found there")
            }
        }
    });
    found
}

/// The sockets a port or listening query asks for, across the network namespaces
/// of `pids`, by inode (socket inodes are unique across namespaces).
fn matching_sockets(pids: &[Pid], q: &Query) -> HashMap<u64, SocketInfo> {
    let mut found = HashMap::new();
    for_each_netns(pids, |pid, proc_dir| {
        let from_diag = sock_diag::socket_in(proc_dir).and_then(|sock| diag_matches(&sock, q));
        let socks = match from_diag {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(pid, error = %e, "sock_diag refused; filtering the /proc tables");
                match SocketTable::load(pid, proc_dir) {
                    Ok(t) => t.into_map(),
                    Err(_) => return,
                }
            }
        };
        found.extend(socks.into_iter().filter(|(_, s)| matches(s, q)));
    });
    found
}

fn diag_matches(sock: &OwnedFd, q: &Query) -> std::io::Result<HashMap<u64, SocketInfo>> {
    let mut out = HashMap::new();
    let (tcp_states, udp_states) = if q.listening {
        // A bound, unconnected UDP socket is in TCP_CLOSE (7).
        (inet_diag::STATES_LISTEN, 1 << 7)
    } else {
        (inet_diag::STATES_WITH_INODE, inet_diag::STATES_ALL)
    };
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        for (protocol, states) in [
            (libc::IPPROTO_TCP as u8, tcp_states),
            (libc::IPPROTO_UDP as u8, udp_states),
        ] {
            let socks = inet_diag::dump(sock, family, protocol, states, q.port)?;
            out.extend(socks.into_iter().map(|s| (s.inode, s.info)));
        }
    }
    if q.listening && q.port.is_none() {
        out.extend(
            unix_diag::dump(sock)?
                .into_iter()
                .map(|s| (s.inode, s.info)),
        );
    }
    Ok(out)
}

/// The query's socket conditions, checked again in userspace: the kernel filtered
/// already when sock_diag answered, the /proc fallback did not.
fn matches(s: &SocketInfo, q: &Query) -> bool {
    let inet = matches!(s.protocol.as_deref(), Some("tcp" | "udp"));
    let port_ok = q.port.is_none_or(|p| {
        inet && [&s.local, &s.peer]
            .iter()
            .any(|e| e.as_ref().and_then(|e| e.port) == Some(p))
    });
    let listen_ok = !q.listening
        || match s.state.as_deref() {
            Some("LISTEN") => true,
            Some("UNCONN") => s
                .local
                .as_ref()
                .and_then(|e| e.port)
                .is_some_and(|p| p != 0),
            _ => false,
        };
    port_ok && listen_ok
}

/// Socket tables shared by the processes of one network namespace during a scan:
/// one sock_diag socket and one set of dumps per namespace, however many
/// processes live there.
#[derive(Default)]
pub(crate) struct NetnsTables {
    #[allow(clippy::type_complexity)]
    tables: Mutex<HashMap<(u64, u64), Arc<OnceLock<Option<Arc<SocketTable>>>>>>,
}

impl NetnsTables {
    pub(crate) fn get(
        &self,
        pid: Pid,
        proc_dir: &OwnedFd,
        fd_dir: &OwnedFd,
        held: &[(u64, TargetFd)],
    ) -> Result<Arc<SocketTable>> {
        let per_process = || SocketTable::load_for(pid, proc_dir, fd_dir, held).map(Arc::new);
        let Some(ns) = netns_of(proc_dir) else {
            return per_process();
        };
        let cell = {
            let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(tables.entry(ns).or_default())
        };
        match cell.get_or_init(|| SocketTable::load(pid, proc_dir).ok().map(Arc::new)) {
            Some(t) => Ok(Arc::clone(t)),
            // The process that loaded first vanished meanwhile; ask for this one.
            None => per_process(),
        }
    }
}
