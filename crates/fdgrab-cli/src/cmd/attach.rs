//! `fdgrab attach`: move a running program's terminal session onto this terminal.

use crate::cli::AttachArgs;
use crate::exit::{Code, CodedError, UsageError};
use anyhow::{Context, Result};
use fdgrab::grab::{open_target, GrabOptions};
use fdgrab::inject::{close_in_target, take_terminal, CloseMode};
use fdgrab::pty::{self, Escape, Keeper, MasterHolder, Pty, RawMode, RelayEnd};
use fdgrab::signalfd::{signal_name, SignalFd};
use fdgrab::{Pid, PidFd};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;
use std::time::Duration;

pub fn run(a: AttachArgs) -> Result<ExitCode> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    if !pty::is_terminal(stdin.as_fd()) || !pty::is_terminal(stdout.as_fd()) {
        return Err(UsageError(
            "fdgrab attach needs a terminal: its stdin and stdout must both be one (run it in \
             the terminal the program should move to)"
                .into(),
        )
        .into());
    }
    // In the background, switching our terminal to raw mode would stop us (SIGTTOU)
    // after the session was taken; refuse before touching anything.
    if let Ok(fg) = rustix::termios::tcgetpgrp(stdin.as_fd()) {
        if fg != rustix::process::getpgrp() {
            return Err(UsageError(
                "fdgrab attach must run in the foreground of its terminal (not with &)".into(),
            )
            .into());
        }
    }
    let target = open_target(a.pid, fdgrab::Backend::Auto)?;
    let pid = a.pid;
    let Some(tty) = pty::terminal_of(pid)? else {
        return Err(UsageError(format!(
            "process {pid} is not on a pseudo-terminal (no /dev/pts/N as controlling terminal \
             or on fds 0-2), so there is no terminal session to move"
        ))
        .into());
    };
    // PID's slave, down to the inode, read once: every check below and the take
    // compare with this reading. No later one would guard against anything: PID
    // changing terminals meanwhile would only make a re-read come back `None`,
    // and the index alone be compared.
    let identity = pty::terminal_identity(pid, tty);
    // Relayed to the terminal it comes from, the session's output would come back
    // as its own output, round and round.
    for (name, fd) in [("stdin", stdin.as_fd()), ("stdout", stdout.as_fd())] {
        if pty::is_terminal_of(fd, tty, identity) {
            return Err(UsageError(format!(
                "process {pid} already runs on this terminal ({tty}, fdgrab's {name})"
            ))
            .into());
        }
    }
    // Steal the whole session when its master can be had; move PID alone when asked
    // to, or when nobody holds the master any more.
    // Taken before anything is looked at or changed, so two attaches of one session
    // cannot race; held until fdgrab exits (the keeper does not inherit it).
    let Some(lock) = pty::AttachLock::acquire(tty, identity.map(pty::SlaveIdentity::instance))?
    else {
        return Err(CodedError(
            Code::AlreadyAttached,
            format!(
                "process {pid}'s terminal {tty} is already being attached by another fdgrab; \
                 detach it there first (Enter ~ .), then run fdgrab attach {pid} again"
            ),
        )
        .into());
    };
    let mut _locks = vec![lock];
    // The usual holders sit above the session (its emulator, tmux, sshd): found
    // there, they are taken at once, and every other process is looked at while
    // the relay already runs (`sweep`). Otherwise every process is looked at now.
    let (holders, mut sweep_later) = if a.single {
        (None, false)
    } else {
        match find_holders(pid, tty, true)? {
            Some(near) => (Some(near), true),
            None => (find_holders(pid, tty, false)?, false),
        }
    };
    let mut how = match holders {
        Some(holders) => How::Steal(holders),
        None => How::Single(pty::plan_single_move(pid)?),
    };
    let escape = a.escape.unwrap_or(Escape::DEFAULT);

    // From here on a terminating signal must not kill us while the session depends
    // on our copy of the master: signals are read from a descriptor.
    let signals = SignalFd::block(&pty::relay_signals())?;
    let mut stolen = None;
    let mut replay = Vec::new();
    if let How::Steal(holders) = &mut how {
        let mut got = take_master(pid, tty, identity, holders)?;
        if got.is_none() && sweep_later {
            // The ancestors' pts/N was another devpts instance's (or a reused
            // index): PID's master may still be held elsewhere.
            sweep_later = false;
            if let Some(all) = find_holders(pid, tty, false)? {
                *holders = all;
                got = take_master(pid, tty, identity, holders)?;
            }
        }
        match got {
            Some((master, kept)) => {
                stolen = Some(master);
                replay = kept;
            }
            // What holds "pts/N" now is another session, on an index the kernel
            // reused after PID's own master was closed: nobody holds PID's master.
            None => {
                tracing::info!(pid, %tty, "the holders of {tty} hold another pty: single-process mode");
                how = How::Single(pty::plan_single_move(pid)?);
            }
        }
    }
    let (master, what) = match &how {
        How::Steal(holders) => {
            let master = stolen
                .take()
                .with_context(|| format!("no copy of the master of {tty} was taken"))?;
            let from = holders
                .iter()
                .filter(|h| h.taken)
                .map(|h| format!("{} ({})", h.holder.pid, h.holder.comm))
                .collect::<Vec<_>>()
                .join(", ");
            (master, format!("on {tty}, taken from {from}"))
        }
        How::Single(plan) => {
            let (master, slave) = pty::open_pair()?;
            // Nobody else may open the new slave (and make it theirs) while PID
            // loses its old terminal and acquires this one: once it has left its
            // session, a refused TIOCSCTTY could not be undone.
            let locked = pty::SlaveLock::new(master.as_fd())
                .with_context(|| format!("preparing a new terminal for process {pid}"))?;
            // The session's new terminal gets its lock too.
            if let Some(new) = pty::master_index(&master) {
                _locks.extend(pty::AttachLock::acquire(
                    new,
                    pty::master_instance(&master),
                )?);
            }
            pty::copy_modes(plan.old, &slave);
            take_terminal(&target, slave.as_fd(), plan.change, &plan.fds).with_context(|| {
                format!("moving process {pid} alone onto a new terminal (single-process mode)")
            })?;
            drop(locked);
            // PID no longer runs on the old terminal, whose index the kernel may now
            // give to an unrelated session: that one must stay attachable.
            drop(_locks.remove(0));
            let new = pty::master_index(&master).map_or_else(String::new, |p| format!(" {p}"));
            let stay = if plan.left_behind.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} other process(es) of its session stay on {tty}",
                    plan.left_behind.len()
                )
            };
            (
                master,
                format!("alone, moved from {tty} onto a new terminal{new}{stay}"),
            )
        }
    };
    drop(target);
    let sweeping = match &how {
        How::Steal(holders) if sweep_later => {
            let handled: Vec<Pid> = holders.iter().map(|h| h.holder.pid).collect();
            // The pty the sweep looks for, fixed now from our copy of its master: once
            // the program has exited (it may, while the sweep still walks), its fds
            // no longer tell, and by index alone another devpts instance's pts/N, or
            // a new session given the index, would lose its master.
            let identity = pty::master_identity(&master);
            Some(std::thread::spawn(move || {
                sweep(pid, tty, identity, handled)
            }))
        }
        _ => None,
    };
    // The terminal the session now lives on (a new one in single-process mode).
    let tty = pty::master_index(&master).unwrap_or(tty);

    let hint = match escape.char() {
        Some(c) => format!(
            "; type Enter {} . to detach (it keeps running)",
            char::from(c)
        ),
        None => String::new(),
    };
    say(format_args!(
        "fdgrab: attached to process {pid} {what}{hint}"
    ));

    let relayed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut raw = RawMode::enter(stdin.as_fd())?;
        if let Err(e) = pty::copy_window_size(stdin.as_fd(), &master) {
            tracing::debug!(error = %e, "window size not copied");
        }
        if let Err(e) = pty::redraw(&master) {
            tracing::debug!(error = %e, "no redraw asked for");
        }
        pty::relay(
            master.as_fd(),
            stdin.as_fd(),
            stdout.as_fd(),
            &mut raw,
            &signals,
            escape,
            std::mem::take(&mut replay),
        )
        // `raw` is dropped here (also when unwinding): our terminal's modes are
        // back before anything else is printed, whatever the relay returned.
    }));
    // Before anything can end this process: the sweep may be inside a ptrace
    // session with another holder.
    if let Some(sweeping) = sweeping {
        let _ = sweeping.join();
    }
    let end = match relayed {
        Ok(end) => end,
        Err(panic) => {
            // Even a bug must not hang the session up.
            let _ = pty::keep_in_background(master);
            std::panic::resume_unwind(panic)
        }
    };
    let end = match end {
        Ok(end) => end,
        Err(e) => {
            // Our copy may be the master's only one: keep the session alive even when
            // raw mode or the relay failed.
            let kept = pty::keep_in_background(master);
            return Err(anyhow::Error::new(e).context(match kept {
                Ok(k) => format!(
                    "relaying for process {pid} failed; its session is kept by process {k}, \
                     re-attach with `fdgrab attach {pid}`"
                ),
                Err(_) => format!("relaying for process {pid} failed"),
            }));
        }
    };
    match end {
        RelayEnd::SessionEnded => {
            say(format_args!(
                "\r\nfdgrab: the session on {tty} ended (no process has it open any more)"
            ));
            Ok(ExitCode::SUCCESS)
        }
        RelayEnd::Detached | RelayEnd::TerminalGone | RelayEnd::Signal(_) => {
            let keeper = detach(master, pid)?;
            let why = match end {
                RelayEnd::Signal(sig) => format!(" on {}", signal_name(sig)),
                RelayEnd::TerminalGone => " (this terminal went away)".into(),
                _ => String::new(),
            };
            say(format_args!(
                "\r\nfdgrab: detached{why}; process {pid} keeps running on {tty} (held by process \
                 {keeper}); re-attach with: fdgrab attach {pid}"
            ));
            Ok(match end {
                RelayEnd::Signal(sig) => ExitCode::from(128 + sig as u8),
                _ => Code::Detached.into(),
            })
        }
    }
}

/// A line on stderr. Unlike `eprintln!` it never panics: once the session depends
/// on us, a closed stderr (our terminal went away) must not end us abruptly.
fn say(msg: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr();
    let _ = writeln!(err, "{msg}");
    let _ = err.flush();
}

fn detach(master: OwnedFd, pid: Pid) -> Result<Pid> {
    pty::keep_in_background(master).with_context(|| {
        format!("could not leave process {pid}'s session with a keeper; it was hung up")
    })
}

enum How {
    Steal(Vec<Holder>),
    Single(pty::SingleMove),
}

/// A holder of the master, and whether it is one of our keepers.
struct Holder {
    holder: MasterHolder,
    keeper: Option<Keeper>,
    /// Set by `take_master` when its copies were the target's master.
    taken: bool,
}

/// The processes holding the master, other than us; `None` if there are none, or a
/// refusal.
/// `near`: only among the ancestors of the session ([`pty::master_holders_near`]),
/// and `None` when none of them holds the master.
fn find_holders(pid: Pid, tty: Pty, near: bool) -> Result<Option<Vec<Holder>>> {
    let me = std::process::id() as Pid;
    let found = if near {
        pty::master_holders_near(pid, tty)
    } else {
        pty::master_holders(tty)?
    };
    let holders: Vec<_> = found.holders.into_iter().filter(|h| h.pid != me).collect();
    if holders.is_empty() && near {
        return Ok(None);
    }
    if holders.is_empty() {
        if let Some(&other) = found.unreadable.first() {
            return Err(fdgrab::Error::PermissionDenied {
                pid: other,
                fd: None,
                op: "finding the holder of the pty master",
                hint: format!(
                    "no process we may inspect holds the master of {tty} (process {pid}'s \
                     terminal); {} processes' fds are not readable by uid {}, and taking the \
                     master from one of them needs CAP_SYS_PTRACE or the same uid; \
                     `fdgrab attach --single {pid}` would move process {pid} alone",
                    found.unreadable.len(),
                    rustix::process::geteuid().as_raw()
                ),
            }
            .into());
        }
        tracing::info!(pid, %tty, "nobody holds the master: single-process mode");
        return Ok(None);
    }
    let mut out = Vec::with_capacity(holders.len());
    for h in holders {
        // Decided by a handshake with the process, not by its name: anything else
        // named like a keeper is an ordinary holder.
        if let Some(keeper) = Keeper::identify(h.pid) {
            out.push(Holder {
                holder: h,
                keeper: Some(keeper),
                taken: false,
            });
            continue;
        }
        if runs_fdgrab(&h) {
            return Err(CodedError(
                Code::AlreadyAttached,
                format!(
                    "process {pid}'s terminal {tty} is already attached by fdgrab (process {}); \
                 detach it there first (Enter ~ .), then run fdgrab attach {pid} again",
                    h.pid
                ),
            )
            .into());
        }
        out.push(Holder {
            holder: h,
            keeper: None,
            taken: false,
        });
    }
    Ok(Some(out))
}

/// Whether `h` is an fdgrab (our executable, or named so) that is not a keeper.
fn runs_fdgrab(h: &MasterHolder) -> bool {
    h.comm == "fdgrab" || pty::runs_executable(h.pid, std::path::Path::new("/proc/self/exe"))
}

/// After a take from the holders above the session (`find_holders` with `near`),
/// every other process is looked at, and any that also holds the master loses it
/// the same way (a keeper is retired). A process running our executable is no
/// exception: the attach lock we hold means it is not attaching this session, and
/// leaving it the master would leave it reading the session's output. Runs beside
/// the relay.
fn sweep(pid: Pid, tty: Pty, identity: Option<pty::SlaveIdentity>, mut handled: Vec<Pid>) {
    let me = std::process::id() as Pid;
    if identity.is_none() {
        tracing::warn!("the master's slave cannot be identified (TIOCGPTPEER); no sweep for other holders of {tty}");
        return;
    }
    // A holder may fork before its turn comes, and its child holds the master
    // too: the walk is repeated while it still finds someone, a few times at most.
    for _ in 0..SWEEP_PASSES {
        let found = match pty::master_holders(tty) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "could not look for other holders of {tty}");
                return;
            }
        };
        let mut rest: Vec<Holder> = found
            .holders
            .into_iter()
            .filter(|h| h.pid != me && !handled.contains(&h.pid))
            .map(|h| Holder {
                keeper: Keeper::identify(h.pid),
                holder: h,
                taken: false,
            })
            .collect();
        if rest.is_empty() {
            return;
        }
        handled.extend(rest.iter().map(|h| h.holder.pid));
        match take_master(pid, tty, identity, &mut rest) {
            Ok(_) => {
                // Holders of another devpts instance's pts/N are found too, and left
                // alone: only those that held ours are named.
                let lost: Vec<Pid> = rest
                    .iter()
                    .filter(|h| h.taken)
                    .map(|h| h.holder.pid)
                    .collect();
                if lost.is_empty() {
                    tracing::info!(
                        "the other holders of {tty} found hold another instance's: left alone"
                    );
                } else {
                    tracing::info!(holders = ?lost, "other holders of {tty} lost the master too");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not take the master of {tty} from another holder");
                return;
            }
        }
    }
}

/// How many times [`sweep`] walks `/proc` at most.
const SWEEP_PASSES: usize = 4;

/// Takes a copy of the master from every holder, then (only once all copies are
/// made) puts /dev/null over the holders' fds, or retires keepers. Pty indexes
/// repeat across devpts instances, so a holder whose copies turn out to be
/// another instance's pts/N (a container's session) is left alone.
/// Retired keepers hand over the output they kept: returned with the master.
/// `identity` is the target's own slave, down to the inode: an index reused for
/// another session (after the old master was closed) must never count as ours.
/// (`None`: neither the target nor its session leader has the slave on fd 0-2,
/// and there is nothing to compare beyond the index.)
fn take_master(
    pid: Pid,
    tty: Pty,
    identity: Option<pty::SlaveIdentity>,
    holders: &mut [Holder],
) -> Result<Option<(OwnedFd, Vec<u8>)>> {
    let ours = |fd: &OwnedFd| {
        pty::master_index(fd) == Some(tty)
            && identity.is_none_or(|id| pty::master_identity(fd) == Some(id))
    };
    let mut taken = Vec::with_capacity(holders.len());
    let mut master = None;
    for entry in holders.iter_mut() {
        let h = &entry.holder;
        let holder = PidFd::open(h.pid)
            .with_context(|| format!("opening process {} ({}), holder of {tty}", h.pid, h.comm))?;
        let copies = GrabOptions::new()
            .grab_many(&holder, &h.fds)
            .with_context(|| {
                format!(
                    "cannot take the master of {tty} (process {pid}'s terminal) from its holder, \
                     process {} ({}); `fdgrab attach --single {pid}` would move process {pid} \
                     alone",
                    h.pid, h.comm
                )
            })?;
        let mut fds = Vec::new();
        for c in copies {
            if ours(&c.fd) {
                fds.push(c.target_fd);
                if master.is_none() {
                    master = Some(c.fd);
                }
            }
        }
        if fds.is_empty() {
            tracing::info!(
                holder = h.pid,
                "holds another devpts instance's {tty}: left alone"
            );
            continue;
        }
        entry.taken = true;
        taken.push((entry, holder, fds));
    }
    let Some(master) = master else {
        return Ok(None);
    };
    // Keepers last: retiring one cannot be undone, so every plain holder must have
    // been given /dev/null (the step that can refuse) before a keeper is asked to
    // hand over and exit.
    taken.sort_by_key(|(entry, _, _)| entry.keeper.is_some());
    let mut replay = Vec::new();
    for (entry, holder, fds) in taken {
        if let Some(keeper) = entry.keeper.take() {
            // It reads no more once asked; what the programs write next waits in
            // the pty for our copy.
            let kept = keeper.retire();
            // A keeper exits once it has handed over its replay. One that does not
            // (a process made to look like one: our executable run under the
            // keeper's name, with a socket pair of its own at fd 5) is not trusted
            // with the master, nor its "replay" with our terminal: it loses its
            // copies as any holder does, and is not signalled.
            if holder
                .wait_exit(Some(Duration::from_secs(2)))
                .unwrap_or(false)
            {
                match kept {
                    Ok(kept) => replay = kept,
                    Err(e) => {
                        tracing::warn!(error = %e, keeper = holder.pid(), "keeper gave no replay")
                    }
                }
                continue;
            }
            tracing::warn!(
                holder = holder.pid(),
                "holder passed for a keeper but did not exit when retired: treated as any holder"
            );
        }
        let h = &entry.holder;
        let all: Vec<_> = fds.iter().chain(&h.slave_fds).copied().collect();
        close_in_target(&holder, &all, CloseMode::DevNull, Default::default()).with_context(
            || {
                format!(
                    "cannot put /dev/null over the master of {tty} in process {} ({})",
                    h.pid, h.comm
                )
            },
        )?;
        tracing::info!(holder = h.pid, fds = ?fds, slave_fds = ?h.slave_fds, "master replaced with /dev/null in holder");
    }
    Ok(Some((master, replay)))
}
