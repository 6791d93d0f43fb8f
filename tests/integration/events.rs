//! `[events] command`: run for every event with the event in its environment; a slow command
//! holds nothing up.

use std::time::Duration;

use crate::admin::{cell, console, show, ADMIN};
use crate::common::{self, Opts};

/// A proxy whose events command is the script `body` (written to a file of its own).
fn with_hook(c: &common::Cluster, dir: &std::path::Path, body: &str) -> pgpilot::Proxy {
    std::fs::create_dir_all(dir).unwrap();
    let script = dir.join("hook.sh");
    std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
    let extra = format!("{ADMIN}\n[events]\ncommand = \"sh {}\"\n", script.display());
    common::proxy(
        c,
        &Opts {
            extra: Box::leak(extra.into_boxed_str()),
            ..Opts::default()
        },
    )
}

#[test]
fn the_events_command_gets_each_event_in_its_environment() {
    let Some(c) = common::cluster() else { return };
    let dir = std::env::temp_dir().join(format!("pgpilot-events-{}", std::process::id()));
    let out = dir.join("events.txt");
    let proxy = with_hook(
        c,
        &dir,
        &format!(
            "printf '%s|%s|%s|%s\\n' \"$PGPILOT_EVENT\" \"$PGPILOT_BACKEND\" \"$PGPILOT_CAUSE\" \
             \"$PGPILOT_TIME\" >> {}",
            out.display()
        ),
    );
    let mut console = console(&proxy, "pgpilot");
    console.simple_query("DETACH b2").unwrap();
    console.simple_query("ATTACH b2").unwrap();
    let mut lines = Vec::new();
    let both = common::eventually(Duration::from_secs(10), || {
        lines = std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.len() >= 2
    });
    assert!(both, "the command ran for both events: {lines:?}");
    let fields: Vec<Vec<&str>> = lines.iter().map(|l| l.split('|').collect()).collect();
    assert_eq!(
        fields[0][..3],
        ["detached", "b2", "DETACH from the admin console"]
    );
    assert_eq!(
        fields[1][..3],
        ["attached", "b2", "ATTACH from the admin console"]
    );
    // PGPILOT_TIME is RFC 3339 in UTC: 2026-12-01T18:06:53Z.
    let time = fields[0][3].as_bytes();
    assert!(
        time.len() == 20 && time[10] == b'T' && time[19] == b'Z',
        "{}",
        fields[0][3]
    );
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_slow_events_command_holds_nothing_up() {
    let Some(c) = common::cluster() else { return };
    let dir = std::env::temp_dir().join(format!("pgpilot-slow-events-{}", std::process::id()));
    let proxy = with_hook(c, &dir, "sleep 60");
    let mut console = console(&proxy, "pgpilot");
    // The command sleeps on the first event; the others queue, and the console (answered by
    // the control plane, which offers events to the command) answers meanwhile.
    for _ in 0..3 {
        console.simple_query("DETACH b1").unwrap();
        console.simple_query("ATTACH b1").unwrap();
    }
    let events = show(&mut console, "SHOW EVENTS");
    let names: Vec<&str> = (events.1.iter())
        .filter(|r| cell(&events, r, "backend") == "b1")
        .map(|r| cell(&events, r, "event"))
        .collect();
    assert_eq!(names.len(), 6, "{names:?}");
    let mut app = common::client(&proxy);
    app.simple_query("SELECT 1").unwrap();
    // Stopping the proxy stops the command too (a sleep of 60 s is not waited for).
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}
