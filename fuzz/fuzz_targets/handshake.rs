//! The daemon's startup and authentication state machine (`session::handshake`) fed arbitrary
//! client bytes in arbitrary pieces, under each auth method. It must never panic, never loop
//! without asking for input, never send more than a handshake's worth of bytes, and stay over
//! once it has closed or finished. One config looks up roles it does not list (`[auth] user`),
//! as auth_query does, and finds a verifier for names of odd length.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use pgpilot::session::handshake::{Action, Handshake};
use pgpilot::Config;
use pgpilot_protocol::scram::ScramSecret;

/// A handshake sends a few small messages; anything near this means something runs away.
const MAX_SENT: usize = 64 * 1024;
/// Steps between two reads: each read is consumed by a handful of steps.
const MAX_STEPS_PER_READ: usize = 64;

fn config(method: usize) -> &'static Config {
    static CONFIGS: OnceLock<Vec<Arc<Config>>> = OnceLock::new();
    let configs = CONFIGS.get_or_init(|| {
        // The last one looks up roles it does not list, logging in to the server as app.
        let methods = [
            ("scram-sha-256", ""),
            ("md5", ""),
            ("trust", ""),
            ("scram-sha-256", "user = \"app\"\n"),
        ];
        methods
            .iter()
            .map(|(m, lookup)| {
                let text = format!(
                    "[auth]\nmethod = \"{m}\"\n{lookup}\n[[users]]\nname = \"app\"\npassword = \"app\"\n\n\
                     [[backends]]\nname = \"p\"\nhost = \"127.0.0.1\"\nrole = \"primary\"\n"
                );
                Config::parse(&text, std::path::Path::new("fuzz.toml")).expect("a valid config")
            })
            .collect()
    });
    &configs[method % configs.len()]
}

/// The verifier a lookup finds: derived once (PBKDF2 is slow), cloned for every lookup.
fn looked_up() -> ScramSecret {
    static SECRET: OnceLock<ScramSecret> = OnceLock::new();
    SECRET
        .get_or_init(|| ScramSecret::derive(b"dyn", b"fuzz salt", 4096))
        .clone()
}

fuzz_target!(|data: &[u8]| {
    // First byte: auth method and whether admission succeeds; second: the size of each piece.
    let [how, piece, rest @ ..] = data else {
        return;
    };
    let mut hs = Handshake::new(config(usize::from(*how)));
    let admit = how & 0x80 == 0;
    let piece = usize::from(*piece).max(1);
    let mut input = rest.chunks(piece);
    let (mut sent, mut steps) = (0usize, 0usize);
    loop {
        steps += 1;
        assert!(
            steps <= MAX_STEPS_PER_READ,
            "steps without asking for input"
        );
        match hs.step() {
            Action::Send(bytes) => {
                assert!(!bytes.is_empty(), "an empty send");
                sent += bytes.len();
            }
            Action::Read => match input.next() {
                Some(chunk) => {
                    hs.input.extend_from_slice(chunk);
                    steps = 0;
                }
                None => return,
            },
            Action::Admit => hs.admitted(admit),
            // What the server answers for a role pgpilot does not list.
            Action::LookUp { user, .. } => hs.looked_up((user.len() % 2 == 1).then(looked_up)),
            // The fuzz config offers no TLS; were it to, the shell would run the handshake.
            Action::StartTls(answer) => {
                assert_eq!(answer.as_ref(), b"S");
                hs.tls_started();
            }
            Action::Cancel { .. } | Action::Close(_) | Action::Done(_) => {
                // Over is over: the machine says close, with nothing more to send.
                assert!(matches!(hs.step(), Action::Close(b) if b.is_empty()));
                break;
            }
        }
        assert!(sent <= MAX_SENT, "sent {sent} bytes in a handshake");
    }
});
