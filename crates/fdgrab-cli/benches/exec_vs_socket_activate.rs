//! Start-up cost of `fdgrab exec` against `systemd-socket-activate` starting the same
//! server: the time from launching the tool to the new server's first answer.
//!
//! - fdgrab: a process already owns a listening socket and never accepts on it;
//!   `fdgrab exec PID tcp:127.0.0.1:PORT -- SERVER` takes it and starts SERVER. The
//!   client connects at once (the connection waits in the backlog) and the clock stops
//!   when the server answers.
//! - systemd-socket-activate: `systemd-socket-activate -l 127.0.0.1:PORT SERVER`
//!   binds the port and starts SERVER on the first connection; the client connects as
//!   soon as the port accepts and the clock stops when the server answers.
//!
//! Two servers: `fdgrab-activated serve` (starts in about a millisecond, so the
//! tools' own cost shows) and gunicorn (a real server, when installed). Rounds are
//! interleaved; medians are compared. Goal: fdgrab within 1.2x.
//!
//! Run with `scripts/bench exec_vs_socket_activate` (it builds the release binaries).

use fdgrab_testkit::bench::Goals;
use fdgrab_testkit::handover::{
    first_answer, free_port, gunicorn, gunicorn_args, stop_child, write_pid_app, Probe, TempDir,
};
use fdgrab_testkit::{bin, read_line_timeout, TIMEOUT};
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SOCKET_ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

struct Holder {
    child: Child,
    pid: i32,
    addr: SocketAddr,
}

impl Holder {
    fn start() -> Holder {
        let mut child = Command::new(bin("fdgrab-activated"))
            .args(["hold", "--listen", "tcp:127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn holder");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let line = read_line_timeout(&mut out, TIMEOUT).expect("holder report");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        let addr = v["sockets"][0]["addr"]
            .as_str()
            .expect("addr")
            .parse()
            .expect("addr");
        Holder {
            pid: child.id() as i32,
            child,
            addr,
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn via_fdgrab(holder: &Holder, server: &[String], http: bool) -> Duration {
    let probe = if http {
        Probe::Http(holder.addr)
    } else {
        Probe::Tcp(holder.addr)
    };
    let t0 = Instant::now();
    let mut child = Command::new(bin("fdgrab"))
        .args([
            "exec",
            &holder.pid.to_string(),
            &format!("tcp:{}", holder.addr),
            "--",
        ])
        .args(server)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fdgrab");
    let pid = first_answer(&probe, t0 + TIMEOUT);
    let took = t0.elapsed();
    assert_ne!(pid, holder.pid, "the holder never accepts");
    stop_child(&mut child);
    took
}

fn via_systemd(server: &[String], http: bool) -> Duration {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let probe = if http {
        Probe::Http(addr)
    } else {
        Probe::Tcp(addr)
    };
    let t0 = Instant::now();
    let mut child = Command::new(SOCKET_ACTIVATE)
        .arg(format!("--listen={addr}"))
        .args(server)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn systemd-socket-activate");
    first_answer(&probe, t0 + TIMEOUT);
    let took = t0.elapsed();
    stop_child(&mut child);
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn compare(name: &str, server: &[String], http: bool, rounds: usize) -> f64 {
    let holder = Holder::start();
    // One unmeasured round each warms the page cache.
    via_fdgrab(&holder, server, http);
    via_systemd(server, http);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate the order so that neither side always runs on a warmer cache.
        if round % 2 == 0 {
            ours.push(via_fdgrab(&holder, server, http));
            theirs.push(via_systemd(server, http));
        } else {
            theirs.push(via_systemd(server, http));
            ours.push(via_fdgrab(&holder, server, http));
        }
    }
    let (a, b) = (median(ours.clone()), median(theirs.clone()));
    let ratio = a.as_secs_f64() / b.as_secs_f64();
    println!(
        "{name:<28} fdgrab exec {:>10}  systemd-socket-activate {:>10}  ratio {ratio:.2}x  ({rounds} rounds, medians; fdgrab min {} / sd-activate min {})",
        ms(a),
        ms(b),
        ms(*ours.iter().min().expect("rounds")),
        ms(*theirs.iter().min().expect("rounds")),
    );
    ratio
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut goals = Goals::new("exec_vs_socket_activate");
    if !Path::new(SOCKET_ACTIVATE).exists() {
        goals.skip(&format!(
            "{SOCKET_ACTIVATE} is missing (Debian package systemd)"
        ));
    }
    println!("time from launch to the new server's first answer (goal: fdgrab within 1.2x)");
    let fast = vec![
        bin("fdgrab-activated").to_string_lossy().into_owned(),
        "serve".to_string(),
    ];
    let r1 = compare("fdgrab-activated (tiny)", &fast, false, 40);
    goals.at_most(
        "fdgrab-activated: fdgrab exec / systemd-socket-activate",
        r1,
        1.2,
    );
    match gunicorn() {
        Some(g) => {
            let dir = TempDir::new("bench-exec");
            write_pid_app(dir.path());
            let server: Vec<String> = std::iter::once(g.to_string_lossy().into_owned())
                .chain(gunicorn_args(dir.path()))
                .collect();
            let r = compare("gunicorn -w 2", &server, true, 10);
            goals.at_most("gunicorn: fdgrab exec / systemd-socket-activate", r, 1.2);
        }
        None => goals.not_measured(
            "gunicorn: fdgrab exec / systemd-socket-activate",
            "gunicorn is not installed (Debian package gunicorn)",
        ),
    }
    goals.finish()
}
