//! The online mode's database side: PostgreSQL's own logical replication,
//! as cutover uses it. A publication and a slot on the side that is
//! written, a subscription on the other, a sentinel row to know the stream
//! has caught up, and the read-only default for the roles the CONNECT fence
//! cannot keep off. Nothing here is home-made replication: the server
//! streams and applies; cutover creates, watches and drops its objects.
//!
//! - [`readiness`]: whether both servers can run the online mode (the
//!   plan's check);
//! - [`replicate`]: the stage that copies under an exported snapshot and
//!   starts the forward stream;
//! - [`publication`], [`slot`], [`subscription`]: the three objects of a
//!   stream;
//! - [`sentinel`]: the proof that a stream caught up, and the sequences it
//!   does not carry;
//! - [`read_only`]: the default that stops the roles no fence stops;
//! - [`leftovers`]: what of all this exists now, and removing it.
//!
//! Names are fixed (one run at a time per target), so that every later run,
//! rollback or decommission finds what an earlier, killed one left:
//! `cutover_forward` (publication and slot on the source, subscription on
//! the target) and `cutover_reverse` (publication and slot on the target,
//! subscription on the source).

pub mod leftovers;
pub mod publication;
pub mod read_only;
pub mod readiness;
pub mod replicate;
pub mod sentinel;
pub mod slot;
pub mod subscription;

pub use cutover_core::objects::{FORWARD, REVERSE};
