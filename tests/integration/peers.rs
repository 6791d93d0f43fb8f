//! `[peers]`: two pgpilot processes on loopback, each with its id in its cancel keys; a
//! CancelRequest sent to the instance that does not serve the query is forwarded to the one
//! that does.

use std::io::Write;
use std::time::Duration;

use bytes::BytesMut;
use pgpilot_protocol::encode;

use crate::common::{self, Opts};
use crate::raw::Raw;
use crate::runtime::start;

#[test]
fn a_cancel_request_sent_to_another_instance_reaches_the_query() {
    let Some(c) = common::cluster() else { return };
    let dir = std::env::temp_dir().join(format!("pgpilot-peers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ports = [
        pgpilot::cluster::free_port().unwrap(),
        pgpilot::cluster::free_port().unwrap(),
    ];
    let instances = format!(
        "instances = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]",
        ports[0], ports[1]
    );
    let mut children = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let path = dir.join(format!("p{i}.toml"));
        let text = common::config_text_on(c, &Opts::default(), *port)
            + &format!("\n[peers]\nid = {}\n{instances}\n", i + 1);
        std::fs::write(&path, text).unwrap();
        children.push(start(&path, &dir.join(format!("p{i}.log")), *port, &[]));
    }
    let first: std::net::SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
    let second: std::net::SocketAddr = format!("127.0.0.1:{}", ports[1]).parse().unwrap();
    let mut client = Raw::connect(first, "app", "app", &[]).unwrap();
    let (pid, secret) = client.key;
    assert_eq!(
        (secret >> 25) & 0x1f,
        1,
        "instance 1's id is in its cancel key: {secret:#x}"
    );
    assert!(pid >= 1 << 30, "a made-up pid no process can have: {pid}");
    let sleeper = std::thread::spawn(move || client.query("SELECT pg_sleep(30)"));
    // Once the query runs on a backend, cancel it through the other instance.
    std::thread::sleep(Duration::from_millis(500));
    let mut cancel = BytesMut::new();
    encode::cancel_request(&mut cancel, pid, secret);
    let mut s = std::net::TcpStream::connect(second).unwrap();
    s.write_all(&cancel).unwrap();
    drop(s);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !sleeper.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the query was never cancelled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, _, message) = sleeper.join().unwrap().expect_err("cancelled");
    assert_eq!(code, "57014", "{message}");
    drop(children);
    let _ = std::fs::remove_dir_all(&dir);
}
