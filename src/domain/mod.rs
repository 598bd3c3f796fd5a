//! The customer-data domain: types, parsing at the edge, and the bookkeeping that every change
//! carries (stage history, events, insight rollups). No I/O here.
pub mod customer;
pub mod rollup;
pub mod validate;

pub use customer::*;
pub use rollup::*;
