//! Which sockets a target has and which of them a selector means: the
//! inventory's listening view, selection, and taking the chosen sockets with a
//! check that each copy is the socket the listing saw.

use super::selector::{self, is_listening_or_bound, Candidate, Selector};
use crate::error::{Error, Result};
use crate::grab::{Backend, Grabbed};
use crate::inventory::{self, SocketInfo};
use crate::pidfd::PidFd;
use crate::{Pid, TargetFd};
use std::collections::HashMap;
use std::os::fd::OwnedFd;

/// A socket chosen for handover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selected {
    /// Index of the selector that chose it (for its `LISTEN_FDNAMES` entry).
    pub selector: usize,
    /// Every number the socket has in the target, lowest first: a socket dup'd to
    /// several numbers is one socket and is passed once.
    pub target_fds: Vec<TargetFd>,
    /// The socket's inode number: its identity across numbers and processes.
    pub inode: u64,
    /// Family, type, protocol, state and addresses.
    pub info: SocketInfo,
}

/// A selected socket with our copy of it.
#[derive(Debug)]
pub struct TakenSocket {
    /// Which socket, and why it was chosen.
    pub selected: Selected,
    /// Our copy (close-on-exec), sharing the target's open file description.
    pub fd: OwnedFd,
    /// The mechanism that made the copy (never `Auto`).
    pub backend: Backend,
}

/// Chooses sockets of `inv` for `selectors`, in selector order and, within one
/// selector, in the target's fd order.
///
/// Every member of an `SO_REUSEPORT` group is taken together, also for `fd:N`. A
/// socket chosen by two selectors is passed once, under the first. A selector that
/// matches nothing is an error listing what the process does listen on.
pub fn select(pid: Pid, fds: &[Candidate], selectors: &[Selector]) -> Result<Vec<Selected>> {
    let resolve = |rel: &str| {
        std::fs::read_link(format!("/proc/{pid}/cwd"))
            .ok()
            .map(|cwd| cwd.join(rel).to_string_lossy().into_owned())
    };
    let mut chosen: Vec<Selected> = Vec::new();
    let mut by_inode: HashMap<u64, usize> = HashMap::new();
    for (index, sel) in selectors.iter().enumerate() {
        let mut hits: Vec<&Candidate> = fds.iter().filter(|e| sel.matches(e, resolve)).collect();
        if let Selector::Fd(fd) = sel {
            let Some(entry) = hits.first().copied() else {
                return Err(Error::NoSuchFd { pid, fd: *fd });
            };
            let Some(sock) = entry.socket.as_ref().filter(|_| entry.inode.is_some()) else {
                let what = if entry.link.starts_with("socket:") {
                    "is a socket that is neither listening nor bound (a connection, or a kind fdgrab cannot pass)"
                } else {
                    "is not a socket; only sockets can be handed over"
                };
                return Err(Error::WrongKind {
                    pid,
                    fd: *fd,
                    reason: format!("'{}' {what}", entry.link),
                });
            };
            if !is_listening_or_bound(sock) {
                return Err(Error::WrongKind {
                    pid,
                    fd: *fd,
                    reason: format!(
                        "{} {} is not listening or bound, so a new server could not serve it",
                        sock.protocol.as_deref().unwrap_or(&sock.family),
                        entry.display_name()
                    ),
                });
            }
            hits.extend(fds.iter().filter(|e| {
                e.fd != *fd
                    && e.socket
                        .as_ref()
                        .is_some_and(|s| is_listening_or_bound(s) && selector::same_group(s, sock))
            }));
            hits.sort_by_key(|e| e.fd);
        }
        if hits.is_empty() {
            return Err(Error::NoMatchingSocket {
                pid,
                selector: sel.to_string(),
                available: describe_listeners(fds),
            });
        }
        for entry in hits {
            let (Some(inode), Some(info)) = (entry.inode, entry.socket.as_ref()) else {
                continue;
            };
            match by_inode.get(&inode) {
                Some(&i) => {
                    if !chosen[i].target_fds.contains(&entry.fd) {
                        chosen[i].target_fds.push(entry.fd);
                        chosen[i].target_fds.sort();
                    }
                }
                None => {
                    by_inode.insert(inode, chosen.len());
                    chosen.push(Selected {
                        selector: index,
                        target_fds: vec![entry.fd],
                        inode,
                        info: info.clone(),
                    });
                }
            }
        }
    }
    Ok(chosen)
}

/// What a process listens on, for error messages.
pub fn describe_listeners(fds: &[Candidate]) -> String {
    let list: Vec<String> = fds
        .iter()
        .filter(|e| e.socket.as_ref().is_some_and(is_listening_or_bound))
        .map(|e| {
            let s = e
                .socket
                .as_ref()
                .map(|s| s.protocol.clone().unwrap_or_else(|| s.family.clone()));
            format!("fd {} {} {}", e.fd, s.unwrap_or_default(), e.display_name())
        })
        .collect();
    if list.is_empty() {
        "it has no listening or bound sockets".into()
    } else {
        format!("it listens on: {}", list.join(", "))
    }
}

/// Every fd of the target, with details for its listening and bound sockets: the
/// inventory's [`inventory::listening`] view, narrowed to what selection reads.
pub fn listing(target: &PidFd) -> Result<Vec<Candidate>> {
    Ok(inventory::listening(target)?
        .fds
        .iter()
        .map(Candidate::from)
        .collect())
}

/// Lists the target's fds, selects, and copies the chosen sockets out of it.
///
/// Each copy is checked to be the socket the listing saw (same inode): the target
/// may close a number and reuse it between the listing and the copy.
pub fn take_sockets(target: &PidFd, selectors: &[Selector]) -> Result<Vec<TakenSocket>> {
    take_sockets_with(target, selectors, &crate::grab::GrabOptions::new())
}

/// [`take_sockets`] with a chosen grab backend (`pidfd_getfd` or ptrace injection).
pub fn take_sockets_with(
    target: &PidFd,
    selectors: &[Selector],
    how: &crate::grab::GrabOptions,
) -> Result<Vec<TakenSocket>> {
    let fds = listing(target)?;
    let selected = select(target.pid(), &fds, selectors)?;
    let mut taken = Vec::with_capacity(selected.len());
    for sel in selected {
        let fd = sel.target_fds[0];
        let Grabbed {
            fd: ours, backend, ..
        } = how.grab(target, fd)?;
        let st = crate::statx::cached(&ours)
            .map_err(|e| Error::io("stat", target.pid(), Some(fd), e))?;
        if st.ino != sel.inode {
            return Err(Error::WrongKind {
                pid: target.pid(),
                fd,
                reason: format!(
                    "the fd changed while it was being taken (was socket:[{}], now inode {})",
                    sel.inode, st.ino
                ),
            });
        }
        tracing::debug!(
            pid = target.pid(),
            fd = fd.as_raw(),
            inode = sel.inode,
            method = backend.method(),
            "took socket"
        );
        taken.push(TakenSocket {
            selected: sel,
            fd: ours,
            backend,
        });
    }
    Ok(taken)
}
