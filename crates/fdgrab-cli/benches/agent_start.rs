//! Containers started per second with and without `fdgrab agent` in the loop.
//!
//! All bundles run `true` as uid 1000 under the same seccomp profile shape:
//! - *plain* (the reference): `bind` → `SCMP_ACT_LOG`, no `listenerPath`;
//! - *acceptor*: `bind` → `SCMP_ACT_NOTIFY`, `listenerPath` to a minimal acceptor in
//!   this process that takes the document and the fd and closes them: the cost of
//!   the runtime's own listener hand-over, whatever the agent;
//! - *agent*: the same, with `listenerPath` to a running `fdgrab agent`.
//!
//! Runs rotate through the three so that drift on the machine hits all alike.
//!
//! Run: `cargo bench -p fdgrab-cli --bench agent_start` (as root; runc/crun and
//! busybox-static installed). `FDGRAB_BENCH_ROUNDS` changes the number of rounds.
//! Goal: the agent adds less than 5% to a container start.
//!
//! First, *isolation*: a victim container's bind latency (p50, p99 of 400 binds,
//! measured inside a `fake-tenant`) with and without a hostile neighbour making
//! each attack of the agent issue: 1,100 threads binding at once, a sockaddr on a
//! userfaultfd page nobody fills, 600 idle runtime connections, 32 clients
//! trickling 1 MiB documents in 256-byte pieces. Rounds interleave quiet and
//! attacked runs; medians of the rounds. Goal: attacked p99 <= 2x quiet p99 and
//! never above 50 ms; the bench exits non-zero when it is missed.
//! `FDGRAB_BENCH_PHASE=isolation` (or `starts`) runs one phase only.

use fdgrab_testkit::oci::{
    unique, AgentProc, Bundle, BundleSpec, Container, FakeTenant, Runtime, SeccompBind,
};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// Accepts runtime connections and drops what they send, on a thread of its own.
fn minimal_acceptor(listener: UnixListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            while let Ok(r) = fdgrab::passfd::recv_fds(&conn, &mut buf, 4) {
                if r.len == 0 {
                    break;
                }
            }
        }
    });
}

fn start_once(rt: Runtime, bundle: &Bundle, tag: &str) -> Duration {
    let t = Instant::now();
    let mut c = Container::run(
        rt,
        bundle,
        &unique(&format!("fdgrab-bench-{}-{tag}", rt.name())),
    );
    let status = c
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    let took = t.elapsed();
    assert!(
        status.success(),
        "{} {tag}: {status} {}",
        rt.name(),
        c.output.text()
    );
    took
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Starts one attack; calling what it returns (with the attacker) ends it.
type End = Box<dyn FnOnce(&mut Option<FakeTenant>)>;
type Attack = fn(&AgentProc, &mut Option<FakeTenant>) -> End;

fn attacker(t: &mut Option<FakeTenant>) -> &mut FakeTenant {
    t.as_mut().expect("this attack needs an attacking tenant")
}

fn attack_threads(_: &AgentProc, t: &mut Option<FakeTenant>) -> End {
    attacker(t).send("threads 1100 80 81");
    Box::new(|t| {
        let r = attacker(t).line(Duration::from_secs(120));
        assert_eq!(r["ok"], 1100, "{r}");
    })
}

fn attack_uffd(_: &AgentProc, t: &mut Option<FakeTenant>) -> End {
    let r = attacker(t).ask("uffd 83", Duration::from_secs(30));
    assert_eq!(r["stalled"], true, "{r}");
    Box::new(|t| {
        let r = attacker(t).line(Duration::from_secs(30));
        assert_eq!(r["uffd_errno"], libc::ETIMEDOUT, "{r}");
    })
}

fn attack_idle(agent: &AgentProc, _: &mut Option<FakeTenant>) -> End {
    let idle: Vec<UnixStream> = (0..600)
        .filter_map(|_| UnixStream::connect(&agent.socket).ok())
        .collect();
    Box::new(move |_| drop(idle))
}

fn attack_documents(agent: &AgentProc, _: &mut Option<FakeTenant>) -> End {
    let writers: Vec<_> = (0..32)
        .map(|_| {
            let socket = agent.socket.clone();
            std::thread::spawn(move || {
                fdgrab_testkit::oci::trickle_oversized_document(&socket);
            })
        })
        .collect();
    Box::new(move |_| {
        for w in writers {
            let _ = w.join();
        }
    })
}

/// p50 and p99 (µs) of `n` victim binds.
fn victim_run(victim: &mut FakeTenant, n: usize) -> (f64, f64) {
    let r = victim.ask(&format!("lat {n} 127.79.0.1 84"), Duration::from_secs(120));
    assert_eq!(r["errors"], 0, "victim binds failed: {r}");
    let f = |k: &str| r[k].as_f64().expect("latency");
    (f("p50_us"), f("p99_us"))
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The isolation phase; returns whether every goal was met.
///
/// Each attack also runs against a second agent, which the victim does not use:
/// the attacker's own CPU load on this machine without any effect through the
/// victim's agent. The goal is judged against the quiet runs, as the issue sets
/// it; the second ratio shows how much of a miss is the machine, not the agent.
fn isolation(rounds: usize) -> bool {
    let agent = AgentProc::start_quiet(&["--allow-bind", "tcp:81-84"]);
    let other = AgentProc::start_quiet(&["--allow-bind", "tcp:81-84"]);
    let mut victim = FakeTenant::start_quiet(&agent, &unique("bench-victim"));
    let attacks: [(&str, Attack, bool); 4] = [
        ("1,100 binding threads", attack_threads, true),
        ("userfaultfd stall", attack_uffd, true),
        ("600 idle connections", attack_idle, false),
        ("32 slow 1 MiB documents", attack_documents, false),
    ];
    const BINDS: usize = 400;
    victim_run(&mut victim, BINDS);
    let mut ok = true;
    println!(
        "victim bind latency through the agent, {BINDS} binds per run, {rounds} rounds, medians"
    );
    for (name, attack, needs_tenant) in attacks {
        let mut runs: [Vec<(f64, f64)>; 3] = Default::default();
        for _ in 0..rounds {
            runs[0].push(victim_run(&mut victim, BINDS));
            for (k, target) in [(1, &other), (2, &agent)] {
                let mut attacker = needs_tenant
                    .then(|| FakeTenant::start_quiet(target, &unique("bench-attacker")));
                let end = attack(target, &mut attacker);
                runs[k].push(victim_run(&mut victim, BINDS));
                end(&mut attacker);
            }
        }
        let med = |k: usize, p99: bool| {
            median_f(
                runs[k]
                    .iter()
                    .map(|r| if p99 { r.1 } else { r.0 })
                    .collect(),
            )
        };
        let (q50, q99) = (med(0, false), med(0, true));
        let e99 = med(1, true);
        let (l50, l99) = (med(2, false), med(2, true));
        let ratio = l99 / q99;
        let met = ratio <= 2.0 && l99 <= 50_000.0;
        ok &= met;
        println!(
            "  {name:<24} quiet p50 {q50:6.1} p99 {q99:7.1} | aimed elsewhere p99 {e99:7.1} | \
             aimed at the victim's agent p50 {l50:6.1} p99 {l99:7.1} (us) | p99 {ratio:.2}x quiet \
             (goal <= 2x, <= 50 ms){}, {:.2}x elsewhere",
            if met { "" } else { " MISSED" },
            l99 / e99
        );
    }
    println!(
        "  agent afterwards: {} fds, {} KiB RSS",
        agent.fd_count(),
        fdgrab_testkit::oci::rss_kib(agent.pid)
    );
    ok
}

fn main() {
    if !rustix::process::geteuid().is_root() {
        fdgrab_testkit::bench::Goals::new("agent_start").skip("needs root to run containers");
    }
    let phase = std::env::var("FDGRAB_BENCH_PHASE").unwrap_or_default();
    let mut met = true;
    if phase.is_empty() || phase == "isolation" {
        let rounds = std::env::var("FDGRAB_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        met = isolation(rounds);
    }
    if phase == "isolation" {
        std::process::exit(if met { 0 } else { 1 });
    }
    let started = starts();
    if !met || !started {
        std::process::exit(1);
    }
}

/// The start phase; returns whether every runtime met the goal.
fn starts() -> bool {
    let rounds: usize = std::env::var("FDGRAB_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let agent = AgentProc::start_quiet(&["--allow-bind", "tcp:80"]);
    let acceptor_dir = fdgrab_testkit::oci::TempDir::new("fdgrab-bench-acceptor");
    let acceptor_path = acceptor_dir.path().join("acceptor.sock");
    minimal_acceptor(UnixListener::bind(&acceptor_path).expect("acceptor socket"));
    let notify = |path: &std::path::Path| SeccompBind::Notify {
        listener_path: path.to_owned(),
        metadata: Some("allow-bind=tcp:80".into()),
    };
    let bundles = [
        (
            "plain",
            Bundle::new(&BundleSpec::new(&["true"], SeccompBind::NoAgent)),
        ),
        (
            "acceptor",
            Bundle::new(&BundleSpec::new(&["true"], notify(&acceptor_path))),
        ),
        (
            "agent",
            Bundle::new(&BundleSpec::new(&["true"], notify(&agent.socket))),
        ),
    ];
    println!("container starts (run to exit, `true` as uid 1000), {rounds} rounds each, rotating");
    let mut met = true;
    for rt in Runtime::ALL {
        if !rt.available() {
            println!("{:>5}: not installed, skipped", rt.name());
            continue;
        }
        rt.prepare();
        for (tag, b) in &bundles {
            for _ in 0..3 {
                start_once(rt, b, tag);
            }
        }
        let mut times: [Vec<Duration>; 3] = Default::default();
        for i in 0..rounds {
            for k in 0..3 {
                let j = (i + k) % 3;
                times[j].push(start_once(rt, &bundles[j].1, bundles[j].0));
            }
        }
        let total = |v: &[Duration]| v.iter().sum::<Duration>();
        let totals: Vec<Duration> = times.iter().map(|v| total(v)).collect();
        let medians: Vec<Duration> = times.iter_mut().map(|v| median(v)).collect();
        let per_sec = |t: Duration| rounds as f64 / t.as_secs_f64();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        for (k, (tag, _)) in bundles.iter().enumerate() {
            println!(
                "{:>5} {tag:>8}: {:6.1} starts/s, median {:6.2} ms",
                rt.name(),
                per_sec(totals[k]),
                ms(medians[k])
            );
        }
        let ratio = |a: usize, b: usize| medians[a].as_secs_f64() / medians[b].as_secs_f64();
        let mean_ratio = |a: usize, b: usize| totals[a].as_secs_f64() / totals[b].as_secs_f64();
        println!(
            "{:>5} time per start: agent/plain median {:.3}x (mean {:.3}x; goal < 1.05x), \
             agent/acceptor median {:.3}x (mean {:.3}x), acceptor/plain median {:.3}x",
            rt.name(),
            ratio(2, 0),
            mean_ratio(2, 0),
            ratio(2, 1),
            mean_ratio(2, 1),
            ratio(1, 0),
        );
        if ratio(2, 0) >= 1.05 {
            println!("{:>5} goal MISSED: agent/plain median >= 1.05x", rt.name());
            met = false;
        }
    }
    println!(
        "agent: {} fds open at the end, {} log lines (warnings)",
        agent.fd_count(),
        agent.log.text().lines().count() - 1
    );
    met
}
