//! Checks and drills: each proves something about the product on real tools or a real
//! engine, reporting PASS/FAIL through the one [`harness`].

pub mod advisories;
pub mod audit;
pub mod coverage;
pub mod drill;
pub mod fault_drill;
pub mod harness;
pub mod lint;
pub mod monitoring_smoke;
pub mod recovery_drill;
pub mod release_drill;
pub mod scan;
pub mod schema_drill;
pub mod smoke;
pub mod swarm_drill;
