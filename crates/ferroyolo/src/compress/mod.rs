//! Making models smaller and faster, and showing what that costs: inspecting weights
//! ([`report`]) and pruning them ([`prune`]).

pub mod prune;
pub mod report;
