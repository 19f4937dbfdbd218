//! The day-to-day subcommands: building, running and inspecting the stack, its data and
//! its monitoring, publishing, and the pipeline that runs every check.

pub mod backup;
pub mod bench;
pub mod build;
pub mod ci;
pub mod ci_cache;
pub mod completions;
pub mod deploy;
pub mod doctor;
pub mod down;
pub mod lock;
pub mod logs;
pub mod monitoring;
pub mod publish;
pub mod restore;
pub mod rollback;
pub mod sbom;
pub mod status;
pub mod up;
