//! Checks that need no running stack: each proves something about the product's files,
//! image or code with real tools, reporting PASS/FAIL through [`report`].

pub mod advisories;
pub mod audit;
pub mod coverage;
pub mod lint;
pub mod report;
pub mod scan;
