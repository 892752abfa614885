//! The kubelet's own path, as far as a machine without a kubelet allows:
//! containerd's CRI plugin driven over gRPC the way the kubelet drives it
//! (RunPodSandbox with pod annotations, CreateContainer with a Localhost seccomp
//! profile, `runAsUser: 1000` and every capability dropped, StartContainer), on a
//! private containerd with the `org.fdgrab.*` pod-annotation allowlist, runc and
//! crun as runtime handlers. The profile is `fdgrab profile` of podman's default.

use fdgrab_testkit::containers::{agent_profile, tool_usable, PODMAN_DEFAULT_PROFILE};
use fdgrab_testkit::cri::{client_usable, Cri};
use fdgrab_testkit::oci::{AgentProc, NetNs, Runtime};
use std::path::Path;
use std::time::Duration;

const START: Duration = Duration::from_secs(20);

fn usable(rt: Runtime) -> bool {
    if !tool_usable("containerd") || !rt.usable() || !client_usable() {
        return false;
    }
    if !Path::new(PODMAN_DEFAULT_PROFILE).exists() {
        fdgrab_testkit::skip(&format!(
            "{PODMAN_DEFAULT_PROFILE} is missing (package golang-github-containers-common)"
        ));
        return false;
    }
    true
}

/// A pod allowed port 80 by annotation serves it from uid 1000 through the agent.
fn pod_serves_port_80(rt: Runtime) {
    if !usable(rt) {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:80", "--allow-bind", "tcp:443"]);
    let ns = NetNs::new();
    let cri = Cri::start(&ns.path);
    let profile = agent_profile(
        cri.logs.path(),
        "fdgrab-bind.json",
        Some(Path::new(PODMAN_DEFAULT_PROFILE)),
        &agent.socket,
    );
    let pod = cri.run_pod(rt, "web", &[("org.fdgrab.allow-bind", "tcp:80")]);
    let id = pod.start_container(
        "httpd",
        &["httpd", "-f", "-p", "80", "-h", "/www"],
        &profile,
    );
    let resp = ns.http_get_eventually(80, START).unwrap_or_else(|e| {
        panic!(
            "GET :80 in the pod's network: {e}; status {}; log {}; agent {}",
            pod.status(&id),
            pod.log("httpd"),
            agent.log.text()
        )
    });
    assert!(
        resp.contains(" 200 ") && resp.contains("served by a container"),
        "{resp}"
    );
    assert_eq!(pod.status(&id)["state"], "CONTAINER_RUNNING");
    let audit = agent.audit_lines();
    let line = audit
        .iter()
        .find(|l| l["port"] == 80 && l["container_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no audit line for {id}: {audit:?}"));
    assert_eq!(line["decision"], "bind", "{line}");
    assert_eq!(line["uid"], 1000, "{line}");
    assert_eq!(line["errno"], 0, "{line}");
}

/// The pod annotation narrows the agent's policy to tcp:443: containerd passed it
/// through its allowlist, and the container's bind to 80 gets EACCES.
fn pod_annotation_narrows_to_eacces(rt: Runtime) {
    if !usable(rt) {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:80", "--allow-bind", "tcp:443"]);
    let ns = NetNs::new();
    let cri = Cri::start(&ns.path);
    let profile = agent_profile(
        cri.logs.path(),
        "fdgrab-bind.json",
        Some(Path::new(PODMAN_DEFAULT_PROFILE)),
        &agent.socket,
    );
    let pod = cri.run_pod(rt, "narrow", &[("org.fdgrab.allow-bind", "tcp:443")]);
    let id = pod.start_container("nc", &["nc", "-l", "-p", "80"], &profile);
    let st = pod
        .wait_exited(&id, START)
        .unwrap_or_else(|e| panic!("{e}; log {}; agent {}", pod.log("nc"), agent.log.text()));
    assert_eq!(st["exit_code"], 1, "{st}");
    let log = pod.log("nc");
    assert!(log.contains("bind: Permission denied"), "{log}");
    let audit = agent.audit_lines();
    assert!(
        audit.iter().any(|l| l["port"] == 80
            && l["decision"] == "continue"
            && l["container_id"] == id.as_str()),
        "the refused bind is handed back to the kernel and logged: {audit:?}"
    );
}

fdgrab_testkit::per_runtime! {
    cri_pod_serves_port_80 => pod_serves_port_80,
    cri_pod_annotation_narrows_to_eacces => pod_annotation_narrows_to_eacces,
}
