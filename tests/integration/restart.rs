//! A restart no client notices: in a network namespace of this test's own (so that its
//! `net.ipv4.tcp_migrate_req` is the test's to set), pgbench opens a new connection for every
//! transaction through pgpilot A; a second pgpilot B starts on the same address (SO_REUSEPORT),
//! then A gets SIGTERM. A closes its listeners at once (the kernel moves the connections queued
//! on them to B's), finishes the startups it had accepted, and exits 0; no pgbench client sees
//! a refused or reset connection. Then B gets a real SIGHUP (a weight changed in its file) and
//! the console's SHUTDOWN.

use std::process::Command;

/// The restart, as a script run in a new network namespace; prints what the test checks.
const SCRIPT: &str = r#"
set -u
ip link set lo up
echo 1 > /proc/sys/net/ipv4/tcp_migrate_req
D=$(mktemp -d /tmp/pgpilot-restart.XXXXXX); chmod 755 "$D"
trap 'kill -INT $DEMO 2>/dev/null; wait $DEMO 2>/dev/null; rm -rf "$D"' EXIT
"$BIN" demo --dir "$D/demo" --port 18431 > "$D/demo.log" 2>&1 &
DEMO=$!
for _ in $(seq 1 600); do grep -q '^config:' "$D/demo.log" && break; sleep 0.1; done
grep -q '^config:' "$D/demo.log" || { echo "demo did not start"; cat "$D/demo.log"; exit 1; }
sed -e 's/^listen = .*/listen = "127.0.0.1:18432"/' "$D/demo/pgpilot.toml" > "$D/p.toml"
"$BIN" --config "$D/p.toml" > "$D/a.log" 2>&1 &
A=$!
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/18432) 2>/dev/null && break; sleep 0.1; done
echo 'SELECT 1;' > "$D/select.sql"
PGPASSWORD=app pgbench -C -n -c 8 -T 6 -f "$D/select.sql" -h 127.0.0.1 -p 18432 -U app app \
  > "$D/pgbench.out" 2>&1 &
LOAD=$!
sleep 2
"$BIN" --config "$D/p.toml" > "$D/b.log" 2>&1 &
B=$!
sleep 1
kill -TERM $A
wait $A; echo "old exited $?"
wait $LOAD; echo "pgbench exited $?"
cat "$D/pgbench.out"
# A real SIGHUP: replica2's weight 1 -> 3 in the file, read back from B's console.
sed -i '/^name = "replica2"$/,/^weight = / s/^weight = 1$/weight = 3/' "$D/p.toml"
kill -HUP $B
for _ in $(seq 1 50); do
  PGPASSWORD=admin psql -X -Atq -h 127.0.0.1 -p 18432 -U admin -d pgpilot -c 'SHOW BACKENDS' \
    > "$D/backends.out" 2>&1
  grep -q '^replica2|\([^|]*|\)\{4\}3|' "$D/backends.out" && break
  sleep 0.1
done
sed 's/^/after SIGHUP: /' "$D/backends.out"
grep -m1 'event=reload ' "$D/b.log"
# The console's SHUTDOWN ends B as SIGTERM does.
PGPASSWORD=admin psql -X -q -h 127.0.0.1 -p 18432 -U admin -d pgpilot -c 'SHUTDOWN'
wait $B; echo "new exited $?"
"#;

#[test]
fn a_new_process_takes_over_and_no_connecting_client_is_refused_or_reset() {
    // Starts its own demo cluster inside the namespace: no shared cluster needed.
    let out = Command::new("unshare")
        .args(["--net", "bash", "-c", SCRIPT])
        .env("BIN", env!("CARGO_BIN_EXE_pgpilot"))
        .output()
        .expect("unshare runs (util-linux; root)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}");
    assert!(
        text.contains("old exited 0"),
        "the old process exits 0:\n{text}"
    );
    assert!(
        text.contains("new exited 0"),
        "the new process serves, and stops on the console's SHUTDOWN:\n{text}"
    );
    // SIGHUP to the running binary: the file's new weight is in force, and the reload is an
    // event in its log.
    let weight = text
        .lines()
        .find_map(|l| l.strip_prefix("after SIGHUP: replica2|"))
        .and_then(|row| row.split('|').nth(4));
    assert_eq!(weight, Some("3"), "replica2's weight after SIGHUP:\n{text}");
    assert!(text.contains("event=reload "), "{text}");
    assert!(
        text.contains("pgbench exited 0"),
        "no pgbench client aborted:\n{text}"
    );
    assert!(!text.contains("aborted"), "{text}");
    let done: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next()?.trim().parse().ok())
        .expect("pgbench's count");
    assert!(done > 100, "{done} connections");
    let failed = text
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|n| n.split_whitespace().next()?.parse::<u64>().ok());
    assert_eq!(failed, Some(0), "{text}");
}
