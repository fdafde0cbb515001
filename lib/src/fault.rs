//! A fault switch for crash tests: with `TOLLGATE_FAULT_POINT=<name>` in its
//! environment, the process aborts when it reaches the point of that name,
//! as if it had been killed there. Unset, each point costs one comparison.

use std::sync::OnceLock;

/// The variable that names the point to die at.
pub const FAULT_POINT_VAR: &str = "TOLLGATE_FAULT_POINT";

/// Aborts the process if the fault switch names `name`.
pub fn point(name: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var(FAULT_POINT_VAR).ok());
    if armed.as_deref() == Some(name) {
        eprintln!("fault switch: aborting at {name}");
        std::process::abort();
    }
}
