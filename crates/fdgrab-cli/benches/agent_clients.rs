//! Deployment figures: binary and image size, the agent's start-to-ready time,
//! and containers started through podman and through containerd (`ctr`) with and
//! without the agent.
//!
//! Container starts run `true` as uid 1000 in a network namespace of ours:
//! - *default* (the reference): podman's own default profile, no listener;
//! - *agent*: `fdgrab profile` of that profile, `bind` to a running agent.
//!
//! The two alternate round by round (which goes first alternates too), so that
//! drift on the machine hits both alike; the ratio is of the medians. Start-to-
//! ready is compared with starting `fdgrab --version` (spawn and exit: the floor).
//!
//! Run: `cargo bench -p fdgrab-cli --bench agent_clients` (as root; podman,
//! containerd, runc and busybox-static installed). `FDGRAB_BENCH_ROUNDS` changes
//! the number of rounds (default 25). Exits 1 when a client starts containers more
//! than 5% slower with the agent.

use fdgrab_testkit::bench::Goals;
use fdgrab_testkit::containers::{
    agent_profile, client_rootfs, ClientContainer, ClientSpec, Containerd, Podman,
    PODMAN_DEFAULT_PROFILE,
};
use fdgrab_testkit::oci::{AgentProc, NetNs, Runtime, TempDir};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GOAL: f64 = 1.05;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn timed(start: impl FnOnce() -> ClientContainer) -> Duration {
    let t = Instant::now();
    let mut c = start();
    let (status, out) = c
        .wait(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    let took = t.elapsed();
    assert!(status.success(), "{}: {status} {out}", c.name);
    took
}

/// Runs `reference` and `agent` alternately for `rounds` rounds after one warm-up
/// each; prints the medians and returns agent/reference.
fn compare(
    what: &str,
    rounds: usize,
    mut reference: impl FnMut() -> Duration,
    mut agent: impl FnMut() -> Duration,
) -> f64 {
    reference();
    agent();
    let (mut r, mut a) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        if i % 2 == 0 {
            r.push(reference());
            a.push(agent());
        } else {
            a.push(agent());
            r.push(reference());
        }
    }
    let (mr, ma) = (median(&mut r), median(&mut a));
    let ratio = ma.as_secs_f64() / mr.as_secs_f64();
    println!(
        "{what:<14} default profile {:7.1} ms ({:5.2}/s), agent profile {:7.1} ms ({:5.2}/s): \
         agent/default {ratio:.3}x (goal < {GOAL}x)",
        ms(mr),
        1.0 / mr.as_secs_f64(),
        ms(ma),
        1.0 / ma.as_secs_f64()
    );
    ratio
}

fn sizes() {
    let bin = fdgrab_testkit::bin("fdgrab");
    let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let dir = TempDir::new("fdgrab-bench-image");
    let archive = dir.path().join("agent.oci.tar");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/kubernetes/build-image.sh");
    let ok = Command::new(script)
        .arg(&bin)
        .arg(&archive)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let stripped = dir.path().join("fdgrab.stripped");
    let stripped_ok = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&bin)
        .status()
        .is_ok_and(|s| s.success());
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "binary {}: {:.1} MiB as built, {} fully stripped",
        bin.display(),
        mib(len(&bin)),
        if stripped_ok {
            format!("{:.1} MiB", mib(len(&stripped)))
        } else {
            "n/a".into()
        }
    );
    if ok {
        println!(
            "agent image (build-image.sh, no base image, debug info stripped): {:.1} MiB uncompressed",
            mib(len(&archive))
        );
    } else {
        println!("agent image: build-image.sh failed");
    }
}

fn start_to_ready(rounds: usize) {
    let mut ready = Vec::new();
    let mut floor = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let st = Command::new(fdgrab_testkit::bin("fdgrab"))
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .expect("fdgrab --version");
        floor.push(t.elapsed());
        assert!(st.success());
        let t = Instant::now();
        let agent = AgentProc::start_quiet(&["--allow-bind", "tcp:80"]);
        ready.push(t.elapsed());
        drop(agent);
    }
    let (r, f) = (median(&mut ready), median(&mut floor));
    println!(
        "agent start-to-ready (spawn to READY=1 and its ready log line): median {:.2} ms; \
         `fdgrab --version` {:.2} ms; ratio {:.1}x",
        ms(r),
        ms(f),
        r.as_secs_f64() / f.as_secs_f64()
    );
}

fn main() {
    let mut goals = Goals::new("agent_clients");
    if !rustix::process::geteuid().is_root() || !Path::new(PODMAN_DEFAULT_PROFILE).exists() {
        goals.skip(&format!("needs root and {PODMAN_DEFAULT_PROFILE}"));
    }
    let rounds: usize = std::env::var("FDGRAB_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    sizes();
    start_to_ready(rounds);

    let agent = AgentProc::start_quiet(&["--allow-bind", "tcp:80"]);
    let dir = TempDir::new("fdgrab-bench-clients");
    let with_agent = agent_profile(
        dir.path(),
        "agent.json",
        Some(Path::new(PODMAN_DEFAULT_PROFILE)),
        &agent.socket,
    );
    let rootfs = client_rootfs(dir.path());
    let ns = NetNs::new();
    let spec = |profile: &Path| ClientSpec {
        rootfs: rootfs.clone(),
        profile: profile.to_owned(),
        netns: ns.path.clone(),
        annotations: Vec::new(),
        script: "true".into(),
    };
    let (reference, agent_spec) = (spec(Path::new(PODMAN_DEFAULT_PROFILE)), spec(&with_agent));
    println!("container starts (client run to exit, `true` as uid 1000), {rounds} rounds each");
    for rt in Runtime::ALL {
        if !rt.available() {
            goals.not_measured(rt.name(), "the runtime is not installed");
            continue;
        }
        rt.prepare();
        let podman = Podman::new(rt);
        let ratio = compare(
            &format!("podman {}", rt.name()),
            rounds,
            || timed(|| podman.run(&reference)),
            || timed(|| podman.run(&agent_spec)),
        );
        goals.at_most(
            &format!("podman {}: agent / default", rt.name()),
            ratio,
            GOAL,
        );
        let ctd = Containerd::start();
        let ratio = compare(
            &format!("ctr {}", rt.name()),
            rounds,
            || timed(|| ctd.run(rt, &reference)),
            || timed(|| ctd.run(rt, &agent_spec)),
        );
        goals.at_most(&format!("ctr {}: agent / default", rt.name()), ratio, GOAL);
    }
    goals.finish()
}
