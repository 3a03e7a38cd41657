//! A register profile file as an integrator writes it: parsed and validated, or refused with
//! an error naming the file, never a panic. A profile that parses can encode and decode its
//! own observations.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match gatehouse_adapters::profile::Profile::parse("fuzz", "fuzz.toml", text) {
        Ok(profile) => {
            let block = vec![0u16; 64];
            let _ = profile.decode(&block);
        }
        Err(e) => assert!(e.to_string().contains("fuzz"), "{e}"),
    }
});
