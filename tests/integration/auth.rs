//! Client authentication (SCRAM, MD5, trust) and backend authentication (SCRAM, MD5,
//! cleartext, trust).

use crate::common::{self, Opts};
use crate::raw::Raw;

#[test]
fn wrong_password_and_unknown_user_get_28p01() {
    let Some(c) = common::cluster() else { return };
    for auth in ["scram-sha-256", "md5"] {
        let proxy = common::proxy(
            c,
            &Opts {
                auth,
                ..Opts::default()
            },
        );
        let port = proxy.addr().port();
        let e = postgres::Client::connect(&common::dsn(port, "app", "wrong"), postgres::NoTls)
            .err()
            .unwrap();
        assert_eq!(common::sqlstate(&e), "28P01", "{auth}");
        assert_eq!(
            e.as_db_error().unwrap().message(),
            "password authentication failed for user \"app\""
        );
        let e = postgres::Client::connect(&common::dsn(port, "nobody", "x"), postgres::NoTls)
            .err()
            .unwrap();
        assert_eq!(common::sqlstate(&e), "28P01", "{auth}: no user enumeration");
        assert_eq!(
            e.as_db_error().unwrap().message(),
            "password authentication failed for user \"nobody\"",
            "{auth}: the same words as for a wrong password"
        );
        let mut ok =
            postgres::Client::connect(&common::dsn(port, "app", "app"), postgres::NoTls).unwrap();
        assert_eq!(
            ok.query_one("SELECT current_user::text", &[])
                .unwrap()
                .get::<_, String>(0),
            "app"
        );
    }
}

#[test]
fn trust_lets_listed_users_in_and_refuses_others() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            auth: "trust",
            ..Opts::default()
        },
    );
    let mut ok = postgres::Client::connect(
        &common::dsn(proxy.addr().port(), "app", "anything"),
        postgres::NoTls,
    )
    .unwrap();
    assert_eq!(ok.query_one("SELECT 1", &[]).unwrap().get::<_, i32>(0), 1);
    let e = Raw::connect(proxy.addr(), "nobody", "", &[]).err().unwrap();
    assert_eq!(e.0, "28000");
}

#[test]
fn backends_accept_every_password_method() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(c, &Opts::default());
    for (user, password, _, _) in pgpilot::cluster::ROLES {
        let mut client = postgres::Client::connect(
            &common::dsn(proxy.addr().port(), user, password),
            postgres::NoTls,
        )
        .unwrap_or_else(|e| panic!("{user}: {e}"));
        let row = client.query_one("SELECT current_user::text", &[]).unwrap();
        assert_eq!(row.get::<_, String>(0), *user);
        client.batch_execute("BEGIN; SELECT 1; COMMIT").unwrap();
    }
}

#[test]
fn unknown_database_gets_3d000() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(c, &Opts::default());
    let dsn = format!(
        "host=127.0.0.1 port={} user=app password=app dbname=nosuchdb",
        proxy.addr().port()
    );
    let e = postgres::Client::connect(&dsn, postgres::NoTls)
        .err()
        .unwrap();
    assert_eq!(common::sqlstate(&e), "3D000");
}
