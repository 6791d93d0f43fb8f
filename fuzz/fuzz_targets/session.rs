//! The session core (`session::Session`) fed arbitrary client bytes in arbitrary pieces,
//! against the scripted backend of `session::script`, in both pool modes, with the backend's
//! connection lost at an arbitrary point. It must never panic, never keep moving without input
//! (the script panics then), send the client only whole, valid frames, and answer in
//! proportion to what it was sent.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use pgpilot::session::script::Script;
use pgpilot::Config;
use pgpilot_protocol::frame::FrameScan;

/// Answers a client can cause per byte it sends: a 5-byte Sync costs a 6-byte ReadyForQuery,
/// a short refused Query an ErrorResponse of about a hundred bytes.
const ANSWER_PER_BYTE: usize = 64;
/// Plus what a session says without being asked (ParameterStatus of a new backend).
const ANSWER_BASE: usize = 64 * 1024;

fn config(mode: usize) -> Arc<Config> {
    static CONFIGS: OnceLock<Vec<Arc<Config>>> = OnceLock::new();
    let configs = CONFIGS.get_or_init(|| {
        ["transaction", "session"]
            .iter()
            .map(|m| {
                let text = Script::config(m) + "\n[routing]\nmax_client_statements = 8\n";
                Config::parse(&text, std::path::Path::new("fuzz.toml")).expect("a valid config")
            })
            .collect()
    });
    configs[mode % configs.len()].clone()
}

fuzz_target!(|data: &[u8]| {
    // First byte: pool mode and whether the backend stays silent; second: the piece size;
    // third: after which piece the backend's connection is lost (0: never).
    let [how, piece, lose, rest @ ..] = data else {
        return;
    };
    let mut script = Script::with(config(usize::from(*how & 1)));
    script.mute = how & 2 != 0;
    let piece = usize::from(*piece).max(1);
    let mut sent = 0usize;
    for (n, chunk) in rest.chunks(piece).enumerate() {
        sent += chunk.len();
        if script.send(chunk).is_err() || script.terminated {
            break;
        }
        if n + 1 == usize::from(*lose) && script.lose_backend().is_err() {
            break;
        }
    }
    script.mute = false;
    let _ = script.run();
    script.finish();
    let mut scan = FrameScan::new(&script.received, u32::MAX);
    for _ in &mut scan {}
    assert!(scan.error().is_none(), "the client got a malformed frame");
    assert!(
        script.received.len() <= ANSWER_BASE + sent * ANSWER_PER_BYTE,
        "{} bytes answered for {sent} sent",
        script.received.len()
    );
});
