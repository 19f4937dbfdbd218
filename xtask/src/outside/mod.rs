//! Everything that talks to the world outside the runner: processes (and the dry-run
//! policy that decides whether they run), Docker and Compose, images, HTTP, the stack's
//! state on this host (files and locks), and the other tools it uses. Nothing here knows
//! about releases, targets or checks: the release history is a file to it.

pub mod docker;
pub mod http;
pub mod image;
pub mod local_service;
pub mod platform;
pub mod process;
pub mod proxy;
pub mod registry;
pub mod state;
pub mod tools;
pub mod trivy;
pub mod webhook;
