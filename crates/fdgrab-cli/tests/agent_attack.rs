//! Many hostile containers at once: each leaves a worker blocked in a read of its
//! memory (a userfaultfd page nobody fills) and then dies. The agent's threads and
//! descriptors must come back to where they were, and a neighbour keeps binding.

use fdgrab_testkit::oci::{unique, AgentProc, FakeTenant};
use fdgrab_testkit::{is_root, TIMEOUT};
use std::time::{Duration, Instant};

fn thread_count(agent: &AgentProc) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", agent.pid))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits until `what` of the agent is back to `baseline`.
fn returns(agent: &AgentProc, what: &str, baseline: usize, now: impl Fn(&AgentProc) -> usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while now(agent) != baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(now(agent), baseline, "agent {what} back to baseline");
}

#[test]
fn agent_twenty_stalled_tenants_leave_no_threads_or_fds() {
    if !is_root() {
        fdgrab_testkit::skip("the agent needs root");
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:85-86"]);
    let fds = agent.fd_count();
    let threads = thread_count(&agent);
    let mut victim = FakeTenant::start(&agent, &unique("calm"));
    let mut attackers: Vec<FakeTenant> = (0..20)
        .map(|_| FakeTenant::start(&agent, &unique("stall")))
        .collect();
    for a in &mut attackers {
        let r = a.ask("uffd 85", TIMEOUT);
        assert_eq!(r["stalled"], true, "{r}");
    }
    for a in &mut attackers {
        let r = a.line(TIMEOUT);
        assert_eq!(r["uffd_errno"], libc::ETIMEDOUT, "{r}");
    }
    // Each attacker now has a worker blocked and a fresh one serving it.
    assert!(thread_count(&agent) > threads + 20);
    let r = victim.ask("bind 127.78.7.1 86", TIMEOUT);
    assert_eq!(r["errno"], 0, "{r}");
    for a in &mut attackers {
        a.kill();
    }
    victim.kill();
    returns(&agent, "threads", threads, thread_count);
    returns(&agent, "fds", fds, AgentProc::fd_count);
}

/// `"NAME":N` in the agent's SIGUSR1 state line.
fn stat(agent: &AgentProc, name: &str) -> u64 {
    let pid = rustix::process::Pid::from_raw(agent.pid).expect("pid");
    let seen = agent.log.text().matches("SIGUSR1: agent state").count();
    rustix::process::kill_process(pid, rustix::process::Signal::USR1).expect("kill");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let log = agent.log.text();
        if let Some(line) = log
            .lines()
            .filter(|l| l.contains("SIGUSR1: agent state"))
            .nth(seen)
        {
            return line
                .split(&format!("\"{name}\":"))
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line}"));
        }
        assert!(Instant::now() < deadline, "no state line: {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Twelve containers stall twice each (24 reads that never return): the agent
/// gives up on at most 16 workers in all (`MAX_BLOCKED_TOTAL`), every stalled
/// bind is still answered ETIMEDOUT, its threads stay within one per container
/// plus that limit, and a neighbour keeps binding.
#[test]
fn agent_caps_blocked_workers_across_containers() {
    if !is_root() {
        fdgrab_testkit::skip("the agent needs root");
        return;
    }
    const LIMIT: usize = 16;
    let agent = AgentProc::start(&["--allow-bind", "tcp:85-86"]);
    let fds = agent.fd_count();
    let threads = thread_count(&agent);
    let mut victim = FakeTenant::start(&agent, &unique("calm"));
    let mut attackers: Vec<FakeTenant> = (0..12)
        .map(|_| FakeTenant::start(&agent, &unique("stall2")))
        .collect();
    for _ in 0..2 {
        for a in &mut attackers {
            let r = a.ask("uffd 85", TIMEOUT);
            assert_eq!(r["stalled"], true, "{r}");
        }
        for a in &mut attackers {
            let r = a.line(TIMEOUT);
            assert_eq!(r["uffd_errno"], libc::ETIMEDOUT, "{r}");
        }
    }
    assert_eq!(stat(&agent, "blocked_workers"), LIMIT as u64);
    let now = thread_count(&agent);
    // The main thread and any short-lived helper aside: the victim's worker, one
    // worker per attacker (some of them blocked and kept), and the given-up ones.
    assert!(
        now <= threads + 1 + attackers.len() + LIMIT,
        "{now} threads, baseline {threads}"
    );
    assert!(now >= threads + 1 + attackers.len() + LIMIT - 1, "{now}");
    agent
        .log
        .wait_for("agent-wide limit of blocked workers reached", TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let r = victim.ask("bind 127.78.7.2 86", TIMEOUT);
    assert_eq!(r["errno"], 0, "{r}");
    for a in &mut attackers {
        a.kill();
    }
    returns(&agent, "threads", threads + 1, thread_count);
    assert_eq!(stat(&agent, "blocked_workers"), 0);
    victim.kill();
    returns(&agent, "threads", threads, thread_count);
    returns(&agent, "fds", fds, AgentProc::fd_count);
}
