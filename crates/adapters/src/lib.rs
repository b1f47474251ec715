//! Ready-made adapters for [`snakepit_core`] pools.
//!
//! - [`GenericPython`], [`GenericJavaScript`], [`GenericRuby`]: the bundled
//!   bridges with the generic commands (`ping`, `echo`, `compute`, `info`,
//!   and in Node `random`). The bridge files are embedded in this crate and
//!   written once to a cache directory, so they work from any project.
//! - [`Bridge`]: a script or module of your own in Python, Node.js or Ruby,
//!   with the bundled bridge importable (`import snakepit_bridge`,
//!   `require('snakepit-bridge')`, `require 'snakepit_bridge'`) and
//!   interpreter discovery.
//! - [`Custom`]: any other executable that speaks the protocol.
//!
//! ```no_run
//! use serde_json::json;
//! use snakepit_adapters::GenericPython;
//! use snakepit_core::Pool;
//!
//! # async fn demo() -> Result<(), snakepit_core::Error> {
//! let pool = Pool::builder(GenericPython).size(2).start().await?;
//! let r = pool.execute("compute", json!({"operation": "multiply", "a": 10, "b": 5})).await?;
//! assert_eq!(r["result"], 50);
//! pool.shutdown().await
//! # }
//! ```
//!
//! Interpreters are found in this order: the path given to
//! [`Bridge::interpreter`]; the variable `SNAKEPIT_PYTHON`, `SNAKEPIT_NODE`
//! or `SNAKEPIT_RUBY`; for Python, the active virtualenv (`VIRTUAL_ENV`);
//! then `python3`, `node` or `ruby` on `PATH`. A missing interpreter or
//! script fails the pool's start with an error naming it and carrying the
//! worker's stderr. [`Language::inspect`] reports what a machine has: the
//! interpreter, its version and real binary, and the bridge packages.

mod bridge;
mod custom;
mod embedded;
mod inspect;
mod language;
mod policy;

pub use bridge::{Bridge, GenericJavaScript, GenericPython, GenericRuby};
pub use custom::Custom;
pub use inspect::{BridgePackage, Inspection};
pub use language::Language;

/// The README's Rust examples, compiled (and the quick start run) as this
/// crate's doc-tests, so the first code a user copies keeps working.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The Rust examples of `docs/bridges.md`, compiled (and run unless marked
/// `no_run`) as the README's are.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/bridges.md")]
pub struct BridgesDocDoctests;

/// The Rust example of `docs/preload.md`, compiled.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/preload.md")]
pub struct PreloadDocDoctests;
