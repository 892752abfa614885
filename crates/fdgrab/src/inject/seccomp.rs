//! The target's seccomp filters, as they apply to the calls a session injects.
//!
//! Injected calls run under the filters of the thread they run in. A filter that
//! answers one of them with `KILL_PROCESS`/`KILL_THREAD` kills the target, `TRAP`
//! queues a SIGSYS (and leaves the call number in the result register), `ERRNO`,
//! `TRACE` and `USER_NOTIF` make it fail or wait. So before the first injected call
//! the session decides, once per session, which [`Gate`] applies:
//!
//! - no filter (`Seccomp: 0`): nothing to check;
//! - filters it can read (`PTRACE_SECCOMP_GET_FILTER`: we hold `CAP_SYS_ADMIN` and are
//!   not under seccomp ourselves): every planned call is evaluated with the project's
//!   cBPF interpreter over the thread's whole stack, with its real arguments as far as
//!   they are known, the x86_64 arch and the instruction pointer it will have. If all
//!   are allowed (or only logged), the session runs with its filters on, and each call
//!   is evaluated again with its exact arguments just before it runs (a refusal then
//!   suspends the filters when the policy allows, since cleanup calls must run). If
//!   one is not,
//!   the filters are suspended for this tracer (`PTRACE_O_SUSPEND_SECCOMP`) when the
//!   policy allows it and the kernel agrees; otherwise the session refuses before
//!   anything has run in the target ([`Error::SeccompRefused`]);
//! - filters it cannot read: refused ([`Error::SeccompUnchecked`]) before the target is
//!   even seized, unless the caller forces it.

use super::ptrace;
use crate::error::{Error, Result};
use crate::procfs;
use crate::seccomp::bpf::{
    evaluate_stack, Action, Program, SeccompData, StackVerdict, SyscallFilter,
};
use crate::Pid;
use rustix::io::Errno;

/// How a session treats the seccomp filters of the thread it injects into.
///
/// The default checks the filters, suspends them when a needed call would be
/// refused (root only), and refuses a thread whose filters cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeccompPolicy {
    force: bool,
    suspend: bool,
}

impl Default for SeccompPolicy {
    fn default() -> Self {
        SeccompPolicy {
            force: false,
            suspend: true,
        }
    }
}

impl SeccompPolicy {
    /// The default policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inject even into a thread whose filters cannot be read (`--force`). A call the
    /// filters are *known* to refuse is still never made.
    pub fn force(mut self, yes: bool) -> Self {
        self.force = yes;
        self
    }

    /// Whether the session may suspend the thread's filters with
    /// `PTRACE_O_SUSPEND_SECCOMP` when a call it needs would be refused (default:
    /// yes). Without it such a target is refused.
    pub fn suspend(mut self, yes: bool) -> Self {
        self.suspend = yes;
        self
    }

    /// Whether injection goes ahead even when the filters cannot be checked.
    pub fn is_forced(&self) -> bool {
        self.force
    }

    pub(crate) fn may_suspend(&self) -> bool {
        self.suspend
    }
}

/// One call a session plans to make; `None` for an argument known only once the
/// session runs (an address in the scratch mapping, an fd the target gets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Planned {
    pub nr: i64,
    pub args: [Option<u64>; 6],
}

impl Planned {
    pub(crate) fn new(nr: i64, args: &[Option<u64>]) -> Planned {
        let mut a = [Some(0); 6];
        for (slot, v) in a.iter_mut().zip(args) {
            *slot = *v;
        }
        Planned { nr, args: a }
    }
}

/// Shorthand for a known argument.
pub(crate) const fn k(v: u64) -> Option<u64> {
    Some(v)
}

/// An argument known only at run time.
pub(crate) const UNKNOWN: Option<u64> = None;

/// Values tried for an argument not known in advance: a small fd number and an
/// address in the usual mmap area. The per-call check at run time is exact.
const STAND_INS: [u64; 2] = [3, 0x7f00_0000_0000];

/// What the session does about the thread's filters.
#[derive(Debug)]
pub(crate) enum Gate {
    /// The thread has no filter.
    Open,
    /// The thread's filters, newest first; every injected call is checked first.
    Checked(Vec<Program>),
    /// Filters suspended for us (`PTRACE_O_SUSPEND_SECCOMP`) while the session
    /// runs injected calls; `active` says whether the option is set right now
    /// (it is dropped whenever the thread runs its own code).
    Suspended { active: bool },
    /// Under seccomp, not checkable, and the caller forced it.
    Unchecked,
}

/// `Seccomp:` of the thread's status, as a name for messages.
fn mode_name(mode: u8) -> &'static str {
    match mode {
        1 => "strict mode",
        _ => "filter mode",
    }
}

/// Why we cannot read (or suspend) a thread's filters, if we cannot: the kernel
/// wants `CAP_SYS_ADMIN` and a caller that is not itself under seccomp.
fn why_unreadable() -> Option<String> {
    const CAP_SYS_ADMIN: u32 = 21;
    let own = procfs::own_thread_status().unwrap_or_default();
    if own.seccomp.unwrap_or(0) != 0 {
        return Some("fdgrab itself runs under seccomp".into());
    }
    if own.cap_eff.unwrap_or(0) & (1 << CAP_SYS_ADMIN) == 0 {
        return Some("reading them needs CAP_SYS_ADMIN".into());
    }
    None
}

/// The check made before seizing: `Ok(Some(mode))` when the thread is under seccomp
/// and its filters can be read; `Ok(None)` when there is nothing to check or the
/// caller forced an unreadable case; an error when it must be refused.
/// `status` is the thread's, read just before.
pub(crate) fn before_seize(
    pid: Pid,
    tid: Pid,
    status: &procfs::Status,
    policy: SeccompPolicy,
) -> Result<Option<u8>> {
    let mode = status.seccomp.unwrap_or(0);
    if mode == 0 {
        return Ok(None);
    }
    match why_unreadable() {
        None => Ok(Some(mode)),
        Some(why) if policy.force => {
            tracing::warn!(pid, tid, %why, "injecting into a thread under seccomp without checking its filters (forced)");
            Ok(None)
        }
        Some(why) => Err(Error::SeccompUnchecked {
            pid,
            tid,
            mode: mode_name(mode),
            why,
        }),
    }
}

/// Strict mode as a filter: only `read`, `write`, `exit` and `rt_sigreturn` pass; the
/// kernel kills the thread (SIGKILL) for anything else.
fn strict_mode() -> Vec<Program> {
    let f = [
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_exit,
        libc::SYS_rt_sigreturn,
    ]
    .into_iter()
    .fold(SyscallFilter::new(Action::KillThread), |f, nr| {
        f.rule(nr, Action::Allow)
    })
    .on_foreign_arch(Action::KillThread);
    f.build().into_iter().collect()
}

/// The stack of a stopped, seized thread, newest first.
fn read_filters(pid: Pid, tid: Pid, mode: u8) -> Result<Vec<Program>> {
    if mode == 1 {
        return Ok(strict_mode());
    }
    let mut out = Vec::new();
    for index in 0.. {
        match ptrace::seccomp_filter(tid, index) {
            Ok(raw) => out.push(Program::from_raw(&raw).map_err(|e| {
                Error::InvalidArgument(format!(
                    "process {pid}: seccomp filter {index} of thread {tid} does not parse: {e}"
                ))
            })?),
            Err(Errno::NOENT) => break,
            Err(e) => return Err(Error::io("ptrace(PTRACE_SECCOMP_GET_FILTER)", pid, None, e)),
        }
    }
    Ok(out)
}

/// `name(arg, ...)` for messages, `?` for an argument not known yet.
pub(crate) fn describe(nr: i64, args: &[Option<u64>]) -> String {
    let name = super::syscalls::syscall_name(nr).trim_end_matches(" (injected)");
    let mut padded = [Some(0u64); 6];
    for (slot, a) in padded.iter_mut().zip(args) {
        *slot = *a;
    }
    let args = &padded;
    let last = args
        .iter()
        .rposition(|a| *a != Some(0))
        .map_or(0, |i| i + 1);
    let shown: Vec<String> = args[..last.max(arg_count(nr))]
        .iter()
        .map(|a| a.map_or("?".into(), |v| format!("{v:#x}")))
        .collect();
    format!("{name}({})", shown.join(", "))
}

fn arg_count(nr: i64) -> usize {
    match nr {
        libc::SYS_close => 1,
        libc::SYS_munmap => 2,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_dup2 => 2,
        libc::SYS_socket
        | libc::SYS_connect
        | libc::SYS_sendmsg
        | libc::SYS_recvmsg
        | libc::SYS_dup3
        | libc::SYS_fcntl
        | libc::SYS_close_range => 3,
        libc::SYS_rt_sigprocmask => 4,
        libc::SYS_mmap => 6,
        _ => 0,
    }
}

/// The first planned call the filters would not let run, with their verdict.
fn first_refused(
    filters: &[Program],
    plan: &[Planned],
    ip: u64,
) -> Option<(Planned, StackVerdict)> {
    for call in plan {
        let unknown: Vec<usize> = (0..6).filter(|&i| call.args[i].is_none()).collect();
        // Every combination of stand-ins for the unknown arguments.
        for combo in 0..(1usize << unknown.len()) {
            let mut args = [0u64; 6];
            for (i, a) in call.args.iter().enumerate() {
                args[i] = a.unwrap_or(0);
            }
            for (bit, &i) in unknown.iter().enumerate() {
                args[i] = STAND_INS[(combo >> bit) & 1];
            }
            let v = evaluate_stack(filters, &SeccompData::native(call.nr, &args, ip));
            if !v.verdict.action.runs() {
                return Some((*call, v));
            }
        }
    }
    None
}

/// What the filters would say about one exact call, if they would not let it run.
pub(crate) fn refused_now(
    filters: &[Program],
    nr: i64,
    args: &[u64],
    ip: u64,
) -> Option<StackVerdict> {
    let v = evaluate_stack(filters, &SeccompData::native(nr, args, ip));
    (!v.verdict.action.runs()).then_some(v)
}

/// Whether the filters let every call of an injected routine run, each from its own
/// instruction pointer, where `None` arguments are results of earlier calls of the
/// routine (an fd): only when no filter even loads such an argument is the verdict
/// certain whatever its value, so a filter that looks at it makes this false, as does
/// any call not allowed.
pub(crate) fn routine_runs(filters: &[Program], calls: &[(Planned, u64)]) -> bool {
    calls.iter().all(|(call, ip)| {
        let args = call.args.map(|a| a.unwrap_or(0));
        let data = SeccompData::native(call.nr, &args, *ip);
        // Both 32-bit words of each unknown argument (seccomp_data.args at 16 + 8i).
        let unknown = (0..6)
            .filter(|&i| call.args[i].is_none())
            .fold(0u16, |m, i| m | 0b11 << (4 + 2 * i));
        evaluate_stack(filters, &data).verdict.action.runs()
            && filters
                .iter()
                .all(|f| f.evaluate_reading(&data).1 & unknown == 0)
    })
}

pub(crate) fn refusal(pid: Pid, tid: Pid, call: String, v: StackVerdict, hint: String) -> Error {
    Error::SeccompRefused {
        pid,
        tid,
        call,
        action: v.verdict.action.to_string(),
        filter: v.filter,
        hint,
    }
}

/// Decides the gate for a seized, stopped thread under seccomp `mode`. `ip` is the
/// instruction pointer the injected calls will report (just after the `syscall`
/// instruction used).
pub(crate) fn decide(
    pid: Pid,
    tid: Pid,
    mode: u8,
    plan: &[Planned],
    ip: u64,
    policy: SeccompPolicy,
) -> Result<Gate> {
    let filters = match read_filters(pid, tid, mode) {
        Ok(f) => f,
        Err(Error::Io { source, .. })
            if matches!(source.raw_os_error(), Some(libc::EACCES | libc::EPERM)) =>
        {
            // E.g. "root" inside a user namespace: the capability is not the
            // init namespace's.
            if policy.force {
                tracing::warn!(
                    pid,
                    tid,
                    "cannot read the seccomp filters; injecting unchecked (forced)"
                );
                return Ok(Gate::Unchecked);
            }
            return Err(Error::SeccompUnchecked {
                pid,
                tid,
                mode: mode_name(mode),
                why: format!("PTRACE_SECCOMP_GET_FILTER was refused: {source}"),
            });
        }
        Err(e) => return Err(e),
    };
    let Some((call, verdict)) = first_refused(&filters, plan, ip) else {
        tracing::debug!(
            pid,
            tid,
            filters = filters.len(),
            calls = plan.len(),
            "the thread's seccomp filters allow every planned call"
        );
        return Ok(Gate::Checked(filters));
    };
    let call = describe(call.nr, &call.args);
    if !policy.suspend {
        return Err(refusal(
            pid,
            tid,
            call,
            verdict,
            "suspending the filter is not allowed by the caller".into(),
        ));
    }
    let mut gate = Gate::Checked(filters);
    match gate.suspend(tid) {
        Ok(()) => {
            tracing::info!(pid, tid, %call, action = %verdict.verdict.action, "the target's seccomp filter would refuse an injected call; suspending it for the injected calls (PTRACE_O_SUSPEND_SECCOMP)");
            Ok(gate)
        }
        Err(e) => Err(refusal(
            pid,
            tid,
            call,
            verdict,
            format!("suspending it with PTRACE_O_SUSPEND_SECCOMP failed ({e}; needs CAP_SYS_ADMIN and CONFIG_CHECKPOINT_RESTORE)"),
        )),
    }
}

impl Gate {
    /// Suspends the thread's filters for the injected calls from now on.
    pub(crate) fn suspend(&mut self, tid: Pid) -> std::result::Result<(), Errno> {
        ptrace::set_options(tid, ptrace::O_TRACESYSGOOD | ptrace::O_SUSPEND_SECCOMP)?;
        *self = Gate::Suspended { active: true };
        Ok(())
    }

    /// Drops the suspension before the thread runs its own code (a signal handler),
    /// so only injected calls ever run unfiltered.
    pub(crate) fn before_own_code(&mut self, tid: Pid) -> std::result::Result<(), Errno> {
        if let Gate::Suspended { active } = self {
            if *active {
                ptrace::set_options(tid, ptrace::O_TRACESYSGOOD)?;
                *active = false;
            }
        }
        Ok(())
    }

    /// Sets the suspension again before an injected call.
    pub(crate) fn before_injected(&mut self, tid: Pid) -> std::result::Result<(), Errno> {
        if let Gate::Suspended { active } = self {
            if !*active {
                ptrace::set_options(tid, ptrace::O_TRACESYSGOOD | ptrace::O_SUSPEND_SECCOMP)?;
                *active = true;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seccomp::bpf::{Field, Insn};

    /// `nr == sendmsg`: `action` if a word of `field` is loaded and non-zero, else
    /// allow; any other call: allow.
    fn on_sendmsg(field: Field, action: Action) -> Program {
        Program::from_insns(vec![
            Insn::load(Field::Nr),
            Insn::jeq(libc::SYS_sendmsg as u32, 0, 2),
            Insn::load(field),
            Insn::jeq(0, 0, 1),
            Insn::ret(Action::Allow),
            Insn::ret(action),
        ])
        .expect("program")
    }

    fn routine(ip: u64) -> Vec<(Planned, u64)> {
        vec![
            (
                Planned::new(libc::SYS_socket, &[k(1), k(0x80002), k(0)]),
                ip,
            ),
            (
                Planned::new(
                    libc::SYS_sendmsg,
                    &[UNKNOWN, k(0x7f00_0000_1000), k(0x4040)],
                ),
                ip + 0x18,
            ),
            (Planned::new(libc::SYS_close, &[UNKNOWN]), ip + 0x25),
        ]
    }

    #[test]
    fn a_routine_runs_only_if_no_filter_looks_at_what_it_learns() {
        let ip = 0x7f12_3456_0002;
        assert!(routine_runs(&[], &routine(ip)));
        // Looks at the flags (known), which it refuses.
        let flags = on_sendmsg(Field::ArgLow(2), Action::Errno(1));
        assert!(!routine_runs(std::slice::from_ref(&flags), &routine(ip)));
        // Looks at a known argument that lets it through.
        let high = on_sendmsg(Field::ArgHigh(2), Action::KillProcess);
        assert!(routine_runs(std::slice::from_ref(&high), &routine(ip)));
        // Looks at the fd the routine's socket returns: whatever it would say, not
        // knowable before (allowed for fd 0, the stand-in here).
        for half in [Field::ArgLow(0), Field::ArgHigh(0)] {
            let fd = on_sendmsg(half, Action::KillProcess);
            assert!(!routine_runs(&[high.clone(), fd], &routine(ip)), "{half:?}");
        }
        // Looks at the instruction pointer: decided with the routine's own.
        let at_ip = on_sendmsg(Field::IpHigh, Action::KillThread);
        assert!(!routine_runs(std::slice::from_ref(&at_ip), &routine(ip)));
        assert!(routine_runs(std::slice::from_ref(&at_ip), &routine(0x1000)));
    }
}
