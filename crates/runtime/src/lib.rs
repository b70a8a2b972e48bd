//! Host side of nacre.
