//! One tenant cannot hurt another: each attack from the agent issue, made by a
//! hostile "container" (a `fake-tenant` process, or a flood of runtime
//! connections), while a victim container keeps binding. The victim's binds must
//! all succeed and none may hang (a generous bound that only a stall misses; the
//! latency goals live in the `bind_supervisor` benchmark), and the agent's
//! descriptors must come back to where they were once the attacker is gone.

use fdgrab_testkit::oci::{rss_kib, unique, AgentProc, FakeTenant};
use fdgrab_testkit::{is_root, TIMEOUT};
use serde_json::Value;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Longer than any bind takes unless something stalls it.
const HANG: Duration = Duration::from_secs(2);

fn root_or_skip() -> bool {
    if !is_root() {
        fdgrab_testkit::skip("the agent needs root");
        return false;
    }
    true
}

/// `lat` on the victim: every bind succeeds and none comes near a stall.
fn victim_binds(victim: &mut FakeTenant, addr: &str, port: u16, n: usize) -> Value {
    let r = victim.ask(&format!("lat {n} {addr} {port}"), TIMEOUT);
    assert_eq!(r["errors"], 0, "victim's binds failed: {r}");
    let max = r["max_us"].as_u64().expect("max_us");
    assert!(
        max < HANG.as_micros() as u64,
        "a victim bind took {max} µs: {r}"
    );
    r
}

/// Waits until the agent's fd count is back to `baseline`.
fn fds_return(agent: &AgentProc, baseline: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent.fd_count() != baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(
        agent.fd_count(),
        baseline,
        "agent fds back to baseline; log {}",
        agent.log.text()
    );
}

/// 1,100 threads that each bind once, at a low descriptor limit: the attacker
/// recycles its own share of cached pidfds; the victim's binds go on.
#[test]
fn agent_neighbour_with_1100_binding_threads() {
    if !root_or_skip() {
        return;
    }
    // At 1024 descriptors, a pidfd cached for each of a thousand threads would
    // exhaust the agent.
    let agent = AgentProc::start_with_nofile(&["--allow-bind", "tcp:81-82"], 1024);
    let baseline = agent.fd_count();
    let rss = rss_kib(agent.pid);
    let mut victim = FakeTenant::start(&agent, &unique("victim"));
    let mut attacker = FakeTenant::start(&agent, &unique("attacker"));
    victim_binds(&mut victim, "127.78.0.1", 82, 20);
    attacker.send("threads 1100 79 81");
    // While the attacker's binds are being served.
    victim_binds(&mut victim, "127.78.0.1", 82, 200);
    let r = attacker.line(Duration::from_secs(120));
    assert_eq!(r["ok"], 1100, "every attacker bind is still served: {r}");
    victim_binds(&mut victim, "127.78.0.1", 82, 20);
    let log = agent.log.text();
    assert!(!log.contains("(os error 24)"), "EMFILE: {log}");
    assert!(!log.contains("EMFILE"), "{log}");
    attacker.kill();
    victim.kill();
    fds_return(&agent, baseline);
    let grown = rss_kib(agent.pid).saturating_sub(rss);
    assert!(grown < 32 * 1024, "agent RSS grew by {grown} KiB");
    let audit = agent.audit_lines();
    let attacker_binds = audit
        .iter()
        .filter(|l| l["port"] == 81 && l["errno"] == 0 && l["pod"].as_str().is_some())
        .count();
    assert_eq!(attacker_binds, 1100, "audited with the pod name");
}

/// A bind whose sockaddr sits on a userfaultfd page nobody fills: only the
/// attacker waits, and it gets ETIMEDOUT with an audit line; its next ordinary
/// bind works; the victim never waits.
#[test]
fn agent_neighbour_stalled_on_userfaultfd() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:83-84"]);
    let baseline = agent.fd_count();
    let mut victim = FakeTenant::start(&agent, &unique("victim"));
    let mut attacker = FakeTenant::start(&agent, &unique("attacker"));
    let r = attacker.ask("uffd 83", TIMEOUT);
    assert_eq!(r["stalled"], true, "{r}");
    // The attacker's worker is now blocked in the read.
    victim_binds(&mut victim, "127.78.1.1", 84, 100);
    let r = attacker.line(TIMEOUT);
    assert_eq!(r["uffd_errno"], libc::ETIMEDOUT, "{r}");
    let timed_out = agent
        .audit_lines()
        .into_iter()
        .find(|l| l["errno"] == libc::ETIMEDOUT)
        .unwrap_or_else(|| panic!("no audit line for the deadline: {:?}", agent.audit_lines()));
    assert_eq!(timed_out["decision"], "refused", "{timed_out}");
    assert!(
        timed_out["reason"]
            .as_str()
            .is_some_and(|r| r.contains("deadline")),
        "{timed_out}"
    );
    // A fresh worker serves the attacker's ordinary binds.
    let r = attacker.ask("bind 127.78.1.2 83", TIMEOUT);
    assert_eq!(r["errno"], 0, "{r}");
    victim_binds(&mut victim, "127.78.1.1", 84, 20);
    attacker.kill();
    victim.kill();
    // The blocked read returns once the attacker is gone; so does its worker.
    fds_return(&agent, baseline);
}

/// 600 idle runtime connections (more than the agent reads at once): a real
/// runtime's connection is still read, and the idle ones cost nothing lasting.
#[test]
fn agent_600_idle_connections_do_not_lock_out_a_runtime() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:85"]);
    let baseline = agent.fd_count();
    let idle: Vec<UnixStream> = (0..600)
        .map(|_| UnixStream::connect(&agent.socket).expect("connect"))
        .collect();
    let mut victim = FakeTenant::start(&agent, &unique("victim"));
    victim_binds(&mut victim, "127.78.2.1", 85, 50);
    assert!(
        agent.log.text().contains("closed the one idle longest"),
        "{}",
        agent.log.text()
    );
    drop(idle);
    victim.kill();
    fds_return(&agent, baseline);
}

/// 32 clients each trickling a 1 MiB document in 256-byte pieces: each is
/// rejected as too large, and the victim binds all the while.
#[test]
fn agent_32_slow_large_documents() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:86"]);
    let baseline = agent.fd_count();
    let rss = rss_kib(agent.pid);
    let mut victim = FakeTenant::start(&agent, &unique("victim"));
    let socket = agent.socket.clone();
    let writers: Vec<_> = (0..32)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                fdgrab_testkit::oci::trickle_oversized_document(&socket);
            })
        })
        .collect();
    victim_binds(&mut victim, "127.78.3.1", 86, 200);
    for w in writers {
        w.join().expect("writer");
    }
    let deadline = Instant::now() + TIMEOUT;
    while agent.log.text().matches("larger than").count() < 32 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(agent.log.text().matches("larger than").count(), 32);
    victim_binds(&mut victim, "127.78.3.1", 86, 20);
    victim.kill();
    fds_return(&agent, baseline);
    let grown = rss_kib(agent.pid).saturating_sub(rss);
    assert!(grown < 64 * 1024, "agent RSS grew by {grown} KiB");
}

/// A container handed a socket from another network namespace: by default the
/// agent leaves that bind to the kernel (EACCES for an unprivileged caller), and
/// says so in the audit line, which names the socket's netns; a policy with
/// `netns = "any"` lets it through.
#[test]
fn agent_socket_from_a_foreign_netns() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:88"]);
    let mut t = FakeTenant::start_foreign(&agent, &unique("netns"));
    let own_ns = std::fs::metadata(format!("/proc/{}/ns/net", t.pid))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .expect("tenant netns");
    // The agent does bind for this unprivileged tenant in its own netns...
    let r = t.ask("bind 127.78.4.1 88", TIMEOUT);
    assert_eq!(r["errno"], 0, "{r}");
    // ...but not on the socket from elsewhere.
    let r = t.ask("foreign 88", TIMEOUT);
    assert_eq!(r["errno"], libc::EACCES, "{r}");
    let audit = agent.audit_lines();
    let own = audit
        .iter()
        .find(|l| l["decision"] == "bind")
        .unwrap_or_else(|| panic!("{audit:?}"));
    assert_eq!(own["netns"], own_ns, "{own}");
    let refused = audit
        .iter()
        .find(|l| l["decision"] == "continue" && l["port"] == 88)
        .unwrap_or_else(|| panic!("{audit:?}"));
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("network namespace")),
        "{refused}"
    );
    assert!(
        refused["netns"].as_u64().is_some_and(|n| n != own_ns),
        "the line names the socket's netns: {refused}"
    );
    drop(t);
    drop(agent);

    let dir = fdgrab_testkit::oci::TempDir::new("fdgrab-netns-policy");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "netns = \"any\"\nallow = [\"tcp:88\"]\n").expect("policy");
    let agent = AgentProc::start(&["--policy", policy.to_str().expect("utf-8")]);
    let mut t = FakeTenant::start_foreign(&agent, &unique("netns-any"));
    let r = t.ask("foreign 88", TIMEOUT);
    assert_eq!(r["errno"], 0, "netns = \"any\" allows it: {r}");
    let audit = agent.audit_lines();
    assert!(
        audit
            .iter()
            .any(|l| l["decision"] == "bind" && l["errno"] == 0 && l["netns"] != own_ns),
        "{audit:?}"
    );
}

/// A real runc or crun container starting while a fake neighbour stalls its own
/// worker on a userfaultfd page, 600 idle connections sit in the agent's table
/// and 32 clients trickle oversized documents: the container's httpd still gets
/// port 80, and once everyone is gone the agent is back to its baseline fds.
fn real_container_under_attack(rt: fdgrab_testkit::oci::Runtime) {
    use fdgrab_testkit::oci::{Bundle, Container, NetNs};
    if !rt.usable() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:80", "--allow-bind", "tcp:83"]);
    let baseline = agent.fd_count();
    let mut attacker = FakeTenant::start(&agent, &unique("attacker"));
    assert_eq!(attacker.ask("uffd 83", TIMEOUT)["stalled"], true);
    let idle: Vec<UnixStream> = (0..600)
        .map(|_| UnixStream::connect(&agent.socket).expect("connect"))
        .collect();
    let writers: Vec<_> = (0..32)
        .map(|_| {
            let socket = agent.socket.clone();
            std::thread::spawn(move || fdgrab_testkit::oci::trickle_oversized_document(&socket))
        })
        .collect();
    let ns = NetNs::new();
    let bundle = Bundle::new(&fdgrab_testkit::oci::httpd_spec(&agent.socket, &ns));
    let id = unique(&format!("fdgrab-{}-attacked", rt.name()));
    let mut c = Container::run(rt, &bundle, &id);
    let resp = ns
        .http_get_eventually(80, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}; {}; agent {}", c.output.text(), agent.log.text()));
    assert!(resp.contains(" 200 "), "{resp}");
    for w in writers {
        w.join().expect("writer");
    }
    drop(idle);
    assert_eq!(attacker.line(TIMEOUT)["uffd_errno"], libc::ETIMEDOUT);
    attacker.kill();
    c.kill();
    fds_return(&agent, baseline);
}

fdgrab_testkit::per_runtime! {
    agent_real_container_under_attack => real_container_under_attack,
}

/// Without CAP_NET_ADMIN the agent cannot name a socket's netns (`SIOCGSKNS`);
/// it compares netns cookies instead, learning the caller's by entering it once.
/// The foreign socket is still refused and the container's own still bound.
#[test]
fn agent_netns_check_without_net_admin() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start_under(
        &[
            "setpriv",
            "--bounding-set",
            "-all,+sys_ptrace,+net_bind_service,+sys_admin",
            "--inh-caps",
            "-all",
        ],
        &["--allow-bind", "tcp:92"],
    );
    let mut t = FakeTenant::start_foreign(&agent, &unique("no-net-admin"));
    assert_eq!(t.ask("bind 127.78.8.1 92", TIMEOUT)["errno"], 0);
    assert_eq!(t.ask("bind 127.78.8.2 92", TIMEOUT)["errno"], 0);
    assert_eq!(t.ask("foreign 92", TIMEOUT)["errno"], libc::EACCES);
    let audit = agent.audit_lines();
    assert_eq!(
        audit
            .iter()
            .filter(|l| l["decision"] == "bind" && l["errno"] == 0)
            .count(),
        2,
        "{audit:?}"
    );
}

/// Many containers keep many threads binding at once, at a low descriptor
/// limit: what the agent caches per calling thread (a pidfd and a netns link)
/// stays within its quarter of the table, however many containers there are.
/// (With 8 netns links per container outside the budget, twelve containers
/// would have held 96 links on top of the pidfds.) Every bind still succeeds,
/// and the descriptors come back once the containers are gone.
#[test]
fn agent_descriptor_budget_holds_with_many_containers() {
    if !root_or_skip() {
        return;
    }
    const NOFILE: usize = 256;
    const CONTAINERS: u8 = 12;
    const THREADS: usize = 8;
    let agent = AgentProc::start_with_nofile(&["--allow-bind", "tcp:87"], NOFILE as u64);
    let baseline = agent.fd_count();
    let mut tenants: Vec<FakeTenant> = (0..CONTAINERS)
        .map(|i| FakeTenant::start(&agent, &unique(&format!("many{i}"))))
        .collect();
    // Each container's listener, and whatever else it holds between binds.
    let with_tenants = agent.fd_count();
    for (i, t) in (0u8..).zip(tenants.iter_mut()) {
        let r = t.ask(&format!("storm {THREADS} {} 87", 140 + i), TIMEOUT);
        assert_eq!(r["started"], THREADS, "{r}");
    }
    // The cache's quarter, plus what a request holds while it is served (our
    // copy of the socket, a fresh pidfd or link not yet cached, a /proc file of
    // the audit line): a few per worker.
    let bound = NOFILE / 4 + 3 * usize::from(CONTAINERS);
    let mut peak = 0;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        peak = peak.max(agent.fd_count().saturating_sub(with_tenants));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        peak <= bound,
        "the agent held {peak} descriptors for {CONTAINERS} containers' binding threads, \
         more than {bound}"
    );
    for (i, t) in (0u8..).zip(tenants.iter_mut()) {
        let r = t.ask("stop", TIMEOUT);
        assert!(r["binds"].as_u64() >= Some(THREADS as u64), "{r}");
        let r = t.ask(&format!("bind 127.{}.9.9 87", 140 + i), TIMEOUT);
        assert_eq!(r["errno"], 0, "container {i}, after its storm: {r}");
    }
    let log = agent.log.text();
    assert!(!log.contains("EMFILE"), "{log}");
    for mut t in tenants {
        t.kill();
    }
    fds_return(&agent, baseline);
}

/// Sets `pid`'s soft `RLIMIT_NOFILE` so that exactly `free` descriptor numbers
/// below it are unused: its next `free` opens succeed, the one after fails
/// with EMFILE (the hard limit stays).
fn leave_free_fds(pid: i32, free: usize) {
    let open: std::collections::BTreeSet<usize> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let (mut limit, mut unused) = (0usize, 0usize);
    while unused < free {
        if !open.contains(&limit) {
            unused += 1;
        }
        limit += 1;
    }
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let new = libc::rlimit {
        rlim_cur: limit as libc::rlim_t,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit reads `new` and writes `old`, both valid for the call.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(r, 0, "prlimit get");
    let new = libc::rlimit {
        rlim_max: old.rlim_max,
        ..new
    };
    // SAFETY: as above; only the soft limit changes.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit set");
}

/// The agent's audit line for the bind to `addr`.
fn audit_line_of(agent: &AgentProc, addr: &str) -> Value {
    let audit = agent.audit_lines();
    audit
        .iter()
        .find(|l| l["address"] == addr)
        .cloned()
        .unwrap_or_else(|| panic!("no audit line for {addr}: {audit:?}"))
}

/// An agent with room for the caller's pidfd and its socket but not for one
/// more descriptor: the caller's netns is still read (a link's text needs no
/// descriptor), and an allowed bind in the caller's own netns is performed by
/// the agent, not handed to the kernel as a netns mismatch.
#[test]
fn agent_netns_check_when_out_of_descriptors() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:461"]);
    let mut t = FakeTenant::start(&agent, &unique("nofds"));
    // Learns the container's netns (its cookie and inode) and caches the main
    // thread's pidfd and link.
    assert_eq!(t.ask("bind 127.161.0.1 461", TIMEOUT)["errno"], 0);
    // A new thread: a fresh pidfd and a copy of its socket take the last two.
    leave_free_fds(agent.pid, 2);
    let r = t.ask("threads 1 162 461", TIMEOUT);
    assert_eq!(r["ok"], 1, "{r}");
    let line = audit_line_of(&agent, "127.162.0.1");
    assert_eq!(
        (&line["decision"], &line["errno"]),
        (&Value::from("bind"), &Value::from(0)),
        "the agent bound it: {line}; log {}",
        agent.log.text()
    );
}

/// The tid of the agent's thread named `comm`, once it runs.
fn agent_thread(agent: &AgentProc, comm: &str) -> i32 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let found = std::fs::read_dir(format!("/proc/{}/task", agent.pid))
            .expect("task dir")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .find(|tid| {
                std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", agent.pid))
                    .is_ok_and(|c| c.trim_end() == comm)
            });
        if let Some(tid) = found {
            return tid;
        }
        assert!(Instant::now() < deadline, "no agent thread {comm}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a ptrace stop of `tid` within `TIMEOUT`; its wait status.
fn traced_stop(tid: i32) -> Result<i32, String> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut status = 0;
        // SAFETY: waits for a tracee of this thread; writes a local.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::WNOHANG | libc::__WALL) };
        if r == tid {
            return if libc::WIFSTOPPED(status) {
                Ok(status)
            } else {
                Err(format!("thread {tid} ended: {status:#x}"))
            };
        }
        if r < 0 || Instant::now() > deadline {
            return Err(format!("no stop of thread {tid}"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Where [`hold_worker`] stops a worker deciding a bind.
#[derive(Clone, Copy, PartialEq)]
enum Hold {
    /// Right after the `ID_VALID` that follows its read of the caller's memory
    /// (`process_vm_readv`), before it claims the request.
    AfterValidatedRead,
    /// At its `pidfd_getfd`, past the claim (the caller's pidfd is cached).
    AtGetfd,
}

/// Seizes the agent's thread `tid` (this thread is then its tracer) and stops
/// it at `at` in the bind it decides after `skip` more: the request may then vanish, or
/// outlive its deadline, while the thread holds still. Says so through
/// `paused`, and lets it go on when `release` says so (or is dropped).
fn hold_worker(
    tid: i32,
    at: Hold,
    skip: usize,
    paused: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
) -> Result<(), String> {
    const PTRACE_GET_SYSCALL_INFO: libc::c_uint = 0x420e;
    let sys = |req: i64, data: usize| {
        // SAFETY: ptrace requests on our tracee that pass no memory.
        let r = unsafe { libc::ptrace(req as _, tid, 0usize, data) };
        if r < 0 {
            Err(format!(
                "ptrace {req:#x}: {}",
                std::io::Error::last_os_error()
            ))
        } else {
            Ok(())
        }
    };
    sys(
        libc::PTRACE_SEIZE.into(),
        libc::PTRACE_O_TRACESYSGOOD as usize,
    )?;
    sys(libc::PTRACE_INTERRUPT.into(), 0)?;
    traced_stop(tid)?;
    let (mut reads, mut validating, mut signal) = (0, false, 0);
    loop {
        sys(libc::PTRACE_SYSCALL.into(), signal)?;
        signal = 0;
        let status = traced_stop(tid)?;
        let stop = libc::WSTOPSIG(status);
        if stop != (libc::SIGTRAP | 0x80) {
            // A signal for the thread goes through; an event stop does not.
            if status >> 16 == 0 {
                signal = stop as usize;
            }
            continue;
        }
        // struct ptrace_syscall_info: op (1 entry, 2 exit) in the first byte,
        // the syscall number (entry) at byte 24.
        let mut info = [0u64; 12];
        // SAFETY: the kernel writes at most size_of_val(&info) bytes to `info`.
        let n = unsafe {
            libc::ptrace(
                PTRACE_GET_SYSCALL_INFO as _,
                tid,
                std::mem::size_of_val(&info),
                info.as_mut_ptr(),
            )
        };
        if n < 0 {
            return Err("PTRACE_GET_SYSCALL_INFO".into());
        }
        let (op, nr) = (info[0] & 0xff, info[3] as libc::c_long);
        let read = reads > skip;
        match op {
            1 if at == Hold::AtGetfd && read && nr == libc::SYS_pidfd_getfd => break,
            1 if nr == libc::SYS_process_vm_readv => reads += 1,
            1 => validating = read && nr == libc::SYS_ioctl,
            2 if validating && at == Hold::AfterValidatedRead => break,
            _ => {}
        }
    }
    let _ = paused.send(());
    let _ = release.recv_timeout(TIMEOUT);
    sys(libc::PTRACE_DETACH.into(), 0)
}

/// A bind validated for a thread of one container, whose caller then dies and
/// whose tid goes to a thread of another container that has made a bind (so
/// that the shared cache holds its pidfd and netns link under that tid), must
/// not be carried out on the newcomer's socket: the cache entry is younger
/// than the request, so it proves nothing about the caller. The agent's
/// worker is held (ptrace) between the request's validation and its use of
/// the cache, which a tenant otherwise only hits by racing pid reuse.
#[test]
fn agent_tid_reused_by_another_container_while_a_bind_is_decided() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:463", "--allow-bind", "tcp:464"]);
    tid_reused_by_another_container(&agent, 1);
}

/// The same under `netns = "any"`, where no netns link is read at all: the
/// newcomer's cached pidfd alone would reach its socket.
#[test]
fn agent_tid_reused_by_another_container_netns_any() {
    if !root_or_skip() {
        return;
    }
    let dir = fdgrab_testkit::oci::TempDir::new("fdgrab-reuse-any");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "netns = \"any\"\nallow = [\"tcp:463\", \"tcp:464\"]\n",
    )
    .expect("policy");
    let agent = AgentProc::start(&["--policy", policy.to_str().expect("utf-8")]);
    tid_reused_by_another_container(&agent, 2);
}

/// `host`: a byte of the loopback addresses the two containers bind, one per
/// test, so that the tests (whose tenants share the host's network namespace)
/// never bind the same address and port when run side by side (EADDRINUSE in
/// one CI simulation).
fn tid_reused_by_another_container(agent: &AgentProc, host: u8) {
    let mut first = FakeTenant::start(agent, &unique("reuse-a"));
    let worker = agent_thread(agent, "fdgrab-tenant-1");
    // The second container may bind only port 464.
    let id = unique("reuse-b");
    let mut second = FakeTenant::spawn_annotated(&agent.socket, &id, "tcp:464");
    assert_eq!(second.line(TIMEOUT)["ready"], true);
    agent
        .log
        .wait_for(&format!("container={id} "), TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let (paused_tx, paused) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let tracer = std::thread::spawn(move || {
        hold_worker(worker, Hold::AfterValidatedRead, 0, paused_tx, release_rx)
    });
    // Give the tracer its seize before the request arrives.
    std::thread::sleep(Duration::from_millis(100));
    let caller = first.ask(&format!("fork-bind 127.163.{host}.1 463 200"), TIMEOUT)["pid"]
        .as_i64()
        .expect("pid");
    if paused.recv_timeout(TIMEOUT).is_err() {
        panic!("the worker never read: {:?}", tracer.join());
    }
    // SAFETY: kill(2) of our tenant's child, parked in its bind.
    assert_eq!(unsafe { libc::kill(caller as i32, libc::SIGKILL) }, 0);
    assert_eq!(
        first.ask(&format!("reap {caller}"), TIMEOUT)["reaped"],
        caller
    );
    let r = second.ask(
        &format!("clone-bind {caller} 127.164.{host}.1 464 200"),
        TIMEOUT,
    );
    assert_eq!(
        (&r["pid"], &r["errno"]),
        (&Value::from(caller), &Value::from(0)),
        "the newcomer has the caller's tid and its own bind: {r}"
    );
    let _ = release.send(());
    tracer.join().expect("tracer").expect("tracing the worker");
    // The held request is decided by now, one way or another.
    let r = first.ask(&format!("bind 127.163.{host}.2 463"), TIMEOUT);
    assert_eq!(r["errno"], 0, "{r}");
    let r = second.ask("query", TIMEOUT);
    assert_eq!(
        r["port"], 0,
        "the newcomer's socket was bound for the dead caller of another container: {r}"
    );
    let audit = agent.audit_lines();
    assert!(
        !audit.iter().any(|l| l["errno"] == libc::ETIMEDOUT),
        "the held request outlived its deadline; nothing was tested: {audit:?}"
    );
}

/// An agent out of descriptors before it could name a new container's netns:
/// the bind is handed to the kernel with the EMFILE reason, not blamed on a
/// foreign netns.
#[test]
fn agent_out_of_descriptors_for_a_new_netns_says_emfile() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:462"]);
    let mut t = FakeTenant::start(&agent, &unique("nofds-cold"));
    leave_free_fds(agent.pid, 2);
    let r = t.ask("bind 127.165.0.1 462", TIMEOUT);
    assert_eq!(r["errno"], 0, "{r}");
    let line = audit_line_of(&agent, "127.165.0.1");
    let reason = line["reason"].as_str().unwrap_or("");
    assert!(
        line["decision"] == "continue" && reason.contains("EMFILE"),
        "{line}; log {}",
        agent.log.text()
    );
}

/// A bind held in its worker past the deadline is answered exactly once: by
/// the worker when it had claimed the request before the hold (0, however
/// late), by the watchdog when it had not (ETIMEDOUT, and the worker, let go,
/// does nothing with it). The claim each worker resets between requests
/// serves the binds after both.
#[test]
fn agent_bind_held_past_its_deadline_is_answered_once() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:465"]);
    let mut t = FakeTenant::start(&agent, &unique("held"));
    // Caches the main thread's pidfd: its next bind's first call past the
    // claim is pidfd_getfd.
    assert_eq!(t.ask("bind 127.166.0.1 465", TIMEOUT)["errno"], 0);
    let held = |t: &mut FakeTenant, at: Hold, addr: &str| {
        let worker = agent_thread(&agent, "fdgrab-tenant-1");
        let (paused_tx, paused) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let tracer = std::thread::spawn(move || hold_worker(worker, at, 0, paused_tx, release_rx));
        std::thread::sleep(Duration::from_millis(100));
        t.send(&format!("bind {addr} 465"));
        if paused.recv_timeout(TIMEOUT).is_err() {
            panic!("the worker never got there: {:?}", tracer.join());
        }
        // Well past the deadline (500 ms) and the watchdog's next look.
        std::thread::sleep(Duration::from_millis(1200));
        let _ = release.send(());
        tracer.join().expect("tracer").expect("tracing the worker");
        t.line(TIMEOUT)
    };
    let r = held(&mut t, Hold::AtGetfd, "127.166.0.2");
    assert_eq!(
        r["errno"], 0,
        "claimed before the hold: the worker answers: {r}"
    );
    let r = held(&mut t, Hold::AfterValidatedRead, "127.166.0.3");
    assert_eq!(r["errno"], libc::ETIMEDOUT, "the watchdog answered: {r}");
    for i in 4..8 {
        let r = t.ask(&format!("bind 127.166.0.{i} 465"), TIMEOUT);
        assert_eq!(r["errno"], 0, "{r}");
    }
    let audit = agent.audit_lines();
    let of = |addr: &str| audit.iter().filter(|l| l["address"] == addr).count();
    assert_eq!(of("127.166.0.2"), 1, "{audit:?}");
    assert_eq!(
        of("127.166.0.3"),
        0,
        "the worker let go acts on nothing: {audit:?}"
    );
    assert_eq!(
        audit
            .iter()
            .filter(|l| l["errno"] == libc::ETIMEDOUT)
            .count(),
        1,
        "{audit:?}"
    );
}

/// The same within one container, for a caller whose pidfd and netns link
/// are cached (it bound before): the caller dies while its bind is decided
/// and its tid goes to a newcomer of the same container, whose bind waits
/// behind it. The dead caller's entry is not taken for the newcomer's, and
/// the newcomer's socket is left alone.
#[test]
fn agent_tid_reused_in_the_same_container_while_a_bind_is_decided() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:466"]);
    let mut t = FakeTenant::start(&agent, &unique("reuse-same"));
    let worker = agent_thread(&agent, "fdgrab-tenant-1");
    let (paused_tx, paused) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    // The caller's first bind caches its pidfd and link; its second is held.
    let tracer = std::thread::spawn(move || {
        hold_worker(worker, Hold::AfterValidatedRead, 1, paused_tx, release_rx)
    });
    std::thread::sleep(Duration::from_millis(100));
    let caller = t.ask("fork-bind 127.167.0.1 466 200 2", TIMEOUT)["pid"]
        .as_i64()
        .expect("pid");
    if paused.recv_timeout(TIMEOUT).is_err() {
        panic!("the worker never read: {:?}", tracer.join());
    }
    // SAFETY: kill(2) of our tenant's child, parked in its second bind.
    assert_eq!(unsafe { libc::kill(caller as i32, libc::SIGKILL) }, 0);
    assert_eq!(t.ask(&format!("reap {caller}"), TIMEOUT)["reaped"], caller);
    // The newcomer's own bind waits behind the held one.
    t.send(&format!("clone-bind {caller} 127.167.0.2 466 200"));
    std::thread::sleep(Duration::from_millis(100));
    let _ = release.send(());
    tracer.join().expect("tracer").expect("tracing the worker");
    let r = t.line(TIMEOUT);
    assert_eq!(
        (&r["pid"], &r["errno"]),
        (&Value::from(caller), &Value::from(0)),
        "the newcomer has the caller's tid and its own bind: {r}"
    );
    let r = t.ask("query", TIMEOUT);
    assert_eq!(
        r["port"], 0,
        "the newcomer's socket was bound for the dead caller: {r}"
    );
    let audit = agent.audit_lines();
    assert!(
        !audit.iter().any(|l| l["errno"] == libc::ETIMEDOUT),
        "the held request outlived its deadline; nothing was tested: {audit:?}"
    );
    assert_eq!(
        audit_line_of(&agent, "127.167.0.1")["errno"],
        0,
        "{audit:?}"
    );
}

/// A caller binds (its pidfd and link become the newest cache entry, which a
/// lookup takes without touching the LRU order), exits, and its tid goes to a
/// newcomer of the same container: the newcomer's bind is served through a
/// pidfd of its own, on its own socket, and nothing else of it is touched.
#[test]
fn agent_newest_entry_of_an_exited_thread_is_not_reused() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:468"]);
    let mut t = FakeTenant::start(&agent, &unique("newest"));
    let caller = t.ask("fork-bind 127.168.0.1 468 200", TIMEOUT)["pid"]
        .as_i64()
        .expect("pid");
    assert_eq!(t.ask(&format!("reap {caller}"), TIMEOUT)["reaped"], caller);
    assert_eq!(audit_line_of(&agent, "127.168.0.1")["errno"], 0);
    let r = t.ask(&format!("clone-bind {caller} 127.168.0.2 468 200"), TIMEOUT);
    assert_eq!(
        (&r["pid"], &r["errno"]),
        (&Value::from(caller), &Value::from(0)),
        "{r}"
    );
    assert_eq!(t.ask("query", TIMEOUT)["port"], 0);
    let line = audit_line_of(&agent, "127.168.0.2");
    assert_eq!(
        (&line["errno"], &line["tid"]),
        (&Value::from(0), &Value::from(caller))
    );
}
