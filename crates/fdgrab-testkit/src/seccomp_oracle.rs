//! The kernel as the oracle for fdgrab's classic-BPF interpreter
//! ([`fdgrab::seccomp::bpf::Program::run`]).
//!
//! A program is installed with `seccomp(SECCOMP_SET_MODE_FILTER)` in a forked
//! child, which then makes one system call; what happened to that call (its return
//! value, SIGSYS through a handler, or death by SIGSYS) is compared with what the
//! interpreter's verdict says the kernel does. Programs come from bytes, so the fuzz
//! target and the property test share one generator.
//!
//! The child must report without system calls, because the filter under test may
//! refuse any of them: it writes into a shared anonymous page and ends on `ud2`
//! (SIGILL, no syscall). Core dumps are off (`PR_SET_DUMPABLE` 0, `RLIMIT_CORE` 0).

use fdgrab::seccomp::bpf::{
    Action, Field, Insn, Program, AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

/// How a call enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Abi {
    /// `syscall`: `AUDIT_ARCH_X86_64` (x32 numbers carry [`X32_SYSCALL_BIT`]).
    X86_64,
    /// `int 0x80` from a 64-bit process: `AUDIT_ARCH_I386`, i386 numbering.
    I386,
}

/// One system call the child makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Call {
    pub abi: Abi,
    pub nr: u32,
}

impl Call {
    /// The architecture the filter sees.
    pub fn arch(self) -> u32 {
        match self.abi {
            Abi::X86_64 => AUDIT_ARCH_X86_64,
            Abi::I386 => AUDIT_ARCH_I386,
        }
    }
}

/// The calls made: each is harmless when allowed (getpid, or a number no kernel
/// implements, which answers ENOSYS) so a random filter that lets it through
/// changes nothing.
pub const CALLS: [Call; 7] = [
    Call {
        abi: Abi::X86_64,
        nr: 39,
    }, // getpid
    Call {
        abi: Abi::X86_64,
        nr: 1000,
    }, // unimplemented
    Call {
        abi: Abi::X86_64,
        nr: X32_SYSCALL_BIT | 39,
    }, // x32 getpid
    Call {
        abi: Abi::X86_64,
        nr: 0x3fff_ffff,
    }, // unimplemented
    Call {
        abi: Abi::X86_64,
        nr: u32::MAX,
    }, // nr -1
    Call {
        abi: Abi::I386,
        nr: 20,
    }, // i386 getpid
    Call {
        abi: Abi::I386,
        nr: 1000,
    }, // unimplemented
];

/// What became of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The call returned; the caller's own pid is reported as `Pid` so that
    /// outcomes of different children compare.
    Returned(i64),
    Pid,
    /// SIGSYS reached the thread's handler (`SECCOMP_RET_TRAP`).
    Trapped,
    /// The process died of SIGSYS (`SECCOMP_RET_KILL_*`).
    Killed,
}

/// Why a comparison could not be made.
#[derive(Debug)]
pub enum OracleError {
    /// The kernel refused the program (`EINVAL`).
    Refused,
    Fork(std::io::Error),
    /// The child ended in a way none of the outcomes explains.
    Unexpected(String),
}

/// Instructions from bytes, 7 bytes each (op, jt, jf, k); most constants are the
/// values the calls and architectures carry, so that branches go both ways.
pub fn insns_from_bytes(data: &[u8]) -> Vec<Insn> {
    const KS: [u32; 10] = [
        39,
        1000,
        20,
        u32::MAX,
        0x3fff_ffff,
        X32_SYSCALL_BIT,
        X32_SYSCALL_BIT | 39,
        AUDIT_ARCH_X86_64,
        AUDIT_ARCH_I386,
        0,
    ];
    let chunks: Vec<&[u8]> = data.chunks_exact(7).take(64).collect();
    let n = chunks.len();
    chunks
        .iter()
        .enumerate()
        .map(|(pc, c)| {
            let raw_k = u32::from_le_bytes([c[3], c[4], c[5], c[6]]);
            let k = if c[3] & 0x80 == 0 {
                KS[usize::from(c[4]) % KS.len()]
            } else {
                raw_k
            };
            // Jumps mostly stay inside the program; a few do not, to check that
            // the builder refuses what the kernel refuses.
            let left = n.saturating_sub(pc + 1).max(1);
            let jump = |b: u8| {
                if b >= 0xf0 {
                    b
                } else {
                    (usize::from(b) % left) as u8
                }
            };
            match c[0] % 12 {
                // Any opcode the kernel accepts, or not, with constants that keep
                // loads inside nr and arch (the interpreter's `run` knows no
                // arguments) and indexes and jumps near the valid range.
                8..=10 => {
                    let code = VALID_CODES[usize::from(c[1]) % VALID_CODES.len()];
                    let k = match code {
                        0x20 => raw_k & 4,
                        0x60 | 0x61 | 0x02 | 0x03 => raw_k % 20,
                        0x64 | 0x74 => raw_k % 40,
                        0x34 | 0x94 => raw_k % 3,
                        0x05 => raw_k % (left as u32 + 2),
                        0x06 => action_from(c[5], raw_k).to_raw() | (raw_k & 0xffff),
                        _ => k,
                    };
                    Insn::from_raw(libc::sock_filter {
                        code,
                        jt: jump(c[2]),
                        jf: jump(c[5]),
                        k,
                    })
                }
                11 => Insn::from_raw(libc::sock_filter {
                    code: u16::from(c[1]),
                    jt: jump(c[2]),
                    jf: jump(c[5]),
                    k: if u16::from(c[1]) & 0xe7 == 0x20 {
                        raw_k & 4
                    } else {
                        raw_k
                    },
                }),
                0 => Insn::load(Field::Nr),
                1 => Insn::load(Field::Arch),
                2 => Insn::jeq(k, jump(c[1]), jump(c[2])),
                3 => Insn::jge(k, jump(c[1]), jump(c[2])),
                4 => Insn::jset(k, jump(c[1]), jump(c[2])),
                5 => Insn::ret(action_from(c[1], raw_k)),
                _ => Insn::ret(action_from(c[1] % 6, raw_k)),
            }
        })
        .collect()
}

/// Classic-BPF opcodes seccomp accepts, and `BPF_MOD` (0x94), which it refuses.
const VALID_CODES: [u16; 35] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x0c, 0x14, 0x24, 0x34, 0x3c, 0x44, 0x54, 0x64, 0x74, 0x84, 0xa4,
    0xac, 0x05, 0x15, 0x1d, 0x25, 0x2d, 0x35, 0x45, 0x4d, 0x06, 0x16, 0x07, 0x87, 0x60, 0x61, 0x20,
    0x80, 0x81, 0x94,
];

fn action_from(sel: u8, raw_k: u32) -> Action {
    match sel % 10 {
        8 => Action::KillThread,
        9 => Action::Trace(raw_k as u16),
        0 => Action::Allow,
        1 => Action::Errno(raw_k as u16),
        2 => Action::Errno((raw_k % 200) as u16),
        3 => Action::Trap,
        4 => Action::KillProcess,
        5 => Action::Log,
        6 => Action::Notify,
        _ => Action::Errno(raw_k as u16 % 8),
    }
}

/// The outcome the kernel gives a verdict of the interpreter for `call`.
///
/// `SECCOMP_RET_ERRNO` data above `MAX_ERRNO` (4095) is clamped by the kernel;
/// `SECCOMP_RET_USER_NOTIF` with no listener on the filter answers ENOSYS; ALLOW and
/// LOG run the call.
pub fn expected(action: Action, call: Call) -> Outcome {
    match action {
        Action::Allow | Action::Log => unfiltered(call),
        Action::Errno(e) => Outcome::Returned(-i64::from(e.min(4095))),
        Action::Notify => Outcome::Returned(-i64::from(libc::ENOSYS)),
        Action::Trap => Outcome::Trapped,
        Action::KillProcess | Action::KillThread => Outcome::Killed,
        // No tracer: the call fails with ENOSYS.
        Action::Trace(_) => Outcome::Returned(-i64::from(libc::ENOSYS)),
    }
}

/// What `call` gives without any filter, measured once per call in a child.
fn unfiltered(call: Call) -> Outcome {
    static SEEN: Mutex<Option<HashMap<Call, Outcome>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let map = seen.get_or_insert_with(HashMap::new);
    if let Some(o) = map.get(&call) {
        return *o;
    }
    let o = match in_child(None, call) {
        Ok(o) => o,
        Err(e) => panic!("{call:?} without a filter: {e:?}"),
    };
    map.insert(call, o);
    o
}

/// Installs `program` in a forked child and makes `call` there.
pub fn kernel(program: &Program, call: Call) -> Result<Outcome, OracleError> {
    in_child(Some(program), call)
}

/// Whether the kernel accepts `insns` as a seccomp filter (checked in a child).
pub fn kernel_accepts(insns: &[Insn]) -> Result<bool, OracleError> {
    let raw: Vec<libc::sock_filter> = insns.iter().map(|i| i.raw()).collect();
    match run_child(Some(&raw), CALLS[1]) {
        Ok(_) => Ok(true),
        Err(OracleError::Refused) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The verdict the interpreter gives `call` under `program`, as an outcome, and the
/// kernel's; both, for the caller to compare and report.
pub fn compare(program: &Program, call: Call) -> Result<(Outcome, Outcome), OracleError> {
    let verdict = program.run(call.arch(), call.nr);
    let want = expected(verdict.action, call);
    let got = kernel(program, call)?;
    Ok((want, got))
}

fn in_child(program: Option<&Program>, call: Call) -> Result<Outcome, OracleError> {
    let raw = program.map(|p| p.raw());
    run_child(raw.as_deref(), call)
}

/// Child states written to the shared page.
const STARTED: i64 = 1;
const REFUSED: i64 = 2;
const RETURNED: i64 = 3;
const TRAPPED: i64 = 4;

/// The shared page: [state, value, child's pid].
static SHARED: AtomicPtr<i64> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_sigsys(_: libc::c_int) {
    // SAFETY: SHARED points at the live shared page mapped before the fork; a
    // plain store is async-signal-safe. The child then faults on purpose.
    unsafe {
        std::ptr::write_volatile(SHARED.load(Ordering::Relaxed), TRAPPED);
        std::arch::asm!("ud2", options(noreturn));
    }
}

fn run_child(raw: Option<&[libc::sock_filter]>, call: Call) -> Result<Outcome, OracleError> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut filter: Vec<libc::sock_filter> = raw.map(<[_]>::to_vec).unwrap_or_default();
    let fprog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: an anonymous shared mapping of one page; checked below.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return Err(OracleError::Fork(std::io::Error::last_os_error()));
    }
    let shared = page.cast::<i64>();
    // SAFETY: the page is 4096 bytes, so three i64 fit; the pointer is published
    // for the child's SIGSYS handler, and the lock above keeps it to one user.
    unsafe {
        std::ptr::write_bytes(shared, 0, 3);
    }
    SHARED.store(shared, Ordering::Relaxed);
    // SAFETY: the child only makes raw system calls and stores to the shared page
    // before it faults on purpose; it never returns into Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: unmapping the page mapped above, no longer used.
        unsafe { libc::munmap(page, 4096) };
        return Err(OracleError::Fork(e));
    }
    if pid == 0 {
        // SAFETY: the child side; see the module documentation.
        unsafe { child(shared, raw.is_some().then_some(&fprog), call) }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    // SAFETY: the child is gone; the page holds what it wrote.
    let (state, value, child_pid) = unsafe {
        (
            std::ptr::read_volatile(shared),
            std::ptr::read_volatile(shared.add(1)),
            std::ptr::read_volatile(shared.add(2)),
        )
    };
    // SAFETY: unmapping the page mapped above, no longer used.
    unsafe { libc::munmap(page, 4096) };
    let signal = libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status));
    match (state, signal) {
        (REFUSED, _) => Err(OracleError::Refused),
        (RETURNED, Some(libc::SIGILL)) if value == child_pid => Ok(Outcome::Pid),
        (RETURNED, Some(libc::SIGILL)) => Ok(Outcome::Returned(value)),
        (TRAPPED, Some(libc::SIGILL)) => Ok(Outcome::Trapped),
        (STARTED, Some(libc::SIGSYS)) => Ok(Outcome::Killed),
        _ => Err(OracleError::Unexpected(format!(
            "child state {state}, value {value}, wait status {status:#x}"
        ))),
    }
}

/// # Safety
/// Called only in a freshly forked child; never returns.
unsafe fn child(shared: *mut i64, fprog: Option<&libc::sock_fprog>, call: Call) -> ! {
    // SAFETY: raw system calls with valid arguments, and stores into the shared
    // page, which stays mapped in the child.
    unsafe {
        std::ptr::write_volatile(shared.add(2), i64::from(libc::getpid()));
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        // A fuzzer's own SIGILL handler (inherited over fork) would make system
        // calls the filter may refuse: the child's ud2 must kill it plainly.
        libc::signal(libc::SIGILL, libc::SIG_DFL);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut());
        if let Some(fprog) = fprog {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            let rc = libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                fprog as *const libc::sock_fprog,
            );
            if rc != 0 {
                std::ptr::write_volatile(shared, REFUSED);
                std::arch::asm!("ud2", options(noreturn));
            }
        }
        std::ptr::write_volatile(shared, STARTED);
        let value = match call.abi {
            Abi::X86_64 => libc::syscall(call.nr as libc::c_long),
            Abi::I386 => {
                let ret: i32;
                // `int 0x80` takes the number in eax and returns in eax; the kernel
                // clears r8-r11 on this path.
                std::arch::asm!(
                    "int 0x80",
                    inlateout("eax") call.nr as i32 => ret,
                    out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                    options(nostack),
                );
                i64::from(ret)
            }
        };
        // libc::syscall turns -errno into -1 and errno; undo that so both ABIs
        // report the kernel's value.
        let value = if call.abi == Abi::X86_64 && value == -1 {
            -i64::from(*libc::__errno_location())
        } else {
            value
        };
        std::ptr::write_volatile(shared.add(1), value);
        std::ptr::write_volatile(shared, RETURNED);
        std::arch::asm!("ud2", options(noreturn));
    }
}

/// Builds `insns` with the builder and checks it against the kernel: the builder
/// accepts exactly what the kernel accepts, and for an accepted program every call
/// in [`CALLS`] ends as the interpreter says. `Ok(accepted)`; `Err` describes the
/// first mismatch.
pub fn check(insns: Vec<Insn>) -> Result<bool, String> {
    let built = Program::from_insns(insns.clone());
    let raw: Vec<libc::sock_filter> = insns.iter().map(|i| i.raw()).collect();
    for (i, call) in CALLS.into_iter().enumerate() {
        let got = if raw.is_empty() {
            Err(OracleError::Refused)
        } else {
            run_child(Some(&raw), call)
        };
        let program = match (&built, got) {
            (Ok(p), Ok(got)) => {
                let action = p.run(call.arch(), call.nr).action;
                let want = expected(action, call);
                if want != got {
                    return Err(format!(
                        "{call:?}: interpreter {action:?} means {want:?}, kernel gave {got:?}; program {insns:?}"
                    ));
                }
                continue;
            }
            (Err(_), Err(OracleError::Refused)) if i == 0 => return Ok(false),
            (built, Err(OracleError::Refused)) => (built.clone().map(|_| ()), false),
            (built, Ok(_)) => (built.clone().map(|_| ()), true),
            (_, Err(e)) => return Err(format!("{call:?}: {e:?}")),
        };
        return Err(format!(
            "builder says {:?}, kernel accepts: {}, program {insns:?}",
            program.0, program.1
        ));
    }
    Ok(true)
}
