//! Every subcommand, one module each with `run(self, sh)`: building, running and
//! inspecting the stack, its data and its monitoring, publishing, and the pipeline that
//! runs every check. The static checks are in `checks/`, the live drills and their
//! harness in `drills/`.

pub mod backup;
pub mod bench;
pub mod build;
pub mod checks;
pub mod ci;
pub mod ci_cache;
pub mod completions;
pub mod deploy;
pub mod doctor;
pub mod down;
pub mod drills;
pub mod lock;
pub mod logs;
pub mod monitoring;
pub mod publish;
pub mod restore;
pub mod rollback;
pub mod sbom;
pub mod status;
pub mod up;
