//! Workspace documents are operator input, possibly from elsewhere: any bytes must give
//! a spec or an error with a position inside the document, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vw_node::workspace;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match workspace::parse(text, "fuzz.xml") {
        Ok(spec) => {
            // A valid spec expands into VMs with unique names.
            let vms = spec.vms();
            let mut names: Vec<String> = vms.iter().map(|vm| spec.vm_name(vm)).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), vms.len());
        }
        Err(e) => {
            if let Some(at) = e.position() {
                let lines = text.split('\n').count() as u32;
                assert!(at.line >= 1 && at.line <= lines.max(1), "{e}");
            }
        }
    }
});
