//! `fdgrab profile` and `fdgrab agent` with the clients users run: podman (with
//! runc and with crun) and containerd through `ctr` on a private containerd. The
//! profile is generated from podman's own default, so the containers keep the
//! runtime default's rules; an unprivileged container (uid 1000, no capabilities)
//! serves port 80 through the agent, asserted with a real HTTP request in the
//! network namespace the test made for it, and a port the policy does not grant
//! gives EACCES.
//!
//! The profile tests check the rewrite as properties over real profiles (podman's
//! default, the built-in one) and over variants that hide `bind` in every kind of
//! rule: no rule lets bind through except the NOTIFY rules, every other rule and
//! field is unchanged.

use fdgrab::seccomp::profile::{rewrite, rule_names_bind, ProfileListener};
use fdgrab_testkit::containers::{
    agent_profile, client_rootfs, containerd_runtime_of, tool_usable, ClientContainer, ClientSpec,
    Containerd, Podman, PODMAN_DEFAULT_PROFILE,
};
use fdgrab_testkit::oci::{AgentProc, NetNs, Runtime, TempDir};
use fdgrab_testkit::run_fdgrab;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const START: Duration = Duration::from_secs(20);

fn podman_default() -> Option<Value> {
    match std::fs::read_to_string(PODMAN_DEFAULT_PROFILE) {
        Ok(t) => Some(serde_json::from_str(&t).expect("podman's profile is JSON")),
        Err(e) => {
            fdgrab_testkit::skip(&format!(
                "{PODMAN_DEFAULT_PROFILE}: {e} (package golang-github-containers-common)"
            ));
            None
        }
    }
}

fn allows(action: &Value) -> bool {
    matches!(action.as_str(), Some("SCMP_ACT_ALLOW" | "SCMP_ACT_LOG"))
}

/// The rewrite's contract, checked on `input` against `output`.
fn check_rewrite(input: &Value, output: &Value, expect_notify: usize) {
    // Top level: everything but the rules and the listener is unchanged.
    let strip = |v: &Value| {
        let mut o = v.as_object().expect("object").clone();
        for k in ["syscalls", "listenerPath", "listenerMetadata"] {
            o.remove(k);
        }
        o
    };
    assert_eq!(strip(input), strip(output), "top-level fields changed");
    assert_eq!(output["listenerPath"], "/run/fdgrab/agent.sock");

    let out_rules = output["syscalls"].as_array().expect("syscalls");
    let notify: Vec<&Value> = out_rules
        .iter()
        .filter(|r| r["action"] == "SCMP_ACT_NOTIFY" && rule_names_bind(r))
        .collect();
    assert_eq!(
        notify.len(),
        expect_notify,
        "NOTIFY rules for bind: {notify:?}"
    );
    for n in &notify {
        assert_eq!(n["names"], json!(["bind"]), "{n}");
    }
    for r in out_rules {
        if rule_names_bind(r) {
            assert!(!allows(&r["action"]), "a rule still lets bind through: {r}");
        }
    }

    // Every input rule reappears in order: unchanged, or without `bind` (gone if
    // nothing else was left in it).
    let mut expected = Vec::new();
    for r in input["syscalls"].as_array().into_iter().flatten() {
        let lets_through = allows(&r["action"]) || r["action"] == "SCMP_ACT_NOTIFY";
        if !(rule_names_bind(r) && lets_through) {
            expected.push(r.clone());
            continue;
        }
        let mut r = r.clone();
        let o = r.as_object_mut().expect("rule");
        if o.get("name").is_some_and(|n| n == "bind") {
            o.remove("name");
        }
        if let Some(Value::Array(names)) = o.get_mut("names") {
            names.retain(|n| n != "bind");
        }
        let left = o
            .get("names")
            .and_then(Value::as_array)
            .is_some_and(|n| !n.is_empty())
            || o.contains_key("name");
        if left {
            expected.push(r);
        }
    }
    let others: Vec<Value> = out_rules
        .iter()
        .filter(|r| !(r["action"] == "SCMP_ACT_NOTIFY" && rule_names_bind(r)))
        .cloned()
        .collect();
    assert_eq!(others, expected, "rules other than bind's changed");
}

fn rewrite_ok(input: &Value) -> Value {
    rewrite(input.clone(), &ProfileListener::default())
        .expect("rewrite")
        .profile
}

#[test]
fn profile_from_podman_default_keeps_every_other_rule() {
    let Some(podman) = podman_default() else {
        return;
    };
    // Through the command, as users run it.
    let out = run_fdgrab(["profile", "--from", PODMAN_DEFAULT_PROFILE]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let output: Value = serde_json::from_slice(&out.stdout).expect("output is JSON");
    check_rewrite(&podman, &output, 1);
    // Key order survives too: a reviewer can diff input and output.
    let keys = |v: &Value| -> Vec<String> { v.as_object().expect("obj").keys().cloned().collect() };
    assert_eq!(keys(&output)[..keys(&podman).len()], keys(&podman)[..]);
}

#[test]
fn builtin_profile_is_a_runtime_default_with_bind_to_the_agent() {
    let out = run_fdgrab(["profile", "--metadata", "allow-bind=tcp:80,tcp:443"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let output: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let input: Value =
        serde_json::from_str(fdgrab::seccomp::profile::runtime_default()).expect("JSON");
    check_rewrite(&input, &output, 1);
    assert_eq!(output["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(output["listenerMetadata"], "allow-bind=tcp:80,tcp:443");
    // The built-in allows what podman's default allows (and nothing more): same
    // syscalls per action and condition.
    if let Some(podman) = podman_default() {
        let flat = |p: &Value| {
            let mut v: Vec<String> = p["syscalls"]
                .as_array()
                .expect("rules")
                .iter()
                .flat_map(|r| {
                    let cond = json!([
                        r["action"],
                        r.get("args")
                            .filter(|a| a.as_array().is_some_and(|a| !a.is_empty())),
                        r.get("includes")
                            .filter(|a| a.as_object().is_some_and(|a| !a.is_empty())),
                        r.get("excludes")
                            .filter(|a| a.as_object().is_some_and(|a| !a.is_empty())),
                        r.get("errnoRet")
                    ]);
                    r["names"]
                        .as_array()
                        .expect("names")
                        .iter()
                        .map(move |n| format!("{n} {cond}"))
                })
                .collect();
            v.sort();
            v.dedup();
            v
        };
        assert_eq!(flat(&input), flat(&podman));
        assert_eq!(input["defaultAction"], podman["defaultAction"]);
        assert_eq!(input["defaultErrnoRet"], podman["defaultErrnoRet"]);
    }
    // The shipped profile is exactly this output.
    let shipped =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/seccomp/fdgrab-bind.json");
    let shipped: Value =
        serde_json::from_str(&std::fs::read_to_string(&shipped).expect("contrib profile"))
            .expect("JSON");
    assert_eq!(
        shipped, output,
        "regenerate contrib/seccomp/fdgrab-bind.json with fdgrab profile"
    );
}

/// Hides `bind` in every kind of rule of podman's default, one variant at a
/// time, and checks the contract on each.
#[test]
fn profile_rewrite_holds_for_bind_in_every_kind_of_rule() {
    let Some(podman) = podman_default() else {
        return;
    };
    let caps = json!({"caps": ["CAP_NET_BIND_SERVICE"]});
    let arches = json!({"arches": ["amd64", "arm64"]});
    let kernel = json!({"minKernel": "4.8"});
    let args = json!([{"index": 2, "value": 16, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]);
    let variants: Vec<(&str, Value, usize)> = vec![
        ("as is", podman.clone(), 1),
        (
            "default allow",
            json!({"defaultAction": "SCMP_ACT_ALLOW"}),
            1,
        ),
        ("default log", json!({"defaultAction": "SCMP_ACT_LOG"}), 1),
        (
            "old name field",
            json!({"name": "bind", "action": "SCMP_ACT_ALLOW"}),
            1,
        ),
        (
            "log action",
            json!({"names": ["bind", "listen"], "action": "SCMP_ACT_LOG"}),
            1,
        ),
        (
            "existing notify",
            json!({"names": ["bind"], "action": "SCMP_ACT_NOTIFY"}),
            1,
        ),
        (
            "args",
            json!({"names": ["bind", "getpid"], "action": "SCMP_ACT_ALLOW", "args": args}),
            1,
        ),
        (
            "includes caps",
            json!({"names": ["bind"], "action": "SCMP_ACT_ALLOW", "includes": caps}),
            1,
        ),
        (
            "excludes caps",
            json!({"names": ["bind"], "action": "SCMP_ACT_ALLOW", "excludes": caps}),
            1,
        ),
        (
            "per arch",
            json!({"names": ["bind"], "action": "SCMP_ACT_ALLOW", "includes": arches}),
            1,
        ),
        (
            "min kernel",
            json!({"names": ["bind"], "action": "SCMP_ACT_ALLOW", "includes": kernel}),
            1,
        ),
        (
            "deny kept",
            json!({"names": ["bind"], "action": "SCMP_ACT_ERRNO", "excludes": caps, "errnoRet": 1}),
            1,
        ),
    ];
    for (what, extra, n) in variants {
        let mut input = podman.clone();
        match extra.get("defaultAction") {
            Some(d) => input["defaultAction"] = d.clone(),
            None if what != "as is" => {
                let rules = input["syscalls"].as_array_mut().expect("rules");
                rules.insert(rules.len() / 2, extra.clone());
            }
            None => {}
        }
        let output = rewrite_ok(&input);
        check_rewrite(&input, &output, n);
        if what == "deny kept" {
            assert!(
                output["syscalls"]
                    .as_array()
                    .expect("rules")
                    .contains(&extra),
                "{what}"
            );
        }
    }

    // With bind allowed only under conditions, NOTIFY carries exactly those.
    let mut input = podman.clone();
    for r in input["syscalls"].as_array_mut().expect("rules") {
        if let Some(Value::Array(names)) = r.get_mut("names") {
            names.retain(|n| n != "bind");
        }
    }
    input["syscalls"].as_array_mut().expect("rules").extend([
        json!({"names": ["bind"], "action": "SCMP_ACT_ALLOW", "includes": arches}),
        json!({"name": "bind", "action": "SCMP_ACT_ALLOW", "includes": arches}),
        json!({"names": ["bind"], "action": "SCMP_ACT_LOG", "args": args}),
    ]);
    let output = rewrite_ok(&input);
    check_rewrite(&input, &output, 2);
    let notify: Vec<&Value> = output["syscalls"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|r| r["action"] == "SCMP_ACT_NOTIFY")
        .collect();
    assert_eq!(notify[0]["includes"], arches);
    assert_eq!(notify[1]["args"], args);
}

#[test]
fn profile_refuses_bad_input_and_changes_nothing() {
    let dir = TempDir::new("fdgrab-profile");
    let never = dir.path().join("never.json");
    std::fs::write(&never, r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#)
        .expect("write");
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["bind"]}]}"#,
    )
    .expect("write");
    for (file, needle) in [(&never, "never allows bind"), (&bad, "syscalls[0].action")] {
        let before = std::fs::read(file).expect("read");
        let out = run_fdgrab(["profile", "--from", file.to_str().expect("utf-8")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(needle) && err.contains(file.to_str().expect("utf-8")),
            "{err}"
        );
        assert!(out.stdout.is_empty());
        assert_eq!(std::fs::read(file).expect("read"), before);
    }
    let out = run_fdgrab(["profile", "--from", "/nonexistent/profile.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/profile.json"));
}

/// An agent granting port 80 only, a profile made from podman's default, a rootfs
/// and a network namespace: what every client test starts from.
struct Setup {
    agent: AgentProc,
    dir: TempDir,
    profile: std::path::PathBuf,
    rootfs: std::path::PathBuf,
}

impl Setup {
    fn new() -> Option<Setup> {
        podman_default()?;
        let agent = AgentProc::start(&["--allow-bind", "tcp:80"]);
        let dir = TempDir::new("fdgrab-clients");
        let profile = agent_profile(
            dir.path(),
            "profile.json",
            Some(Path::new(PODMAN_DEFAULT_PROFILE)),
            &agent.socket,
        );
        let rootfs = client_rootfs(dir.path());
        Some(Setup {
            agent,
            dir,
            profile,
            rootfs,
        })
    }

    fn spec(&self, ns: &NetNs, script: &str) -> ClientSpec {
        ClientSpec {
            rootfs: self.rootfs.clone(),
            profile: self.profile.clone(),
            netns: ns.path.clone(),
            annotations: Vec::new(),
            script: script.into(),
        }
    }

    /// GET / on port 80 in `ns` answers from the container, and the agent
    /// performed that bind for uid 1000 of a container it names `expect_id`.
    fn expect_served(&self, ns: &NetNs, c: &ClientContainer, id_matches: impl Fn(&str) -> bool) {
        let resp = ns.http_get_eventually(80, START).unwrap_or_else(|e| {
            panic!(
                "GET :80 in the container's netns: {e}; container said {:?}; agent log {}",
                c.output.text(),
                self.agent.log.text()
            )
        });
        assert!(
            resp.contains(" 200 ") && resp.contains("served by a container"),
            "{resp}"
        );
        let audit = self.agent.audit_lines();
        let line = audit
            .iter()
            .find(|l| l["port"] == 80 && l["decision"] == "bind")
            .unwrap_or_else(|| panic!("no audit line for the bind to 80: {audit:?}"));
        assert_eq!(line["uid"], 1000, "{line}");
        assert_eq!(line["errno"], 0, "{line}");
        let id = line["container_id"].as_str().unwrap_or_default();
        assert!(id_matches(id), "container id {id} in {line}");
        let _ = &self.dir;
    }

    /// The container's `nc -l -p 80` got EACCES and the agent handed the call
    /// back to the kernel.
    fn expect_eacces(&self, mut c: ClientContainer) {
        let (status, out) = c
            .wait(START)
            .unwrap_or_else(|e| panic!("{e}; agent log {}", self.agent.log.text()));
        assert!(
            out.contains("bind: Permission denied"),
            "expected EACCES: {out}"
        );
        assert!(out.contains("nc-exit=1"), "{status}: {out}");
        let audit = self.agent.audit_lines();
        assert!(
            audit
                .iter()
                .any(|l| l["port"] == 80 && l["decision"] == "continue" && l["uid"] == 1000),
            "the refused bind is handed back to the kernel and logged: {audit:?}"
        );
    }
}

const SERVE: &str = "exec httpd -f -p 80 -h /www";
/// The annotation narrows the agent's tcp:80 to tcp:443, so port 80 is refused.
const DENIED: &str = "nc -l -p 80; echo nc-exit=$?";

fn narrow_to_443(spec: &mut ClientSpec) {
    spec.annotations
        .push(("org.fdgrab.allow-bind".into(), "tcp:443".into()));
}

fn podman_serves_port_80(rt: Runtime) {
    if !tool_usable("podman") || !rt.usable() {
        return;
    }
    let Some(s) = Setup::new() else { return };
    let podman = Podman::new(rt);
    let ns = NetNs::new();
    let c = podman.run(&s.spec(&ns, SERVE));
    // podman names the container by a 64-hex id of its own.
    s.expect_served(&ns, &c, |id| {
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
    });
}

fn podman_annotation_narrows_to_eacces(rt: Runtime) {
    if !tool_usable("podman") || !rt.usable() {
        return;
    }
    let Some(s) = Setup::new() else { return };
    let podman = Podman::new(rt);
    let ns = NetNs::new();
    let mut spec = s.spec(&ns, DENIED);
    narrow_to_443(&mut spec);
    s.expect_eacces(podman.run(&spec));
}

fn ctr_serves_port_80(rt: Runtime) {
    if !tool_usable("containerd") || !rt.usable() {
        return;
    }
    let Some(s) = Setup::new() else { return };
    let ctd = Containerd::start();
    let ns = NetNs::new();
    let c = ctd.run(rt, &s.spec(&ns, SERVE));
    let name = c.name.clone();
    s.expect_served(&ns, &c, |id| id == name);
    assert_eq!(containerd_runtime_of("default", &name), Some(rt));
}

fn ctr_annotation_narrows_to_eacces(rt: Runtime) {
    if !tool_usable("containerd") || !rt.usable() {
        return;
    }
    let Some(s) = Setup::new() else { return };
    let ctd = Containerd::start();
    let ns = NetNs::new();
    let mut spec = s.spec(&ns, DENIED);
    narrow_to_443(&mut spec);
    s.expect_eacces(ctd.run(rt, &spec));
}

fdgrab_testkit::per_runtime! {
    podman_container_serves_port_80 => podman_serves_port_80,
    podman_annotation_narrows_to_eacces => podman_annotation_narrows_to_eacces,
    ctr_container_serves_port_80 => ctr_serves_port_80,
    ctr_annotation_narrows_to_eacces => ctr_annotation_narrows_to_eacces,
}

/// The trap `fdgrab profile` exists for: podman's default with a NOTIFY rule for
/// bind merely appended still lets the container start, but its bind never reaches
/// the agent (the default's ALLOW for bind wins), so port 80 fails with EACCES.
#[test]
fn appending_a_notify_rule_to_the_default_is_silently_ignored() {
    if !tool_usable("podman") || !Runtime::Crun.usable() {
        return;
    }
    let Some(s) = Setup::new() else { return };
    let Some(mut naive) = podman_default() else {
        return;
    };
    naive["listenerPath"] = json!(s.agent.socket);
    naive["syscalls"]
        .as_array_mut()
        .expect("rules")
        .push(json!({"names": ["bind"], "action": "SCMP_ACT_NOTIFY"}));
    let naive_path = s.dir.path().join("naive.json");
    std::fs::write(&naive_path, naive.to_string()).expect("write");
    let podman = Podman::new(Runtime::Crun);
    let ns = NetNs::new();
    let mut spec = s.spec(&ns, DENIED);
    spec.profile = naive_path;
    let mut c = podman.run(&spec);
    let (_, out) = c.wait(START).expect("container ran");
    assert!(out.contains("bind: Permission denied"), "{out}");
    assert!(
        s.agent.audit_lines().is_empty(),
        "the agent was never asked: {:?}",
        s.agent.audit_lines()
    );
}

/// Of two rules for one syscall with the same conditions, libseccomp keeps the
/// first. A denial of bind placed after podman's ALLOW list never applied: the
/// container (no capabilities, so `excludes` keeps the rule) was allowed to bind.
/// The NOTIFY rule must take the ALLOW's place, ahead of the denial, so that the
/// agent is asked as before the rewrite the kernel was.
#[test]
fn a_denial_shadowed_by_the_allow_stays_shadowed_by_notify() {
    if !tool_usable("podman") || !Runtime::Crun.usable() {
        return;
    }
    let Some(s) = Setup::new() else { return };
    let Some(mut input) = podman_default() else {
        return;
    };
    let rules = input["syscalls"].as_array_mut().expect("rules");
    let allow = rules
        .iter()
        .position(|r| rule_names_bind(r) && allows(&r["action"]))
        .expect("podman's default allows bind");
    rules.insert(
        allow + 1,
        json!({"names": ["bind"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
               "excludes": {"caps": ["CAP_NET_BIND_SERVICE"]}}),
    );
    let input_path = s.dir.path().join("shadowed-deny.json");
    std::fs::write(&input_path, input.to_string()).expect("write");
    let podman = Podman::new(Runtime::Crun);
    let ns = NetNs::new();
    let mut spec = s.spec(&ns, SERVE);
    spec.profile = agent_profile(
        s.dir.path(),
        "shadowed-deny-agent.json",
        Some(&input_path),
        &s.agent.socket,
    );
    let c = podman.run(&spec);
    s.expect_served(&ns, &c, |_| true);
}

/// `--output` writes what stdout would get, through a rename (no temporary file
/// left), and a directory that does not exist is an error naming the path.
#[test]
fn profile_output_file_is_written_whole() {
    let dir = TempDir::new("fdgrab-profile-out");
    let file = dir.path().join("fdgrab-bind.json");
    std::fs::write(&file, "old").expect("write");
    let out = run_fdgrab([
        "profile",
        "--metadata",
        "allow-bind=tcp:80",
        "-o",
        file.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let stdout = run_fdgrab(["profile", "--metadata", "allow-bind=tcp:80"]).stdout;
    assert_eq!(std::fs::read(&file).expect("read"), stdout);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(names, [std::ffi::OsString::from("fdgrab-bind.json")]);

    let missing = dir.path().join("no/such/dir/p.json");
    let out = run_fdgrab(["profile", "-o", missing.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/dir/p.json"));
}
