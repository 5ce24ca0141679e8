//! Making models smaller and faster: pruning ([`prune`]).

pub mod prune;
