//! Making models smaller and faster, and showing what that costs: inspecting weights
//! ([`report`]), pruning them ([`prune`]) and quantizing them to INT8 ([`quantize`]).

pub mod prune;
pub mod quantize;
pub mod report;
