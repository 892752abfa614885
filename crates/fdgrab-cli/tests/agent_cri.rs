//! The kubelet's own path, as far as a machine without a kubelet allows:
//! containerd's CRI plugin driven over gRPC the way the kubelet drives it
//! (RunPodSandbox with pod annotations, CreateContainer with a Localhost seccomp
//! profile, `runAsUser: 1000` and every capability dropped, StartContainer), on a
//! private containerd with the `org.fdgrab.*` pod-annotation allowlist, runc and
//! crun as runtime handlers. The profile is `fdgrab profile` of podman's default.

use fdgrab_testkit::containers::{
    agent_profile, containerd_runtime_of, tool_usable, PODMAN_DEFAULT_PROFILE,
};
use fdgrab_testkit::cri::{client_usable, Cri, PodNetwork};
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

/// What a node has: an agent allowing tcp:80 and tcp:443, a network namespace
/// that containerd and its host-network pods run in, containerd with the CRI
/// plugin, and the agent's profile made from podman's default.
fn node() -> (AgentProc, NetNs, Cri, std::path::PathBuf) {
    let agent = AgentProc::start(&["--allow-bind", "tcp:80", "--allow-bind", "tcp:443"]);
    let ns = NetNs::new();
    let cri = Cri::start(&ns.path);
    let profile = agent_profile(
        cri.logs.path(),
        "fdgrab-bind.json",
        Some(Path::new(PODMAN_DEFAULT_PROFILE)),
        &agent.socket,
    );
    (agent, ns, cri, profile)
}

/// A pod (its own network, through CNI) allowed port 80 by annotation serves it
/// from uid 1000 through the agent, asked for on the pod's IP.
fn pod_serves_port_80(rt: Runtime) {
    if !usable(rt) {
        return;
    }
    let (agent, ns, cri, profile) = node();
    let pod = cri.run_pod(
        rt,
        "web",
        &[("org.fdgrab.allow-bind", "tcp:80")],
        PodNetwork::Pod,
    );
    let id = pod.start_container(
        "httpd",
        &["httpd", "-f", "-p", "80", "-h", "/www"],
        &profile,
    );
    let addr = std::net::SocketAddr::new(pod.ip(), 80);
    let resp = ns
        .http_get_addr_eventually(addr, START)
        .unwrap_or_else(|e| {
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
    assert_eq!(
        containerd_runtime_of("k8s.io", &id),
        Some(rt),
        "the runtime handler's binary"
    );
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
/// through its allowlist, and the container's bind to 80 gets EACCES. This pod
/// uses the node's network (`hostNetwork: true`).
fn pod_annotation_narrows_to_eacces(rt: Runtime) {
    if !usable(rt) {
        return;
    }
    let (agent, _ns, cri, profile) = node();
    let pod = cri.run_pod(
        rt,
        "narrow",
        &[("org.fdgrab.allow-bind", "tcp:443")],
        PodNetwork::Node,
    );
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

fn contrib(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../contrib/kubernetes")
        .join(path)
}

/// Every YAML document of a file, as JSON (python3-yaml parses it).
fn yaml_docs(path: &Path) -> Vec<serde_json::Value> {
    let out = fdgrab_testkit::output_timeout(
        std::process::Command::new("/usr/bin/python3")
            .args([
                "-c",
                "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
            ])
            .arg(path),
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from python")
}

/// The manifests parse, and the DaemonSet is what docs/kubernetes.md says: host
/// PID, hostPath /run/fdgrab, OnDelete, its own unconfined profile, only the
/// capabilities the agent uses, the profile installed by `fdgrab profile` into the
/// kubelet's directory; the example pod uses that profile.
#[test]
fn kubernetes_manifests_have_the_documented_shape() {
    if !usable_yaml() {
        return;
    }
    let docs = yaml_docs(&contrib("fdgrab-agent.yaml"));
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet"
        ]
    );
    let ds = &docs[5];
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "OnDelete");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    let agent = &pod["containers"][0];
    assert_eq!(
        agent["securityContext"]["seccompProfile"]["type"],
        "Unconfined"
    );
    assert_eq!(
        agent["securityContext"]["privileged"],
        serde_json::Value::Null
    );
    assert_eq!(
        agent["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    // What the capabilities are for is tested below, from this very list.
    assert_eq!(
        daemonset_caps(),
        ["SYS_PTRACE", "NET_BIND_SERVICE", "SYS_ADMIN"]
    );
    let volumes = pod["volumes"].as_array().expect("volumes");
    let host = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .and_then(|v| v["hostPath"]["path"].as_str())
            .map(str::to_owned)
    };
    assert_eq!(host("run-fdgrab").as_deref(), Some("/run/fdgrab"));
    assert_eq!(
        host("seccomp-profiles").as_deref(),
        Some("/var/lib/kubelet/seccomp/profiles/fdgrab")
    );
    let install = &pod["initContainers"][0];
    let cmd: Vec<&str> = install["command"]
        .as_array()
        .expect("command")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        cmd,
        [
            "/usr/local/bin/fdgrab",
            "profile",
            "--socket",
            "/run/fdgrab/agent.sock",
            "--output",
            "/host/seccomp/fdgrab/fdgrab-bind.json"
        ]
    );
    assert_eq!(
        install["volumeMounts"][0]["mountPath"],
        "/host/seccomp/fdgrab"
    );

    let example = yaml_docs(&contrib("example-pod.yaml"));
    let sc = &example[0]["spec"]["securityContext"]["seccompProfile"];
    assert_eq!(sc["type"], "Localhost");
    // Relative to the kubelet's seccomp root, /var/lib/kubelet/seccomp.
    assert_eq!(sc["localhostProfile"], "profiles/fdgrab/fdgrab-bind.json");
    assert_eq!(
        example[0]["spec"]["nodeSelector"]["fdgrab.io/agent"],
        "ready"
    );

    for toml in ["containerd-config.toml", "crio-fdgrab.conf"] {
        let out = fdgrab_testkit::output_timeout(
            std::process::Command::new("/usr/bin/python3")
                .args([
                    "-c",
                    "import sys, tomllib; tomllib.load(open(sys.argv[1], 'rb'))",
                ])
                .arg(contrib(toml)),
            Duration::from_secs(20),
        );
        assert!(
            out.status.success(),
            "{toml}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `build-image.sh` makes an image with no base image from the fdgrab binary,
/// containerd imports it, and the binary runs in it with only the libraries the
/// script copied: its `fdgrab profile` prints what the host's does.
#[test]
fn agent_image_builds_and_runs_without_a_base_image() {
    if !tool_usable("containerd") || !Runtime::Runc.usable() {
        return;
    }
    let ctd = fdgrab_testkit::containers::Containerd::start();
    let archive = ctd.dir.path().join("agent.oci.tar");
    let name = "docker.io/library/fdgrab-agent:test";
    let out = fdgrab_testkit::output_timeout(
        std::process::Command::new(contrib("build-image.sh"))
            .arg(fdgrab_testkit::bin("fdgrab"))
            .arg(&archive)
            .arg(name),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "build-image.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = fdgrab_testkit::output_timeout(
        ctd.ctr("default").args(["images", "import"]).arg(&archive),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = fdgrab_testkit::oci::unique("fdgrab-image");
    ctd.track("default", &id);
    let out = fdgrab_testkit::output_timeout(
        ctd.ctr("default")
            .args(["run", "--rm", name, &id, "/usr/local/bin/fdgrab", "profile"]),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "fdgrab in the image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host = fdgrab_testkit::run_fdgrab(["profile"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&host.stdout)
    );
}

/// The capabilities the DaemonSet gives the agent container.
fn daemonset_caps() -> Vec<String> {
    let docs = yaml_docs(&contrib("fdgrab-agent.yaml"));
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect()
}

/// An agent whose bounding set is exactly `caps` (setpriv, util-linux).
fn agent_with_caps(caps: &[String]) -> AgentProc {
    let set: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.to_lowercase()))
        .collect();
    let bounding = format!("-all,{}", set.join(","));
    AgentProc::start_under(
        &["setpriv", "--bounding-set", &bounding, "--inh-caps", "-all"],
        &["--allow-bind", "tcp:80"],
    )
}

/// The DaemonSet's capability list is enough: an agent with only those serves a
/// container's port 80 (ctr, under the built-in profile, which is the one the
/// DaemonSet installs), and
/// without SYS_PTRACE the same container gets EACCES (the agent cannot take the
/// socket and hands the call back to the kernel).
#[test]
fn agent_needs_only_the_daemonset_capabilities() {
    if !tool_usable("containerd") || !Runtime::Runc.usable() || !usable_yaml() {
        return;
    }
    let caps = daemonset_caps();
    let ctd = fdgrab_testkit::containers::Containerd::start();
    let dir = fdgrab_testkit::oci::TempDir::new("fdgrab-caps");
    let rootfs = fdgrab_testkit::containers::client_rootfs(dir.path());
    let spec =
        |agent: &AgentProc, ns: &NetNs, script: &str| fdgrab_testkit::containers::ClientSpec {
            rootfs: rootfs.clone(),
            profile: agent_profile(
                dir.path(),
                &fdgrab_testkit::oci::unique("p.json"),
                None,
                &agent.socket,
            ),
            netns: ns.path.clone(),
            annotations: Vec::new(),
            script: script.into(),
        };

    let agent = agent_with_caps(&caps);
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid)).expect("status");
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or_else(|| panic!("{k} in {status}"))
    };
    // Every listed capability stays permitted; CAP_SYS_ADMIN (21) is effective
    // only in the thread that enters a container's netns (docs/supervisor.md).
    assert_eq!(field("CapPrm:"), field("CapBnd:"), "{status}");
    assert_eq!(field("CapEff:"), field("CapBnd:") & !(1 << 21), "{status}");
    assert_eq!(
        field("CapPrm:").count_ones() as usize,
        caps.len(),
        "{status}"
    );
    let ns = NetNs::new();
    let _c = ctd.run(
        Runtime::Runc,
        &spec(&agent, &ns, "exec httpd -f -p 80 -h /www"),
    );
    let resp = ns
        .http_get_eventually(80, START)
        .unwrap_or_else(|e| panic!("GET :80: {e}; agent {}", agent.log.text()));
    assert!(resp.contains(" 200 "), "{resp}");

    let without: Vec<String> = caps
        .iter()
        .filter(|c| *c != "SYS_PTRACE")
        .cloned()
        .collect();
    let weak = agent_with_caps(&without);
    let ns = NetNs::new();
    let mut c = ctd.run(
        Runtime::Runc,
        &spec(&weak, &ns, "nc -l -p 80; echo nc-exit=$?"),
    );
    let (_, out) = c.wait(START).expect("container ran");
    assert!(out.contains("bind: Permission denied"), "{out}");
    assert!(
        // Without SYS_PTRACE the agent cannot even read the sockaddr.
        weak.audit_lines()
            .iter()
            .any(|l| l["decision"] == "continue" && l["uid"] == 1000),
        "{:?}",
        weak.audit_lines()
    );
}

fn usable_yaml() -> bool {
    let ok = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import yaml, tomllib"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        fdgrab_testkit::skip("python3-yaml is not installed (scripts/test installs it)");
    }
    ok
}
