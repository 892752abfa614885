//! Running the agent: SIGHUP reloads the policy and reopens the audit file (a bad
//! policy is logged and the running one stays), SIGUSR1 dumps its state, and
//! `--policy` refuses what is not a small regular file at once.

use fdgrab_testkit::oci::{
    drain_nonblocking, line_count, one_page_fifo_reader, read_until, unique, AgentProc, FakeTenant,
    TempDir,
};
use fdgrab_testkit::{fdgrab, is_root, output_timeout, TIMEOUT};
use std::time::{Duration, Instant};

fn root_or_skip() -> bool {
    if !is_root() {
        fdgrab_testkit::skip("the agent needs root");
        return false;
    }
    true
}

fn signal(agent: &AgentProc, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(agent.pid).expect("pid");
    rustix::process::kill_process(pid, sig).expect("kill");
}

/// Waits until the agent's log holds `needle` `n` times.
fn log_count(agent: &AgentProc, needle: &str, n: usize) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let log = agent.log.text();
        if log.matches(needle).count() >= n {
            return log;
        }
        assert!(Instant::now() < deadline, "no {needle:?} x{n} in {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn agent_sighup_reloads_policy_and_reopens_the_audit_file() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("fdgrab-reload");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "allow = [\"tcp:89\"]\n").expect("policy");
    let mut agent = AgentProc::start(&["--policy", policy.to_str().expect("utf-8")]);
    // An unprivileged tenant: the kernel alone refuses it any port below 1024.
    let mut t = FakeTenant::start_foreign(&agent, &unique("reload"));
    assert_eq!(t.ask("bind 127.78.5.1 89", TIMEOUT)["errno"], 0);

    // logrotate's move, then a new policy and SIGHUP.
    let rotated = agent.audit.with_extension("jsonl.1");
    std::fs::rename(&agent.audit, &rotated).expect("rename the audit file");
    std::fs::write(&policy, "allow = [\"tcp:90\"]\n").expect("policy");
    signal(&agent, rustix::process::Signal::HUP);
    log_count(&agent, "policy reloaded", 1);
    assert!(agent.is_running(), "SIGHUP must not kill the agent");
    assert_eq!(t.ask("bind 127.78.5.2 89", TIMEOUT)["errno"], libc::EACCES);
    assert_eq!(t.ask("bind 127.78.5.3 90", TIMEOUT)["errno"], 0);
    let old: Vec<serde_json::Value> = std::fs::read_to_string(&rotated)
        .expect("rotated file")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        old.iter().any(|l| l["port"] == 89 && l["errno"] == 0),
        "{old:?}"
    );
    let new = agent.audit_lines();
    assert!(
        new.iter().any(|l| l["port"] == 90 && l["errno"] == 0),
        "lines after the reload go to the reopened file: {new:?}"
    );
    assert!(new.iter().all(|l| l["port"] != 89 || l["errno"] != 0));
    // The kernel's line still names the protocol, though the decision never
    // needed the socket.
    let handed_back = new
        .iter()
        .find(|l| l["port"] == 89)
        .unwrap_or_else(|| panic!("{new:?}"));
    assert_eq!(handed_back["decision"], "continue", "{handed_back}");
    assert_eq!(handed_back["proto"], "tcp", "{handed_back}");
    // The kernel ran that call after the agent let go: its errno is not known to
    // the agent, and the line says who decided, with what the agent did know.
    assert_eq!(handed_back["decided_by"], "kernel", "{handed_back}");
    assert!(handed_back["errno"].is_null(), "{handed_back}");
    assert_eq!(handed_back["family"], "inet", "{handed_back}");
    assert!(handed_back["netns"].as_u64().is_some(), "{handed_back}");
    let granted = new
        .iter()
        .find(|l| l["port"] == 90)
        .unwrap_or_else(|| panic!("{new:?}"));
    assert_eq!(granted["decided_by"], "fdgrab", "{granted}");
    assert_eq!(handed_back["namespace"], "tenants", "{handed_back}");

    // An invalid policy: logged, and the running one stays.
    std::fs::write(&policy, "[[bind]]\nport = \"ninety\"\n").expect("policy");
    signal(&agent, rustix::process::Signal::HUP);
    let log = log_count(&agent, "keeping the current policy", 1);
    assert!(log.contains("policy.toml:2"), "{log}");
    assert!(agent.is_running());
    assert_eq!(t.ask("bind 127.78.5.4 90", TIMEOUT)["errno"], 0);

    // SIGUSR1: the state as one JSON log line.
    signal(&agent, rustix::process::Signal::USR1);
    let log = log_count(&agent, "SIGUSR1: agent state", 1);
    let line = log
        .lines()
        .find(|l| l.contains("SIGUSR1: agent state"))
        .expect("line");
    assert!(line.contains("\"containers\":1"), "{line}");
    assert!(line.contains("\"pod\":\"pod-reload"), "{line}");
}

/// The audit path is reopened on the agent's own thread: a FIFO put there with
/// nobody reading must not hang the reload (nor the agent), and a full disk must
/// not stop binds from being answered.
#[test]
fn agent_reload_survives_an_audit_path_that_is_a_fifo_or_full() {
    if !root_or_skip() {
        return;
    }
    let mut agent = AgentProc::start(&["--allow-bind", "tcp:91"]);
    let mut t = FakeTenant::start_foreign(&agent, &unique("auditfifo"));
    assert_eq!(t.ask("bind 127.78.6.1 91", TIMEOUT)["errno"], 0);

    std::fs::remove_file(&agent.audit).expect("remove the audit file");
    let path = std::ffi::CString::new(agent.audit.to_str().expect("utf-8")).expect("path");
    // SAFETY: a valid NUL-terminated path; mkfifo touches nothing else.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo");
    signal(&agent, rustix::process::Signal::HUP);
    log_count(&agent, "cannot reopen the audit file", 1);
    log_count(&agent, "policy reloaded", 1);
    assert!(agent.is_running());
    assert_eq!(t.ask("bind 127.78.6.2 91", TIMEOUT)["errno"], 0);

    std::fs::remove_file(&agent.audit).expect("remove the FIFO");
    std::os::unix::fs::symlink("/dev/full", &agent.audit).expect("symlink");
    signal(&agent, rustix::process::Signal::HUP);
    log_count(&agent, "policy reloaded", 2);
    assert_eq!(t.ask("bind 127.78.6.3 91", TIMEOUT)["errno"], 0);
    log_count(&agent, "audit lines dropped", 1);
    assert!(agent.is_running());
}

/// An audit FIFO whose reader never reads: decisions do not wait for it. What
/// the pipe and the agent's bounded queue cannot hold is dropped, counted in the
/// state dump and logged, and what does arrive is whole lines.
#[test]
fn agent_audit_fifo_nobody_reads_drops_lines_instead_of_blocking() {
    if !root_or_skip() {
        return;
    }
    // The FIFO is open for reading (so the agent's open succeeds), and not
    // read until the end.
    let (mut agent, mut reader) = fdgrab_testkit::oci::agent_with_fifo_audit(
        "fdgrab-audit-stall",
        &["--allow-bind", "tcp:92"],
    );
    let mut t = FakeTenant::start(&agent, &unique("auditstall"));
    // 3,000 audited binds of about 500 bytes each: several times what the pipe
    // (64 KiB) and the queue (256 KiB) hold. A blocking write would hang here.
    let r = t.ask("lat 3000 127.78.8.1 92", Duration::from_secs(150));
    assert_eq!(r["errors"], 0, "{r}");
    log_count(&agent, "audit lines dropped", 1);
    let dropped = agent.state_number("audit_lines_dropped");
    assert!(dropped > 0 && dropped < 3000, "{dropped} dropped");
    // Reading now lets the queue drain into the pipe, in whole lines.
    let mut text = Vec::new();
    drain_nonblocking(&mut reader, &mut text);
    let first = text.len();
    for i in 0..8 {
        assert_eq!(
            t.ask(&format!("bind 127.78.8.{} 92", i + 2), TIMEOUT)["errno"],
            0
        );
        drain_nonblocking(&mut reader, &mut text);
    }
    assert!(
        text.len() > first,
        "the queue drained once the pipe was read"
    );
    let whole = &text[..text.iter().rposition(|&b| b == b'\n').expect("a line") + 1];
    let lines: Vec<&str> = std::str::from_utf8(whole).expect("utf-8").lines().collect();
    assert!(
        lines.len() > 50,
        "the pipe was filled: {} lines",
        lines.len()
    );
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line {l:?}: {e}"));
        assert_eq!(v["port"], 92, "{v}");
        assert_eq!(v["decided_by"], "fdgrab", "{v}");
    }
    assert!(agent.is_running());
}

#[test]
fn agent_policy_must_be_a_small_regular_file() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("fdgrab-policy-input");
    let fifo = dir.path().join("fifo");
    fdgrab_testkit::oci::mkfifo(&fifo);
    let big = dir.path().join("big.toml");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(100 << 20))
        .expect("100 MB file");
    for (path, why) in [
        (std::path::PathBuf::from("/dev/zero"), "character device"),
        (fifo, "FIFO"),
        (big, "at most"),
    ] {
        let sock = dir.path().join(unique("s"));
        let out = output_timeout(
            fdgrab()
                .arg("agent")
                .arg("--socket")
                .arg(&sock)
                .arg("--policy")
                .arg(&path),
            Duration::from_secs(20),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{path:?}: {err}");
        assert!(err.contains(why), "{path:?}: {err}");
        assert!(err.contains(&*path.to_string_lossy()), "{path:?}: {err}");
        assert!(!sock.exists(), "a refused start leaves no socket");
    }
    // 60,000 rules load, and the agent serves them.
    let many = dir.path().join("many.toml");
    let text: String = (0..60_000u32)
        .map(|i| {
            format!(
                "[[bind]]\nport = {}\naddr = \"10.{}.{}.1\"\n",
                i % 1000 + 1,
                i / 256 % 256,
                i % 256
            )
        })
        .collect::<String>()
        + "[[bind]]\nport = 91\n";
    std::fs::write(&many, text).expect("policy");
    let agent = AgentProc::start(&["--policy", many.to_str().expect("utf-8")]);
    let mut t = FakeTenant::start_foreign(&agent, &unique("many"));
    assert_eq!(t.ask("bind 127.78.6.1 91", TIMEOUT)["errno"], 0);
}

/// `CapEff`/`CapPrm` of a thread, as masks.
fn caps(pid: i32, tid: i32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).expect("status");
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .expect("cap field")
    };
    (field("CapEff:"), field("CapPrm:"))
}

/// The agent keeps CAP_NET_BIND_SERVICE, CAP_NET_ADMIN and CAP_SYS_PTRACE
/// effective and CAP_SYS_ADMIN permitted only, on every thread; with that it
/// still reads a foreign netns's port threshold (50 there, so port 88 is not
/// privileged in it and the kernel decides).
#[test]
fn agent_keeps_only_the_capabilities_it_uses() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("fdgrab-caps");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "netns = \"any\"\nallow = [\"tcp:88\"]\n").expect("policy");
    let agent = AgentProc::start(&["--policy", policy.to_str().expect("utf-8")]);
    let mut t = FakeTenant::start_foreign_with_port_start(&agent, &unique("caps"), 50);
    assert_eq!(t.ask("bind 127.78.7.1 88", TIMEOUT)["errno"], 0);
    // capability(7) numbers: NET_BIND_SERVICE 10, NET_ADMIN 12, SYS_PTRACE 19,
    // SYS_ADMIN 21.
    const EFFECTIVE: u64 = 1 << 10 | 1 << 12 | 1 << 19;
    const PERMITTED: u64 = EFFECTIVE | 1 << 21;
    let tasks: Vec<i32> = std::fs::read_dir(format!("/proc/{}/task", agent.pid))
        .expect("tasks")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    assert!(tasks.len() >= 2, "the agent and its container's worker");
    for tid in tasks {
        assert_eq!(caps(agent.pid, tid), (EFFECTIVE, PERMITTED), "thread {tid}");
    }
    assert_eq!(t.ask("foreign 88", TIMEOUT)["errno"], 0);
    let line = agent
        .audit_lines()
        .into_iter()
        .find(|l| l["address"] == "0.0.0.0" && l["port"] == 88)
        .expect("audit line");
    assert_eq!(line["decision"], "continue", "{line}");
    assert_eq!(line["reason"], "unprivileged port", "{line}");
}

/// Lines queued while the audit FIFO was full reach it once its reader catches
/// up, without waiting for a later decision (a container that stops binding must
/// not leave its last decisions unwritten), in order, whole, none dropped.
#[test]
fn agent_audit_queue_drains_without_further_decisions() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("fdgrab-audit-drain");
    let fifo = dir.path().join("audit.fifo");
    let socket = dir.path().join("agent.sock");
    // One page of pipe: a handful of lines fill it, the rest waits in the queue.
    let mut reader = one_page_fifo_reader(&fifo);
    let mut agent = AgentProc::start_at(dir, &socket, &fifo, &["--allow-bind", "tcp:93"])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut t = FakeTenant::start(&agent, &unique("auditdrain"));
    const BINDS: usize = 60;
    let addr = |i: usize| format!("127.79.{}.{}", i / 200, i % 200 + 1);
    for i in 0..BINDS {
        assert_eq!(t.ask(&format!("bind {} 93", addr(i)), TIMEOUT)["errno"], 0);
    }
    // No decision from here on: only the agent's own flushing can deliver.
    let mut text = Vec::new();
    read_until(&mut reader, &mut text, |t| line_count(t) >= BINDS);
    assert_eq!(
        addresses(&[&text]),
        (0..BINDS).map(addr).collect::<Vec<_>>(),
        "queued audit lines stayed in the agent, or came torn or out of order"
    );
    assert_eq!(agent.state_number("audit_lines_dropped"), 0);
    assert!(agent.is_running());
}

/// The `address` of every line of each text in turn; a torn line fails.
fn addresses(texts: &[&[u8]]) -> Vec<String> {
    texts
        .iter()
        .flat_map(|t| std::str::from_utf8(t).expect("utf-8").lines())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line {l:?}: {e}"));
            v["address"].as_str().expect("address").to_owned()
        })
        .collect()
}

/// Rotation while lines wait in the queue: the audit FIFO is full, the path is
/// moved away and a new FIFO made there, then SIGHUP. Neither FIFO ever gets a
/// torn line, no line is written twice, and the lines keep their order across
/// the two (the old one's, then the queue's in the new one's).
#[test]
fn agent_reopen_with_queued_lines_tears_and_repeats_none() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("fdgrab-audit-rotate");
    let fifo = dir.path().join("audit.fifo");
    let socket = dir.path().join("agent.sock");
    let mut old_reader = one_page_fifo_reader(&fifo);
    let agent = AgentProc::start_at(dir, &socket, &fifo, &["--allow-bind", "tcp:96"])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut t = FakeTenant::start(&agent, &unique("auditrot"));
    const BINDS: usize = 60;
    let addr = |i: usize| format!("127.82.{}.{}", i / 200, i % 200 + 1);
    for i in 0..BINDS {
        assert_eq!(t.ask(&format!("bind {} 96", addr(i)), TIMEOUT)["errno"], 0);
    }
    // The reader takes one pipeful: the agent refills the pipe from its queue.
    let mut old = Vec::new();
    drain_nonblocking(&mut old_reader, &mut old);
    std::thread::sleep(Duration::from_millis(200));
    let rotated = fifo.with_extension("fifo.1");
    std::fs::rename(&fifo, &rotated).expect("rename");
    let mut new_reader = one_page_fifo_reader(&fifo);
    signal(&agent, rustix::process::Signal::HUP);
    log_count(&agent, "policy reloaded", 1);
    // The old FIFO holds what it held; everything else reaches the new one.
    drain_nonblocking(&mut old_reader, &mut old);
    let mut new = Vec::new();
    let dropped = agent.state_number("audit_lines_dropped") as usize;
    read_until(&mut new_reader, &mut new, |n| {
        line_count(&old) + line_count(n) + dropped >= BINDS
    });
    assert!(
        old.ends_with(b"\n"),
        "the old FIFO ends in a torn line: {:?}",
        String::from_utf8_lossy(&old[old.len().saturating_sub(80)..])
    );
    assert_eq!(
        addresses(&[&old, &new]),
        (0..BINDS).map(addr).collect::<Vec<_>>(),
        "lines lost, repeated or out of order ({dropped} counted dropped)"
    );
    assert_eq!(dropped, 0);
}

/// `--audit -` with standard output a FIFO whose reader does not read for a
/// while (one page of pipe): binds are answered at once, and once the reader
/// reads, every line arrives whole, in order, with none dropped and no bind
/// after it to push them.
#[test]
fn agent_audit_to_stdout_pipe_neither_blocks_nor_loses_lines() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("fdgrab-audit-stdout");
    let fifo = dir.path().join("stdout.fifo");
    let mut reader = one_page_fifo_reader(&fifo);
    // The agent as started by the testkit, with `--audit -` instead of its file
    // and standard output the FIFO.
    let script = format!(
        "prog=$0; prev=; for a do shift; if [ \"$prev\" = --audit ]; then set -- \"$@\" -; \
         else set -- \"$@\" \"$a\"; fi; prev=$a; done; exec \"$prog\" \"$@\" >{}",
        fifo.display()
    );
    let agent = AgentProc::start_under(&["sh", "-c", &script], &["--allow-bind", "tcp:98"]);
    let mut t = FakeTenant::start(&agent, &unique("auditstdout"));
    const BINDS: usize = 150;
    let addr = |i: usize| format!("127.85.{}.{}", i / 200, i % 200 + 1);
    for i in 0..BINDS {
        assert_eq!(t.ask(&format!("bind {} 98", addr(i)), TIMEOUT)["errno"], 0);
    }
    let mut text = Vec::new();
    read_until(&mut reader, &mut text, |t| line_count(t) >= BINDS);
    assert_eq!(
        addresses(&[&text]),
        (0..BINDS).map(addr).collect::<Vec<_>>()
    );
    assert_eq!(agent.state_number("audit_lines_dropped"), 0);
}
