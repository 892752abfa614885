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

use fdgrab_testkit::oci::{unique, AgentProc, Bundle, BundleSpec, Container, Runtime, SeccompBind};
use std::os::unix::net::UnixListener;
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

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("agent_start: needs root to run containers; skipped");
        return;
    }
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
    }
    println!(
        "agent: {} fds open at the end, {} log lines (warnings)",
        agent.fd_count(),
        agent.log.text().lines().count() - 1
    );
}
