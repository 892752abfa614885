//! Many hostile containers at once: each leaves a worker blocked in a read of its
//! memory (a userfaultfd page nobody fills) and then dies. The agent's threads and
//! descriptors must come back to where they were, and a neighbour keeps binding.

use fdgrab_testkit::oci::{unique, AgentProc, FakeTenant};
use fdgrab_testkit::{is_root, TIMEOUT};
use std::time::{Duration, Instant};

fn root_or_skip() -> bool {
    if !is_root() {
        fdgrab_testkit::skip("the agent needs root");
        return false;
    }
    true
}

fn thread_count(agent: &AgentProc) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", agent.pid))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `n` fake containers, each of which stalls `times` binds on a userfaultfd
/// page nobody fills (port 85), every one answered ETIMEDOUT by the watchdog.
fn stalling_tenants(agent: &AgentProc, n: usize, times: usize) -> Vec<FakeTenant> {
    let mut tenants: Vec<FakeTenant> = (0..n)
        .map(|_| FakeTenant::start(agent, &unique("stall")))
        .collect();
    for _ in 0..times {
        for t in &mut tenants {
            let r = t.ask("uffd 85", TIMEOUT);
            assert_eq!(r["stalled"], true, "{r}");
        }
        for t in &mut tenants {
            let r = t.line(TIMEOUT);
            assert_eq!(r["uffd_errno"], libc::ETIMEDOUT, "{r}");
        }
    }
    tenants
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
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:85-86"]);
    let fds = agent.fd_count();
    let threads = thread_count(&agent);
    let mut victim = FakeTenant::start(&agent, &unique("calm"));
    let mut attackers = stalling_tenants(&agent, 20, 1);
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

/// Twelve containers stall twice each (24 reads that never return): the agent
/// gives up on at most 16 workers in all (`MAX_BLOCKED_TOTAL`), every stalled
/// bind is still answered ETIMEDOUT, its threads stay within one per container
/// plus that limit, and a neighbour keeps binding.
#[test]
fn agent_caps_blocked_workers_across_containers() {
    if !root_or_skip() {
        return;
    }
    const LIMIT: usize = 16;
    let agent = AgentProc::start(&["--allow-bind", "tcp:85-86"]);
    let fds = agent.fd_count();
    let threads = thread_count(&agent);
    let mut victim = FakeTenant::start(&agent, &unique("calm"));
    let mut attackers = stalling_tenants(&agent, 12, 2);
    assert_eq!(agent.state_number("blocked_workers"), LIMIT as u64);
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
    assert_eq!(agent.state_number("blocked_workers"), 0);
    victim.kill();
    returns(&agent, "threads", threads, thread_count);
    returns(&agent, "fds", fds, AgentProc::fd_count);
}

/// The nice values of the agent's threads named `name` (`/proc/.../stat` field 19).
fn nices(agent: &AgentProc, name: &str) -> Vec<i64> {
    std::fs::read_dir(format!("/proc/{}/task", agent.pid))
        .expect("tasks")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|tid| {
            std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", agent.pid))
                .is_ok_and(|c| c.trim() == name)
        })
        .filter_map(|tid| {
            let stat =
                std::fs::read_to_string(format!("/proc/{}/task/{tid}/stat", agent.pid)).ok()?;
            let after = &stat[stat.rfind(')')? + 2..];
            after.split_whitespace().nth(16)?.parse().ok()
        })
        .collect()
}

/// Waits until every thread named `name` runs at `nice`.
fn wait_nice(agent: &AgentProc, name: &str, nice: i64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = nices(agent, name);
        if !now.is_empty() && now.iter().all(|&n| n == nice) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: nice {now:?}, want {nice}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A container that keeps hundreds of binds queued gets a worker at nice 19
/// while it does (its calls then take CPU only when others' workers do not want
/// it), and nice 0 again once its calls come one at a time. The slow lane for
/// trickled documents runs at nice 19 from the start.
#[test]
fn agent_busy_container_worker_yields_and_recovers() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:85-86"]);
    assert_eq!(nices(&agent, "fdgrab-slowlane"), [19]);
    let mut busy = FakeTenant::start(&agent, &unique("busy"));
    assert_eq!(busy.ask("bind 127.78.9.1 86", TIMEOUT)["errno"], 0);
    assert_eq!(nices(&agent, "fdgrab-tenant-1"), [0]);
    assert_eq!(busy.ask("storm 300 79 86", TIMEOUT)["started"], 300);
    wait_nice(&agent, "fdgrab-tenant-1", 19);
    let r = busy.ask("stop", TIMEOUT);
    assert!(r["binds"].as_u64() >= Some(300), "{r}");
    // One call after a pause: not busy any more; a successor at nice 0 serves it.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(busy.ask("bind 127.78.9.2 86", TIMEOUT)["errno"], 0);
    wait_nice(&agent, "fdgrab-tenant-1", 0);
    assert_eq!(busy.ask("bind 127.78.9.3 86", TIMEOUT)["errno"], 0);
    agent
        .log
        .wait_for("busy container: its worker yields", TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A real runc or crun container starts while nine fake containers stall twice
/// each (the agent-wide limit of workers given up on is reached) and another
/// keeps 300 threads binding (its worker yields): the container's httpd still
/// gets port 80, and once everyone is gone the agent is back to its baseline
/// threads and fds.
fn real_container_among_stalls_and_a_storm(rt: fdgrab_testkit::oci::Runtime) {
    use fdgrab_testkit::oci::{Bundle, Container, NetNs};
    if !rt.usable() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:80", "--allow-bind", "tcp:85-86"]);
    let fds = agent.fd_count();
    let threads = thread_count(&agent);
    let mut stallers = stalling_tenants(&agent, 9, 2);
    let mut storm = FakeTenant::start(&agent, &unique("rstorm"));
    assert_eq!(storm.ask("storm 300 77 86", TIMEOUT)["started"], 300);
    let ns = NetNs::new();
    let bundle = Bundle::new(&fdgrab_testkit::oci::httpd_spec(&agent.socket, &ns));
    let id = unique(&format!("fdgrab-{}-amid-stalls", rt.name()));
    let mut c = Container::run(rt, &bundle, &id);
    let resp = ns
        .http_get_eventually(80, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}; {}; agent {}", c.output.text(), agent.log.text()));
    assert!(resp.contains(" 200 "), "{resp}");
    // The runtime sent its document in one message: read at once, at normal
    // priority, never by the slow lane.
    let log = agent.log.text();
    assert!(!log.contains("the slow lane reads the rest"), "{log}");
    assert_eq!(agent.state_number("blocked_workers"), 16);
    let r = storm.ask("stop", TIMEOUT);
    assert!(r["binds"].as_u64() >= Some(300), "{r}");
    storm.kill();
    for s in &mut stallers {
        s.kill();
    }
    c.kill();
    returns(&agent, "threads", threads, thread_count);
    returns(&agent, "fds", fds, AgentProc::fd_count);
}

fdgrab_testkit::per_runtime! {
    agent_real_container_among_stalls_and_a_storm => real_container_among_stalls_and_a_storm,
}
