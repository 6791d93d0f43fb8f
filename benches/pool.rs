//! Pool checkout and checkin on one core, the step every transaction-mode unit takes twice.
//! The pool's connections are real TCP connections to a minimal server in this process that
//! accepts any login (trust); after the first checkout no I/O happens, so the bench measures
//! the permit, the idle list and the freshness checks. Run with `cargo bench --bench pool`.

// The bench drives criterion from inside a monoio runtime; nothing here blocks a core that
// serves anyone else.
#![allow(clippy::disallowed_methods)]

use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use criterion::Criterion;
use futures_lite::future;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpListener;
use pgpilot::pool::{Pool, PoolKey};
use pgpilot_protocol::backend::TransactionStatus;
use pgpilot_protocol::encode;

/// Accepts connections forever and greets each login as a trusting PostgreSQL would.
async fn trusting_server(listener: TcpListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        monoio::spawn(async move {
            let (res, _) = stream.read(vec![0u8; 512]).await;
            if res.is_err() {
                return;
            }
            let mut out = BytesMut::new();
            encode::auth_ok(&mut out);
            encode::backend_key_data(&mut out, 1, 2);
            encode::ready_for_query(&mut out, TransactionStatus::Idle);
            if stream.write_all(out).await.0.is_err() {
                return;
            }
            // Hold the connection until the pool closes it.
            let mut sink = vec![0u8; 64];
            loop {
                let (res, buf) = stream.read(sink).await;
                sink = buf;
                if !matches!(res, Ok(n) if n > 0) {
                    break;
                }
            }
        });
    }
}

fn main() {
    pgpilot::worker::block_on(async {
        let mut c = Criterion::default().configure_from_args();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        monoio::spawn(trusting_server(listener));
        let key = PoolKey {
            backend_id: 0,
            user: Rc::from("app"),
            database: Rc::from("app"),
        };
        let hour = Duration::from_secs(3600);
        let pool = Pool::new(
            key,
            None,
            Some(addr),
            4,
            hour,
            hour,
            pgpilot::pool::Dial {
                tcp: Default::default(),
                tls: pgpilot::tls::BackendTls::disabled(),
            },
        );
        // Connect once; every later checkout finds the connection idle.
        let first = pool.checkout(hour).await.expect("first checkout connects");
        pool.checkin(first);
        c.bench_function("pool checkout + checkin (idle connection)", |b| {
            b.iter(|| {
                // Resolves on its first poll: a free permit and an idle connection.
                let backend = future::block_on(pool.checkout(hour)).expect("idle backend");
                pool.checkin(backend);
            })
        });
        assert_eq!(pool.idle_count(), 1, "the connection went back every time");
        c.final_summary();
    });
}
