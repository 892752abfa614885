//! Classic BPF for seccomp: a small typed builder and an interpreter.
//!
//! Seccomp runs classic BPF over `struct seccomp_data`. [`Insn`] builds the
//! instructions, [`SyscallFilter`] lays out the one filter shape fdgrab installs
//! ("check the architecture, then match syscall numbers, else the default action"),
//! and [`Program::evaluate`] runs *any* program the kernel accepts for seccomp, the
//! way the kernel does. The injection engine uses the interpreter on filters it reads
//! out of a target (`PTRACE_SECCOMP_GET_FILTER`) to learn, before running anything
//! there, what the target's filters would do with each call it plans to inject.
//!
//! [`Program::from_insns`] checks a program as the kernel's classic-BPF checker and
//! seccomp's own checker do (`bpf_check_classic`, `seccomp_check_filter`): only the
//! opcodes seccomp allows, aligned loads inside `seccomp_data`, jumps inside the
//! program, no division by a zero constant, scratch words written before they are
//! read, and a final return.

use std::fmt;

/// `AUDIT_ARCH_X86_64` (`EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`).
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `AUDIT_ARCH_I386`: what `int 0x80` from a 64-bit process reports.
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// `__X32_SYSCALL_BIT`: x32 calls carry the x86_64 arch with this bit set in `nr`.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The sign bit of `nr`: a negative number (`syscall(-1)`), which has the x32
/// bit set too but names no call of any ABI.
const NEGATIVE_NR: u32 = 0x8000_0000;
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

/// `sizeof(struct seccomp_data)`: what `BPF_LEN` loads.
pub const SECCOMP_DATA_LEN: u32 = 64;
/// Offsets into `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_IP: u32 = 8;
const OFF_ARGS: u32 = 16;

// Classic BPF opcodes (`<linux/bpf_common.h>`, `<linux/filter.h>`).
const BPF_LD: u16 = 0x00;
const BPF_LDX: u16 = 0x01;
const BPF_ST: u16 = 0x02;
const BPF_STX: u16 = 0x03;
const BPF_ALU: u16 = 0x04;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_MISC: u16 = 0x07;
const BPF_W: u16 = 0x00;
const BPF_IMM: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_MEM: u16 = 0x60;
const BPF_LEN: u16 = 0x80;
const BPF_ADD: u16 = 0x00;
const BPF_SUB: u16 = 0x10;
const BPF_MUL: u16 = 0x20;
const BPF_DIV: u16 = 0x30;
const BPF_OR: u16 = 0x40;
const BPF_AND: u16 = 0x50;
const BPF_LSH: u16 = 0x60;
const BPF_RSH: u16 = 0x70;
const BPF_NEG: u16 = 0x80;
const BPF_MOD: u16 = 0x90;
const BPF_XOR: u16 = 0xa0;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_JGT: u16 = 0x20;
const BPF_JGE: u16 = 0x30;
const BPF_JSET: u16 = 0x40;
const BPF_K: u16 = 0x00;
const BPF_X: u16 = 0x08;
const BPF_A: u16 = 0x10;
const BPF_TAX: u16 = 0x00;
const BPF_TXA: u16 = 0x80;

/// Scratch memory words (`BPF_MEMWORDS`).
pub const MEM_WORDS: usize = 16;

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
    /// `SECCOMP_RET_KILL_THREAD` (value 0): kill the calling thread.
    KillThread,
    /// `SECCOMP_RET_TRAP`: skip the call and deliver SIGSYS to the caller.
    Trap,
    /// `SECCOMP_RET_TRACE`: hand the call to a tracer that asked for
    /// `PTRACE_O_TRACESECCOMP`; without one the call fails with `ENOSYS`.
    Trace(u16),
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
            Action::KillThread => 0x0000_0000,
            Action::Trap => 0x0003_0000,
            Action::Trace(d) => 0x7ff0_0000 | (d as u32 & 0xffff),
            Action::Log => 0x7ffc_0000,
        }
    }

    /// The action of a raw return value, or `None` for a value the kernel does not
    /// know (it treats those as [`Action::KillProcess`]; see [`Action::of_raw`]).
    pub const fn from_raw(raw: u32) -> Option<Action> {
        Some(match raw & 0xffff_0000 {
            0x7fff_0000 => Action::Allow,
            0x0005_0000 => Action::Errno((raw & 0xffff) as u16),
            0x7fc0_0000 => Action::Notify,
            0x8000_0000 => Action::KillProcess,
            0x0000_0000 => Action::KillThread,
            0x0003_0000 => Action::Trap,
            0x7ff0_0000 => Action::Trace((raw & 0xffff) as u16),
            0x7ffc_0000 => Action::Log,
            _ => return None,
        })
    }

    /// What the kernel does for a raw return value: unknown actions kill the process.
    pub const fn of_raw(raw: u32) -> Action {
        match Action::from_raw(raw) {
            Some(a) => a,
            None => Action::KillProcess,
        }
    }

    /// Whether the call runs (allowed, or allowed and logged).
    pub const fn runs(self) -> bool {
        matches!(self, Action::Allow | Action::Log)
    }

    /// The kernel's order between the actions of several filters: the lowest wins
    /// (`ACTION_ONLY`, the action bits compared as a signed number).
    pub const fn precedence(raw: u32) -> i32 {
        (raw & 0xffff_0000) as i32
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Allow => f.write_str("SECCOMP_RET_ALLOW"),
            Action::Errno(e) => write!(f, "SECCOMP_RET_ERRNO(errno {e})"),
            Action::Notify => f.write_str("SECCOMP_RET_USER_NOTIF"),
            Action::KillProcess => f.write_str("SECCOMP_RET_KILL_PROCESS"),
            Action::KillThread => f.write_str("SECCOMP_RET_KILL_THREAD"),
            Action::Trap => f.write_str("SECCOMP_RET_TRAP"),
            Action::Trace(d) => write!(f, "SECCOMP_RET_TRACE({d})"),
            Action::Log => f.write_str("SECCOMP_RET_LOG"),
        }
    }
}

/// `struct seccomp_data`: what a filter sees of one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeccompData {
    /// The system call number (with `__X32_SYSCALL_BIT` for x32 calls).
    pub nr: u32,
    /// The `AUDIT_ARCH_*` value of the calling convention used.
    pub arch: u32,
    /// The address just after the instruction that made the call.
    pub instruction_pointer: u64,
    /// The six arguments, as 64-bit registers.
    pub args: [u64; 6],
}

impl SeccompData {
    /// A call of `nr` through the native ABI ([`NATIVE_AUDIT_ARCH`]) with `args`
    /// (missing ones are 0) made from `ip`.
    pub fn native(nr: i64, args: &[u64], ip: u64) -> Self {
        let mut a = [0u64; 6];
        for (slot, v) in a.iter_mut().zip(args) {
            *slot = *v;
        }
        SeccompData {
            nr: nr as u32,
            arch: NATIVE_AUDIT_ARCH,
            instruction_pointer: ip,
            args: a,
        }
    }

    /// The 32-bit word at byte offset `off`, as a `BPF_LD|BPF_W|BPF_ABS` reads it
    /// (native byte order: on x86_64 the low half of a 64-bit field comes first).
    pub fn word(&self, off: u32) -> Option<u32> {
        let half = |v: u64, hi: bool| if hi { (v >> 32) as u32 } else { v as u32 };
        Some(match off {
            OFF_NR => self.nr,
            OFF_ARCH => self.arch,
            o if o & 3 != 0 || o >= SECCOMP_DATA_LEN => return None,
            o if o < OFF_ARGS => half(self.instruction_pointer, o == OFF_IP + 4),
            o => {
                let i = ((o - OFF_ARGS) / 8) as usize;
                half(self.args[i], (o - OFF_ARGS) % 8 == 4)
            }
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
    /// The low 32 bits of the instruction pointer.
    IpLow,
    /// The high 32 bits of the instruction pointer.
    IpHigh,
    /// The low 32 bits of argument 0..=5.
    ArgLow(u8),
    /// The high 32 bits of argument 0..=5.
    ArgHigh(u8),
}

impl Field {
    /// The byte offset in `struct seccomp_data` (x86_64: little-endian halves).
    pub const fn offset(self) -> u32 {
        match self {
            Field::Nr => OFF_NR,
            Field::Arch => OFF_ARCH,
            Field::IpLow => OFF_IP,
            Field::IpHigh => OFF_IP + 4,
            Field::ArgLow(i) => OFF_ARGS + 8 * (i as u32 % 6),
            Field::ArgHigh(i) => OFF_ARGS + 8 * (i as u32 % 6) + 4,
        }
    }
}

/// A binary ALU operation: `A = A op operand`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AluOp {
    /// `A + operand` (wrapping).
    Add,
    /// `A - operand` (wrapping).
    Sub,
    /// `A * operand` (wrapping).
    Mul,
    /// `A / operand`; division by zero ends the program with 0, as in the kernel.
    Div,
    /// `A | operand`.
    Or,
    /// `A & operand`.
    And,
    /// `A << operand`.
    Lsh,
    /// `A >> operand` (logical).
    Rsh,
    /// Not accepted by seccomp (the kernel's seccomp checker refuses it), but part of
    /// classic BPF; the interpreter implements it.
    Mod,
    /// `A ^ operand`.
    Xor,
}

impl AluOp {
    const fn code(self) -> u16 {
        match self {
            AluOp::Add => BPF_ADD,
            AluOp::Sub => BPF_SUB,
            AluOp::Mul => BPF_MUL,
            AluOp::Div => BPF_DIV,
            AluOp::Or => BPF_OR,
            AluOp::And => BPF_AND,
            AluOp::Lsh => BPF_LSH,
            AluOp::Rsh => BPF_RSH,
            AluOp::Mod => BPF_MOD,
            AluOp::Xor => BPF_XOR,
        }
    }
}

/// A conditional jump's comparison of A with K or X (unsigned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JmpOp {
    /// `A == operand`.
    Eq,
    /// `A > operand`.
    Gt,
    /// `A >= operand`.
    Ge,
    /// `A & operand != 0`.
    Set,
}

impl JmpOp {
    const fn code(self) -> u16 {
        match self {
            JmpOp::Eq => BPF_JEQ,
            JmpOp::Gt => BPF_JGT,
            JmpOp::Ge => BPF_JGE,
            JmpOp::Set => BPF_JSET,
        }
    }
}

/// One classic BPF instruction.
#[derive(Clone, Copy)]
pub struct Insn(libc::sock_filter);

impl PartialEq for Insn {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.0, &other.0);
        (a.code, a.jt, a.jf, a.k) == (b.code, b.jt, b.jf, b.k)
    }
}

impl Eq for Insn {}

const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn(libc::sock_filter { code, jt, jf, k })
}

impl Insn {
    /// Any instruction, as `struct sock_filter` holds it.
    pub const fn new(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
        insn(code, jt, jf, k)
    }

    /// `A = seccomp_data.<field>`.
    pub const fn load(field: Field) -> Insn {
        insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, field.offset())
    }

    /// `A = <32-bit word at byte offset k of seccomp_data>`.
    pub const fn load_abs(k: u32) -> Insn {
        insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, k)
    }

    /// `A = k`.
    pub const fn load_imm(k: u32) -> Insn {
        insn(BPF_LD | BPF_IMM, 0, 0, k)
    }

    /// `X = k`.
    pub const fn load_x_imm(k: u32) -> Insn {
        insn(BPF_LDX | BPF_IMM, 0, 0, k)
    }

    /// `A = sizeof(seccomp_data)`.
    pub const fn load_len() -> Insn {
        insn(BPF_LD | BPF_W | BPF_LEN, 0, 0, 0)
    }

    /// `X = sizeof(seccomp_data)`.
    pub const fn load_x_len() -> Insn {
        insn(BPF_LDX | BPF_W | BPF_LEN, 0, 0, 0)
    }

    /// `A = M[k]`.
    pub const fn load_mem(k: u32) -> Insn {
        insn(BPF_LD | BPF_MEM, 0, 0, k)
    }

    /// `X = M[k]`.
    pub const fn load_x_mem(k: u32) -> Insn {
        insn(BPF_LDX | BPF_MEM, 0, 0, k)
    }

    /// `M[k] = A`.
    pub const fn store(k: u32) -> Insn {
        insn(BPF_ST, 0, 0, k)
    }

    /// `M[k] = X`.
    pub const fn store_x(k: u32) -> Insn {
        insn(BPF_STX, 0, 0, k)
    }

    /// `A = A op k`.
    pub const fn alu(op: AluOp, k: u32) -> Insn {
        insn(BPF_ALU | op.code() | BPF_K, 0, 0, k)
    }

    /// `A = A op X`.
    pub const fn alu_x(op: AluOp) -> Insn {
        insn(BPF_ALU | op.code() | BPF_X, 0, 0, 0)
    }

    /// `A = -A`.
    pub const fn neg() -> Insn {
        insn(BPF_ALU | BPF_NEG, 0, 0, 0)
    }

    /// `X = A`.
    pub const fn tax() -> Insn {
        insn(BPF_MISC | BPF_TAX, 0, 0, 0)
    }

    /// `A = X`.
    pub const fn txa() -> Insn {
        insn(BPF_MISC | BPF_TXA, 0, 0, 0)
    }

    /// Skip `k` instructions unconditionally (32-bit reach).
    pub const fn ja(k: u32) -> Insn {
        insn(BPF_JMP | BPF_JA, 0, 0, k)
    }

    /// `if A op k { skip jt } else { skip jf }`.
    pub const fn jmp(op: JmpOp, k: u32, jt: u8, jf: u8) -> Insn {
        insn(BPF_JMP | op.code() | BPF_K, jt, jf, k)
    }

    /// `if A op X { skip jt } else { skip jf }`.
    pub const fn jmp_x(op: JmpOp, jt: u8, jf: u8) -> Insn {
        insn(BPF_JMP | op.code() | BPF_X, jt, jf, 0)
    }

    /// `if A == k { skip jt } else { skip jf }`.
    pub const fn jeq(k: u32, jt: u8, jf: u8) -> Insn {
        Insn::jmp(JmpOp::Eq, k, jt, jf)
    }

    /// `if A >= k { skip jt } else { skip jf }` (unsigned).
    pub const fn jge(k: u32, jt: u8, jf: u8) -> Insn {
        Insn::jmp(JmpOp::Ge, k, jt, jf)
    }

    /// `if A & k != 0 { skip jt } else { skip jf }`.
    pub const fn jset(k: u32, jt: u8, jf: u8) -> Insn {
        Insn::jmp(JmpOp::Set, k, jt, jf)
    }

    /// `return action`.
    pub const fn ret(action: Action) -> Insn {
        insn(BPF_RET | BPF_K, 0, 0, action.to_raw())
    }

    /// `return k` for any raw value.
    pub const fn ret_raw(k: u32) -> Insn {
        insn(BPF_RET | BPF_K, 0, 0, k)
    }

    /// `return A`.
    pub const fn ret_a() -> Insn {
        insn(BPF_RET | BPF_A, 0, 0, 0)
    }

    /// The raw instruction.
    pub const fn raw(self) -> libc::sock_filter {
        self.0
    }

    /// Wraps a raw instruction (checked when it becomes part of a [`Program`]).
    pub const fn from_raw(raw: libc::sock_filter) -> Insn {
        Insn(raw)
    }

    const fn class(&self) -> u16 {
        self.0.code & 0x07
    }
}

impl fmt::Debug for Insn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.0;
        let src = if i.code & BPF_X != 0 {
            "x".to_string()
        } else {
            format!("#{:#x}", i.k)
        };
        match (self.class(), i.code) {
            (_, c) if c == BPF_LD | BPF_W | BPF_ABS => write!(f, "ld [{}]", i.k),
            (_, c) if c == BPF_LD | BPF_IMM => write!(f, "ld #{:#x}", i.k),
            (_, c) if c == BPF_LDX | BPF_IMM => write!(f, "ldx #{:#x}", i.k),
            (_, c) if c == BPF_LD | BPF_W | BPF_LEN => f.write_str("ld #len"),
            (_, c) if c == BPF_LDX | BPF_W | BPF_LEN => f.write_str("ldx #len"),
            (_, c) if c == BPF_LD | BPF_MEM => write!(f, "ld M[{}]", i.k),
            (_, c) if c == BPF_LDX | BPF_MEM => write!(f, "ldx M[{}]", i.k),
            (_, c) if c == BPF_ST => write!(f, "st M[{}]", i.k),
            (_, c) if c == BPF_STX => write!(f, "stx M[{}]", i.k),
            (_, c) if c == BPF_MISC | BPF_TAX => f.write_str("tax"),
            (_, c) if c == BPF_MISC | BPF_TXA => f.write_str("txa"),
            (_, c) if c == BPF_JMP | BPF_JA => write!(f, "ja +{}", i.k),
            (_, c) if c == BPF_RET | BPF_A => f.write_str("ret a"),
            (_, c) if c == BPF_RET | BPF_K => match Action::from_raw(i.k) {
                Some(a) => write!(f, "ret {a:?}"),
                None => write!(f, "ret #{:#x}", i.k),
            },
            (_, c) if c == BPF_ALU | BPF_NEG => f.write_str("neg"),
            (BPF_ALU, c) => write!(f, "alu {:#x} {src}", c & 0xf0),
            (BPF_JMP, c) => {
                let name = match c & 0xf0 {
                    BPF_JEQ => "jeq",
                    BPF_JGT => "jgt",
                    BPF_JGE => "jge",
                    BPF_JSET => "jset",
                    _ => "j?",
                };
                write!(f, "{name} {src}, +{}, +{}", i.jt, i.jf)
            }
            (_, c) => write!(f, "op {c:#x} {} {} {:#x}", i.jt, i.jf, i.k),
        }
    }
}

/// Why a program could not be built or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// Empty, or more instructions than the kernel accepts; how many.
    #[error("filter has {0} instructions; the kernel accepts 1 to {MAX_INSNS}")]
    TooLong(usize),
    /// The instruction at this index jumps past the end.
    #[error("instruction {0} jumps outside the filter")]
    JumpTooFar(usize),
    /// Two rules for this system call number.
    #[error("system call {0} has two rules")]
    DuplicateRule(u32),
    /// The last instruction is not a return.
    #[error("the filter's last instruction is not a return (the kernel requires one)")]
    NoFinalReturn,
    #[error(
        "instruction {pc} (opcode {code:#x}, k {k:#x}) is not accepted in a seccomp filter: {why}"
    )]
    /// An instruction the kernel's checkers refuse.
    BadInstruction {
        /// Its index.
        pc: usize,
        /// Its opcode.
        code: u16,
        /// Its constant.
        k: u32,
        /// Which rule it breaks.
        why: &'static str,
    },
    #[error("filter with {rules} rules needs {insns} instructions; the kernel accepts at most {MAX_INSNS}")]
    /// More rules than fit in the kernel's instruction limit.
    TooManyRules {
        /// Rules asked for.
        rules: usize,
        /// Instructions they would take.
        insns: usize,
    },
}

/// A finished seccomp program that passed the kernel's checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    insns: Vec<Insn>,
}

/// What [`Program::evaluate`] reports for one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The action the program returned ([`Action::of_raw`] of `raw`).
    pub action: Action,
    /// The raw 32-bit value returned.
    pub raw: u32,
    /// How many instructions ran: the cost of this path through the filter.
    pub steps: usize,
}

/// Why the kernel's checker refuses instruction `i` at `pc` of a program of `len`.
fn check_insn(pc: usize, i: &libc::sock_filter, len: usize) -> Result<(), &'static str> {
    let (code, k) = (i.code, i.k);
    let alu = |op: u16| [BPF_ALU | op | BPF_K, BPF_ALU | op | BPF_X];
    let seccomp_alu = [
        BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV, BPF_AND, BPF_OR, BPF_XOR, BPF_LSH, BPF_RSH,
    ];
    let jumps = [BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JSET];
    let other = [
        BPF_LD | BPF_W | BPF_ABS,
        BPF_LD | BPF_W | BPF_LEN,
        BPF_LDX | BPF_W | BPF_LEN,
        BPF_RET | BPF_K,
        BPF_RET | BPF_A,
        BPF_ALU | BPF_NEG,
        BPF_LD | BPF_IMM,
        BPF_LDX | BPF_IMM,
        BPF_MISC | BPF_TAX,
        BPF_MISC | BPF_TXA,
        BPF_LD | BPF_MEM,
        BPF_LDX | BPF_MEM,
        BPF_ST,
        BPF_STX,
        BPF_JMP | BPF_JA,
    ];
    let known = other.contains(&code)
        || seccomp_alu.iter().any(|&op| alu(op).contains(&code))
        || jumps
            .iter()
            .any(|&op| [BPF_JMP | op | BPF_K, BPF_JMP | op | BPF_X].contains(&code));
    if !known {
        return Err(if alu(BPF_MOD).contains(&code) {
            "seccomp does not accept BPF_MOD"
        } else {
            "opcode not allowed in seccomp filters"
        });
    }
    let rest = len - pc - 1;
    match code {
        c if c == BPF_LD | BPF_W | BPF_ABS && (k >= SECCOMP_DATA_LEN || k & 3 != 0) => {
            Err("load outside seccomp_data or not 4-byte aligned")
        }
        c if c == BPF_ALU | BPF_DIV | BPF_K && k == 0 => Err("division by the constant 0"),
        c if (c == BPF_ALU | BPF_LSH | BPF_K || c == BPF_ALU | BPF_RSH | BPF_K) && k >= 32 => {
            Err("shift by 32 or more")
        }
        c if [BPF_LD | BPF_MEM, BPF_LDX | BPF_MEM, BPF_ST, BPF_STX].contains(&c)
            && k as usize >= MEM_WORDS =>
        {
            Err("scratch memory index beyond M[15]")
        }
        c if c == BPF_JMP | BPF_JA && k as usize >= rest => Err("jump beyond the end"),
        c if c & 0x07 == BPF_JMP
            && c != BPF_JMP | BPF_JA
            && usize::from(i.jt.max(i.jf)) >= rest =>
        {
            Err("jump beyond the end")
        }
        _ => Ok(()),
    }
}

impl Program {
    /// Checks hand-written (or read-back) instructions as the kernel does before it
    /// accepts a seccomp filter; see the module documentation.
    pub fn from_insns(insns: Vec<Insn>) -> Result<Program, BuildError> {
        if insns.is_empty() || insns.len() > MAX_INSNS {
            return Err(BuildError::TooLong(insns.len()));
        }
        let len = insns.len();
        for (pc, i) in insns.iter().enumerate() {
            check_insn(pc, &i.0, len).map_err(|why| {
                if why == "jump beyond the end" {
                    BuildError::JumpTooFar(pc)
                } else {
                    BuildError::BadInstruction {
                        pc,
                        code: i.0.code,
                        k: i.0.k,
                        why,
                    }
                }
            })?;
        }
        if insns[len - 1].class() != BPF_RET {
            return Err(BuildError::NoFinalReturn);
        }
        check_scratch_reads(&insns)?;
        Ok(Program { insns })
    }

    /// [`Program::from_insns`] for `struct sock_filter`s, e.g. a filter read out of a
    /// thread with `PTRACE_SECCOMP_GET_FILTER`.
    pub fn from_raw(raw: &[libc::sock_filter]) -> Result<Program, BuildError> {
        Program::from_insns(raw.iter().copied().map(Insn).collect())
    }

    /// The instructions.
    pub fn insns(&self) -> &[Insn] {
        &self.insns
    }

    /// How many instructions.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// Whether there are none (never, for a checked program).
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// The instructions in the layout `struct sock_fprog` points at.
    pub fn raw(&self) -> Vec<libc::sock_filter> {
        self.insns.iter().map(|i| i.0).collect()
    }

    /// Runs the program over one native x86_64 call without arguments.
    pub fn run(&self, arch: u32, nr: u32) -> Verdict {
        self.evaluate(&SeccompData {
            nr,
            arch,
            ..SeccompData::default()
        })
    }

    /// Runs the program over `data` as the kernel does: 32-bit A and X, 16 scratch
    /// words starting at 0, unsigned comparisons, shifts by `X & 31`, and a division
    /// or modulo by an X of 0 ending the program with 0 (`SECCOMP_RET_KILL_THREAD`).
    pub fn evaluate(&self, data: &SeccompData) -> Verdict {
        self.evaluate_reading(data).0
    }

    /// [`Program::evaluate`], and which 32-bit words of `data` the run loaded: bit
    /// `n` for the word at byte offset `4 * n`. The path a run takes depends only on
    /// the words it loads, so the verdict holds for every call that differs from
    /// `data` in words it did not load (say, an fd number not known in advance).
    pub fn evaluate_reading(&self, data: &SeccompData) -> (Verdict, u16) {
        let mut read = 0u16;
        let (mut a, mut x) = (0u32, 0u32);
        let mut mem = [0u32; MEM_WORDS];
        let mut pc = 0usize;
        let mut steps = 0usize;
        let verdict = |raw: u32, steps: usize| Verdict {
            action: Action::of_raw(raw),
            raw,
            steps,
        };
        while let Some(i) = self.insns.get(pc) {
            steps += 1;
            let i = i.0;
            let k = i.k;
            pc += 1;
            match i.code & 0x07 {
                BPF_LD | BPF_LDX => {
                    let v = match i.code & 0xe0 {
                        BPF_ABS => {
                            read |= 1u16.checked_shl(k / 4).unwrap_or(0);
                            data.word(k).unwrap_or(0)
                        }
                        BPF_LEN => SECCOMP_DATA_LEN,
                        BPF_MEM => mem[k as usize % MEM_WORDS],
                        _ => k, // BPF_IMM
                    };
                    if i.code & 0x07 == BPF_LD {
                        a = v;
                    } else {
                        x = v;
                    }
                }
                BPF_ST => mem[k as usize % MEM_WORDS] = a,
                BPF_STX => mem[k as usize % MEM_WORDS] = x,
                BPF_ALU => {
                    let src = if i.code & BPF_X != 0 { x } else { k };
                    a = match i.code & 0xf0 {
                        BPF_ADD => a.wrapping_add(src),
                        BPF_SUB => a.wrapping_sub(src),
                        BPF_MUL => a.wrapping_mul(src),
                        BPF_DIV | BPF_MOD if src == 0 => return (verdict(0, steps), read),
                        BPF_DIV => a / src,
                        BPF_MOD => a % src,
                        BPF_OR => a | src,
                        BPF_AND => a & src,
                        BPF_XOR => a ^ src,
                        BPF_LSH => a << (src & 31),
                        BPF_RSH => a >> (src & 31),
                        BPF_NEG => a.wrapping_neg(),
                        _ => return (verdict(0, steps), read),
                    };
                }
                BPF_JMP => {
                    if i.code == BPF_JMP | BPF_JA {
                        pc += k as usize;
                        continue;
                    }
                    let src = if i.code & BPF_X != 0 { x } else { k };
                    let taken = match i.code & 0xf0 {
                        BPF_JEQ => a == src,
                        BPF_JGT => a > src,
                        BPF_JGE => a >= src,
                        BPF_JSET => a & src != 0,
                        _ => return (verdict(0, steps), read),
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                BPF_RET => {
                    return (
                        verdict(if i.code & BPF_A != 0 { a } else { k }, steps),
                        read,
                    )
                }
                _ => {
                    if i.code & 0x80 != 0 {
                        a = x; // TXA
                    } else {
                        x = a; // TAX
                    }
                }
            }
        }
        // Falling off the end cannot happen in a checked program.
        (verdict(0, steps), read)
    }
}

/// The kernel's `check_load_and_stores`: every scratch word must have been written
/// on every path before it is read.
fn check_scratch_reads(insns: &[Insn]) -> Result<(), BuildError> {
    const ALL: u16 = u16::MAX;
    let mut masks = vec![ALL; insns.len()];
    let mut valid: u16 = 0;
    for (pc, i) in insns.iter().enumerate() {
        let i = i.0;
        valid &= masks[pc];
        let bit = 1u16 << (i.k as usize % MEM_WORDS);
        match i.code {
            c if c == BPF_ST || c == BPF_STX => valid |= bit,
            c if (c == BPF_LD | BPF_MEM || c == BPF_LDX | BPF_MEM) && valid & bit == 0 => {
                return Err(BuildError::BadInstruction {
                    pc,
                    code: c,
                    k: i.k,
                    why: "reads a scratch word that may not have been written",
                })
            }
            c if c == BPF_JMP | BPF_JA => {
                masks[pc + 1 + i.k as usize] &= valid;
                valid = ALL;
            }
            c if c & 0x07 == BPF_JMP => {
                masks[pc + 1 + usize::from(i.jt)] &= valid;
                masks[pc + 1 + usize::from(i.jf)] &= valid;
                valid = ALL;
            }
            _ => {}
        }
    }
    Ok(())
}

/// The outcome of a thread's whole filter stack for one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackVerdict {
    /// Which filter decided: its index in the slice given (0 = most recent).
    pub filter: usize,
    /// What that filter answered.
    pub verdict: Verdict,
}

/// Runs every filter of a thread over `data`, as `seccomp_run_filters` does: all of
/// them run, the action with the lowest [`Action::precedence`] wins, and between
/// equal actions the most recently installed filter (lowest index) wins. `filters`
/// is ordered newest first, as `PTRACE_SECCOMP_GET_FILTER` numbers them. An empty
/// stack allows everything.
pub fn evaluate_stack(filters: &[Program], data: &SeccompData) -> StackVerdict {
    let mut best: Option<StackVerdict> = None;
    for (filter, p) in filters.iter().enumerate() {
        let verdict = p.evaluate(data);
        let wins = match &best {
            None => true,
            Some(b) => Action::precedence(verdict.raw) < Action::precedence(b.verdict.raw),
        };
        if wins {
            best = Some(StackVerdict { filter, verdict });
        }
    }
    best.unwrap_or(StackVerdict {
        filter: 0,
        verdict: Verdict {
            action: Action::Allow,
            raw: Action::Allow.to_raw(),
            steps: 0,
        },
    })
}

/// "Native ABI only; these syscalls get these actions; everything else gets the
/// default" — the one filter shape fdgrab installs. Native is [`NATIVE_AUDIT_ARCH`]:
/// on x86_64 that leaves out i386 (`int 0x80`) and, by the number check, x32; on
/// aarch64 it leaves out AArch32 compat tasks (whose numbers never reach the x32 bit).
/// A negative number (`syscall(-1)`, top bit set) is not an x32 call: it gets the
/// default, and the kernel's `ENOSYS` under an allowing one, as without a filter.
///
/// Layout: every jump skips at most two instructions, so the only limit on the
/// number of rules is the kernel's 4096 instructions (8 + 2 per rule: 2044 rules).
/// An allowed call takes `5 + rules` steps.
/// ```text
///   ld arch;  jeq NATIVE ? +1 : +0;  ret on_foreign_arch
///   ld nr;    jge X32_BIT ? +0 : +2; jge 1<<31 ? +1 : +0; ret on_foreign_arch
///   jeq nr0 ? +0 : +1;  ret action0
///   ...
///   jeq nrN ? +0 : +1;  ret actionN
///   ret default
/// ```
#[derive(Clone, Debug)]
pub struct SyscallFilter {
    rules: Vec<(u32, Action)>,
    default: Action,
    on_foreign_arch: Action,
}

/// The most rules a [`SyscallFilter`] can hold.
pub const MAX_RULES: usize = (MAX_INSNS - 8) / 2;

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

    /// Lays the filter out as instructions. More than [`MAX_RULES`] rules give
    /// [`BuildError::TooManyRules`].
    pub fn build(&self) -> Result<Program, BuildError> {
        let mut seen = std::collections::HashSet::new();
        for &(nr, _) in &self.rules {
            if !seen.insert(nr) {
                return Err(BuildError::DuplicateRule(nr));
            }
        }
        let n = self.rules.len();
        let total = 8 + 2 * n;
        if total > MAX_INSNS {
            return Err(BuildError::TooManyRules {
                rules: n,
                insns: total,
            });
        }
        let mut insns = Vec::with_capacity(total);
        insns.push(Insn::load(Field::Arch));
        insns.push(Insn::jeq(NATIVE_AUDIT_ARCH, 1, 0));
        insns.push(Insn::ret(self.on_foreign_arch));
        insns.push(Insn::load(Field::Nr));
        insns.push(Insn::jge(X32_SYSCALL_BIT, 0, 2));
        insns.push(Insn::jge(NEGATIVE_NR, 1, 0));
        insns.push(Insn::ret(self.on_foreign_arch));
        for &(nr, action) in &self.rules {
            insns.push(Insn::jeq(nr, 0, 1));
            insns.push(Insn::ret(action));
        }
        insns.push(Insn::ret(self.default));
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
        // A negative number (`syscall(-1)`) is no x32 call: the default, so
        // the kernel answers ENOSYS.
        for nr in [u32::MAX, NEGATIVE_NR, NEGATIVE_NR | X32_SYSCALL_BIT | 39] {
            assert_eq!(
                p.run(NATIVE_AUDIT_ARCH, nr).action,
                Action::Allow,
                "{nr:#x}"
            );
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
        assert!(matches!(
            Program::from_insns(vec![Insn::jeq(1, 3, 0), Insn::ret(Action::Allow)]),
            Err(BuildError::JumpTooFar(0))
        ));
        assert!(matches!(
            Program::from_insns(vec![Insn::ja(1), Insn::ret(Action::Allow)]),
            Err(BuildError::JumpTooFar(0))
        ));
        assert!(Program::from_insns(Vec::new()).is_err());
        // The kernel requires a final return, even after an unconditional one.
        assert_eq!(
            Program::from_insns(vec![Insn::ret(Action::Allow), Insn::load(Field::Nr)]),
            Err(BuildError::NoFinalReturn)
        );
        assert_eq!(
            Program::from_insns(vec![Insn::load(Field::Nr)]),
            Err(BuildError::NoFinalReturn)
        );
        let bad = |insns: Vec<Insn>| {
            matches!(
                Program::from_insns(insns),
                Err(BuildError::BadInstruction { .. })
            )
        };
        let ret = Insn::ret(Action::Allow);
        assert!(bad(vec![Insn::load_abs(2), ret]), "unaligned load");
        assert!(bad(vec![Insn::load_abs(64), ret]), "load past seccomp_data");
        assert!(bad(vec![Insn::alu(AluOp::Div, 0), ret]), "division by 0");
        assert!(bad(vec![Insn::alu(AluOp::Lsh, 32), ret]), "shift by 32");
        assert!(
            bad(vec![Insn::alu(AluOp::Mod, 3), ret]),
            "seccomp has no MOD"
        );
        assert!(bad(vec![Insn::load_mem(0), ret]), "read before write");
        assert!(bad(vec![Insn::store(16), ret]), "M[16]");
        assert!(bad(vec![Insn::new(0x28, 0, 0, 0), ret]), "16-bit load");
        // A word written on only one path may not be read after the paths join.
        assert!(bad(vec![
            Insn::load(Field::Nr),
            Insn::jeq(1, 0, 1),
            Insn::store(3),
            Insn::load_mem(3),
            ret,
        ]));
        assert!(Program::from_insns(vec![
            Insn::load(Field::Nr),
            Insn::store(3),
            Insn::jeq(1, 0, 1),
            Insn::load_x_mem(3),
            ret,
        ])
        .is_ok());
    }

    #[test]
    fn filter_layout_is_exactly_this() {
        let p = bind_filter();
        let expected = vec![
            Insn::new(0x20, 0, 0, 4),
            Insn::new(0x15, 1, 0, NATIVE_AUDIT_ARCH),
            Insn::new(0x06, 0, 0, 0x8000_0000),
            Insn::new(0x20, 0, 0, 0),
            Insn::new(0x35, 0, 2, X32_SYSCALL_BIT),
            Insn::new(0x35, 1, 0, 0x8000_0000),
            Insn::new(0x06, 0, 0, 0x8000_0000),
            Insn::new(0x15, 0, 1, libc::SYS_bind as u32),
            Insn::new(0x06, 0, 0, 0x7fc0_0000),
            Insn::new(0x15, 0, 1, libc::SYS_io_uring_setup as u32),
            Insn::new(0x06, 0, 0, 0x0005_0000 | libc::ENOSYS as u32),
            Insn::new(0x06, 0, 0, 0x7fff_0000),
        ];
        assert_eq!(p.insns(), expected.as_slice());
        let raw = p.raw();
        assert_eq!(
            (raw[1].code, raw[1].jt, raw[1].jf, raw[1].k),
            (0x15, 1, 0, NATIVE_AUDIT_ARCH)
        );
    }

    fn many_rules(n: usize) -> SyscallFilter {
        (0..n).fold(SyscallFilter::new(Action::Allow), |f, i| {
            f.rule(1000 + i as libc::c_long, Action::Errno(i as u16 + 1))
        })
    }

    #[test]
    fn rule_counts_past_the_old_8_bit_jump_ceiling() {
        for n in [126usize, 127, 128, 255, 256, 1000, MAX_RULES] {
            let p = many_rules(n).build().expect("builds");
            assert_eq!(p.len(), 8 + 2 * n);
            for i in [0, n / 2, n - 1] {
                let v = p.run(NATIVE_AUDIT_ARCH, 1000 + i as u32);
                assert_eq!(v.action, Action::Errno(i as u16 + 1), "rule {i} of {n}");
            }
            let v = p.run(NATIVE_AUDIT_ARCH, 999);
            assert_eq!((v.action, v.steps), (Action::Allow, 5 + n));
            assert_eq!(
                p.run(AUDIT_ARCH_I386, 1000).action,
                Action::KillProcess,
                "{n}"
            );
        }
        assert_eq!(
            many_rules(MAX_RULES + 1).build(),
            Err(BuildError::TooManyRules {
                rules: MAX_RULES + 1,
                insns: 8 + 2 * (MAX_RULES + 1)
            })
        );
    }

    fn data(nr: i64, args: &[u64]) -> SeccompData {
        SeccompData::native(nr, args, 0x7fff_1234_5678)
    }

    #[test]
    fn loads_see_every_field_of_seccomp_data() {
        let d = data(41, &[1, 0x1_0000_0002, 3, 4, 5, u64::MAX]);
        let load_ret = |off| {
            Program::from_insns(vec![Insn::load_abs(off), Insn::ret_a()])
                .expect("valid")
                .evaluate(&d)
                .raw
        };
        assert_eq!(load_ret(0), 41);
        assert_eq!(load_ret(4), NATIVE_AUDIT_ARCH);
        assert_eq!(load_ret(8), 0x1234_5678);
        assert_eq!(load_ret(12), 0x7fff);
        assert_eq!(load_ret(16), 1);
        assert_eq!(load_ret(24), 2);
        assert_eq!(load_ret(28), 1);
        assert_eq!(load_ret(56), u32::MAX);
        assert_eq!(load_ret(60), u32::MAX);
        let len = Program::from_insns(vec![Insn::load_x_len(), Insn::txa(), Insn::ret_a()])
            .expect("valid");
        assert_eq!(len.evaluate(&d).raw, 64);
    }

    #[test]
    fn alu_jumps_and_scratch_memory() {
        let d = data(0, &[]);
        let calc = |insns: Vec<Insn>| {
            let mut v = insns;
            v.push(Insn::ret_a());
            Program::from_insns(v).expect("valid").evaluate(&d).raw
        };
        let imm = Insn::load_imm;
        assert_eq!(calc(vec![imm(7), Insn::alu(AluOp::Add, u32::MAX)]), 6);
        assert_eq!(calc(vec![imm(7), Insn::alu(AluOp::Sub, 9)]), u32::MAX - 1);
        assert_eq!(calc(vec![imm(7), Insn::alu(AluOp::Mul, 6)]), 42);
        assert_eq!(calc(vec![imm(43), Insn::alu(AluOp::Div, 6)]), 7);
        assert_eq!(
            calc(vec![imm(0b1100), Insn::alu(AluOp::And, 0b1010)]),
            0b1000
        );
        assert_eq!(
            calc(vec![imm(0b1100), Insn::alu(AluOp::Or, 0b1010)]),
            0b1110
        );
        assert_eq!(
            calc(vec![imm(0b1100), Insn::alu(AluOp::Xor, 0b1010)]),
            0b0110
        );
        assert_eq!(calc(vec![imm(1), Insn::alu(AluOp::Lsh, 31)]), 1 << 31);
        assert_eq!(calc(vec![imm(1 << 31), Insn::alu(AluOp::Rsh, 31)]), 1);
        assert_eq!(calc(vec![imm(5), Insn::neg()]), 5u32.wrapping_neg());
        // X forms, shifts by X & 31, TAX/TXA, M[].
        let x = |k| Insn::load_x_imm(k);
        assert_eq!(calc(vec![x(33), imm(1), Insn::alu_x(AluOp::Lsh)]), 2);
        assert_eq!(calc(vec![x(3), imm(8), Insn::alu_x(AluOp::Rsh)]), 1);
        assert_eq!(calc(vec![x(3), imm(10), Insn::alu_x(AluOp::Div)]), 3);
        // MOD is classic BPF but seccomp refuses it; the interpreter still knows it.
        let modulo = Program {
            insns: vec![x(3), imm(10), Insn::alu_x(AluOp::Mod), Insn::ret_a()],
        };
        assert_eq!(modulo.evaluate(&d).raw, 1);
        assert_eq!(calc(vec![imm(9), Insn::tax(), imm(1), Insn::txa()]), 9);
        assert_eq!(
            calc(vec![
                imm(5),
                Insn::store(2),
                x(6),
                Insn::store_x(15),
                imm(0),
                Insn::load_mem(2)
            ]),
            5
        );
        assert_eq!(
            calc(vec![
                x(6),
                Insn::store_x(15),
                Insn::load_x_mem(15),
                Insn::txa()
            ]),
            6
        );
        // Division by an X of 0 ends the program with 0: SECCOMP_RET_KILL_THREAD.
        let v = Program::from_insns(vec![
            Insn::load_x_imm(0),
            Insn::alu_x(AluOp::Div),
            Insn::ret(Action::Allow),
        ])
        .expect("valid")
        .evaluate(&d);
        assert_eq!((v.raw, v.action), (0, Action::KillThread));
        // Jumps: JA, and JGT/JGE/JSET with K and X.
        let pick = |cond: Insn, a: u32, x: u32| {
            Program::from_insns(vec![
                Insn::load_x_imm(x),
                Insn::load_imm(a),
                cond,
                Insn::ret_raw(2),
                Insn::ret_raw(1),
            ])
            .expect("valid")
            .evaluate(&d)
            .raw == 1
        };
        assert!(!pick(Insn::jmp(JmpOp::Gt, 5, 1, 0), 5, 0));
        assert!(pick(Insn::jmp(JmpOp::Ge, 5, 1, 0), 5, 0));
        assert!(pick(Insn::jmp(JmpOp::Gt, 5, 1, 0), u32::MAX, 0), "unsigned");
        assert!(pick(Insn::jmp_x(JmpOp::Gt, 1, 0), 6, 5));
        assert!(!pick(Insn::jmp_x(JmpOp::Ge, 1, 0), 4, 5));
        assert!(pick(Insn::jmp_x(JmpOp::Eq, 1, 0), 5, 5));
        assert!(pick(Insn::jmp_x(JmpOp::Set, 1, 0), 6, 2));
        assert!(!pick(Insn::jmp(JmpOp::Set, 1, 1, 0), 6, 0));
        assert!(pick(Insn::ja(1), 0, 0));
    }
}
