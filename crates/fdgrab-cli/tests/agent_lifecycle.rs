//! The agent's lifecycle with real runc and crun containers: what a container
//! sees when the agent goes away, what the runtime does when no agent is there,
//! and that a stream of containers leaves nothing behind in the agent.

use fdgrab_testkit::oci::{
    unique, AgentProc, Bundle, BundleSpec, Container, NetNs, Runtime, SeccompBind, TempDir,
};
use std::time::{Duration, Instant};

const START: Duration = Duration::from_secs(20);

/// The agent dies while the container runs: the kernel answers every trapped
/// bind with ENOSYS from then on (the filter's listener is gone).
fn stopped_agent_gives_enosys(rt: Runtime) {
    if !rt.usable() {
        return;
    }
    let mut agent = AgentProc::start(&["--allow-bind", "tcp:80"]);
    let ns = NetNs::new();
    let mut spec = BundleSpec::new(
        &[
            "sh",
            "-c",
            "echo started; read go; nc -l -p 80; echo nc-exit=$?",
        ],
        SeccompBind::Notify {
            listener_path: agent.socket.clone(),
            metadata: None,
        },
    );
    spec.netns = Some(ns.path.clone());
    let bundle = Bundle::new(&spec);
    let id = unique(&format!("fdgrab-{}-enosys", rt.name()));
    let mut c = Container::run(rt, &bundle, &id);
    c.output
        .wait_for("started", START)
        .expect("container started");
    agent
        .log
        .wait_for(&format!("container={id}"), START)
        .expect("agent took the listener");
    agent.kill();
    c.send_line("go");
    let (_, out) = c.wait(START).expect("container exits");
    assert!(
        out.contains("bind: Function not implemented"),
        "expected ENOSYS: {out}"
    );
    assert!(out.contains("nc-exit=1"), "{out}");
}

/// No agent on the socket: runc and crun both refuse to start the container,
/// naming the socket (documented in the README).
fn start_without_agent_fails(rt: Runtime) {
    if !rt.usable() {
        return;
    }
    let dir = TempDir::new("fdgrab-noagent");
    let socket = dir.path().join("nobody.sock");
    let spec = BundleSpec::new(
        &["echo", "container ran"],
        SeccompBind::Notify {
            listener_path: socket.clone(),
            metadata: None,
        },
    );
    let bundle = Bundle::new(&spec);
    let id = unique(&format!("fdgrab-{}-noagent", rt.name()));
    let mut c = Container::run(rt, &bundle, &id);
    let (status, out) = c.wait(START).expect("runtime exits");
    assert!(
        !status.success(),
        "the runtime started a container without its agent: {out}"
    );
    assert!(!out.contains("container ran"), "{out}");
    assert!(
        out.contains("nobody.sock"),
        "the runtime's error names the socket: {out}"
    );
}

/// 20 containers, one after the other, each binding port 80 through the agent
/// and exiting. Every bind is answered (the container prints `bound` and exits;
/// an unanswered notification would hang it), every container is released, and
/// the agent's fd count is back to where it started.
fn twenty_containers_leave_nothing(rt: Runtime) {
    if !rt.usable() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:80"]);
    let baseline = agent.fd_count();
    let ns = NetNs::new();
    let mut spec = BundleSpec::new(
        &["sh", "-c", "httpd -p 80 -h /www && echo bound"],
        SeccompBind::Notify {
            listener_path: agent.socket.clone(),
            metadata: Some("allow-bind=tcp:80".into()),
        },
    );
    spec.netns = Some(ns.path.clone());
    let bundle = Bundle::new(&spec);
    const N: usize = 20;
    // Read systemd's side as we go: its queue is short (net.unix.max_dgram_qlen).
    let mut statuses = Vec::new();
    for i in 0..N {
        statuses.extend(agent.notifications());
        let id = unique(&format!("fdgrab-{}-loop{i}", rt.name()));
        let mut c = Container::run(rt, &bundle, &id);
        let (status, out) = c
            .wait(START)
            .unwrap_or_else(|e| panic!("container {i}: {e}"));
        assert!(
            status.success() && out.contains("bound"),
            "container {i}: {status} {out}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let released = |log: &str| log.matches("released").count();
    while (agent.fd_count() != baseline || released(&agent.log.text()) < N)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = agent.log.text();
    assert_eq!(released(&log), N, "every container released: {log}");
    assert!(log.contains("containers=0"), "{log}");
    assert_eq!(
        agent.fd_count(),
        baseline,
        "agent fds back to baseline; log {log}"
    );
    statuses.extend(agent.notifications());
    assert!(
        statuses
            .iter()
            .any(|s| s.starts_with("STATUS=supervising 1 containers;")),
        "{statuses:?}"
    );
    assert!(
        statuses
            .last()
            .is_some_and(|s| s.starts_with("STATUS=supervising 0 containers;")),
        "{statuses:?}"
    );
    let audit = agent.audit_lines();
    let binds = audit
        .iter()
        .filter(|l| l["port"] == 80 && l["decision"] == "bind" && l["errno"] == 0)
        .count();
    assert_eq!(binds, N, "{audit:?}");
}

fdgrab_testkit::per_runtime! {
    agent_stopped_agent_gives_enosys => stopped_agent_gives_enosys,
    agent_runtime_refuses_to_start_without_agent => start_without_agent_fails,
    agent_twenty_containers_leave_nothing => twenty_containers_leave_nothing,
}
