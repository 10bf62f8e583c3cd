//! One module per command: its flags (`Args`) and its `run`.

pub mod bench;
pub mod dead_letters;
pub mod events;
pub mod load;
pub mod migrate;
pub mod replay;
pub mod restore;
pub mod sagas;
pub mod serve;
pub mod verify;
