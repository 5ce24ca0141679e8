//! Model compression: inspecting weights ([`report`]) before pruning or quantizing them.

pub mod report;
