//! The cBPF interpreter against the kernel: filters of every shape real programs
//! install (fdgrab's own builder, libseccomp/systemd-style argument checks, a
//! podman-default-style binary search over syscall numbers, chrome-style
//! instruction-pointer and 64-bit argument checks, and one that uses every opcode
//! seccomp accepts) are installed in forked children, thousands of calls are made,
//! and what the kernel did must equal what `Program::evaluate` says.
//!
//! To make the kernel's verdict visible without running the calls, each filter is
//! installed with every `RET K` rewritten to `SECCOMP_RET_ERRNO(1000 + i)`, `i`
//! naming the original return value; the control flow is untouched, and the
//! interpreter's verdict on the original program must map to the same `i`. A guard
//! in front lets the child's own calls through: only calls made from the test's own
//! `syscall` instruction (checked by instruction pointer) reach the filter under
//! test. The precedence of actions across stacked filters is checked separately,
//! one child per case.

// The probe calls are made with x86_64 inline assembly.
#![cfg(target_arch = "x86_64")]
use fdgrab::seccomp::bpf::{
    evaluate_stack, AluOp, Field, JmpOp, SeccompData, StackVerdict, AUDIT_ARCH_X86_64,
    X32_SYSCALL_BIT,
};
use fdgrab::seccomp::{Action, Insn, Program, SyscallFilter};
use fdgrab_testkit::install_filter_with;
use std::collections::BTreeSet;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};

/// Makes a raw syscall and returns its result and the instruction pointer the
/// kernel reports to seccomp (the address after the `syscall` instruction).
fn raw_syscall(nr: u64, a: [u64; 6]) -> (i64, u64) {
    let ret: i64;
    let ip: u64;
    // SAFETY: a bare syscall; under the filters being tested every call from this
    // instruction is answered with an errno and does not run. Outside them it is
    // only used for getpid/getppid.
    unsafe {
        std::arch::asm!(
            "lea r12, [rip + 2f]",
            "syscall",
            "2:",
            out("r12") ip,
            inlateout("rax") nr => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    (ret, ip)
}

/// The instruction pointer seccomp sees for [`raw_syscall`] (the same in a fork).
fn call_site() -> u64 {
    raw_syscall(libc::SYS_getpid as u64, [0; 6]).1
}

fn data(nr: u32, args: [u64; 6], ip: u64) -> SeccompData {
    SeccompData {
        nr,
        arch: AUDIT_ARCH_X86_64,
        instruction_pointer: ip,
        args,
    }
}

/// `guard + program` with each `RET K` replaced by `RET ERRNO(1000 + index of K in
/// `codes`)`; returns the raw instructions and the codes.
fn observable(p: &Program) -> (Vec<libc::sock_filter>, Vec<u32>) {
    let codes: Vec<u32> = p
        .insns()
        .iter()
        .map(|i| i.raw())
        .filter(|r| r.code == 0x06)
        .map(|r| r.k)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut out = guard();
    for i in p.insns() {
        let mut r = i.raw();
        if r.code == 0x06 {
            let idx = codes.iter().position(|&c| c == r.k).expect("code");
            r.k = 0x0005_0000 | (1000 + idx as u32);
        }
        out.push(r);
    }
    (out, codes)
}

/// Lets every call through that was not made from [`raw_syscall`]'s instruction.
fn guard() -> Vec<libc::sock_filter> {
    let ip = call_site();
    vec![
        Insn::load(Field::IpLow).raw(),
        Insn::jeq(ip as u32, 1, 0).raw(),
        Insn::ret(Action::Allow).raw(),
        Insn::load(Field::IpHigh).raw(),
        Insn::jeq((ip >> 32) as u32, 1, 0).raw(),
        Insn::ret(Action::Allow).raw(),
    ]
}

/// A tiny deterministic generator (xorshift), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[(self.next() % from.len() as u64) as usize]
    }
}

const INTERESTING: [u64; 18] = [
    0,
    1,
    2,
    3,
    10,
    0x20,
    0x8,
    0x20008,
    0x7e02_0000,
    0x1000_0000,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x1_0000_0002,
    0xffff_ffff_8000_0000,
    0xffff_ffff_ffff_ffff,
    0x5413,
    0x4000_0000_0000_0001,
];

/// Many calls: real syscall numbers, x32 ones, and argument values that sit on the
/// edges the filters compare against (or are random).
fn cases(seed: u64, n: usize) -> Vec<(u32, [u64; 6])> {
    let mut rng = Rng(seed);
    // Only numbers the kernel implements: on this kernel a number in the unused
    // range 335..424 raises SIGILL even when seccomp answered the call.
    let nrs: Vec<u32> = (0u32..335)
        .chain(424..460)
        .chain([X32_SYSCALL_BIT | 41, X32_SYSCALL_BIT | 1])
        .collect();
    (0..n)
        .map(|i| {
            let nr = if i < nrs.len() {
                nrs[i]
            } else {
                rng.pick(&nrs)
            };
            let mut a = [0u64; 6];
            for v in a.iter_mut() {
                *v = if rng.next() % 3 == 0 {
                    rng.next()
                } else {
                    rng.pick(&INTERESTING)
                };
            }
            (nr, a)
        })
        .collect()
}

/// Forks a child that installs `filters` (oldest first) and then exits with what
/// `body` returns (3 if the kernel refused a filter). `body` runs after fork in a
/// multithreaded process, so it may only make raw syscalls on memory prepared
/// before. Returns the child's pid, to reap with [`reap`].
fn filtered_child(filters: &[Vec<libc::sock_filter>], body: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only makes raw syscalls (prctl, seccomp, the body's calls,
    // _exit) on memory prepared before the fork: async-signal-safe.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        for f in filters {
            if install_filter_with(f, 0).is_err() {
                // SAFETY: ends the child.
                unsafe { libc::_exit(3) };
            }
        }
        let code = body();
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// Waits for our child `pid` and returns its wait status.
fn reap(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    status
}

/// Installs `filters` (oldest first) in a forked child, makes every call, and
/// returns the results the kernel gave, in order.
fn kernel_results(filters: &[Vec<libc::sock_filter>], calls: &[(u32, [u64; 6])]) -> Vec<i64> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-int array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let pid = filtered_child(filters, || {
        for &(nr, a) in calls {
            let (r, _) = raw_syscall(u64::from(nr), a);
            let b = r.to_ne_bytes();
            // SAFETY: `b` is a valid 8-byte buffer; a pipe write of 8 bytes is atomic.
            if unsafe { libc::write(fds[1], b.as_ptr().cast(), 8) } != 8 {
                return 4;
            }
        }
        0
    });
    // SAFETY: our write end, closed so that the read sees EOF when the child exits.
    unsafe { libc::close(fds[1]) };
    // SAFETY: fds[0] is the open read end, owned from here on.
    let mut r = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fds[0]) });
    let mut bytes = Vec::new();
    r.read_to_end(&mut bytes).expect("read results");
    let status = reap(pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );
    bytes
        .chunks_exact(8)
        .map(|c| i64::from_ne_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// Checks the interpreter against the kernel for `p` over `n` calls.
fn agrees_with_kernel(name: &str, p: &Program, seed: u64, n: usize) {
    let (raw, codes) = observable(p);
    let rewritten = Program::from_raw(&raw).expect("rewritten program is valid");
    let ip = call_site();
    let calls = cases(seed, n);
    let got = kernel_results(&[raw], &calls);
    assert_eq!(got.len(), calls.len(), "{name}: child stopped early");
    let mut seen = BTreeSet::new();
    for (&(nr, args), &kernel) in calls.iter().zip(&got) {
        let d = data(nr, args, ip);
        let original = p.evaluate(&d);
        let expected = match rewritten.evaluate(&d).action {
            Action::Errno(e) => -i64::from(e),
            other => panic!("{name}: rewritten program returned {other:?}"),
        };
        assert_eq!(
            kernel, expected,
            "{name}: nr {nr:#x} args {args:x?}: kernel {kernel}, interpreter {expected}"
        );
        let idx = codes.iter().position(|&c| c == original.raw);
        let expected_original = match idx {
            Some(i) => -(1000 + i as i64),
            // RET A: the program's own computed errno.
            None => match original.action {
                Action::Errno(e) => -i64::from(e),
                other => panic!("{name}: RET A gave {other:?}"),
            },
        };
        assert_eq!(
            kernel, expected_original,
            "{name}: nr {nr:#x} args {args:x?}"
        );
        seen.insert(kernel);
    }
    // The cases must reach several outcomes, or the comparison proves little.
    assert!(seen.len() >= 2, "{name}: only outcomes {seen:?}");
}

/// fdgrab's own builder, past the old 8-bit jump ceiling, with every action.
#[test]
fn kernel_agrees_on_the_builders_filter() {
    let actions = [
        Action::Allow,
        Action::Errno(1),
        Action::Errno(13),
        Action::KillProcess,
        Action::KillThread,
        Action::Trap,
        Action::Notify,
        Action::Log,
        Action::Trace(7),
    ];
    let f = (0..300).fold(SyscallFilter::new(Action::Errno(38)), |f, nr| {
        f.rule(nr as libc::c_long, actions[nr % actions.len()])
    });
    let p = f.build().expect("builds");
    agrees_with_kernel("builder", &p, 1, 3000);
}

/// Jump offsets for a sequence of instructions with symbolic targets.
enum J {
    I(Insn),
    /// `if A op k goto t else goto f`.
    Cond(JmpOp, u32, &'static str, &'static str),
    Label(&'static str),
    Goto(&'static str),
}

fn assemble(items: Vec<J>) -> Program {
    let mut at = std::collections::HashMap::new();
    let mut pc = 0usize;
    for it in &items {
        match it {
            J::Label(l) => {
                at.insert(*l, pc);
            }
            _ => pc += 1,
        }
    }
    let mut out = Vec::new();
    for it in items {
        let pc = out.len();
        let off = |l: &str| at[l] - pc - 1;
        match it {
            J::I(i) => out.push(i),
            J::Cond(op, k, t, f) => out.push(Insn::jmp(
                op,
                k,
                u8::try_from(off(t)).expect("near"),
                u8::try_from(off(f)).expect("near"),
            )),
            J::Goto(l) => out.push(Insn::ja(off(l) as u32)),
            J::Label(_) => {}
        }
    }
    Program::from_insns(out).expect("valid program")
}

/// libseccomp/systemd style: arch and x32 checks, an allow list, 64-bit argument
/// compares (high half, then low half) for `socket` and `personality`, a masked
/// `ioctl` request, default EPERM.
#[test]
fn kernel_agrees_on_a_systemd_style_filter() {
    use J::*;
    let ld = |f| I(Insn::load(f));
    let ret = |a| I(Insn::ret(a));
    let mut v = vec![
        ld(Field::Arch),
        Cond(JmpOp::Eq, AUDIT_ARCH_X86_64, "native", "kill"),
        Label("native"),
        ld(Field::Nr),
        Cond(JmpOp::Ge, X32_SYSCALL_BIT, "x32", "nr"),
        Label("nr"),
    ];
    for nr in [0u32, 1, 3, 9, 11, 14, 60, 231] {
        v.push(Cond(JmpOp::Eq, nr, "allow", "next"));
        v.push(Label("next"));
        // Each "next" is the instruction after; labels must be unique.
        v.pop();
        v.pop();
        v.push(I(Insn::jeq(nr, 0, 1)));
        v.push(ret(Action::Allow));
    }
    v.extend([
        Cond(JmpOp::Eq, libc::SYS_socket as u32, "socket", "not_socket"),
        Label("socket"),
        ld(Field::ArgHigh(0)),
        Cond(JmpOp::Eq, 0, "socket_lo", "afnosupport"),
        Label("socket_lo"),
        ld(Field::ArgLow(0)),
        Cond(JmpOp::Eq, libc::AF_UNIX as u32, "allow", "s2"),
        Label("s2"),
        Cond(JmpOp::Eq, libc::AF_INET as u32, "allow", "s3"),
        Label("s3"),
        Cond(JmpOp::Eq, libc::AF_INET6 as u32, "allow", "afnosupport"),
        Label("not_socket"),
        Cond(JmpOp::Eq, libc::SYS_personality as u32, "pers", "not_pers"),
        Label("pers"),
        ld(Field::ArgHigh(0)),
        Cond(JmpOp::Eq, 0, "pers_lo", "eperm"),
        Label("pers_lo"),
        ld(Field::ArgLow(0)),
        Cond(JmpOp::Eq, 0, "allow", "p2"),
        Label("p2"),
        Cond(JmpOp::Eq, 8, "allow", "p3"),
        Label("p3"),
        Cond(JmpOp::Eq, 0xffff_ffff, "allow", "eperm"),
        Label("not_pers"),
        Cond(JmpOp::Eq, libc::SYS_ioctl as u32, "ioctl", "eperm"),
        Label("ioctl"),
        ld(Field::ArgLow(1)),
        I(Insn::alu(AluOp::And, 0xffff_ff00)),
        Cond(JmpOp::Eq, 0x5400, "allow", "enotty"),
        Label("enotty"),
        ret(Action::Errno(25)),
        Label("afnosupport"),
        ret(Action::Errno(97)),
        Label("eperm"),
        ret(Action::Errno(1)),
        Label("allow"),
        ret(Action::Allow),
        Label("x32"),
        ret(Action::Errno(38)),
        Label("kill"),
        ret(Action::KillProcess),
    ]);
    agrees_with_kernel("systemd-style", &assemble(v), 2, 4000);
}

/// podman/docker default style: a binary search over syscall numbers with JGT/JGE,
/// an allow list at the leaves, `clone` flags masked with AND, a JSET test, and
/// `personality` values; default EPERM.
#[test]
fn kernel_agrees_on_a_podman_default_style_filter() {
    use J::*;
    let ld = |f| I(Insn::load(f));
    let ret = |a| I(Insn::ret(a));
    let allowed_low: Vec<u32> = (0..60).filter(|n| n % 3 != 2).collect();
    let allowed_high: Vec<u32> = (200..330).filter(|n| n % 4 == 1).collect();
    let mut v = vec![
        ld(Field::Arch),
        Cond(JmpOp::Eq, AUDIT_ARCH_X86_64, "native", "errno"),
        Label("native"),
        ld(Field::Nr),
        Cond(JmpOp::Gt, 199, "high", "low"),
        Label("low"),
        Cond(JmpOp::Ge, 60, "mid", "lowlist"),
        Label("lowlist"),
    ];
    for &nr in &allowed_low {
        v.push(I(Insn::jeq(nr, 0, 1)));
        v.push(ret(Action::Allow));
    }
    v.extend([Goto("errno"), Label("mid")]);
    v.extend([
        Cond(JmpOp::Eq, libc::SYS_clone as u32, "clone", "m2"),
        Label("m2"),
        Cond(JmpOp::Eq, libc::SYS_personality as u32, "pers", "m3"),
        Label("m3"),
        Cond(JmpOp::Eq, libc::SYS_ioctl as u32, "ioctl", "errno"),
        Label("clone"),
        ld(Field::ArgLow(0)),
        I(Insn::alu(AluOp::And, 0x7e02_0000)),
        Cond(JmpOp::Eq, 0, "allow", "errno"),
        Label("ioctl"),
        ld(Field::ArgLow(1)),
        Cond(JmpOp::Set, 0x8000_0000, "errno", "allow"),
        Label("pers"),
        ld(Field::ArgLow(0)),
        Cond(JmpOp::Eq, 0, "allow", "p2"),
        Label("p2"),
        Cond(JmpOp::Eq, 8, "allow", "p3"),
        Label("p3"),
        Cond(JmpOp::Eq, 0x20000, "allow", "p4"),
        Label("p4"),
        Cond(JmpOp::Eq, 0x20008, "allow", "p5"),
        Label("p5"),
        Cond(JmpOp::Eq, 0xffff_ffff, "allow", "errno"),
        Label("high"),
        Cond(JmpOp::Gt, 330, "errno", "highlist"),
        Label("highlist"),
    ]);
    for &nr in &allowed_high {
        v.push(I(Insn::jeq(nr, 0, 1)));
        v.push(ret(Action::Allow));
    }
    v.extend([
        Label("errno"),
        ret(Action::Errno(1)),
        Label("allow"),
        ret(Action::Allow),
    ]);
    agrees_with_kernel("podman-style", &assemble(v), 3, 4000);
}

/// chrome style: calls from one trusted instruction address are allowed, 64-bit
/// arguments must be sign-extended 32-bit values, flags are tested bit by bit
/// with JSET, and unknown calls trap.
#[test]
fn kernel_agrees_on_a_chrome_style_filter() {
    use J::*;
    let ip = call_site();
    let ld = |f| I(Insn::load(f));
    let ret = |a| I(Insn::ret(a));
    let v = vec![
        ld(Field::Arch),
        Cond(JmpOp::Eq, AUDIT_ARCH_X86_64, "native", "kill"),
        Label("native"),
        ld(Field::Nr),
        Cond(JmpOp::Eq, 39, "trusted", "not39"),
        Label("not39"),
        Cond(JmpOp::Eq, 40, "elsewhere", "other"),
        Label("elsewhere"),
        // Calls of 40 are trusted only from another address: never this one.
        ld(Field::IpLow),
        Cond(JmpOp::Eq, (ip as u32).wrapping_add(2), "allow", "eacces"),
        Label("trusted"),
        ld(Field::IpLow),
        Cond(JmpOp::Eq, ip as u32, "ip_hi", "trap"),
        Label("ip_hi"),
        ld(Field::IpHigh),
        Cond(JmpOp::Eq, (ip >> 32) as u32, "allow", "trap"),
        Label("other"),
        Cond(JmpOp::Gt, 300, "trap", "args"),
        Label("args"),
        // Argument 2 must be a sign-extended 32-bit value.
        ld(Field::ArgHigh(2)),
        Cond(JmpOp::Eq, 0, "flags", "negative"),
        Label("negative"),
        Cond(JmpOp::Eq, 0xffff_ffff, "neg_lo", "kill"),
        Label("neg_lo"),
        ld(Field::ArgLow(2)),
        Cond(JmpOp::Set, 0x8000_0000, "flags", "kill"),
        Label("flags"),
        ld(Field::ArgLow(1)),
        Cond(JmpOp::Set, 0x1, "b1", "b0"),
        Label("b0"),
        Cond(JmpOp::Set, 0x20, "eacces", "allow"),
        Label("b1"),
        Cond(JmpOp::Set, 0x8, "trap", "log"),
        Label("log"),
        ret(Action::Log),
        Label("eacces"),
        ret(Action::Errno(13)),
        Label("allow"),
        ret(Action::Allow),
        Label("trap"),
        ret(Action::Trap),
        Label("kill"),
        ret(Action::KillProcess),
    ];
    agrees_with_kernel("chrome-style", &assemble(v), 4, 4000);
}

/// Every opcode seccomp accepts: LEN loads, immediates, scratch memory, TAX/TXA,
/// every ALU operation with K and X (MUL, DIV by a non-zero X, shifts by X past 31,
/// NEG), JGT/JGE/JEQ/JSET with X and K, and RET A with a computed errno.
#[test]
fn kernel_agrees_on_a_filter_using_every_opcode() {
    use J::*;
    let ld = |f| I(Insn::load(f));
    let v = vec![
        // M[0] = nr, M[1] = arg0 lo, M[2] = arg1 lo | 1 (never 0: the divisor).
        ld(Field::Nr),
        I(Insn::store(0)),
        ld(Field::ArgLow(0)),
        I(Insn::store(1)),
        ld(Field::ArgLow(1)),
        I(Insn::alu(AluOp::Or, 1)),
        I(Insn::tax()),
        I(Insn::store_x(2)),
        // A = (arg0 * 7 + nr) / (arg1 | 1)
        I(Insn::load_mem(1)),
        I(Insn::alu(AluOp::Mul, 7)),
        I(Insn::load_x_mem(0)),
        I(Insn::alu_x(AluOp::Add)),
        I(Insn::load_x_mem(2)),
        I(Insn::alu_x(AluOp::Div)),
        I(Insn::store(3)),
        // Branch on comparisons with X.
        I(Insn::load_x_mem(0)),
        ld(Field::ArgLow(3)),
        Cond(JmpOp::Gt, 0, "gtx", "gtx"),
        Label("gtx"),
        I(Insn::jmp_x(JmpOp::Gt, 0, 3)),
        I(Insn::load_mem(3)),
        I(Insn::alu(AluOp::Xor, 0x5a5)),
        Goto("shift"),
        I(Insn::jmp_x(JmpOp::Ge, 0, 2)),
        I(Insn::load_mem(3)),
        Goto("shift"),
        I(Insn::load_mem(3)),
        I(Insn::neg()),
        Label("shift"),
        // Shifts by X, including counts of 32 and more (the kernel uses X & 31).
        I(Insn::store(4)),
        ld(Field::ArgLow(4)),
        I(Insn::alu(AluOp::And, 63)),
        I(Insn::tax()),
        I(Insn::load_mem(4)),
        I(Insn::alu_x(AluOp::Lsh)),
        I(Insn::alu(AluOp::Rsh, 3)),
        I(Insn::store(5)),
        ld(Field::ArgHigh(4)),
        I(Insn::alu_x(AluOp::Rsh)),
        I(Insn::load_x_mem(5)),
        I(Insn::alu_x(AluOp::Sub)),
        I(Insn::alu_x(AluOp::Xor)),
        I(Insn::alu(AluOp::Lsh, 1)),
        I(Insn::alu_x(AluOp::And)),
        I(Insn::alu_x(AluOp::Or)),
        I(Insn::alu_x(AluOp::Mul)),
        I(Insn::alu(AluOp::Sub, 3)),
        I(Insn::alu(AluOp::Add, 5)),
        I(Insn::alu(AluOp::Div, 3)),
        // JSET/JEQ with X, LEN loads.
        I(Insn::load_x_len()),
        I(Insn::jmp_x(JmpOp::Set, 0, 1)),
        I(Insn::alu(AluOp::Add, 11)),
        I(Insn::jmp_x(JmpOp::Eq, 0, 1)),
        I(Insn::alu(AluOp::Add, 13)),
        I(Insn::store(6)),
        I(Insn::load_len()),
        I(Insn::tax()),
        I(Insn::load_mem(6)),
        I(Insn::alu_x(AluOp::Add)),
        I(Insn::load_x_imm(0xfff)),
        I(Insn::alu_x(AluOp::And)),
        I(Insn::load_imm(0)),
        I(Insn::txa()),
        I(Insn::load_mem(6)),
        I(Insn::alu(AluOp::And, 0xfff)),
        I(Insn::alu(AluOp::Or, 0x0005_0000)),
        I(Insn::ret_a()),
    ];
    agrees_with_kernel("every-opcode", &assemble(v), 5, 4000);
}

/// What a child saw of one call: it ran, it failed with an errno, it got SIGSYS
/// (trap), or it was killed by SIGSYS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Ran,
    Errno(i64),
    Trapped,
    Killed,
}

fn expected_seen(v: StackVerdict) -> Seen {
    match v.verdict.action {
        Action::Allow | Action::Log => Seen::Ran,
        Action::Errno(e) => Seen::Errno(i64::from(e)),
        // No tracer asked for PTRACE_O_TRACESECCOMP, and no listener exists.
        Action::Trace(_) | Action::Notify => Seen::Errno(libc::ENOSYS as i64),
        Action::Trap => Seen::Trapped,
        Action::KillThread | Action::KillProcess => Seen::Killed,
    }
}

extern "C" fn on_sigsys(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(77) };
}

/// Installs `stack` (oldest first, each behind the guard) in a child and makes one
/// `getppid` from the test's instruction.
fn kernel_seen(stack: &[Program]) -> Seen {
    let guarded: Vec<Vec<libc::sock_filter>> = stack
        .iter()
        .map(|p| {
            let mut v = guard();
            v.extend(p.raw());
            v
        })
        .collect();
    let ppid = std::process::id() as i64;
    let body = || {
        let (r, _) = raw_syscall(libc::SYS_getppid as u64, [0; 6]);
        if r == ppid {
            0
        } else if r < 0 && r > -200 {
            (100 + (-r)) as i32
        } else {
            2
        }
    };
    let pid = filtered_child(&[], || {
        // SAFETY: the handler only calls _exit.
        unsafe { libc::signal(libc::SIGSYS, on_sigsys as *const () as libc::sighandler_t) };
        for f in &guarded {
            if install_filter_with(f, 0).is_err() {
                return 3;
            }
        }
        body()
    });
    let status = reap(pid);
    if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS {
        return Seen::Killed;
    }
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    match libc::WEXITSTATUS(status) {
        0 => Seen::Ran,
        77 => Seen::Trapped,
        c if c > 100 => Seen::Errno(i64::from(c - 100)),
        c => panic!("child exited {c}"),
    }
}

/// Two stacked filters with every pair of actions: the most restrictive wins, and
/// between two errnos the newer filter's. Also: a division by an X of 0 ends the
/// program with KILL_THREAD.
#[test]
fn kernel_agrees_on_action_precedence_across_stacked_filters() {
    let actions = [
        Action::Allow,
        Action::Log,
        Action::Errno(5),
        Action::Errno(7),
        Action::Trace(1),
        Action::Notify,
        Action::Trap,
        Action::KillThread,
        Action::KillProcess,
    ];
    let ip = call_site();
    let d = data(libc::SYS_getppid as u32, [0; 6], ip);
    let prog = |a: Action| Program::from_insns(vec![Insn::ret(a)]).expect("valid");
    for older in actions {
        for newer in actions {
            let stack = [prog(older), prog(newer)];
            // evaluate_stack wants newest first.
            let v = evaluate_stack(&[prog(newer), prog(older)], &d);
            assert_eq!(
                kernel_seen(&stack),
                expected_seen(v),
                "older {older:?}, newer {newer:?}"
            );
        }
    }
    let div0 = Program::from_insns(vec![
        Insn::load_x_imm(0),
        Insn::alu_x(AluOp::Div),
        Insn::ret(Action::Allow),
    ])
    .expect("valid");
    let v = evaluate_stack(std::slice::from_ref(&div0), &d);
    assert_eq!(v.verdict.action, Action::KillThread);
    assert_eq!(kernel_seen(&[div0]), Seen::Killed);
}

/// The kernel refuses what `Program::from_insns` refuses: a missing final return,
/// MOD, a load outside `seccomp_data`, a scratch read before any write.
#[test]
fn kernel_refuses_what_the_checker_refuses() {
    let raw = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let allow = raw(0x06, 0x7fff_0000);
    let bad: [Vec<libc::sock_filter>; 5] = [
        vec![allow, raw(0x20, 0)],
        vec![raw(0x94, 3), allow],
        vec![raw(0x20, 64), allow],
        vec![raw(0x20, 2), allow],
        vec![raw(0x60, 0), allow],
    ];
    for prog in bad {
        assert!(Program::from_raw(&prog).is_err(), "{prog:?}");
        let pid = filtered_child(&[], || match install_filter_with(&prog, 0) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => 0,
            _ => 1,
        });
        let status = reap(pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the kernel accepted {prog:?}"
        );
    }
}
