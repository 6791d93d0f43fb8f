//! Micro-benchmarks of the hot path: frame splitting, SQL classification, the SCRAM server
//! exchange. Run with `cargo bench --bench hot_path`; compare numbers from one machine only.

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use pgpilot_protocol::classify::classify;
use pgpilot_protocol::encode;
use pgpilot_protocol::frame::{split_frame, FrameScan};
use pgpilot_protocol::scram::{ScramClient, ScramSecret, ScramServer};

/// What a backend sends for a 10-row SELECT in the extended protocol.
fn result_set() -> BytesMut {
    let mut buf = BytesMut::new();
    encode::command_complete(&mut buf, b"PARSE"); // stands in for ParseComplete-sized frames
    for i in 0..10 {
        let row = format!("row {i} with some text in it");
        let mut body = BytesMut::new();
        body.extend_from_slice(&1u16.to_be_bytes());
        body.extend_from_slice(&(row.len() as i32).to_be_bytes());
        body.extend_from_slice(row.as_bytes());
        buf.extend_from_slice(b"D");
        buf.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        buf.extend_from_slice(&body);
    }
    encode::command_complete(&mut buf, b"SELECT 10");
    encode::ready_for_query(&mut buf, pgpilot_protocol::backend::TransactionStatus::Idle);
    buf
}

fn framing(c: &mut Criterion) {
    let wire = result_set();
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("split_frame", |b| {
        b.iter(|| {
            let mut buf = wire.clone();
            let mut n = 0;
            while let Ok(Some(f)) = split_frame(&mut buf, 1 << 30) {
                n += f.bytes.len();
            }
            black_box(n)
        })
    });
    g.bench_function("scan", |b| {
        b.iter(|| black_box(FrameScan::new(black_box(&wire), 1 << 30).count()))
    });
    g.finish();
}

fn classification(c: &mut Criterion) {
    let typical: &[&[u8]] = &[
        b"SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        b"UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        b"SELECT u.id, u.name FROM users u JOIN orders o ON o.user_id = u.id WHERE o.created_at > now() - interval '1 day' /* dashboard */",
        b"WITH recent AS (SELECT * FROM events WHERE ts > $1) SELECT count(*) FROM recent",
        b"BEGIN READ ONLY",
        b"SELECT nextval('orders_id_seq')",
    ];
    let corpus: Vec<&[u8]> = pgpilot_protocol::classify::corpus::statements()
        .map(str::as_bytes)
        .collect();
    let mut g = c.benchmark_group("classify");
    for (name, set) in [("typical", typical), ("routing_corpus", &corpus[..])] {
        g.throughput(Throughput::Elements(set.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                for sql in set {
                    black_box(classify(black_box(sql)));
                }
            })
        });
    }
    g.finish();
}

fn scram(c: &mut Criterion) {
    let secret = ScramSecret::derive(b"app", b"0123456789abcdef", 4096);
    // The server's first step: parse client-first, make a nonce, answer. (The final step needs
    // a client proof for that nonce, which costs the client a PBKDF2; see scram_full_login.)
    c.bench_function("scram_server_first", |b| {
        let (_, first) = ScramClient::new(b"app");
        b.iter(|| {
            let mut server = ScramServer::new(&secret);
            black_box(
                server
                    .handle_client_first(black_box(&first))
                    .expect("valid first"),
            )
        })
    });
    // Both sides of a whole login with a pre-derived server secret: what a churning client
    // costs the proxy plus the client's own key derivation.
    c.bench_function("scram_full_login", |b| {
        b.iter(|| {
            let mut server = ScramServer::new(&secret);
            let (mut client, first) = ScramClient::new(b"app");
            let sf = server.handle_client_first(&first).expect("valid first");
            let cf = client
                .handle_server_first(sf.as_bytes())
                .expect("valid server first");
            let fin = server.handle_client_final(&cf).expect("right password");
            client
                .verify_server_final(fin.as_bytes())
                .expect("server proves itself")
        })
    });
}

criterion_group!(benches, framing, classification, scram);
criterion_main!(benches);
