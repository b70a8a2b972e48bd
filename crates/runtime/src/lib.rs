//! Host side of nacre.

pub mod agent;
