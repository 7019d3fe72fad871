//! The io_uring engine shared by sender and receiver workers.

pub mod ring;
