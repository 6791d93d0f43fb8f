//! pgpilot's own commands: `SHOW BACKENDS`, `SHOW EVENTS`, `SHOW ROUTES`.

use pgpilot_protocol::classify::Reason;

use super::{num, role_name, text, utc};
use crate::admin::{CoreReport, EventRecord, PlaneReport, Table, INT4, INT8, NUMERIC, TEXT};

pub fn backends(p: &PlaneReport) -> Table {
    let rows = p
        .backends
        .iter()
        .filter(|b| !b.removed)
        .map(|b| {
            vec![
                text(b.name.clone()),
                text(format!("{}:{}", b.host, b.port)),
                b.addr.map(|a| a.to_string()),
                text(role_name(b.role)),
                text(b.status.to_string()),
                num(b.weight),
                text(format!("{:.3}", p.read_share(b))),
                b.lag_bytes.map(|l| l.to_string()),
                b.replay_delay_ms
                    .map(|d| format!("{:.3}", d as f64 / 1000.0)),
                b.answer.map(|a| format!("{:.3}", a.as_secs_f64() * 1000.0)),
                b.last_check.map(utc),
                num(b.failures),
                text(match (b.detached_by_hand, b.cause.as_str()) {
                    (false, cause) => cause.to_owned(),
                    (true, "") => "DETACH from the admin console (ATTACH undoes it)".to_owned(),
                    (true, cause) => {
                        format!("DETACH from the admin console (ATTACH undoes it); {cause}")
                    }
                }),
                num(p.epoch),
            ]
        })
        .collect();
    Table {
        columns: vec![
            ("name", TEXT),
            ("host", TEXT),
            ("address", TEXT),
            ("role", TEXT),
            ("state", TEXT),
            ("weight", INT4),
            ("share", NUMERIC),
            ("lag_bytes", INT8),
            ("lag_seconds", NUMERIC),
            ("check_ms", NUMERIC),
            ("last_check", TEXT),
            ("failures", INT4),
            ("cause", TEXT),
            ("epoch", INT8),
        ],
        rows,
    }
}

pub fn events(p: &PlaneReport) -> Table {
    let row = |e: &EventRecord| {
        vec![
            text(utc(e.at)),
            text(e.event.clone()),
            text(e.backend.clone()),
            text(e.from.clone()),
            text(e.to.clone()),
            text(e.cause.clone()),
        ]
    };
    Table {
        columns: vec![
            ("time", TEXT),
            ("event", TEXT),
            ("backend", TEXT),
            ("from", TEXT),
            ("to", TEXT),
            ("cause", TEXT),
        ],
        rows: p.events.iter().map(row).collect(),
    }
}

/// `SHOW ROUTES`: statements sent since start (each simple Query or Parse counts once, as the
/// classifier routes it whole), summed over the cores, by the classifier's target and the rule
/// that decided it (read-your-writes, a rule or a pin may still have sent a replica's statement
/// to the primary).
pub fn routes(reports: &[CoreReport]) -> Table {
    let mut rows = Vec::new();
    for reason in Reason::ALL {
        for (side, target) in ["primary", "replica"].iter().enumerate() {
            let n: u64 = (reports.iter())
                .filter_map(|r| r.routes.get(reason.index())?.get(side))
                .sum();
            if n > 0 {
                rows.push(vec![text(*target), text(reason.as_str()), num(n)]);
            }
        }
    }
    Table {
        columns: vec![("target", TEXT), ("reason", TEXT), ("statements", INT8)],
        rows,
    }
}
