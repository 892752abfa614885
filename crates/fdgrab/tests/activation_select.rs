//! Socket selection for `fdgrab exec` on a real process: the quick sock_diag
//! listing agrees with the full inventory, and selectors pick what they should.

use fdgrab::activation::{self, is_listening_or_bound, Candidate, Selector};
use fdgrab::{inventory, Error, PidFd, TargetFd};
use fdgrab_testkit::Target;

fn sel(s: &str) -> Selector {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn fd(n: i32) -> TargetFd {
    TargetFd::new(n).expect("fd")
}

#[test]
fn quick_listing_agrees_with_inventory() {
    let zoo = Target::spawn(["zoo"]);
    let pidfd = PidFd::open(zoo.pid).expect("pidfd");
    let quick = activation::listing(&pidfd).expect("listing");
    let inv = inventory(&pidfd).expect("inventory");
    assert_eq!(
        quick.iter().map(|c| c.fd).collect::<Vec<_>>(),
        inv.fds.iter().map(|e| e.fd).collect::<Vec<_>>()
    );
    let mut listeners = 0;
    for e in &inv.fds {
        let c = quick.iter().find(|c| c.fd == e.fd).expect("same fds");
        assert_eq!(
            c.inode,
            e.inode.filter(|_| e.link.starts_with("socket:")),
            "fd {}",
            e.fd
        );
        if let Some(s) = e.socket.as_ref().filter(|s| is_listening_or_bound(s)) {
            listeners += 1;
            let q = c.socket.as_ref().unwrap_or_else(|| {
                panic!("fd {} ({}) missing from the quick listing", e.fd, e.link)
            });
            assert_eq!(
                (&q.family, &q.socket_type, &q.protocol, &q.state, &q.local),
                (&s.family, &s.socket_type, &s.protocol, &s.state, &s.local),
                "fd {}",
                e.fd
            );
        }
    }
    // tcp, tcp6, udp, udp6, unix listener, abstract unix datagram.
    assert!(
        listeners >= 4,
        "zoo has listening and bound sockets: {listeners}"
    );
    drop(zoo);
}

#[test]
fn selectors_choose_the_right_sockets() {
    let zoo = Target::spawn(["zoo"]);
    let pidfd = PidFd::open(zoo.pid).expect("pidfd");
    let fds: Vec<Candidate> = activation::listing(&pidfd).expect("listing");
    let tcp = zoo.fd_labelled("tcp-listen");
    let udp = zoo.fd_labelled("udp");
    let unix = zoo.fd_labelled("unix-listen");
    let abs = zoo.fd_labelled("unix-abstract");
    let tcp_port = zoo.fd_report(tcp as i64)["socket"]["local"]["port"]
        .as_u64()
        .expect("port");
    let udp_port = zoo.fd_report(udp as i64)["socket"]["local"]["port"]
        .as_u64()
        .expect("port");
    let upath = zoo.fd_report(unix as i64)["socket"]["local"]["path"]
        .as_str()
        .expect("path")
        .to_string();
    let apath = zoo.fd_report(abs as i64)["socket"]["local"]["path"]
        .as_str()
        .expect("path")
        .to_string();

    let pick = |sels: &[&str]| -> Vec<(usize, Vec<TargetFd>)> {
        let sels: Vec<Selector> = sels.iter().map(|s| sel(s)).collect();
        activation::select(zoo.pid, &fds, &sels)
            .expect("select")
            .into_iter()
            .map(|s| (s.selector, s.target_fds))
            .collect()
    };
    assert_eq!(
        pick(&[&format!("tcp:127.0.0.1:{tcp_port}")]),
        vec![(0, vec![fd(tcp)])]
    );
    assert_eq!(
        pick(&[&format!("tcp:*:{tcp_port}")]),
        vec![(0, vec![fd(tcp)])]
    );
    assert_eq!(
        pick(&[
            &format!("udp:127.0.0.1:{udp_port}"),
            &format!("unix:{upath}")
        ]),
        vec![(0, vec![fd(udp)]), (1, vec![fd(unix)])]
    );
    assert_eq!(pick(&[&format!("unix:{apath}")]), vec![(0, vec![fd(abs)])]);
    // The same socket twice is passed once, under the first selector.
    assert_eq!(
        pick(&[&format!("fd:{tcp}"), &format!("tcp:*:{tcp_port}")]),
        vec![(0, vec![fd(tcp)])]
    );
    // "*" takes every listening or bound socket, never a connection.
    let all = pick(&["*"]);
    let client = zoo.fd_labelled("tcp-client");
    let connected_udp = zoo.fd_labelled("udp-connected");
    assert!(all
        .iter()
        .all(|(_, f)| !f.contains(&fd(client)) && !f.contains(&fd(connected_udp))));
    assert!([tcp, udp, unix, abs]
        .iter()
        .all(|n| all.iter().any(|(_, f)| f.contains(&fd(*n)))));

    // Errors name the process and what it does listen on.
    let e = activation::select(zoo.pid, &fds, &[sel("tcp:*:1")]).expect_err("no match");
    assert!(matches!(e, Error::NoMatchingSocket { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("tcp 127.0.0.1:{tcp_port} (LISTEN)")),
        "{msg}"
    );
    let e =
        activation::select(zoo.pid, &fds, &[sel(&format!("fd:{client}"))]).expect_err("connection");
    assert!(e.to_string().contains("neither listening nor bound"), "{e}");
    drop(zoo);
}
