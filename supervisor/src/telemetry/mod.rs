//! What the supervisor reads about processes and the board; every path sits
//! under a configurable root so tests can supply their own files.

pub mod memory;
pub mod npu;
pub mod thermal;
