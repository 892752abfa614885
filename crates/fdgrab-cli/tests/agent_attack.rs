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
