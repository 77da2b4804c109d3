//! The xl.cfg reader (what the simulated driver checks configs with): any bytes must be
//! read or refused, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vw_node::xen::config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = config::read(text);
    let _ = config::check(text);
});
