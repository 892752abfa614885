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

/// Given-up workers agent-wide from which on every read is killable
/// (`MAX_GIVEN_UP_IN_THREAD`).
const IN_THREAD_CAP: usize = 16;

/// An agent (ports 85-86) with its baseline fds and threads, a calm container,
/// and `n` containers that each stalled `times` reads.
struct Stalled {
    agent: AgentProc,
    fds: usize,
    threads: usize,
    calm: FakeTenant,
    attackers: Vec<FakeTenant>,
}

impl Stalled {
    fn start(calm: &str, n: usize, times: usize) -> Stalled {
        let agent = AgentProc::start(&["--allow-bind", "tcp:85-86"]);
        let fds = agent.fd_count();
        let threads = thread_count(&agent);
        let calm = FakeTenant::start(&agent, &unique(calm));
        let attackers = stalling_tenants(&agent, n, times);
        Stalled {
            agent,
            fds,
            threads,
            calm,
            attackers,
        }
    }

    /// Asserts the agent holds `extra` threads over its baseline (one fewer
    /// while a thread is still being started), never more than the documented
    /// bound: each container's worker and at most one given-up one.
    fn threads_are(&self, extra: usize) {
        let now = thread_count(&self.agent);
        let bound = self.threads + 2 * (self.attackers.len() + 1);
        assert!(now <= bound, "{now} threads, bound {bound}");
        let expected = self.threads + extra;
        assert!(
            now <= expected && now + 1 >= expected,
            "{now} threads, expected {expected}"
        );
    }

    /// Ends the attackers: their threads go, the calm container keeps its
    /// `calm_threads` (its worker, and one given up on if it stalled); then
    /// ends it too, and the agent's threads and fds are back to the baseline.
    fn end(mut self, calm_threads: usize) {
        for a in &mut self.attackers {
            a.kill();
        }
        returns(
            &self.agent,
            "threads",
            self.threads + calm_threads,
            thread_count,
        );
        let blocked = self.agent.state_number("blocked_workers");
        assert_eq!(blocked, calm_threads as u64 - 1);
        self.calm.kill();
        returns(&self.agent, "threads", self.threads, thread_count);
        returns(&self.agent, "fds", self.fds, AgentProc::fd_count);
    }
}

#[test]
fn agent_twenty_stalled_tenants_leave_no_threads_or_fds() {
    if !root_or_skip() {
        return;
    }
    let mut s = Stalled::start("calm", 20, 1);
    // Each attacker now has a worker blocked and a fresh one serving it.
    s.threads_are(1 + 2 * 20);
    let r = s.calm.ask("bind 127.78.7.1 86", TIMEOUT);
    assert_eq!(r["errno"], 0, "{r}");
    s.end(1);
}

/// Eighteen containers stall twice each (36 reads that never return): each
/// gives up its first worker, which stalled in its own thread; the second
/// stall of each is read in a killable reader, killed at the deadline, and its
/// worker serves on. Every stalled bind is still answered ETIMEDOUT, the agent
/// holds one worker per container plus one given up on, and a neighbour keeps
/// binding. (Before killable readers, each second stall cost a thread too.)
#[test]
fn agent_second_stalls_are_killed_not_given_up() {
    if !root_or_skip() {
        return;
    }
    let mut s = Stalled::start("calm", 18, 2);
    assert_eq!(s.agent.state_number("blocked_workers"), 18);
    s.threads_are(1 + 2 * 18);
    // An attacker's own next honest bind is served by its worker.
    let r = s.attackers[0].ask("bind 127.78.7.3 86", Duration::from_secs(2));
    assert_eq!(r["errno"], 0, "{r}");
    let r = s.calm.ask("bind 127.78.7.2 86", TIMEOUT);
    assert_eq!(r["errno"], 0, "{r}");
    s.end(1);
}

/// Sixteen containers stall once each, which gives up on sixteen workers
/// (`MAX_GIVEN_UP_IN_THREAD`): from then on every read, of every container, is
/// killable. A victim container's first read stalls: it gets its ETIMEDOUT,
/// its worker is not given up on (no thread more), and its next honest binds
/// are served at once by that same worker.
#[test]
fn agent_at_the_in_thread_cap_every_read_is_killable() {
    if !root_or_skip() {
        return;
    }
    let mut s = Stalled::start("victim", IN_THREAD_CAP, 1);
    assert_eq!(
        s.agent.state_number("blocked_workers"),
        IN_THREAD_CAP as u64
    );
    s.threads_are(1 + 2 * IN_THREAD_CAP);
    let victim = &mut s.calm;
    assert_eq!(victim.ask("uffd 85", TIMEOUT)["stalled"], true);
    assert_eq!(victim.line(TIMEOUT)["uffd_errno"], libc::ETIMEDOUT);
    // The watchdog's tick is 100 ms; the bound leaves room for a loaded machine.
    for i in 1..=3 {
        let r = victim.ask(&format!("bind 127.86.0.{i} 86"), Duration::from_secs(2));
        assert_eq!(r["errno"], 0, "{r}");
    }
    assert_eq!(
        s.agent.state_number("blocked_workers"),
        IN_THREAD_CAP as u64
    );
    s.threads_are(1 + 2 * IN_THREAD_CAP);
    assert_eq!(agent_zombies(&s.agent), 0, "the killed reader was reaped");
    assert_eq!(agent_children(&s.agent), 1, "the victim's worker's reader");
    s.end(1);
}

/// Children of the agent (killable readers, one at most per thread that reads
/// killably) that are zombies: a killed reader not reaped.
fn agent_zombies(agent: &AgentProc) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", agent.pid))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|t| {
            std::fs::read_to_string(t.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .count()
}

/// Children of the agent: a live one is the idle reader of a worker that
/// reads killably.
fn agent_children(agent: &AgentProc) -> usize {
    fdgrab_testkit::children_count(&agent.pid.to_string())
}

/// The agent dies (SIGKILL) while a killable reader of a suspect container
/// is blocked on a page nobody fills: the reader does not outlive it (its
/// parent-death signal), so no process of the agent's is left holding its
/// memory.
#[test]
fn agent_killed_mid_read_leaves_no_reader() {
    if !root_or_skip() {
        return;
    }
    let mut agent = AgentProc::start(&["--allow-bind", "tcp:85-86"]);
    let mut t = FakeTenant::start(&agent, &unique("orphan"));
    assert_eq!(t.ask("uffd 85", TIMEOUT)["stalled"], true);
    assert_eq!(t.line(TIMEOUT)["uffd_errno"], libc::ETIMEDOUT);
    // Suspect now: the next stalled read is in a killable reader.
    assert_eq!(t.ask("uffd 85", TIMEOUT)["stalled"], true);
    let agent_task = format!("/proc/{}/task", agent.pid);
    let deadline = Instant::now() + TIMEOUT;
    let reader = loop {
        let found = std::fs::read_dir(&agent_task)
            .into_iter()
            .flatten()
            .flatten()
            .find_map(|task| {
                std::fs::read_to_string(task.path().join("children"))
                    .ok()?
                    .split_whitespace()
                    .next()?
                    .parse::<u32>()
                    .ok()
            });
        if let Some(pid) = found {
            break pid;
        }
        assert!(Instant::now() < deadline, "no killable reader started");
        std::thread::sleep(Duration::from_millis(2));
    };
    // SAFETY: a signal to the agent we started.
    assert_eq!(unsafe { libc::kill(agent.pid, libc::SIGKILL) }, 0);
    assert!(
        fdgrab_testkit::wait_gone(reader),
        "reader {reader} outlived the agent"
    );
    agent.kill();
}

/// A pids cgroup holding the agent, whose `pids.max` the test sets: the way to
/// make the agent's thread creation fail (`EAGAIN`) while it runs as root.
/// The agent goes back to the hierarchy's root cgroup when dropped.
struct PidsCgroup {
    root: std::path::PathBuf,
    dir: std::path::PathBuf,
    pid: i32,
}

impl PidsCgroup {
    /// `None` (a loud skip) when no pids controller is mounted, v1 or v2.
    fn holding(agent: &AgentProc) -> Option<PidsCgroup> {
        let root = fdgrab_testkit::pids_cgroup_root()?;
        let dir = root.join(unique("fdgrab-agent-pids"));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let cg = PidsCgroup {
            root,
            dir,
            pid: agent.pid,
        };
        cg.set("cgroup.procs", &agent.pid.to_string());
        Some(cg)
    }

    fn set(&self, file: &str, value: &str) {
        let path = self.dir.join(file);
        std::fs::write(&path, value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.root.join("cgroup.procs"), self.pid.to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The agent cannot start a thread (its pids cgroup is full) when a
/// container's read stalls: the request is still answered ETIMEDOUT, the
/// blocked worker is kept and the place it would have taken is given back.
/// Once threads can start again, the watchdog replaces the kept worker at its
/// next tick: the container's next binds are served, and it then holds exactly
/// its one own place, nothing of the pool. The watchdog retries at every tick
/// meanwhile, but the failure is logged as an error once, not ten times a
/// second for as long as threads cannot start.
#[test]
fn agent_failed_replacement_keeps_the_worker_and_gives_its_place_back() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:85-86"]);
    let fds = agent.fd_count();
    let threads = thread_count(&agent);
    let Some(cg) = PidsCgroup::holding(&agent) else {
        return;
    };
    let mut t = FakeTenant::start(&agent, &unique("nospawn"));
    assert_eq!(t.ask("bind 127.86.1.1 86", TIMEOUT)["errno"], 0);
    cg.set("pids.max", &thread_count(&agent).to_string());
    assert_eq!(t.ask("uffd 85", TIMEOUT)["stalled"], true);
    assert_eq!(t.line(TIMEOUT)["uffd_errno"], libc::ETIMEDOUT);
    agent
        .log
        .wait_for("cannot start a replacement worker", TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    // A few of the watchdog's 100 ms ticks.
    std::thread::sleep(Duration::from_millis(500));
    let errors = agent
        .log
        .text()
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("cannot start a replacement worker"))
        .count();
    assert_eq!(errors, 1, "logged as an error once");
    agent
        .log
        .wait_for("still cannot start a replacement worker", TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(agent.state_number("blocked_workers"), 0);
    cg.set("pids.max", "max");
    let r = t.ask("bind 127.86.1.2 86", TIMEOUT);
    assert_eq!(r["errno"], 0, "{r}");
    assert_eq!(agent.state_number("blocked_workers"), 1);
    t.kill();
    returns(&agent, "threads", threads, thread_count);
    returns(&agent, "fds", fds, AgentProc::fd_count);
    assert_eq!(agent.state_number("blocked_workers"), 0);
    drop(cg);
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

/// The nice value the agent runs at, which its workers start from and return to
/// (0 unless the suite itself runs under `nice`).
fn base_nice(agent: &AgentProc) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", agent.pid)).expect("agent stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let nice = after
        .split_whitespace()
        .nth(16)
        .and_then(|n| n.parse().ok())
        .expect("nice field");
    assert!(
        nice < 19,
        "the agent runs at nice {nice}: its workers cannot yield below it"
    );
    nice
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
    // The thread names itself and lowers its priority once it runs, which may
    // be after the agent's ready line.
    wait_nice(&agent, "fdgrab-slowlane", 19);
    assert_eq!(nices(&agent, "fdgrab-slowlane").len(), 1);
    let mut busy = FakeTenant::start(&agent, &unique("busy"));
    assert_eq!(busy.ask("bind 127.78.9.1 86", TIMEOUT)["errno"], 0);
    let base = base_nice(&agent);
    assert_eq!(nices(&agent, "fdgrab-tenant-1"), [base]);
    assert_eq!(busy.ask("storm 300 79 86", TIMEOUT)["started"], 300);
    wait_nice(&agent, "fdgrab-tenant-1", 19);
    let r = busy.ask("stop", TIMEOUT);
    assert!(r["binds"].as_u64() >= Some(300), "{r}");
    // One call after a pause: not busy any more; a successor at nice 0 serves it.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(busy.ask("bind 127.78.9.2 86", TIMEOUT)["errno"], 0);
    wait_nice(&agent, "fdgrab-tenant-1", base);
    assert_eq!(busy.ask("bind 127.78.9.3 86", TIMEOUT)["errno"], 0);
    agent
        .log
        .wait_for("busy container: its worker yields", TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A real runc or crun container starts while seventeen fake containers stall
/// twice each (past the in-thread cap: every read is killable) and another
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
    let mut stallers = stalling_tenants(&agent, 17, 2);
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
    assert_eq!(agent.state_number("blocked_workers"), 17);
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
    agent_real_container_with_full_slow_lane_and_audit_fifo => real_container_with_full_slow_lane_and_audit_fifo,
}

/// A client keeps the slow lane full: 70 connections that each sent the start
/// of a document and then nothing (they would sit there until their 5 s
/// deadline). A runtime whose document arrives in two reads (the listener with
/// the second) must still be served: the client holding most of the lane makes
/// room, not the newcomer.
#[test]
fn agent_split_document_served_while_the_slow_lane_is_full() {
    use std::io::Write;
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:94"]);
    let fds = agent.fd_count();
    let threads = thread_count(&agent);
    let squatters: Vec<std::os::unix::net::UnixStream> = (0..70)
        .map(|_| {
            let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connect");
            s.write_all(br#"{"ociVersion":"1.0.2","#).expect("write");
            s
        })
        .collect();
    agent
        .log
        .wait_for("clients are sending their document in pieces", TIMEOUT)
        .unwrap_or_else(|e| panic!("the slow lane never filled: {e}"));
    for i in 0..3 {
        let id = unique("split");
        let mut t = FakeTenant::spawn_split(&agent.socket, &id);
        let ready = t.line(TIMEOUT);
        assert_eq!(ready["ready"], true, "split document {i}: {ready}");
        // A bind waits in the kernel until the agent serves the listener; a
        // listener the agent dropped answers ENOSYS.
        let r = t.ask(&format!("bind 127.79.9.{} 94", i + 1), TIMEOUT);
        assert_eq!(r["errno"], 0, "split document {i} not served: {r}");
        t.kill();
    }
    drop(squatters);
    returns(&agent, "threads", threads, thread_count);
    returns(&agent, "fds", fds, AgentProc::fd_count);
}

/// A container that alternates storms and single calls makes the agent lower
/// its worker and start a successor at nice 0 again and again: every call is
/// answered once (no worker answers a call another already did), one worker
/// serves it at a time, and once it dies mid-storm (its worker at nice 19) the
/// agent is back to its baseline threads and fds.
#[test]
fn agent_alternating_storms_respawn_without_growth_or_double_answers() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:95"]);
    let base = base_nice(&agent);
    let fds = agent.fd_count();
    let threads = thread_count(&agent);
    let mut t = FakeTenant::start(&agent, &unique("flip"));
    let mut calm = FakeTenant::start(&agent, &unique("flipcalm"));
    for round in 0..5 {
        assert_eq!(t.ask("storm 200 81 95", TIMEOUT)["started"], 200);
        wait_nice(&agent, "fdgrab-tenant-1", 19);
        let r = t.ask("stop", TIMEOUT);
        assert!(r["binds"].as_u64() >= Some(200), "round {round}: {r}");
        std::thread::sleep(Duration::from_millis(60));
        let r = t.ask(&format!("lat 20 127.81.250.{} 95", round + 1), TIMEOUT);
        assert_eq!(r["errors"], 0, "round {round}: {r}");
        wait_nice(&agent, "fdgrab-tenant-1", base);
        assert_eq!(nices(&agent, "fdgrab-tenant-1").len(), 1, "one worker");
        let r = calm.ask(&format!("bind 127.81.251.{} 95", round + 1), TIMEOUT);
        assert_eq!(r["errno"], 0, "{r}");
    }
    // Dies while its worker yields, in the middle of a storm.
    assert_eq!(t.ask("storm 200 81 95", TIMEOUT)["started"], 200);
    wait_nice(&agent, "fdgrab-tenant-1", 19);
    t.kill();
    calm.kill();
    returns(&agent, "threads", threads, thread_count);
    returns(&agent, "fds", fds, AgentProc::fd_count);
    // A worker reports its release just before it exits; the agent's thread
    // may take it in a moment later.
    let deadline = Instant::now() + TIMEOUT;
    while agent.log.text().matches("no users left; released").count() < 2 {
        assert!(Instant::now() < deadline, "{}", agent.log.text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = agent.log.text();
    assert!(
        log.matches("a worker at nice 0 takes over").count() >= 5,
        "successors started: {log}"
    );
    assert!(
        !log.contains("answering a trapped call"),
        "a call answered twice or failed: {log}"
    );
    assert_eq!(agent.state_number("containers"), 0);
}

/// A real runc or crun container starts while a client squats the slow lane
/// (70 documents that never finish), the audit FIFO's one-page pipe is full and
/// its reader away, and the agent is sent SIGHUP (reload, reopen of the FIFO):
/// the httpd gets port 80, and once the reader is back the container's audit
/// line arrives whole without any further decision.
fn real_container_with_full_slow_lane_and_audit_fifo(rt: fdgrab_testkit::oci::Runtime) {
    use fdgrab_testkit::oci::{Bundle, Container, NetNs, TempDir};
    use std::io::Write;
    if !rt.usable() {
        return;
    }
    let dir = TempDir::new("fdgrab-real-fifo");
    let fifo = dir.path().join("audit.fifo");
    let socket = dir.path().join("agent.sock");
    let mut reader = fdgrab_testkit::oci::one_page_fifo_reader(&fifo);
    let agent = AgentProc::start_at(
        dir,
        &socket,
        &fifo,
        &["--allow-bind", "tcp:80", "--allow-bind", "tcp:97"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut filler = FakeTenant::start(&agent, &unique("rfill"));
    let r = filler.ask("lat 30 127.83.0.1 97", TIMEOUT);
    assert_eq!(r["errors"], 0, "{r}");
    let squatters: Vec<std::os::unix::net::UnixStream> = (0..70)
        .map(|_| {
            let mut s = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
            s.write_all(br#"{"ociVersion":"1.0.2","#).expect("write");
            s
        })
        .collect();
    let pid = rustix::process::Pid::from_raw(agent.pid).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("SIGHUP");
    let ns = NetNs::new();
    let bundle = Bundle::new(&fdgrab_testkit::oci::httpd_spec(&socket, &ns));
    let id = unique(&format!("fdgrab-{}-fifo", rt.name()));
    let mut c = Container::run(rt, &bundle, &id);
    let resp = ns
        .http_get_eventually(80, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}; {}; agent {}", c.output.text(), agent.log.text()));
    assert!(resp.contains(" 200 "), "{resp}");
    agent
        .log
        .wait_for("policy reloaded", TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut text = Vec::new();
    let found = |text: &[u8]| {
        String::from_utf8_lossy(text).lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                v["container_id"] == id.as_str() && v["port"] == 80 && v["errno"] == 0
            })
        })
    };
    fdgrab_testkit::oci::read_until(&mut reader, &mut text, found);
    assert!(
        found(&text),
        "no audit line for {id}'s port 80: {}",
        String::from_utf8_lossy(&text)
    );
    for l in String::from_utf8_lossy(&text).lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("torn {l:?}: {e}"));
    }
    assert_eq!(agent.state_number("audit_lines_dropped"), 0);
    drop(squatters);
    filler.kill();
    c.kill();
}

/// A container stalls once (its worker, blocked in its own thread, is given up
/// on and replaced), then again: now suspect, it reads in a killable reader,
/// which is killed at the deadline, so its worker is not given up on. Its next
/// honest bind is served by that same worker (no thread more), and the killed
/// reader left no child of the agent behind (no zombie).
#[test]
fn agent_suspect_container_serves_on_after_a_killed_read() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:85-86"]);
    let fds = agent.fd_count();
    let threads = thread_count(&agent);
    let mut t = FakeTenant::start(&agent, &unique("suspect"));
    assert_eq!(t.ask("uffd 85", TIMEOUT)["stalled"], true);
    assert_eq!(t.line(TIMEOUT)["uffd_errno"], libc::ETIMEDOUT);
    assert_eq!(t.ask("bind 127.84.0.1 86", TIMEOUT)["errno"], 0);
    assert_eq!(agent.state_number("blocked_workers"), 1);
    let after_first = thread_count(&agent);
    assert_eq!(after_first, threads + 2, "its worker and the given-up one");
    for round in 0..3 {
        assert_eq!(t.ask("uffd 85", TIMEOUT)["stalled"], true);
        assert_eq!(t.line(TIMEOUT)["uffd_errno"], libc::ETIMEDOUT);
        let r = t.ask(&format!("bind 127.84.1.{} 86", round + 1), TIMEOUT);
        assert_eq!(r["errno"], 0, "{r}");
        assert_eq!(thread_count(&agent), after_first, "no thread more");
        assert_eq!(agent.state_number("blocked_workers"), 1);
        assert_eq!(agent_zombies(&agent), 0, "the killed reader was reaped");
        assert_eq!(agent_children(&agent), 1, "a fresh reader for its worker");
    }
    let timeouts = agent
        .audit_lines()
        .iter()
        .filter(|l| l["errno"] == libc::ETIMEDOUT)
        .count();
    assert_eq!(timeouts, 4, "one line per stalled bind");
    t.kill();
    returns(&agent, "threads", threads, thread_count);
    returns(&agent, "fds", fds, AgentProc::fd_count);
    assert_eq!(agent.state_number("blocked_workers"), 0);
}

/// 2,000 connections that each send the start of a document, as fast as the
/// test can open them: the agent's descriptors stay bounded (its table of
/// connections being read, the slow lane's 64 and what the slow lane has yet
/// to take in), a neighbour keeps binding, a split document sent at the end is
/// served, and the fds come back once the clients are gone.
#[test]
fn agent_flood_of_partial_documents_stays_bounded() {
    use std::io::Write;
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:99"]);
    let fds = agent.fd_count();
    let mut calm = FakeTenant::start(&agent, &unique("floodcalm"));
    let mut peak = 0;
    let mut held = Vec::new();
    for i in 0..2000 {
        if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&agent.socket) {
            let _ = s.write_all(br#"{"ociVersion":"1.0.2","#);
            held.push(s);
        }
        if i % 100 == 0 {
            peak = peak.max(agent.fd_count());
            let r = calm.ask(&format!("bind 127.86.0.{} 99", i / 100 + 1), TIMEOUT);
            assert_eq!(r["errno"], 0, "{r}");
        }
    }
    peak = peak.max(agent.fd_count());
    // The table (512 at the default limit), the slow lane and its backlog.
    assert!(
        peak < fds + 512 + 64 + 128 + 16,
        "agent fds peaked at {peak} (baseline {fds})"
    );
    let id = unique("floodsplit");
    let mut t = FakeTenant::spawn_split(&agent.socket, &id);
    let ready = t.line(TIMEOUT);
    assert_eq!(ready["ready"], true, "split document refused: {ready}");
    assert_eq!(t.ask("bind 127.86.1.1 99", TIMEOUT)["errno"], 0);
    t.kill();
    drop(held);
    calm.kill();
    returns(&agent, "fds", fds, AgentProc::fd_count);
}

/// A container's worker is lowered by a storm, then stalls on a userfaultfd
/// page while lowered: the watchdog answers ETIMEDOUT and starts a successor
/// (at nice 0, the agent's thread's), calm binds are served by it, and when the
/// container dies both the stuck worker and its successor are gone.
#[test]
fn agent_stall_while_lowered_is_replaced_at_nice_0() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:85-86"]);
    let fds = agent.fd_count();
    let threads = thread_count(&agent);
    let mut t = FakeTenant::start(&agent, &unique("lowstall"));
    // The worker comes back to nice 0 (a successor replaces it) at the first
    // call after a calm window; on a loaded machine the storm's last binds can
    // be that call. Once the storm has stopped, the next call is the stall
    // itself, so a worker still lowered then stalls lowered.
    let mut lowered = false;
    for _ in 0..5 {
        assert_eq!(t.ask("storm 200 87 86", TIMEOUT)["started"], 200);
        wait_nice(&agent, "fdgrab-tenant-1", 19);
        let r = t.ask("stop", TIMEOUT);
        assert!(r["binds"].as_u64() >= Some(200), "{r}");
        if nices(&agent, "fdgrab-tenant-1") == [19] {
            lowered = true;
            break;
        }
    }
    assert!(
        lowered,
        "the worker was never still lowered once its storm stopped"
    );
    assert_eq!(t.ask("uffd 85", TIMEOUT)["stalled"], true);
    assert_eq!(t.line(TIMEOUT)["uffd_errno"], libc::ETIMEDOUT);
    for i in 0..5 {
        let r = t.ask(&format!("bind 127.87.250.{} 86", i + 1), TIMEOUT);
        assert_eq!(r["errno"], 0, "{r}");
    }
    let mut n = nices(&agent, "fdgrab-tenant-1");
    n.sort_unstable();
    assert_eq!(
        n,
        [base_nice(&agent), 19],
        "the stuck worker and its successor"
    );
    t.kill();
    returns(&agent, "threads", threads, thread_count);
    returns(&agent, "fds", fds, AgentProc::fd_count);
    assert_eq!(agent.state_number("blocked_workers"), 0);
}

/// Copies of every userfaultfd `pid` holds (`pidfd_getfd`): while the test
/// keeps them, reads blocked on that process's unfilled pages stay blocked
/// after it exits, as when the page's filler lives outside the container
/// (another container of the pod that was passed the userfaultfd).
fn hold_userfaultfds(pid: i32) -> Vec<std::os::fd::OwnedFd> {
    let target = rustix::process::Pid::from_raw(pid).expect("pid");
    let pidfd = rustix::process::pidfd_open(target, rustix::process::PidfdFlags::empty())
        .expect("pidfd_open");
    let held: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| {
            let e = e.ok()?;
            let link = std::fs::read_link(e.path()).ok()?;
            (link.to_str()? == "anon_inode:[userfaultfd]").then_some(())?;
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            rustix::process::pidfd_getfd(&pidfd, fd, rustix::process::PidfdGetfdFlags::empty()).ok()
        })
        .collect();
    assert!(!held.is_empty(), "no userfaultfd in {pid}");
    held
}

/// A tenant restarts stalling containers again and again, each one's
/// userfaultfd kept alive outside it (the test holds copies, as a sidecar
/// would), so no read blocked in a worker's own thread ever returns: 40
/// containers, 10 at a time. Reads in a worker's own thread stop at
/// `MAX_GIVEN_UP_IN_THREAD` given up agent-wide; every read after that is in a
/// killable reader, killed at the deadline. So the agent's threads stay within
/// the documented bound (a worker per living container, plus at most
/// `MAX_GIVEN_UP_IN_THREAD` plus the in-thread reads still in flight when the
/// cap was reached, here at most 9), whatever the number of restarts (before: two threads
/// per restart, without end), and a fresh honest container is served at once.
#[test]
fn agent_restarted_stalling_containers_leave_a_bounded_number_of_threads() {
    if !root_or_skip() {
        return;
    }
    const AT_ONCE: usize = 10;
    let agent = AgentProc::start(&["--allow-bind", "tcp:85-86"]);
    let fds = agent.fd_count();
    let threads = thread_count(&agent);
    let bound = threads + AT_ONCE + IN_THREAD_CAP + (AT_ONCE - 1);
    let mut held = Vec::new();
    for _round in 0..4 {
        let mut tenants = stalling_tenants(&agent, AT_ONCE, 1);
        let now = thread_count(&agent);
        assert!(now <= bound, "{now} threads, bound {bound}");
        for t in &mut tenants {
            held.extend(hold_userfaultfds(t.pid));
            t.kill();
        }
    }
    // The dead containers are released; their killable workers go with them.
    let dead_bound = threads + IN_THREAD_CAP + (AT_ONCE - 1);
    let deadline = Instant::now() + TIMEOUT;
    while thread_count(&agent) > dead_bound && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
    }
    let now = thread_count(&agent);
    assert!(now <= dead_bound, "{now} threads, bound {dead_bound}");
    let given_up = agent.state_number("blocked_workers") as usize;
    assert!(
        (IN_THREAD_CAP..IN_THREAD_CAP + AT_ONCE).contains(&given_up),
        "{given_up} given up"
    );
    let mut fresh = FakeTenant::start(&agent, &unique("fresh"));
    for i in 1..=3 {
        let r = fresh.ask(&format!("bind 127.86.2.{i} 86"), Duration::from_secs(2));
        assert_eq!(r["errno"], 0, "{r}");
    }
    assert_eq!(agent_zombies(&agent), 0, "every killed reader was reaped");
    assert_eq!(
        agent_children(&agent),
        1,
        "the fresh container's worker's reader"
    );
    fresh.kill();
    // The outside holder lets go: every read blocked in a thread returns.
    drop(held);
    returns(&agent, "threads", threads, thread_count);
    returns(&agent, "fds", fds, AgentProc::fd_count);
    assert_eq!(agent.state_number("blocked_workers"), 0);
}

/// A read that outlives the deadline and then fails: the caller unmaps the
/// page and closes the userfaultfd once it has its ETIMEDOUT, so the given-up
/// worker's read ends in EFAULT. The watchdog answered the request; the worker
/// must not record a decision of its own for it (the kernel judging a bad
/// address) that was never sent: one request, one audit line, ETIMEDOUT.
#[test]
fn agent_read_failing_after_the_deadline_is_audited_once() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:85-86"]);
    let mut t = FakeTenant::start(&agent, &unique("fault"));
    let r = t.ask("uffd-fault 85", TIMEOUT);
    assert_eq!(r["stalled"], true, "{r}");
    let r = t.line(TIMEOUT);
    assert_eq!(r["uffd_errno"], libc::ETIMEDOUT, "{r}");
    // The given-up worker's read has returned once its place is back.
    returns(&agent, "blocked workers", 0, |a| {
        a.state_number("blocked_workers") as usize
    });
    // A bind after it, so that every line of the stalled one is written.
    assert_eq!(t.ask("bind 127.86.3.1 86", TIMEOUT)["errno"], 0);
    let audit = agent.audit_lines();
    let stalled: Vec<_> = audit.iter().filter(|l| l["port"] != 86).collect();
    assert_eq!(stalled.len(), 1, "one line for the stalled bind: {audit:?}");
    assert_eq!(stalled[0]["errno"], libc::ETIMEDOUT, "{audit:?}");
}

/// Churn near the in-thread cap: 14 containers hold 14 given-up workers for
/// good; four more stall two reads at once, again and again, each read
/// returning (EFAULT) 1.5 s after its caller has its ETIMEDOUT, so that a
/// container's first read is still blocked when its second outlives the
/// deadline, and a round's reads are still blocked while the next round
/// stalls. After every round the threads are within the documented bound; at
/// the end every churner's bind is served and the given-up workers are exactly
/// the 14 holders', none leaked or counted twice.
#[test]
fn agent_churning_stalls_near_the_cap_leak_no_place() {
    if !root_or_skip() {
        return;
    }
    let holders = IN_THREAD_CAP - 2;
    let s = Stalled::start("calm", holders, 2);
    let mut churners: Vec<FakeTenant> = (0..4)
        .map(|_| FakeTenant::start(&s.agent, &unique("churn")))
        .collect();
    let bound = s.threads + 2 * (holders + churners.len() + 1);
    for _round in 0..3 {
        for c in &mut churners {
            c.send("uffd-fault 85 1500");
            c.send("uffd-fault 85 1500");
        }
        // Two "stalled" and two answers each, in any order: with two reads
        // of the last round still blocked, a bind is answered without a read.
        for c in &mut churners {
            let lines: Vec<_> = (0..4).map(|_| c.line(TIMEOUT)).collect();
            let stalled = lines.iter().filter(|l| l["stalled"] == true).count();
            let timed_out = lines
                .iter()
                .filter(|l| l["uffd_errno"] == libc::ETIMEDOUT)
                .count();
            assert_eq!((stalled, timed_out), (2, 2), "{lines:?}");
        }
        let now = thread_count(&s.agent);
        assert!(now <= bound, "{now} threads, bound {bound}");
    }
    returns(&s.agent, "blocked workers", holders, |a| {
        a.state_number("blocked_workers") as usize
    });
    for (i, c) in churners.iter_mut().enumerate() {
        let r = c.ask(&format!("bind 127.86.4.{} 86", i + 1), TIMEOUT);
        assert_eq!(r["errno"], 0, "{r}");
    }
    for c in &mut churners {
        c.kill();
    }
    s.end(1);
}

/// A suspect container (its worker was given up on once) binds while the
/// agent's pids cgroup is full, so no killable reader can start: the bind is
/// still answered at once (the kernel judges it, audited with the reason), the
/// agent starts no thread and gives up on
/// no worker (no read in the worker's own thread for a suspect container), and
/// once tasks can start again its binds are granted.
#[test]
fn agent_suspect_container_with_no_room_for_a_reader_is_answered() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:85-86"]);
    let Some(cg) = PidsCgroup::holding(&agent) else {
        return;
    };
    let mut t = FakeTenant::start(&agent, &unique("noreader"));
    assert_eq!(t.ask("uffd 85", TIMEOUT)["stalled"], true);
    assert_eq!(t.line(TIMEOUT)["uffd_errno"], libc::ETIMEDOUT);
    assert_eq!(agent.state_number("blocked_workers"), 1);
    let threads = thread_count(&agent);
    // Every task the cgroup may hold is there: no reader can start.
    let tasks = thread_count(&agent) + agent_children(&agent);
    cg.set("pids.max", &tasks.to_string());
    let r = t.ask("bind 127.86.5.1 86", TIMEOUT);
    assert!(r["errno"].is_i64(), "answered: {r}");
    let lines = agent.audit_lines();
    assert!(
        lines.iter().any(|l| l["decision"] == "continue"
            && l["decided_by"] == "kernel"
            && l["reason"] == "cannot read the caller's memory"),
        "judged by the kernel, with the reason: {lines:?}"
    );
    assert_eq!(thread_count(&agent), threads, "no thread more");
    assert_eq!(
        agent.state_number("blocked_workers"),
        1,
        "no worker given up"
    );
    cg.set("pids.max", "max");
    let r = t.ask("bind 127.86.3.2 86", TIMEOUT);
    assert_eq!(r["errno"], 0, "{r}");
    assert_eq!(agent_zombies(&agent), 0);
    t.kill();
    drop(cg);
}

/// A FUSE file system whose daemon (a thread of this test) takes every read
/// of its `page` file and holds it; `None` after a loud skip.
fn held_fuse(tag: &str) -> Option<fdgrab_testkit::fuse::FuseFile> {
    let Some(fs) = fdgrab_testkit::fuse::FuseFile::mount(tag) else {
        fdgrab_testkit::skip("cannot mount a FUSE file system here");
        return None;
    };
    fs.hold_reads();
    Some(fs)
}

/// Buried readers a container may leave (`MAX_BURIED_PER_TENANT`).
const BURIED_PER_CONTAINER: usize = 4;

/// Waits until the agent's state dump says `name` is `want`. A reader is
/// buried 20 ms after its deadline (the kill's grace), and the watchdog may
/// answer the bind before that: a count read right after an answer may lag.
fn state_becomes(agent: &AgentProc, name: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.state_number(name) != want {
        assert!(Instant::now() < deadline, "{name} never became {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A suspect container binds with its sockaddr on a page of a FUSE file whose
/// daemon has taken the read and never answers: its killable reader, killed
/// at the deadline, cannot die (the kernel waits out a request its daemon
/// took). The bind is answered ETIMEDOUT, the reader is buried, and the
/// container's own worker serves its next honest bind at once (before, the
/// worker waited in the reap for as long as the daemon did, and the
/// container's binds with it). Its neighbour is served throughout. The
/// container may leave 4 such readers; then each of its binds is answered
/// ETIMEDOUT at once, without a reader (the daemon sees no new read). When
/// the daemon answers, every buried reader is reaped (no zombie, no child but
/// the worker's idle reader, threads back) and the container is served again.
#[test]
fn agent_container_stuck_on_a_hung_fuse_page_blocks_nobody() {
    if !root_or_skip() {
        return;
    }
    // Dropped before the agent, which cannot exit while its readers wait
    // for the file system.
    let mut s = Stalled::start("neighbour", 1, 1);
    let Some(fs) = held_fuse("agent-stuck") else {
        return;
    };
    let page_file = fs.page();
    let attacker = &mut s.attackers[0];
    for page in 0..BURIED_PER_CONTAINER {
        assert_eq!(
            attacker.ask(&format!("mmap-bind {page_file} {page} 85"), TIMEOUT)["stalled"],
            true
        );
        let r = attacker.line(TIMEOUT);
        assert_eq!(r["mmap_errno"], libc::ETIMEDOUT, "{r}");
        assert_eq!(fs.held_reads(), page + 1, "the daemon took the read");
        // Its own worker serves on (the watchdog's tick is 100 ms; the bound
        // leaves room for a loaded machine) while it has readers to spare,
        // and so does the neighbour's.
        if page + 1 < BURIED_PER_CONTAINER {
            let r = attacker.ask(&format!("bind 127.87.1.{page} 86"), Duration::from_secs(2));
            assert_eq!(r["errno"], 0, "{r}");
        }
        let r = s
            .calm
            .ask(&format!("bind 127.87.2.{page} 86"), Duration::from_secs(2));
        assert_eq!(r["errno"], 0, "{r}");
    }
    let buried = BURIED_PER_CONTAINER as u64;
    state_becomes(&s.agent, "buried_readers", buried);
    // Past its share: every read of it that needs a reader is answered
    // ETIMEDOUT at once, and none reaches the daemon; the neighbour is served.
    let taken = fs.reads_taken();
    assert_eq!(
        attacker.ask(&format!("mmap-bind {page_file} 9 85"), TIMEOUT)["stalled"],
        true
    );
    let r = attacker.line(TIMEOUT);
    assert_eq!(r["mmap_errno"], libc::ETIMEDOUT, "{r}");
    let r = attacker.ask("bind 127.87.1.9 86", Duration::from_secs(2));
    assert_eq!(r["errno"], libc::ETIMEDOUT, "{r}");
    assert_eq!(fs.reads_taken(), taken, "no reader started past the share");
    assert_eq!(s.agent.state_number("buried_readers"), buried);
    let r = s.calm.ask("bind 127.87.2.9 86", Duration::from_secs(2));
    assert_eq!(r["errno"], 0, "{r}");
    // The daemon answers: every buried reader dies and is reaped, and the
    // container is served again.
    assert_eq!(fs.release_reads(), BURIED_PER_CONTAINER);
    state_becomes(&s.agent, "buried_readers", 0);
    assert_eq!(agent_zombies(&s.agent), 0, "the buried readers were reaped");
    let r = s.attackers[0].ask("bind 127.87.1.10 86", Duration::from_secs(2));
    assert_eq!(r["errno"], 0, "{r}");
    assert_eq!(
        agent_children(&s.agent),
        1,
        "the attacker's worker's reader"
    );
    s.threads_are(1 + 2);
    s.end(1);
    drop(fs);
}

/// As above, but the FUSE daemon dies instead of answering: the buried
/// readers end with its connection and are reaped.
#[test]
fn agent_buried_readers_go_when_the_fuse_daemon_dies() {
    if !root_or_skip() {
        return;
    }
    let mut s = Stalled::start("neighbour", 1, 1);
    let Some(mut fs) = held_fuse("agent-dies") else {
        return;
    };
    let page_file = fs.page();
    for page in 0..2 {
        let attacker = &mut s.attackers[0];
        assert_eq!(
            attacker.ask(&format!("mmap-bind {page_file} {page} 85"), TIMEOUT)["stalled"],
            true
        );
        assert_eq!(attacker.line(TIMEOUT)["mmap_errno"], libc::ETIMEDOUT);
    }
    state_becomes(&s.agent, "buried_readers", 2);
    fs.kill_server();
    state_becomes(&s.agent, "buried_readers", 0);
    assert_eq!(agent_zombies(&s.agent), 0);
    let r = s.calm.ask("bind 127.87.3.1 86", Duration::from_secs(2));
    assert_eq!(r["errno"], 0, "{r}");
    s.end(1);
    drop(fs);
}

/// The agent's threads whose `/proc/PID/task/TID` directory passes `pred`.
fn agent_threads_where(agent: &AgentProc, pred: impl Fn(&std::path::Path) -> bool) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", agent.pid))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|t| pred(&t.path()))
        .count()
}

/// The agent's threads closing copies of callers' files (`fdgrab-close`).
fn closer_threads(agent: &AgentProc) -> usize {
    agent_threads_where(agent, |t| {
        std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == "fdgrab-close")
    })
}

/// Closing the agent's copy of a FUSE file is a `FLUSH` its server may never
/// answer, so it is made on a thread of its own, of which one container may
/// hold 4 (`MAX_CLOSING_PER_OWNER`). A container binds a FUSE file from 24
/// threads while the server holds every flush: it fills its 4 places, and
/// its later binds are the kernel's (no copy taken). A neighbour's bind of a FUSE file is
/// still answered (ENOTSOCK, its copy closed on a thread of its own), and so
/// are its socket binds. (Before, the 16 places were agent-wide: the attacker
/// took them all, and the neighbour's close then waited on its worker, with
/// its bind, for as long as the server held it.) Once the server answers,
/// every close finishes and the attacker is served again.
#[test]
fn agent_container_holding_fuse_flushes_leaves_its_neighbour_closes() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:87-88"]);
    let threads = thread_count(&agent);
    // Dropped before the agent, which cannot exit while its closes wait for
    // the file system.
    let Some(fs) = fdgrab_testkit::fuse::FuseFile::mount("agent-flush") else {
        fdgrab_testkit::skip("cannot mount a FUSE file system here");
        return;
    };
    fs.hold_flushes();
    let mut attacker = FakeTenant::start(&agent, &unique("flusher"));
    let mut neighbour = FakeTenant::start(&agent, &unique("neighbour"));
    let file = fs.file();
    assert_eq!(
        attacker.ask(&format!("file-bind {file} 87 24"), TIMEOUT)["started"],
        24
    );
    // Its places fill (one bind every 50 ms); then its worker waits in the
    // fifth close.
    let deadline = Instant::now() + Duration::from_secs(20);
    while closer_threads(&agent) < 4 {
        assert!(
            Instant::now() < deadline,
            "the attacker's closes never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Room for every one of the 24 to have taken a place if it could (the
    // former agent-wide pool: 16).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(closer_threads(&agent), 4, "the attacker holds its 4 places");
    let r = neighbour.ask(&format!("file-bind {file} 88"), TIMEOUT);
    assert_eq!(r["errno"], libc::ENOTSOCK, "{r}");
    let r = neighbour.ask("bind 127.88.0.1 88", Duration::from_secs(2));
    assert_eq!(r["errno"], 0, "{r}");
    assert!(
        closer_threads(&agent) <= 5,
        "the neighbour's close on a thread"
    );
    // The server answers: every close ends, the attacker is served again.
    fs.release_flushes();
    returns(&agent, "threads", threads + 2, thread_count);
    assert_eq!(closer_threads(&agent), 0);
    let r = attacker.ask("bind 127.88.0.2 88", TIMEOUT);
    assert_eq!(r["errno"], 0, "{r}");
    attacker.kill();
    neighbour.kill();
    returns(&agent, "threads", threads, thread_count);
    drop(fs);
}

/// A pod's readers left stuck past its share spend nobody else's. The share
/// is checked when a reader starts, so a pod whose 8 containers each hold a
/// reader started while none was buried and stall all 8 leaves 8 buried, twice its
/// share. With `--max-pods 2` (8 in all before pods with none stuck are
/// limited) that one pod alone reached the bound: a second pod, holding 1 of
/// its own 4, had its next bind answered ETIMEDOUT at once without a read.
/// Now each pod counts towards the bound up to its share only: the second pod
/// is served, and the big pod is still refused past its share.
#[test]
fn agent_pod_past_its_share_by_concurrent_readers_denies_no_other_pod() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:85-86", "--max-pods", "2"]);
    let Some(fs) = held_fuse("agent-wide-pod") else {
        return;
    };
    let page_file = fs.page();
    let mut victim = stalling_tenant(&agent, &[("FAKE_TENANT_POD", "victim")]);
    fuse_stalls(&mut victim, &page_file, 0, 1);
    state_becomes(&agent, "buried_readers", 1);
    const CONTAINERS: usize = 8;
    let mut big: Vec<FakeTenant> = (0..CONTAINERS)
        .map(|_| stalling_tenant(&agent, &[("FAKE_TENANT_POD", "big")]))
        .collect();
    // Each worker starts its reader now, while the pod holds none: the
    // stalls below need no new reader, however slowly they are asked.
    for (i, t) in big.iter_mut().enumerate() {
        let r = t.ask(&format!("bind 127.87.91.{} 86", i + 1), TIMEOUT);
        assert_eq!(r["errno"], 0, "{r}");
    }
    fuse_stall_all(&mut big, &page_file, 10, 1);
    state_becomes(&agent, "buried_readers", 1 + CONTAINERS as u64);
    let taken = fs.reads_taken();
    let r = victim.ask("bind 127.87.90.1 86", TIMEOUT);
    assert_eq!(r["errno"], 0, "the other pod is below its share: {r}");
    let r = big[0].ask("bind 127.87.90.2 86", TIMEOUT);
    assert_eq!(r["errno"], libc::ETIMEDOUT, "past its share: {r}");
    assert_eq!(fs.reads_taken(), taken, "no reader past the pod's share");
    assert_eq!(fs.release_reads(), 1 + CONTAINERS);
    state_becomes(&agent, "buried_readers", 0);
    for t in &mut big {
        t.kill();
    }
    assert_eq!(agent_zombies(&agent), 0);
    drop(fs);
}

/// A suspect container makes `n` binds whose sockaddr sits on pages `first..`
/// of the held FUSE file, each answered ETIMEDOUT.
fn fuse_stalls(t: &mut FakeTenant, page_file: &str, first: usize, n: usize) {
    fuse_stall_all(std::slice::from_mut(t), page_file, first, n);
}

/// A container that fills its share of buried readers and is restarted (a new
/// container of the same pod, as the kubelet makes) gets no fresh share: the
/// places go with the pod. The restarted container's stuck bind is answered
/// at once without a reader, while a container of another pod still gets
/// one. (Keyed by container, each restart of a pod whose FUSE daemon holds
/// requests for ever took 4 more places, up to the agent-wide cap.)
#[test]
fn agent_restarted_container_keeps_its_pods_share_of_buried_readers() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:85-86"]);
    let Some(fs) = held_fuse("agent-pod") else {
        return;
    };
    let page_file = fs.page();
    let pod = [("FAKE_TENANT_POD", "restarting")];
    let mut first = stalling_tenant(&agent, &pod);
    fuse_stalls(&mut first, &page_file, 0, BURIED_PER_CONTAINER);
    first.kill();
    state_becomes(&agent, "buried_readers", BURIED_PER_CONTAINER as u64);
    let mut again = stalling_tenant(&agent, &pod);
    let taken = fs.reads_taken();
    fuse_stalls(&mut again, &page_file, 10, 1);
    assert_eq!(
        fs.reads_taken(),
        taken,
        "no reader for the restarted container"
    );
    let mut other = stalling_tenant(&agent, &[("FAKE_TENANT_POD", "another")]);
    fuse_stalls(&mut other, &page_file, 20, 1);
    assert_eq!(
        fs.reads_taken(),
        taken + 1,
        "another pod's reader took the read"
    );
    fs.release_reads();
    state_becomes(&agent, "buried_readers", 0);
    let r = again.ask("bind 127.87.4.1 86", Duration::from_secs(2));
    assert_eq!(r["errno"], 0, "{r}");
    drop(fs);
}

/// A fake container of the pod `env` names, made suspect by one stalled read
/// (a userfaultfd page): its later reads are killable.
fn stalling_tenant(agent: &AgentProc, env: &[(&str, &str)]) -> FakeTenant {
    let mut t = FakeTenant::start_with_env(agent, &unique("pod"), env);
    assert_eq!(t.ask("uffd 85", TIMEOUT)["stalled"], true);
    assert_eq!(t.line(TIMEOUT)["uffd_errno"], libc::ETIMEDOUT);
    t
}

/// A container past its share of buried readers has each bind answered
/// ETIMEDOUT at once, without a read, so it can have hundreds answered a
/// second. The agent warns of its timeouts at most every 10 s per container
/// (with the count answered since), not once per bind: before, each bind
/// wrote a warning at the default log level, and a container binding nonstop
/// flooded the agent's log (and a journal's per-service rate limit then
/// dropped every other container's lines with it). Its neighbour's timeout
/// is still warned of at once.
#[test]
fn agent_stuck_container_binding_nonstop_does_not_flood_the_log() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:85-86"]);
    let Some(fs) = held_fuse("agent-flood") else {
        return;
    };
    let page_file = fs.page();
    let mut t = stalling_tenant(&agent, &[]);
    fuse_stalls(&mut t, &page_file, 0, BURIED_PER_CONTAINER);
    state_becomes(&agent, "buried_readers", BURIED_PER_CONTAINER as u64);
    let r = t.ask("lat 300 127.87.6.1 86", TIMEOUT);
    assert_eq!(r["errors"], 300, "{r}");
    assert_eq!(r["first_errno"], libc::ETIMEDOUT, "{r}");
    let warned = |log: &str| log.matches("bind answered ETIMEDOUT").count();
    let log = agent.log.text();
    // One for the first stall; the rest (4 buried reads, 300 binds) within
    // 10 s of it.
    assert!(warned(&log) <= 2, "{} warnings", warned(&log));
    let before = warned(&agent.log.text());
    let mut other = stalling_tenant(&agent, &[]);
    let deadline = Instant::now() + TIMEOUT;
    while warned(&agent.log.text()) == before {
        assert!(
            Instant::now() < deadline,
            "the neighbour's timeout is warned of at once"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    fs.release_reads();
    state_becomes(&agent, "buried_readers", 0);
    other.kill();
    drop(fs);
}

/// The agent dies (SIGKILL: a crash, or systemd's final kill on a stop) while
/// a reader is buried in a FUSE read its daemon holds. The agent exits at
/// once all the same; the reader, which no signal ends, outlives it, but
/// holds none of its descriptors (it dropped its share of the table when it
/// started), so an agent started again on the same socket finds the old one
/// stale, replaces it and serves containers while the reader is still held.
/// (A reader sharing the table kept the old listening socket open: the new
/// agent took it for a live agent's and would not start.) The reader goes
/// once the daemon answers.
#[test]
fn agent_restarted_while_a_reader_is_buried_starts_and_serves() {
    if !root_or_skip() {
        return;
    }
    let args = ["--allow-bind", "tcp:85-86"];
    let mut agent = AgentProc::start(&args);
    let Some(fs) = held_fuse("agent-restart") else {
        return;
    };
    let page_file = fs.page();
    let mut t = stalling_tenant(&agent, &[]);
    fuse_stalls(&mut t, &page_file, 0, 1);
    state_becomes(&agent, "buried_readers", 1);
    // The worker's reader was retired with the stall: the one child left is
    // the buried reader.
    let kids: Vec<u32> = std::fs::read_dir(format!("/proc/{}/task", agent.pid))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|task| {
            std::fs::read_to_string(task.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    assert_eq!(kids.len(), 1, "{kids:?}");
    let reader = kids[0];
    // SAFETY: a signal to the agent we started.
    assert_eq!(unsafe { libc::kill(agent.pid, libc::SIGKILL) }, 0);
    let exited = fdgrab_testkit::wait_timeout(&mut agent.child, TIMEOUT);
    assert!(exited.is_ok(), "the agent did not exit: {exited:?}");
    let fds = std::fs::read_dir(format!("/proc/{reader}/fd")).map(|d| d.count());
    assert_eq!(fds.ok(), Some(0), "the buried reader holds no descriptor");
    let again = AgentProc::start_at(
        fdgrab_testkit::oci::TempDir::new("fdgrab-agent-again"),
        &agent.socket,
        &agent.audit,
        &args,
    )
    .unwrap_or_else(|e| panic!("the agent did not start again: {e}"));
    let mut c = FakeTenant::start(&again, &unique("after-restart"));
    let r = c.ask("bind 127.87.7.1 86", Duration::from_secs(5));
    assert_eq!(r["errno"], 0, "{r}");
    assert_eq!(fs.release_reads(), 1);
    assert!(
        fdgrab_testkit::wait_gone(reader),
        "the reader went once the daemon answered"
    );
    c.kill();
    t.kill();
    drop(again);
    drop(fs);
}

/// The agent's worker threads (`fdgrab-tenant-N`) in state `D`: waiting in
/// the kernel for something no signal ends (a FUSE request).
fn workers_in_d(agent: &AgentProc) -> usize {
    agent_threads_where(agent, |t| {
        let stat = std::fs::read_to_string(t.join("stat")).unwrap_or_default();
        // "TID (COMM) STATE ...": the state follows the comm's last ')'.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        stat.contains("(fdgrab-tenant-") && after.trim_start().starts_with('D')
    })
}

/// A pod whose FUSE server holds every flush fills its 4 closing places;
/// then its containers, one after another (as restarts make them), each
/// bind the FUSE file again and again. Past the pod's places the agent takes
/// no copy of a caller's file (the kernel answers, ENOTSOCK), so no close of
/// one can hold a container's worker: every bind is answered and no worker
/// waits in the kernel. (Before, each container's fifth such close was made
/// on its worker, which then waited for the server for good, with that
/// container's binds: a thread per restart, without bound.)
#[test]
fn agent_restarted_container_holding_fuse_flushes_leaks_no_worker() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:87-88"]);
    let threads = thread_count(&agent);
    // Dropped after the file system (declared before it), even on a failed
    // assertion: a container's own close of the FUSE file, at its exit,
    // waits for the server too.
    let mut containers: Vec<FakeTenant> = Vec::new();
    let Some(fs) = fdgrab_testkit::fuse::FuseFile::mount("agent-flush-restart") else {
        fdgrab_testkit::skip("cannot mount a FUSE file system here");
        return;
    };
    fs.hold_flushes();
    let file = fs.file();
    let pod = [("FAKE_TENANT_POD", "flushing")];
    for round in 0..3 {
        containers.push(FakeTenant::start_with_env(&agent, &unique("flusher"), &pod));
        let t = containers.last_mut().expect("just pushed");
        for k in 0..6 {
            let r = t.ask(&format!("file-bind {file} 87"), Duration::from_secs(5));
            assert_eq!(r["errno"], libc::ENOTSOCK, "round {round}, bind {k}: {r}");
        }
    }
    assert_eq!(closer_threads(&agent), 4, "the pod's places");
    assert_eq!(workers_in_d(&agent), 0, "no worker waits for the server");
    fs.release_flushes();
    for t in &mut containers {
        t.kill();
    }
    returns(&agent, "threads", threads, thread_count);
}

/// Each of `tenants` (already suspect, or reading killably because the
/// in-thread cap is reached) binds with its sockaddr on `rounds` pages of the
/// held FUSE file, all at once, each answered ETIMEDOUT: `rounds` buried
/// readers per tenant. Tenant `i` uses pages `first + i * rounds ..`.
fn fuse_stall_all(tenants: &mut [FakeTenant], page_file: &str, first: usize, rounds: usize) {
    for round in 0..rounds {
        for (i, t) in tenants.iter_mut().enumerate() {
            let page = first + i * rounds + round;
            let r = t.ask(&format!("mmap-bind {page_file} {page} 85"), TIMEOUT);
            assert_eq!(r["stalled"], true, "{r}");
        }
        for t in tenants.iter_mut() {
            let r = t.line(TIMEOUT);
            assert_eq!(r["mmap_errno"], libc::ETIMEDOUT, "{r}");
        }
    }
}

/// Hostile pods cannot deny binds to the others. Sixteen containers, each of
/// a pod of its own, stall once on a userfaultfd page (16 given-up workers:
/// from then on every container reads killably, and so needs a reader), then
/// each leaves its 4 readers buried on a FUSE page whose daemon holds every
/// read: 64 buried readers, each pod at its share. A container that arrives
/// now and binds honestly is served, and so are more; each hostile pod, past
/// its share, is still refused at once without a read. (Before, 64 was the
/// agent-wide cap: from then on every container whose worker had no reader
/// yet, a new one or a respawned one, had every bind answered ETIMEDOUT.
/// Now the cap is 4 per pod the node may run, `--max-pods`, 110 by default.)
#[test]
fn agent_pods_at_their_share_of_buried_readers_deny_nobody_else() {
    if !root_or_skip() {
        return;
    }
    let mut s = Stalled::start("calm", IN_THREAD_CAP, 1);
    let Some(fs) = held_fuse("agent-fair") else {
        return;
    };
    let page_file = fs.page();
    fuse_stall_all(&mut s.attackers, &page_file, 0, BURIED_PER_CONTAINER);
    let hostile = (IN_THREAD_CAP * BURIED_PER_CONTAINER) as u64;
    state_becomes(&s.agent, "buried_readers", hostile);
    for n in 0..2 {
        let mut newcomer = FakeTenant::start(&s.agent, &unique("newcomer"));
        for i in 1..=3 {
            let r = newcomer.ask(&format!("bind 127.87.7{n}.{i} 86"), TIMEOUT);
            assert_eq!(r["errno"], 0, "newcomer {n}, bind {i}: {r}");
        }
        newcomer.kill();
    }
    let r = s.calm.ask("bind 127.87.72.1 86", TIMEOUT);
    assert_eq!(r["errno"], 0, "{r}");
    // Every hostile pod is still held to its own share.
    let taken = fs.reads_taken();
    let r = s.attackers[0].ask("bind 127.87.72.2 86", TIMEOUT);
    assert_eq!(r["errno"], libc::ETIMEDOUT, "{r}");
    assert_eq!(fs.reads_taken(), taken, "no reader past the pod's share");
    assert_eq!(s.agent.state_number("buried_readers"), hostile);
    assert_eq!(fs.release_reads(), hostile as usize);
    state_becomes(&s.agent, "buried_readers", 0);
    assert_eq!(agent_zombies(&s.agent), 0);
    s.end(1);
    drop(fs);
}

/// `--max-pods 2`: the agent keeps at most 4 buried readers per pod it may
/// run (8), and past that one more each for pods that hold none (10 in all).
/// Two pods fill their shares; a container that stalled once (a swapped-out
/// page, say; it reads killably from then on) but holds no buried reader is
/// still served. A third pod may leave one reader stuck, not a second; a
/// fourth one more; then, at 10, a container holding none gets no reader
/// either: the bound on the agent's tasks wins, and says so in its answer
/// (ETIMEDOUT at once, no read).
#[test]
fn agent_max_pods_bounds_buried_readers_and_serves_pods_below_their_share() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:85-86", "--max-pods", "2"]);
    let Some(fs) = held_fuse("agent-max-pods") else {
        return;
    };
    let page_file = fs.page();
    let pod = |name: &str| stalling_tenant(&agent, &[("FAKE_TENANT_POD", name)]);
    let mut full = vec![pod("a"), pod("b")];
    fuse_stall_all(&mut full, &page_file, 0, BURIED_PER_CONTAINER);
    state_becomes(&agent, "buried_readers", 8);
    let mut victim = pod("victim");
    for i in 1..=3 {
        let r = victim.ask(&format!("bind 127.87.80.{i} 86"), TIMEOUT);
        assert_eq!(r["errno"], 0, "{r}");
    }
    let mut late = vec![pod("c"), pod("d")];
    fuse_stall_all(&mut late, &page_file, 20, 1);
    state_becomes(&agent, "buried_readers", 10);
    let taken = fs.reads_taken();
    fuse_stalls(&mut late[0], &page_file, 30, 1);
    assert_eq!(fs.reads_taken(), taken, "past the shares: one each");
    let r = victim.ask("bind 127.87.80.9 86", TIMEOUT);
    assert_eq!(r["errno"], 0, "its reader lives on: {r}");
    let mut newcomer = pod("e");
    let r = newcomer.ask("bind 127.87.81.1 86", TIMEOUT);
    assert_eq!(r["errno"], libc::ETIMEDOUT, "at the ceiling: {r}");
    assert_eq!(fs.reads_taken(), taken);
    assert_eq!(fs.release_reads(), 10);
    state_becomes(&agent, "buried_readers", 0);
    let r = newcomer.ask("bind 127.87.81.2 86", TIMEOUT);
    assert_eq!(r["errno"], 0, "{r}");
    assert_eq!(agent_zombies(&agent), 0);
    drop(fs);
}
