//! `fdgrab agent` with real runc and crun containers: an unprivileged container
//! (uid 1000, no capabilities) serves on port 80 through the agent, and one whose
//! metadata, annotation or the agent's policy does not allow port 80 gets EACCES.
//! Each container joins a network namespace the test creates, so port 80 is the
//! test's alone.

use fdgrab_testkit::oci::{
    unique, AgentProc, Bundle, BundleSpec, Container, NetNs, Runtime, SeccompBind,
};
use std::time::Duration;

const START: Duration = Duration::from_secs(20);

fn notify(agent: &AgentProc, metadata: Option<&str>) -> SeccompBind {
    SeccompBind::Notify {
        listener_path: agent.socket.clone(),
        metadata: metadata.map(str::to_owned),
    }
}

fn serves_port_80(rt: Runtime) {
    if !rt.usable() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:80", "--allow-bind", "tcp:443"]);
    let ns = NetNs::new();
    let mut spec = BundleSpec::new(
        &["httpd", "-f", "-p", "80", "-h", "/www"],
        notify(&agent, Some("allow-bind=tcp:80")),
    );
    spec.netns = Some(ns.path.clone());
    // Both ways of narrowing at once; port 80 is in both and in the agent's bound.
    spec.annotations
        .push(("org.fdgrab.allow-bind".into(), "tcp:80,tcp:8080".into()));
    let bundle = Bundle::new(&spec);
    let id = unique(&format!("fdgrab-{}-serve", rt.name()));
    let mut c = Container::run(rt, &bundle, &id);

    let resp = ns.http_get_eventually(80, START).unwrap_or_else(|e| {
        panic!(
            "GET :80 in the container's netns: {e}; container said {:?}; agent log {}",
            c.output.text(),
            agent.log.text()
        )
    });
    assert!(
        resp.starts_with("HTTP/1.") && resp.contains(" 200 "),
        "{resp}"
    );
    assert!(resp.contains("served by a container"), "{resp}");

    // The container really is uid 1000 without capabilities: the port came from the agent.
    let audit = agent.audit_lines();
    let line = audit
        .iter()
        .find(|l| l["port"] == 80 && l["container_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no audit line for port 80 of {id}: {audit:?}"));
    assert_eq!(
        line["bundle"],
        bundle.path().to_str().expect("utf-8 path"),
        "{line}"
    );
    assert_eq!(line["uid"], 1000, "{line}");
    assert_eq!(line["decision"], "bind", "{line}");
    assert_eq!(line["errno"], 0, "{line}");
    c.kill();
}

/// Runs `nc -l -p 80` in a container and checks that it got the kernel's own
/// EACCES, and that the agent logged handing the call back to the kernel.
fn expect_eacces_on_80(
    rt: Runtime,
    agent: &AgentProc,
    metadata: Option<&str>,
    annotation: Option<&str>,
) {
    let ns = NetNs::new();
    let mut spec = BundleSpec::new(&["nc", "-l", "-p", "80"], notify(agent, metadata));
    spec.netns = Some(ns.path.clone());
    if let Some(a) = annotation {
        spec.annotations
            .push(("org.fdgrab.allow-bind".into(), a.into()));
    }
    let bundle = Bundle::new(&spec);
    let id = unique(&format!("fdgrab-{}-deny", rt.name()));
    let mut c = Container::run(rt, &bundle, &id);
    let (status, out) = c
        .wait(START)
        .unwrap_or_else(|e| panic!("{e}; agent log {}", agent.log.text()));
    assert!(!status.success(), "nc should have failed: {out}");
    assert!(
        out.contains("bind: Permission denied"),
        "expected EACCES: {out}; agent log {}",
        agent.log.text()
    );
    let audit = agent.audit_lines();
    assert!(
        audit.iter().any(|l| l["port"] == 80
            && l["decision"] == "continue"
            && l["container_id"] == id.as_str()),
        "the refused bind is handed back to the kernel and logged: {audit:?}"
    );
}

fn metadata_narrows_to_eacces(rt: Runtime) {
    if !rt.usable() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:80", "--allow-bind", "tcp:443"]);
    expect_eacces_on_80(rt, &agent, Some("allow-bind=tcp:443"), None);
}

fn never_widens(rt: Runtime) {
    if !rt.usable() {
        return;
    }
    // The agent allows only 443; the container asks for 80 both ways.
    let agent = AgentProc::start(&["--allow-bind", "tcp:443"]);
    expect_eacces_on_80(rt, &agent, Some("allow-bind=tcp:80"), Some("tcp:80"));
}

fn policy_file_bounds_annotation(rt: Runtime) {
    if !rt.usable() {
        return;
    }
    let dir = fdgrab_testkit::oci::TempDir::new("fdgrab-policy");
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "[[bind]]\nport = \"1-1023\"\nproto = \"tcp\"\n").expect("policy file");
    let agent = AgentProc::start(&["--policy", file.to_str().expect("utf-8")]);
    // The annotation alone narrows 1-1023 to 22: port 80 is refused.
    expect_eacces_on_80(rt, &agent, None, Some("tcp:22"));
}

fdgrab_testkit::per_runtime! {
    agent_container_serves_port_80 => serves_port_80,
    agent_metadata_narrows_to_eacces => metadata_narrows_to_eacces,
    agent_container_never_widens_the_policy => never_widens,
    agent_policy_file_bounds_the_annotation => policy_file_bounds_annotation,
}

/// `RUNTIME ARGS... ID`, bounded in time; panics with the runtime's words on failure.
fn runtime_cmd(rt: Runtime, args: &[&str], id: &str) -> String {
    let out = fdgrab_testkit::output_timeout(
        std::process::Command::new(rt.name()).args(args).arg(id),
        START,
    );
    assert!(
        out.status.success(),
        "{} {args:?} {id}: {}",
        rt.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Several containers of both runtimes at once, each in its own network
/// namespace and each serving port 80 through the one agent; one of them is
/// frozen (the runtime's `pause`, every process of it) with its filter live, and
/// that holds up nobody; neither does a `NOTIFY_SOCKET` reader that never reads.
/// The frozen container makes a trapped bind before the freeze and another after
/// it is thawed, so its listener must still be served then.
#[test]
fn agent_serves_many_containers_at_once() {
    let runtimes: Vec<Runtime> = Runtime::ALL.into_iter().filter(|rt| rt.usable()).collect();
    if runtimes.is_empty() {
        fdgrab_testkit::skip("neither runc nor crun is usable here");
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:80", "--allow-bind", "tcp:81"]);
    let frozen_ns = NetNs::new();
    // busybox httpd without -f binds, then daemonizes: `&&` goes on only once the
    // bind (through the agent) succeeded. The second bind waits for a line.
    let mut spec = BundleSpec::new(
        &[
            "sh",
            "-c",
            "httpd -p 80 -h /www && echo frozen-ready && read x && \
             httpd -p 81 -h /www && echo rebound; exec sleep 600",
        ],
        notify(&agent, None),
    );
    spec.netns = Some(frozen_ns.path.clone());
    let frozen_bundle = Bundle::new(&spec);
    let frozen_id = unique("fdgrab-frozen");
    let frozen_rt = runtimes[0];
    let mut frozen = Container::run(frozen_rt, &frozen_bundle, &frozen_id);
    frozen
        .output
        .wait_for("frozen-ready", START)
        .unwrap_or_else(|e| {
            panic!(
                "frozen container's first bind: {e}; agent {}",
                agent.log.text()
            )
        });
    let resp = frozen_ns
        .http_get_eventually(80, START)
        .expect("the frozen container's httpd bound port 80 through the agent");
    assert!(resp.contains(" 200 "), "{resp}");
    runtime_cmd(frozen_rt, &["pause"], &frozen_id);
    let state: serde_json::Value =
        serde_json::from_str(&runtime_cmd(frozen_rt, &["state"], &frozen_id)).expect("state json");
    assert_eq!(state["status"], "paused", "{state}");

    // More status updates than a unix datagram queue holds (max_dgram_qlen, 10),
    // none of them read: the agent must drop them rather than block on systemd.
    const EACH: usize = 6;
    let mut running = Vec::new();
    for i in 0..EACH * runtimes.len() {
        let rt = runtimes[i % runtimes.len()];
        let ns = NetNs::new();
        let mut spec = BundleSpec::new(
            &["httpd", "-f", "-p", "80", "-h", "/www"],
            notify(&agent, None),
        );
        spec.netns = Some(ns.path.clone());
        let bundle = Bundle::new(&spec);
        let c = Container::run(
            rt,
            &bundle,
            &unique(&format!("fdgrab-{}-many{i}", rt.name())),
        );
        running.push((ns, bundle, c));
    }
    for (ns, _, c) in &running {
        let resp = ns.http_get_eventually(80, START).unwrap_or_else(|e| {
            panic!(
                "{} {}: {e}; {}; agent {}",
                c.runtime.name(),
                c.id,
                c.output.text(),
                agent.log.text()
            )
        });
        assert!(resp.contains(" 200 "), "{resp}");
    }
    let log = agent.log.text();
    assert!(
        log.contains(&format!("containers={}", running.len() + 1)),
        "all supervised at once: {log}"
    );
    // Thawed, the container binds again: its listener was kept and is served.
    runtime_cmd(frozen_rt, &["resume"], &frozen_id);
    frozen.send_line("go");
    frozen
        .output
        .wait_for("rebound", START)
        .unwrap_or_else(|e| {
            panic!(
                "the thawed container's second bind: {e}; agent {}",
                agent.log.text()
            )
        });
    let resp = frozen_ns.http_get_eventually(81, START).expect("thawed");
    assert!(resp.contains(" 200 "), "{resp}");
    let audit = agent.audit_lines();
    let binds = audit
        .iter()
        .filter(|l| l["port"] == 80 && l["decision"] == "bind" && l["errno"] == 0)
        .count();
    assert_eq!(
        binds,
        running.len() + 1,
        "every container's bind, the frozen one's too"
    );
    assert!(
        audit.iter().any(|l| l["port"] == 81
            && l["decision"] == "bind"
            && l["errno"] == 0
            && l["container_id"] == frozen_id.as_str()),
        "the thawed container's second bind went through the agent: {audit:?}"
    );
}
