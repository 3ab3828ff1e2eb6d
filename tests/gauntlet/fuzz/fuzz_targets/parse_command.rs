//! Argument parsing of every VT.* command (`vtasks::fuzzing::parse_command`: the validation each
//! handler runs before it touches a key). Untrusted client input: a panic there fails the command
//! (counted as an internal error), an unbounded loop stalls the server. Input: the first byte picks
//! the command name (or, past the list, the first argument is taken as the name verbatim), the rest
//! is the argument vector split on NUL bytes. Properties: no panic; a refusal is an `ERR ...` reply;
//! the verdict does not depend on the case of the command name.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vtasks::fuzzing::parse_command;

const NAMES: [&str; 16] = [
    "VT.ENQUEUE", "VT.FETCHBATCH", "VT.ACK", "VT.FAIL", "VT.RESCUE", "VT.EXTEND", "VT.INFO",
    "VT.QUEUES", "VT.GET", "VT.PEEK", "VT.RETRYDEAD", "VT.DELETE", "VT.CLEAR", "VT.SCHEDULE",
    "vt.enqueue", "vt.schedule",
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let mut argv: Vec<&[u8]> = Vec::new();
    if (sel as usize) < NAMES.len() * 8 {
        argv.push(NAMES[sel as usize % NAMES.len()].as_bytes());
    }
    if !rest.is_empty() {
        argv.extend(rest.split(|&b| b == 0));
    }
    if argv.len() > 4096 {
        return;
    }
    let got = parse_command(&argv);
    if let Err(e) = &got {
        assert!(e.starts_with("ERR "), "refusal is not an ERR reply: {e:?}");
    }
    if let Some(name) = argv.first() {
        let flipped: Vec<u8> = name
            .iter()
            .map(|c| if c.is_ascii_uppercase() { c.to_ascii_lowercase() } else { c.to_ascii_uppercase() })
            .collect();
        let mut v2 = argv.clone();
        v2[0] = &flipped;
        assert_eq!(got.is_ok(), parse_command(&v2).is_ok(), "verdict depends on the case of {name:?}");
    }
});
