//! Runs the SQL classifier and the statement readers beside it over arbitrary text, and checks
//! that they agree with each other where their documents say they must.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgpilot_protocol::classify::{
    analyze, classify, classify_with, deallocate, drops_all_statements, hint, lone_default_begin,
    lone_transaction_end, session_effect, set_transaction_read_only, setting_changes, Deallocate,
    Functions, Reason, SessionEffect, SettingChange, Target,
};

/// Reasons that only ever send a statement to the primary, and those that allow a replica.
const PRIMARY_ONLY: &[Reason] = &[
    Reason::LockingClause,
    Reason::SelectInto,
    Reason::WriteCte,
    Reason::WriteFunction,
    Reason::Write,
    Reason::Empty,
    Reason::Unparsed,
    Reason::HintRefused,
];

fuzz_target!(|sql: &[u8]| {
    let functions = Functions::default();
    let (route, effect) = analyze(sql, &functions);
    assert_eq!(classify(sql), route);
    assert_eq!(classify_with(sql, &functions), route);
    assert!(!route.reason.as_str().is_empty());
    if PRIMARY_ONLY.contains(&route.reason) {
        assert_eq!(route.target, Target::Primary, "{:?}", route.reason);
    } else if route.reason != Reason::Hint {
        assert_eq!(route.target, Target::Replica, "{:?}", route.reason);
    }
    match hint(sql) {
        Some(Target::Primary) => assert_eq!(route.reason, Reason::Hint),
        Some(Target::Replica) => {
            assert!(matches!(route.reason, Reason::Hint | Reason::HintRefused))
        }
        None => assert!(!matches!(route.reason, Reason::Hint | Reason::HintRefused)),
    }
    // `analyze` stops at text it cannot follow; `session_effect` also counts that statement.
    assert!(effect <= session_effect(sql), "{effect:?}");

    if route.target == Target::Replica {
        // A read stays a read only on its own: a write after it, in the same text, wins. The
        // newline ends a trailing `--` comment; anything else open would have made it Unparsed.
        let mut more = sql.to_vec();
        more.extend_from_slice(b"\n;INSERT INTO t VALUES (1)");
        assert_eq!(
            classify(&more).target,
            Target::Primary,
            "write after a read"
        );
        let mut forced = b"/* pgpilot:primary */ ".to_vec();
        forced.extend_from_slice(sql);
        assert_eq!(classify(&forced), analyze(&forced, &functions).0);
        assert_eq!(
            classify(&forced).target,
            Target::Primary,
            "primary hint ignored"
        );
    }

    // `drops_all_statements` looks at word pairs anywhere in the text, so it may say more than
    // `deallocate`, which reads one whole statement; it must never say less.
    let (_, deallocate_all) = drops_all_statements(sql);
    // The readers of lone statements act on text PostgreSQL will run, so none of them may
    // accept text the lexer could not follow (an unterminated string or comment).
    let unparsed = hint(sql).is_none() && route.reason == Reason::Unparsed;
    if let Some(d) = deallocate(sql) {
        assert!(!unparsed, "deallocate accepted unparsable text");
        assert_eq!(session_effect(sql), SessionEffect::Discard);
        assert!(deallocate_all || d != Deallocate::All, "{d:?}");
        if let Deallocate::Name(n) = d {
            assert!(!n.is_empty() || sql.contains(&b'"'));
        }
    }

    if let Some(changes) = setting_changes(sql) {
        assert!(!unparsed, "setting_changes accepted unparsable text");
        if !changes.is_empty() {
            assert!(session_effect(sql) >= SessionEffect::Settings);
        }
        for c in &changes {
            match c {
                SettingChange::Set { name, .. } => {
                    assert!(!name.is_empty(), "{c:?}");
                    assert_eq!(name, &name.to_ascii_lowercase());
                }
                SettingChange::Reset { name } => assert!(!name.is_empty()),
                SettingChange::ResetAll => {}
            }
        }
    }

    if lone_default_begin(sql) {
        assert!(!unparsed, "lone_default_begin accepted unparsable text");
        assert_eq!(
            route.target,
            Target::Primary,
            "a default BEGIN went to a replica"
        );
        assert_eq!(session_effect(sql), SessionEffect::None);
    }
    if let Some(commit) = lone_transaction_end(sql) {
        assert!(!unparsed, "lone_transaction_end accepted unparsable text");
        if hint(sql).is_none() {
            assert_eq!(route.reason, Reason::TransactionEnd, "commit={commit}");
        }
        assert_eq!(session_effect(sql), SessionEffect::None);
    }
    if set_transaction_read_only(sql) {
        assert!(
            !unparsed,
            "set_transaction_read_only accepted unparsable text"
        );
        // It checks the words that matter, not the whole syntax (the artifact
        // crash-9f89a08c… has a lock function call after READ ONLY): only the route is sure.
        assert_eq!(route.target, Target::Primary);
    }
});
