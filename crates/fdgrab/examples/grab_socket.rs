//! Take a copy of another process's listening socket and accept a connection on it.
//!
//! A python3 child listens on 127.0.0.1 (port chosen by the kernel) and prints its
//! fd number and port. This program finds the socket in the child's fd inventory,
//! copies it with `pidfd_getfd(2)`, connects to the port and accepts the connection
//! on *its own copy*: both processes now share one listening socket.
//!
//! Run as root (or as the child's owner with ptrace access):
//! `cargo run -p fdgrab --example grab_socket`

use fdgrab::{inventory, FdKind, GrabOptions, PidFd, TargetFd};
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import socket, sys, time\n\
             s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
             print(s.fileno(), s.getsockname()[1], flush=True)\n\
             time.sleep(60)",
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let fd: i32 = words.next().ok_or("no fd")?.parse()?;
    let port: u16 = words.next().ok_or("no port")?.parse()?;

    // A pidfd names the process for good: a recycled pid cannot redirect us.
    let target = PidFd::from_child(&child)?;
    let inv = inventory(&target)?;
    let entry = inv
        .fds
        .iter()
        .find(|e| e.fd.as_raw() == fd)
        .ok_or("the child has no such fd")?;
    assert_eq!(entry.kind, FdKind::Socket, "fd {fd} is {:?}", entry.kind);
    println!("child {} fd {fd}: {}", child.id(), entry.link);

    let grabbed = GrabOptions::new().grab(&target, TargetFd::new(fd).ok_or("bad fd")?)?;
    println!("taken with {}", grabbed.backend.method());
    let ours = TcpListener::from(grabbed.fd);
    let _client = TcpStream::connect(("127.0.0.1", port))?;
    let (_conn, peer) = ours.accept()?;
    println!("accepted {peer} on our copy of the child's socket (port {port})");

    target.send_signal(libc::SIGKILL)?;
    child.wait()?;
    Ok(())
}
