//! A small, typed classic-BPF builder for seccomp filters.
//!
//! Seccomp runs classic BPF over `struct seccomp_data`. A filter here needs only
//! a handful of instructions: load a 32-bit word of `seccomp_data`, compare it with
//! a constant, and return an action. [`Insn`] names those, [`SyscallFilter`] lays
//! them out as "check the architecture, then match syscall numbers, else the
//! default action", and [`Program::run`] evaluates a program the way the kernel
//! would, so the layout is tested without installing anything.

use std::fmt;

/// `AUDIT_ARCH_X86_64` (`EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`).
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `AUDIT_ARCH_I386`: what `int 0x80` from a 64-bit process reports.
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// `__X32_SYSCALL_BIT`: x32 calls carry the x86_64 arch with this bit set in `nr`.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// `AUDIT_ARCH_AARCH64` (`EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`).
pub const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
/// `AUDIT_ARCH_ARM`: what an AArch32 (compat) task on an arm64 kernel reports.
pub const AUDIT_ARCH_ARM: u32 = 0x4000_0028;

/// The `AUDIT_ARCH_*` of the ABI this crate is built for; every other one is foreign.
#[cfg(target_arch = "x86_64")]
pub const NATIVE_AUDIT_ARCH: u32 = AUDIT_ARCH_X86_64;
/// The `AUDIT_ARCH_*` of the ABI this crate is built for; every other one is foreign.
#[cfg(target_arch = "aarch64")]
pub const NATIVE_AUDIT_ARCH: u32 = AUDIT_ARCH_AARCH64;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("fdgrab's seccomp filters know the AUDIT_ARCH of x86_64 and aarch64 only");

/// Offsets into `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;

// Classic BPF opcodes (`<linux/bpf_common.h>`).
const BPF_LD: u16 = 0x00;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_JMP: u16 = 0x05;
const BPF_JEQ: u16 = 0x10;
const BPF_JGE: u16 = 0x30;
const BPF_JSET: u16 = 0x40;
const BPF_K: u16 = 0x00;
const BPF_RET: u16 = 0x06;

/// The kernel's limit on one filter (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// What a filter tells the kernel to do with a system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `SECCOMP_RET_ALLOW`.
    Allow,
    /// `SECCOMP_RET_ERRNO`: fail the call with this errno without running it.
    Errno(u16),
    /// `SECCOMP_RET_USER_NOTIF` (5.0): suspend the caller and ask the listener.
    Notify,
    /// `SECCOMP_RET_KILL_PROCESS` (4.14): kill the whole thread group with SIGSYS.
    KillProcess,
    /// `SECCOMP_RET_TRAP`: deliver SIGSYS to the caller.
    Trap,
    /// `SECCOMP_RET_LOG` (4.14): allow, and log it.
    Log,
}

impl Action {
    /// The 32-bit return value the kernel reads.
    pub const fn to_raw(self) -> u32 {
        match self {
            Action::Allow => 0x7fff_0000,
            Action::Errno(e) => 0x0005_0000 | (e as u32 & 0xffff),
            Action::Notify => 0x7fc0_0000,
            Action::KillProcess => 0x8000_0000,
            Action::Trap => 0x0003_0000,
            Action::Log => 0x7ffc_0000,
        }
    }

    /// The inverse of [`Action::to_raw`] for the actions this builder emits.
    pub const fn from_raw(raw: u32) -> Option<Action> {
        Some(match raw & 0xffff_0000 {
            0x7fff_0000 => Action::Allow,
            0x0005_0000 => Action::Errno((raw & 0xffff) as u16),
            0x7fc0_0000 => Action::Notify,
            0x8000_0000 => Action::KillProcess,
            0x0003_0000 => Action::Trap,
            0x7ffc_0000 => Action::Log,
            _ => return None,
        })
    }
}

/// A field of `struct seccomp_data` that fits in one 32-bit load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// The system call number.
    Nr,
    /// The `AUDIT_ARCH_*` value of the calling convention used.
    Arch,
}

/// One classic BPF instruction, restricted to the forms seccomp filters here use.
#[derive(Clone, Copy)]
pub struct Insn(libc::sock_filter);

impl PartialEq for Insn {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.0, &other.0);
        (a.code, a.jt, a.jf, a.k) == (b.code, b.jt, b.jf, b.k)
    }
}

impl Eq for Insn {}

impl Insn {
    /// `A = seccomp_data.<field>`.
    pub const fn load(field: Field) -> Insn {
        let k = match field {
            Field::Nr => OFF_NR,
            Field::Arch => OFF_ARCH,
        };
        Insn(libc::sock_filter {
            code: BPF_LD | BPF_W | BPF_ABS,
            jt: 0,
            jf: 0,
            k,
        })
    }

    /// `if A == k { skip jt } else { skip jf }`.
    pub const fn jeq(k: u32, jt: u8, jf: u8) -> Insn {
        Insn(libc::sock_filter {
            code: BPF_JMP | BPF_JEQ | BPF_K,
            jt,
            jf,
            k,
        })
    }

    /// `if A >= k { skip jt } else { skip jf }` (unsigned).
    pub const fn jge(k: u32, jt: u8, jf: u8) -> Insn {
        Insn(libc::sock_filter {
            code: BPF_JMP | BPF_JGE | BPF_K,
            jt,
            jf,
            k,
        })
    }

    /// `if A & k != 0 { skip jt } else { skip jf }`.
    pub const fn jset(k: u32, jt: u8, jf: u8) -> Insn {
        Insn(libc::sock_filter {
            code: BPF_JMP | BPF_JSET | BPF_K,
            jt,
            jf,
            k,
        })
    }

    /// `return action`.
    pub const fn ret(action: Action) -> Insn {
        Insn(libc::sock_filter {
            code: BPF_RET | BPF_K,
            jt: 0,
            jf: 0,
            k: action.to_raw(),
        })
    }

    /// The raw instruction.
    pub const fn raw(self) -> libc::sock_filter {
        self.0
    }
}

impl fmt::Debug for Insn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.0;
        match i.code {
            c if c == BPF_LD | BPF_W | BPF_ABS => write!(f, "ld [{}]", i.k),
            c if c == BPF_JMP | BPF_JEQ | BPF_K => {
                write!(f, "jeq #{:#x}, +{}, +{}", i.k, i.jt, i.jf)
            }
            c if c == BPF_JMP | BPF_JGE | BPF_K => {
                write!(f, "jge #{:#x}, +{}, +{}", i.k, i.jt, i.jf)
            }
            c if c == BPF_JMP | BPF_JSET | BPF_K => {
                write!(f, "jset #{:#x}, +{}, +{}", i.k, i.jt, i.jf)
            }
            c if c == BPF_RET | BPF_K => match Action::from_raw(i.k) {
                Some(a) => write!(f, "ret {a:?}"),
                None => write!(f, "ret #{:#x}", i.k),
            },
            c => write!(f, "op {c:#x} {} {} {:#x}", i.jt, i.jf, i.k),
        }
    }
}

/// Why a program could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("filter has {0} instructions; the kernel accepts at most {MAX_INSNS}")]
    TooLong(usize),
    #[error(
        "a jump in the filter would span {0} instructions; classic BPF jumps reach at most 255"
    )]
    JumpTooFar(usize),
    #[error("system call {0} has two rules")]
    DuplicateRule(u32),
}

/// A finished, verified-in-shape seccomp program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    insns: Vec<Insn>,
}

/// What [`Program::run`] reports for one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    /// How many instructions ran: the cost of this path through the filter.
    pub steps: usize,
}

impl Program {
    /// Wraps hand-written instructions, checking length and jump targets.
    pub fn from_insns(insns: Vec<Insn>) -> Result<Program, BuildError> {
        if insns.is_empty() || insns.len() > MAX_INSNS {
            return Err(BuildError::TooLong(insns.len()));
        }
        for (pc, i) in insns.iter().enumerate() {
            let code = i.0.code;
            if code & 0x07 == BPF_JMP {
                let far = pc + 1 + usize::from(i.0.jt.max(i.0.jf));
                if far >= insns.len() {
                    return Err(BuildError::JumpTooFar(far));
                }
            }
        }
        Ok(Program { insns })
    }

    pub fn insns(&self) -> &[Insn] {
        &self.insns
    }

    pub fn len(&self) -> usize {
        self.insns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// The instructions in the layout `struct sock_fprog` points at.
    pub fn raw(&self) -> Vec<libc::sock_filter> {
        self.insns.iter().map(|i| i.0).collect()
    }

    /// Runs the program over one call the way the kernel's classic-BPF interpreter
    /// would (for the instruction forms [`Insn`] can express).
    pub fn run(&self, arch: u32, nr: u32) -> Verdict {
        let mut a: u32 = 0;
        let mut pc = 0usize;
        let mut steps = 0usize;
        while let Some(i) = self.insns.get(pc) {
            steps += 1;
            let i = i.0;
            match i.code {
                c if c == BPF_LD | BPF_W | BPF_ABS => {
                    a = match i.k {
                        OFF_NR => nr,
                        OFF_ARCH => arch,
                        _ => 0,
                    };
                    pc += 1;
                }
                c if c == BPF_RET | BPF_K => {
                    let action = Action::from_raw(i.k).unwrap_or(Action::KillProcess);
                    return Verdict { action, steps };
                }
                c => {
                    let taken = match c {
                        x if x == BPF_JMP | BPF_JEQ | BPF_K => a == i.k,
                        x if x == BPF_JMP | BPF_JGE | BPF_K => a >= i.k,
                        x if x == BPF_JMP | BPF_JSET | BPF_K => a & i.k != 0,
                        _ => {
                            return Verdict {
                                action: Action::KillProcess,
                                steps,
                            }
                        }
                    };
                    pc += 1 + usize::from(if taken { i.jt } else { i.jf });
                }
            }
        }
        // Falling off the end is rejected by the kernel's checker; model it as a kill.
        Verdict {
            action: Action::KillProcess,
            steps,
        }
    }
}

/// "Native ABI only; these syscalls get these actions; everything else gets the
/// default" — the one filter shape fdgrab installs. Native is [`NATIVE_AUDIT_ARCH`]:
/// on x86_64 that leaves out i386 (`int 0x80`) and, by the number check, x32; on
/// aarch64 it leaves out AArch32 compat tasks (whose numbers never reach the x32 bit).
///
/// Layout (an allowed call takes `4 + rules` instructions):
/// ```text
///   ld arch;  jeq NATIVE ? next : foreign
///   ld nr;    jge X32_BIT ? foreign : next
///   jeq nr0 ? ret0 : next ... jeq nrN ? retN : next
///   ret default
///   ret0 ... retN
///   foreign: ret on_foreign_arch
/// ```
#[derive(Clone, Debug)]
pub struct SyscallFilter {
    rules: Vec<(u32, Action)>,
    default: Action,
    on_foreign_arch: Action,
}

impl SyscallFilter {
    /// A filter with `default` for every call not named by a rule. Calls through
    /// another ABI (i386 `int 0x80`, x32, AArch32) are killed unless
    /// [`SyscallFilter::on_foreign_arch`] says otherwise.
    pub fn new(default: Action) -> Self {
        Self {
            rules: Vec::new(),
            default,
            on_foreign_arch: Action::KillProcess,
        }
    }

    /// The action for calls made through a foreign ABI.
    pub fn on_foreign_arch(mut self, action: Action) -> Self {
        self.on_foreign_arch = action;
        self
    }

    /// Gives system call `nr` (the native numbering, as `libc::SYS_*`) its own action.
    pub fn rule(mut self, nr: libc::c_long, action: Action) -> Self {
        self.rules.push((nr as u32, action));
        self
    }

    /// Lays the filter out as instructions.
    pub fn build(&self) -> Result<Program, BuildError> {
        let mut seen = std::collections::HashSet::new();
        for &(nr, _) in &self.rules {
            if !seen.insert(nr) {
                return Err(BuildError::DuplicateRule(nr));
            }
        }
        let n = self.rules.len();
        // Indices: 0 ld arch, 1 jeq arch, 2 ld nr, 3 jge x32, 4..4+n rule jumps,
        // 4+n default ret, 5+n..5+2n rule rets, 5+2n foreign ret.
        let foreign = 5 + 2 * n;
        let jump = |from: usize, to: usize| -> Result<u8, BuildError> {
            let d = to - from - 1;
            u8::try_from(d).map_err(|_| BuildError::JumpTooFar(d))
        };
        let mut insns = Vec::with_capacity(foreign + 1);
        insns.push(Insn::load(Field::Arch));
        insns.push(Insn::jeq(NATIVE_AUDIT_ARCH, 0, jump(1, foreign)?));
        insns.push(Insn::load(Field::Nr));
        insns.push(Insn::jge(X32_SYSCALL_BIT, jump(3, foreign)?, 0));
        for (i, &(nr, _)) in self.rules.iter().enumerate() {
            let at = 4 + i;
            insns.push(Insn::jeq(nr, jump(at, 5 + n + i)?, 0));
        }
        insns.push(Insn::ret(self.default));
        insns.extend(self.rules.iter().map(|&(_, a)| Insn::ret(a)));
        insns.push(Insn::ret(self.on_foreign_arch));
        Program::from_insns(insns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind_filter() -> Program {
        SyscallFilter::new(Action::Allow)
            .rule(libc::SYS_bind, Action::Notify)
            .rule(libc::SYS_io_uring_setup, Action::Errno(libc::ENOSYS as u16))
            .build()
            .expect("filter builds")
    }

    #[test]
    fn traps_bind_and_refuses_io_uring() {
        let p = bind_filter();
        let bind = p.run(NATIVE_AUDIT_ARCH, libc::SYS_bind as u32);
        assert_eq!(bind.action, Action::Notify);
        let uring = p.run(NATIVE_AUDIT_ARCH, libc::SYS_io_uring_setup as u32);
        assert_eq!(uring.action, Action::Errno(libc::ENOSYS as u16));
    }

    #[test]
    fn everything_else_is_allowed_on_a_short_path() {
        let p = bind_filter();
        for nr in [
            0u32,
            1,
            libc::SYS_getppid as u32,
            libc::SYS_connect as u32,
            460,
        ] {
            let v = p.run(NATIVE_AUDIT_ARCH, nr);
            assert_eq!(v.action, Action::Allow, "nr {nr}");
            assert_eq!(
                v.steps,
                4 + 2 + 1,
                "allowed calls cost a fixed 4 + rules + 1 steps"
            );
        }
    }

    #[test]
    fn foreign_abis_are_killed() {
        let p = bind_filter();
        // The other architecture's native ABI is foreign too (a filter built for one
        // must never pass the other's numbers, which mean different calls).
        for arch in [AUDIT_ARCH_X86_64, AUDIT_ARCH_AARCH64] {
            if arch != NATIVE_AUDIT_ARCH {
                assert_eq!(p.run(arch, 49).action, Action::KillProcess);
                assert_eq!(p.run(arch, 200).action, Action::KillProcess);
            }
        }
        // AArch32 compat on arm64: bind is 282, socketcall does not exist there.
        for nr in [282u32, libc::SYS_bind as u32] {
            assert_eq!(p.run(AUDIT_ARCH_ARM, nr).action, Action::KillProcess);
        }
        // i386 bind is socketcall (102) or bind (361); neither may slip through.
        for nr in [102u32, 361, libc::SYS_bind as u32] {
            assert_eq!(p.run(AUDIT_ARCH_I386, nr).action, Action::KillProcess);
        }
        // x32: the x86_64 arch with the x32 bit set in the number (x32 bind is 49).
        // On aarch64 no real number reaches the bit; the check costs one step.
        for nr in [
            X32_SYSCALL_BIT | libc::SYS_bind as u32,
            X32_SYSCALL_BIT | 39,
        ] {
            assert_eq!(p.run(NATIVE_AUDIT_ARCH, nr).action, Action::KillProcess);
        }
        let refusing = SyscallFilter::new(Action::Allow)
            .on_foreign_arch(Action::Errno(libc::ENOSYS as u16))
            .build()
            .expect("builds");
        assert_eq!(
            refusing.run(0xdead, 1).action,
            Action::Errno(libc::ENOSYS as u16)
        );
    }

    #[test]
    fn actions_round_trip() {
        for a in [
            Action::Allow,
            Action::Errno(1),
            Action::Errno(4095),
            Action::Notify,
            Action::KillProcess,
            Action::Trap,
            Action::Log,
        ] {
            assert_eq!(Action::from_raw(a.to_raw()), Some(a));
        }
    }

    #[test]
    fn bad_programs_are_refused() {
        assert!(matches!(
            SyscallFilter::new(Action::Allow)
                .rule(1, Action::Notify)
                .rule(1, Action::Allow)
                .build(),
            Err(BuildError::DuplicateRule(1))
        ));
        let mut many = SyscallFilter::new(Action::Allow);
        for nr in 0..200 {
            many = many.rule(nr, Action::Notify);
        }
        assert!(matches!(many.build(), Err(BuildError::JumpTooFar(_))));
        assert!(matches!(
            Program::from_insns(vec![Insn::jeq(1, 3, 0)]),
            Err(BuildError::JumpTooFar(_))
        ));
        assert!(Program::from_insns(Vec::new()).is_err());
    }
}
