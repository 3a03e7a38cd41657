//! Whatever a controller answers to a status read: each shipped profile decodes it into an
//! observation or refuses it, never panics, and what it decodes encodes back to a block it
//! decodes the same way.
#![no_main]

use std::sync::OnceLock;

use gatehouse_adapters::profile::ProfileSet;
use libfuzzer_sys::fuzz_target;

fn profiles() -> &'static ProfileSet {
    static SET: OnceLock<ProfileSet> = OnceLock::new();
    SET.get_or_init(|| ProfileSet::builtin().expect("the built-in profiles"))
}

fuzz_target!(|data: &[u8]| {
    let words: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    for id in ["generic", "came-zlb30", "ha-cover"] {
        let profile = profiles().get(id).expect("shipped");
        if let Ok(observation) = profile.decode(&words) {
            let again = profile.decode(&profile.encode(&observation));
            assert_eq!(again.as_ref().ok(), Some(&observation), "{id}");
        }
    }
});
