//! The names of the objects cutover creates on the servers and must find
//! again in every later run, rollback or decommission (one run at a time
//! per target, so the names are fixed). Here, not beside the code that
//! creates them, because the copy must also recognise them in a dump.

/// Source -> target: publication and slot on the source, subscription on the target.
pub const FORWARD: &str = "cutover_forward";
/// Target -> source, during the rollback window.
pub const REVERSE: &str = "cutover_reverse";
