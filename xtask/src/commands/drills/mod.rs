//! Live drills: each rehearses a promise on a real engine (a throwaway stack, swarm,
//! registry or object store), with client traffic where the promise is about requests,
//! through the shared [`harness`].

pub mod drill;
pub mod fault_drill;
pub mod harness;
pub mod monitoring_smoke;
pub mod platform_smoke;
pub mod recovery_drill;
pub mod release_drill;
pub mod schema_drill;
pub mod smoke;
pub mod swarm_drill;
